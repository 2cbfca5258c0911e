"""Atomic model versions: <base>/<version>/ appears whole or not at all, one push at a time.

TFX's own filesystem Pusher copies files straight into <base>/<version>/, so a crash
mid-copy leaves a half-written version that a model server may try to load. Here the
copy goes to a hidden staging folder of its own, is flushed to disk, and appears under its
version number by a single rename, which is atomic on one filesystem: a server sees all of
a version or none, even after a power cut.

Pushes to one serving folder hold an exclusive lock on a file in it (flock, so local paths
only) from the cleanup of dead pushes' staging folders to the rename: a concurrent push never
has its staging folder removed under it, and two pushes in the same second get two versions.
The kernel drops the lock of a push that dies, so the next push goes ahead and cleans up.
"""

import contextlib
import fcntl
import os
import shutil
import tempfile
import time

STAGING_PREFIX = ".staging-"  # not a number: servers that scan for versions skip it
LOCK_FILE = ".push.lock"


def push(model_path: str, base_directory: str) -> str:
  """Copies the model to the next version under base_directory; returns that version."""
  os.makedirs(base_directory, exist_ok=True)
  with _locked(os.path.join(base_directory, LOCK_FILE)):
    for leftover in os.listdir(base_directory):  # a push that died mid-copy: no one holds it
      if leftover.startswith(STAGING_PREFIX):
        shutil.rmtree(os.path.join(base_directory, leftover), ignore_errors=True)
    staged = tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=base_directory)
    shutil.copytree(model_path, staged, dirs_exist_ok=True)  # mode too: not mkdtemp's 0o700
    _fsync_tree(staged)
    existing = [int(name) for name in os.listdir(base_directory) if name.isdigit()]
    version = str(max([int(time.time())] + [v + 1 for v in existing]))
    os.rename(staged, os.path.join(base_directory, version))
    _fsync(base_directory)  # the rename itself survives a crash
  return version


@contextlib.contextmanager
def _locked(path: str):
  with open(path, "a") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # released on close, or by the kernel if the process dies
    yield


def _fsync_tree(root: str) -> None:
  """Flushes every file, then every folder, so a renamed version never has empty files."""
  for folder, _, files in os.walk(root):
    for name in files:
      _fsync(os.path.join(folder, name))
    _fsync(folder)


def _fsync(path: str) -> None:
  handle = os.open(path, os.O_RDONLY)
  try:
    os.fsync(handle)
  finally:
    os.close(handle)
