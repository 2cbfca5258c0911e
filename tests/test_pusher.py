"""Pushes publish whole versions: not when killed mid-copy, nor when two run at once."""

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from headswap.components.atomic_pusher.versions import STAGING_PREFIX, push

# Pushes a model and prints its version, but the process stops itself after copying its first
# file (the test's hook, around shutil's file copy); the parent then kills or resumes it there.
PUSH_THAT_STOPS_MID_COPY = """
import os, shutil, signal, sys
from headswap.components.atomic_pusher.versions import push
copy_file = shutil.copyfile
def copy_then_stop(*args, **kwargs):
  shutil.copyfile = copy_file
  copied = copy_file(*args, **kwargs)
  os.kill(os.getpid(), signal.SIGSTOP)
  return copied
shutil.copyfile = copy_then_stop
print(push(sys.argv[1], sys.argv[2]))
"""
PUSH = "import sys; from components.atomic_pusher.versions import push; " \
       "print(push(sys.argv[1], sys.argv[2]))"
MODEL_FILES = ("saved_model.pb", "variables/variables.index", "variables/variables.data")


def _model(folder):
  os.makedirs(os.path.join(folder, "variables"))
  for name in MODEL_FILES:
    with open(os.path.join(folder, name), "wb") as f:
      f.write(os.urandom(1 << 16))
  return folder


def _contents(folder):
  contents = {}
  for name in MODEL_FILES:
    with open(os.path.join(folder, name), "rb") as f:
      contents[name] = f.read()
  return contents


def _versions(base):
  return sorted(name for name in os.listdir(base) if name.isdigit())


def _start(script, model, base):
  return subprocess.Popen([sys.executable, "-c", script, model, base], stdout=subprocess.PIPE,
                          text=True)


def _state(process) -> str:
  with open(f"/proc/{process.pid}/stat") as f:
    return f.read().rsplit(")", 1)[1].split()[0]


def _wait_until(condition, process, what):
  deadline = time.time() + 300
  while not condition():
    assert process.poll() is None and time.time() < deadline, what
    time.sleep(0.05)


def _waits_for_lock(process) -> bool:
  with open("/proc/locks") as f:  # a blocked flock reads "N: -> FLOCK ADVISORY WRITE <pid> ..."
    return any(line.split()[1:3] == ["->", "FLOCK"] and line.split()[5] == str(process.pid)
               for line in f)


def test_push_killed_mid_copy_publishes_nothing_and_the_next_push_cleans_up(tmp_path):
  base = str(tmp_path / "serving")
  first = push(_model(str(tmp_path / "good")), base)
  assert _versions(base) == [first]

  pusher = _start(PUSH_THAT_STOPS_MID_COPY, _model(str(tmp_path / "interrupted")), base)
  _wait_until(lambda: _state(pusher) == "T", pusher, "the push never reached its copy")
  staged = [n for n in os.listdir(base) if n.startswith(STAGING_PREFIX)]
  assert len(staged) == 1  # a partial copy exists...
  assert _versions(base) == [first]  # ...and is invisible to a server scanning for versions
  pusher.send_signal(signal.SIGKILL)
  pusher.wait()
  assert _versions(base) == [first]

  second = push(_model(str(tmp_path / "next")), base)  # the dead push's lock is gone
  assert _versions(base) == sorted([first, second]) and int(second) > int(first)
  assert not [n for n in os.listdir(base) if n.startswith(STAGING_PREFIX)]
  assert sorted(os.listdir(os.path.join(base, second, "variables"))) == [
      "variables.data", "variables.index"]


def test_two_processes_pushing_at_once_publish_two_whole_versions(tmp_path):
  """The second push starts while the first is stopped mid-copy: it waits for the lock rather
  than removing the first's staging folder, and every version ever listed is whole."""
  base = str(tmp_path / "serving")
  models = {name: _model(str(tmp_path / name)) for name in ("first", "second")}
  expected = [_contents(model) for model in models.values()]

  def check_listed_versions_whole():
    for version in _versions(base):
      assert _contents(os.path.join(base, version)) in expected, f"version {version} is partial"

  first = _start(PUSH_THAT_STOPS_MID_COPY, models["first"], base)
  _wait_until(lambda: _state(first) == "T", first, "the first push never reached its copy")
  assert len([n for n in os.listdir(base) if n.startswith(STAGING_PREFIX)]) == 1
  second = _start(PUSH, models["second"], base)
  _wait_until(lambda: _waits_for_lock(second) or second.poll() is not None, first,
              "the second push neither finished nor waited")
  assert second.poll() is None, "the second push went ahead while the first was mid-copy"
  check_listed_versions_whole()
  first.send_signal(signal.SIGCONT)
  while first.poll() is None or second.poll() is None:
    check_listed_versions_whole()
    time.sleep(0.01)

  assert (first.returncode, second.returncode) == (0, 0)
  published = [first.stdout.read().strip(), second.stdout.read().strip()]
  assert _versions(base) == published and int(published[1]) > int(published[0])
  assert [_contents(os.path.join(base, version)) for version in published] == expected
  assert not [n for n in os.listdir(base) if n.startswith(STAGING_PREFIX)]


def test_pushes_in_the_same_second_get_distinct_versions(tmp_path):
  base = str(tmp_path / "serving")
  model = _model(str(tmp_path / "model"))
  with ThreadPoolExecutor(4) as pool:
    versions = list(pool.map(lambda _: push(model, base), range(4)))
  assert _versions(base) == sorted(versions) and len(set(versions)) == 4
  assert all(_contents(os.path.join(base, version)) == _contents(model) for version in versions)
