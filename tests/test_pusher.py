"""A push killed between copying and publishing leaves no version a server would load."""

import os
import signal
import subprocess
import sys
import time

from components.atomic_pusher.versions import STAGING_PREFIX, publish, stage

# Pushes a model, but the process stops itself after copying its first file (the test's hook,
# around shutil's file copy); the parent then kills it there, mid-push.
PUSH_THAT_STOPS_MID_COPY = """
import os, shutil, signal, sys
from components.atomic_pusher.versions import publish, stage
copy_file = shutil.copyfile
def copy_then_stop(*args, **kwargs):
  copied = copy_file(*args, **kwargs)
  os.kill(os.getpid(), signal.SIGSTOP)
  return copied
shutil.copyfile = copy_then_stop
publish(stage(sys.argv[1], sys.argv[2]))
"""


def _model(folder):
  os.makedirs(os.path.join(folder, "variables"))
  for name in ("saved_model.pb", "variables/variables.index", "variables/variables.data"):
    with open(os.path.join(folder, name), "wb") as f:
      f.write(os.urandom(1 << 16))
  return folder


def _versions(base):
  return sorted(name for name in os.listdir(base) if name.isdigit())


def _stopped(process) -> bool:
  with open(f"/proc/{process.pid}/stat") as f:
    return f.read().rsplit(")", 1)[1].split()[0] == "T"


def test_push_killed_mid_copy_publishes_nothing_and_the_next_push_cleans_up(tmp_path):
  base = str(tmp_path / "serving")
  first = publish(stage(_model(str(tmp_path / "good")), base))
  assert _versions(base) == [first]

  pusher = subprocess.Popen([sys.executable, "-c", PUSH_THAT_STOPS_MID_COPY,
                             _model(str(tmp_path / "interrupted")), base])
  deadline = time.time() + 300
  while not _stopped(pusher):
    assert pusher.poll() is None and time.time() < deadline, "the push never reached its copy"
    time.sleep(0.1)
  staged = [n for n in os.listdir(base) if n.startswith(STAGING_PREFIX)]
  assert len(staged) == 1  # a partial copy exists...
  assert _versions(base) == [first]  # ...and is invisible to a server scanning for versions
  pusher.send_signal(signal.SIGKILL)
  pusher.wait()
  assert _versions(base) == [first]

  second = publish(stage(_model(str(tmp_path / "next")), base))
  assert _versions(base) == sorted([first, second]) and int(second) > int(first)
  assert not [n for n in os.listdir(base) if n.startswith(STAGING_PREFIX)]
  assert sorted(os.listdir(os.path.join(base, second, "variables"))) == [
      "variables.data", "variables.index"]
