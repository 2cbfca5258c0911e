"""Helpers the benchmark scripts share: run a command and measure its time and memory."""

import dataclasses
import os
import signal
import subprocess
import threading
import time
from typing import List

import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.normpath(os.path.join(ROOT, "..", "shared", "datasets", "cats_vs_dogs"))
GIB = 1024 ** 3
SAMPLE_SECONDS = 0.5


@dataclasses.dataclass
class Measured:
  returncode: int
  wall_seconds: float
  # Sum of the RSS of the process and all its descendants, sampled: what the machine must hold.
  peak_tree_rss_bytes: int
  # The largest single process's max RSS (kernel's count, from wait4): catches short peaks.
  max_process_rss_bytes: int
  # User + system CPU of the process and its descendants: less inflated than wall time by
  # other work on the machine.
  cpu_seconds: float
  started: float  # time.time() at launch
  path_prefix: str  # its stdout is in <prefix>.stdout, its stderr in <prefix>.stderr

  def stdout(self) -> str:
    with open(self.path_prefix + ".stdout", errors="replace") as f:
      return f.read()

  def log_tail(self, characters: int = 3000) -> str:
    with open(self.path_prefix + ".stderr", errors="replace") as f:
      return f.read()[-characters:]

  def memory(self) -> dict:
    return {"peak_tree_rss_gib": round(self.peak_tree_rss_bytes / GIB, 2),
            "max_single_process_rss_gib": round(self.max_process_rss_bytes / GIB, 2)}


def _tree_rss(process: psutil.Process) -> int:
  total = 0
  for member in [process, *process.children(recursive=True)]:
    try:
      total += member.memory_info().rss
    except psutil.Error:  # exited between listing and reading
      pass
  return total


def run_measured(command: List[str], path_prefix: str, timeout_seconds: float) -> Measured:
  """Runs `command` from the project root, its stdout and stderr to <path_prefix>.stdout/.stderr.

  Kills the whole process group after `timeout_seconds` (returncode then -SIGKILL)."""
  peak = [0]
  with open(path_prefix + ".stdout", "wb") as out, open(path_prefix + ".stderr", "wb") as err:
    started, start = time.time(), time.perf_counter()
    child = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=err,
                             start_new_session=True)
    done = threading.Event()

    def sample():
      try:
        tree = psutil.Process(child.pid)
        while not done.wait(SAMPLE_SECONDS):
          peak[0] = max(peak[0], _tree_rss(tree))
      except psutil.Error:  # the child is gone
        pass

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    timer = threading.Timer(timeout_seconds, os.killpg, (child.pid, signal.SIGKILL))
    timer.start()
    try:
      # wait4, not Popen.wait: its rusage carries the child's and its descendants' max RSS.
      _, status, usage = os.wait4(child.pid, 0)
    finally:
      timer.cancel()
      done.set()
    child.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    sampler.join()
  # Linux counts ru_maxrss in KiB.
  return Measured(child.returncode, wall, peak[0], usage.ru_maxrss * 1024,
                  usage.ru_utime + usage.ru_stime, started, path_prefix)
