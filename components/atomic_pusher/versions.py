"""Atomic model versions: <base>/<version>/ appears whole or not at all.

TFX's own filesystem Pusher copies files straight into <base>/<version>/, so a crash
mid-copy leaves a half-written version that a model server may try to load. Here the
copy goes to a hidden staging folder and appears under its version number by a single
rename, which is atomic on one filesystem: a server sees all of a version or none.
"""

import os
import shutil
import time

STAGING_PREFIX = ".staging-"  # not a number: servers that scan for versions skip it


def stage(model_path: str, base_directory: str) -> str:
  """Copies the model next to the published versions, invisibly; returns the staged path."""
  os.makedirs(base_directory, exist_ok=True)
  for leftover in os.listdir(base_directory):  # an earlier push that died mid-copy
    if leftover.startswith(STAGING_PREFIX):
      shutil.rmtree(os.path.join(base_directory, leftover), ignore_errors=True)
  staged = os.path.join(base_directory, f"{STAGING_PREFIX}{os.getpid()}-{time.time_ns()}")
  shutil.copytree(model_path, staged)
  return staged


def publish(staged: str) -> str:
  """Renames a staged copy to the next version number; returns that version."""
  base_directory = os.path.dirname(staged)
  existing = [int(name) for name in os.listdir(base_directory) if name.isdigit()]
  version = str(max([int(time.time())] + [v + 1 for v in existing]))
  os.rename(staged, os.path.join(base_directory, version))
  return version
