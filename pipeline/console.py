"""The console: headswap's own story on screen, everything else in a log file.

While a command runs, file descriptors 1 and 2 point at the log file (or, with --verbose, at a
pipe copied to both the log and the screen). So whatever writes there goes to the log: TensorFlow's
C++ start-up lines, Python warnings, absl/TFX/Beam logs, the setuptools and pip output of the
subprocesses TFX starts to package module files, and Beam worker processes, which inherit the
descriptors. headswap's prints (sys.stdout) and its "headswap.console" log lines reach the screen
through copies of the original descriptors, and the log too.

The stage lines come from timed_stages(), around the LocalDagRunner's component launches; the
long steps within a stage show their progress (components/progress.py): a bar on a terminal,
a few plain lines otherwise.
"""

import contextlib
import io
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
import traceback
from typing import Iterator, Optional

from headswap.components import progress

# The story: one line per stage and the closing lines. Children of "headswap" log to the file
# only, unless WARNING or worse.
story = logging.getLogger("headswap.console")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def log_dir(output: Optional[str]) -> str:
  """OUTPUT/logs for a local output folder; a temporary folder otherwise."""
  if output and "://" not in output:
    return os.path.join(output, "logs")
  return os.path.join(tempfile.gettempdir(), "headswap-logs")


def _new_log_file(folder: str) -> str:
  os.makedirs(folder, exist_ok=True)
  stamp = time.strftime("%Y%m%d-%H%M%S")
  for suffix in ["", *(f"-{os.getpid()}-{n}" for n in range(100))]:
    path = os.path.join(folder, f"headswap-{stamp}{suffix}.log")
    try:
      os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
      return path
    except FileExistsError:
      continue
  raise FileExistsError(f"no free log file name in {folder}")


class _Tee(io.TextIOBase):
  """Writes to several text streams (the screen and the log)."""

  def __init__(self, *streams):
    super().__init__()
    self._streams = streams

  def writable(self):
    return True

  def write(self, text):
    for stream in self._streams:
      stream.write(text)
    return len(text)

  def flush(self):
    for stream in self._streams:
      stream.flush()

  def isatty(self):
    return self._streams[0].isatty()


def _screen(stream, fd: int):
  """A stream to the screen that survives fd being redirected: a copy of the descriptor when
  the stream writes to it, the stream itself otherwise (pytest's capture, for one)."""
  try:
    if stream.fileno() == fd:
      stream.flush()
      return os.fdopen(os.dup(fd), "w", buffering=1, encoding=stream.encoding,
                       errors="backslashreplace")
  except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
    pass
  return stream


class _OnlyStory(logging.Filter):
  def filter(self, record):
    return record.name == story.name or record.levelno >= logging.WARNING and (
        record.name == "headswap" or record.name.startswith("headswap."))


def _stage_line(node: str, seconds: float, note: str = "") -> None:
  story.info("  %-22s %7.1f s%s", node, seconds, f"  ({note})" if note else "")


@contextlib.contextmanager
def timed_stages() -> Iterator[None]:
  """While the block runs, every component TFX's LocalDagRunner launches tells the story one
  line: its id, its time, "cached" when TFX reused an earlier execution, "FAILED" when it
  raised. (A Launcher subclass, patched in for the block: log lines are not reliable, as
  libraries change absl's verbosity as they please.)"""
  # pylint: disable=import-outside-toplevel
  from tfx.orchestration.local import local_dag_runner
  from tfx.orchestration.portable import launcher

  class TimedLauncher(launcher.Launcher):
    """Launcher.launch, timed; _prepare_execution tells whether the cache was used."""
    _reused = False

    def _prepare_execution(self):
      prepared = super()._prepare_execution()
      self._reused = not prepared.is_execution_needed
      return prepared

    def launch(self):
      node, started = self._pipeline_node.node_info.id, time.monotonic()
      try:
        result = super().launch()
      except BaseException:
        _stage_line(node, time.monotonic() - started, "FAILED")
        raise
      _stage_line(node, time.monotonic() - started, "cached" if self._reused else "")
      return result

  original = local_dag_runner.launcher.Launcher
  local_dag_runner.launcher.Launcher = TimedLauncher
  try:
    yield
  finally:
    local_dag_runner.launcher.Launcher = original


class _Pump(threading.Thread):
  """--verbose: copies what the process writes to fds 1 and 2 to the log and the screen."""

  def __init__(self, read_fd, log_fd, screen_fd):
    super().__init__(name="headswap-console", daemon=True)
    self._read, self._log, self._screen = read_fd, log_fd, screen_fd

  def run(self):
    while True:
      chunk = os.read(self._read, 65536)
      if not chunk:
        break
      for fd in (self._log, self._screen):
        with contextlib.suppress(OSError):
          os.write(fd, chunk)
    os.close(self._read)


@contextlib.contextmanager
def session(folder: str, verbose: bool = False, command: str = "") -> Iterator[str]:
  """Sends everything to a new log file in folder (and, when verbose, to the screen) and the
  story to the screen, until the block ends; yields the log file's path."""
  folder = os.path.abspath(folder)
  made = _first_missing(folder)  # a folder this session creates, removed again if only the
  path = _new_log_file(folder)    # log of a failed command ends up in it
  failed = False
  log_fd = os.open(path, os.O_WRONLY | os.O_APPEND)
  screen_out, screen_err = _screen(sys.stdout, 1), _screen(sys.stderr, 2)
  for stream in (sys.stdout, sys.stderr):
    stream.flush()
  saved = {fd: os.dup(fd) for fd in (1, 2)}
  pump = None
  if verbose:
    read_fd, write_fd = os.pipe()
    pump = _Pump(read_fd, log_fd, saved[2])
    pump.start()
    target = write_fd
  else:
    target = log_fd
  for fd in (1, 2):
    os.dup2(target, fd)
  if pump:
    os.close(write_fd)
  # The log's Python writer: through fd 2, so --verbose shows it too.
  log_stream = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8",
                         errors="backslashreplace")
  # Our prints: to the screen and the log file itself (--verbose's pipe would show them twice).
  log_file = log_stream if not verbose else os.fdopen(
      os.dup(log_fd), "w", buffering=1, encoding="utf-8", errors="backslashreplace")
  old_streams = sys.stdout, sys.stderr
  sys.stdout = _Tee(screen_out, log_file)
  sys.stderr = log_stream  # Python warnings, tracebacks printed by libraries

  root = logging.getLogger()
  old_root = root.level, list(root.handlers)
  for handler in old_root[1]:
    root.removeHandler(handler)
  root.setLevel(logging.INFO)
  to_log = logging.StreamHandler(log_stream)
  to_log.setFormatter(logging.Formatter(LOG_FORMAT))
  root.addHandler(to_log)
  to_screen = logging.StreamHandler(screen_err)
  to_screen.setFormatter(logging.Formatter("%(message)s"))
  to_screen.addFilter(_OnlyStory())
  if not verbose:  # verbose: the log handler already shows everything
    logging.getLogger("headswap").addHandler(to_screen)
  logging.getLogger("headswap").setLevel(logging.INFO)
  logging.captureWarnings(True)  # warnings: to the log with a time, as "py.warnings"

  started = time.monotonic()
  story.info("headswap %s: full log in %s", command, path)
  # --verbose scrolls library lines past: plain progress lines suit it better than a bar.
  bars = progress.bars_on(screen_err) if not verbose and screen_err.isatty() else (
      contextlib.nullcontext())
  try:
    with bars:
      yield path
  except BaseException as error:
    failed = True
    seconds = time.monotonic() - started
    if isinstance(error, SystemExit):  # Python prints its message on the screen as it exits
      if error.code not in (None, 0):
        log_stream.write(f"headswap {command} stopped after {seconds:.1f} s: {error.code}\n")
      else:
        failed = False
    else:  # the traceback too, after the screen is restored
      logging.getLogger("headswap").error(
          "headswap %s failed after %.1f s: %s", command, seconds,
          "".join(traceback.format_exception_only(type(error), error)).strip())
      log_stream.write(traceback.format_exc())
    raise
  else:
    story.info("done in %.1f s; full log: %s", time.monotonic() - started, path)
  finally:
    logging.captureWarnings(False)
    root.removeHandler(to_log)
    logging.getLogger("headswap").removeHandler(to_screen)
    root.setLevel(old_root[0])
    for handler in old_root[1]:
      root.addHandler(handler)
    for stream in (sys.stdout, log_stream, log_file, screen_out, screen_err):
      with contextlib.suppress(Exception):
        stream.flush()
    sys.stdout, sys.stderr = old_streams
    for fd, copy in saved.items():
      os.dup2(copy, fd)
      os.close(copy)
    log_stream.close()
    log_file.close()
    if pump:
      pump.join(timeout=5)  # children still holding the pipe keep it open: do not wait for them
    os.close(log_fd)
    for stream, original in ((screen_out, old_streams[0]), (screen_err, old_streams[1])):
      if stream is not original:
        with contextlib.suppress(Exception):
          stream.close()
    if failed:
      moved = os.path.join(log_dir(None), os.path.basename(path))
      if made and moved != path and _holds_only(made, path):  # a mistake in --data: no output
        os.makedirs(os.path.dirname(moved), exist_ok=True)
        shutil.move(path, moved)
        shutil.rmtree(made, ignore_errors=True)
        path = moved
      print(f"full log: {path}", file=sys.stderr, flush=True)


def _first_missing(folder: str) -> Optional[str]:
  """The outermost folder of folder's path that does not exist yet (None: all exist)."""
  folder, missing = os.path.abspath(folder), None
  while not os.path.exists(folder):
    folder, missing = os.path.dirname(folder), folder
  return missing


def _holds_only(folder: str, path: str) -> bool:
  files = [os.path.join(root, name) for root, _, names in os.walk(folder) for name in names]
  return files == [path] or not files
