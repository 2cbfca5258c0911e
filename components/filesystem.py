"""Files on this machine and in cloud storage (gs://) behind one set of calls.

Local paths go through os, which sees what an object store has not (symlinks, FIFOs,
devices) and which the ingest's guards against hostile folders rely on. A URL such as
gs://bucket/photos goes through tf.io.gfile, imported only then, so that listing a local
folder does not pay for importing TensorFlow. TensorFlow's errors come out as OSError, so
callers handle one kind of failure for both.
"""

import contextlib
import json
import os
from typing import IO, Any, Iterator, List, Optional, Tuple


def is_remote(path: str) -> bool:
  """A URL (gs://, s3://) rather than a path on this machine."""
  return "://" in path


def absolute(path: str) -> str:
  return path if is_remote(path) else os.path.abspath(path)


@contextlib.contextmanager
def _os_errors(path: str):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel; only for URLs

  try:
    yield tf.io.gfile
  except tf.errors.NotFoundError as error:
    raise FileNotFoundError(f"{path}: not found") from error
  except tf.errors.OpError as error:
    raise OSError(f"{path}: {error.message}") from error


def scan(folder: str) -> List[Tuple[str, bool]]:
  """(name, is a folder) of each entry of folder, sorted by name; a symlink counts as what
  it leads to."""
  if not is_remote(folder):
    return [(name, os.path.isdir(os.path.join(folder, name)))
            for name in sorted(os.listdir(folder))]
  with _os_errors(folder) as gfile:
    # The gs:// filesystems mark folders with a trailing slash: no request per entry.
    names = gfile.listdir(folder.rstrip("/") + "/")
  return sorted((name.rstrip("/"), name.endswith("/")) for name in names)


def listdir(folder: str) -> List[str]:
  return [name for name, _ in scan(folder)]


def isdir(path: str) -> bool:
  if not is_remote(path):
    return os.path.isdir(path)
  with _os_errors(path) as gfile:
    return gfile.isdir(path)


def exists(path: str) -> bool:
  """Whether path exists; a local broken symlink counts, as os.path.lexists."""
  if not is_remote(path):
    return os.path.lexists(path)
  with _os_errors(path) as gfile:
    return gfile.exists(path)


def isfile(path: str) -> bool:
  if not is_remote(path):
    return os.path.isfile(path)
  with _os_errors(path) as gfile:
    return gfile.exists(path) and not gfile.isdir(path)


def size(path: str) -> int:
  if not is_remote(path):
    return os.stat(path).st_size
  with _os_errors(path) as gfile:
    return gfile.stat(path).length


@contextlib.contextmanager
def open_file(path: str, mode: str = "rb") -> Iterator[IO]:
  """A file object; gfile's for a URL, with its errors as OSError."""
  if not is_remote(path):
    with open(path, mode) as f:  # pylint: disable=unspecified-encoding; binary or the default
      yield f
    return
  with _os_errors(path) as gfile, gfile.GFile(path, mode) as f:
    yield f


def read_json(path: str) -> Optional[Any]:
  """The JSON file at path, parsed; None if there is none (many outputs are optional)."""
  if not exists(path):
    return None
  with open_file(path, "r") as f:
    return json.load(f)


def walk_files(folder: str) -> Iterator[Tuple[str, int, int]]:
  """(path relative to folder, size, mtime in ns) of every file under folder, in name order,
  symlinks not followed; a file deleted meanwhile is left out."""
  prefix = folder.rstrip("/") + "/"
  with _os_errors(folder) if is_remote(folder) else contextlib.nullcontext(os) as module:
    walk = module.walk  # gfile.walk or os.walk: the same (parent, folders, files) triples
    for parent, subfolders, names in walk(prefix):
      subfolders.sort()
      for name in sorted(names):
        path = os.path.join(parent, name)
        try:
          size_bytes, mtime_ns = _status(path)
        except FileNotFoundError:
          continue
        yield path[len(prefix):], size_bytes, mtime_ns


def _status(path: str) -> Tuple[int, int]:
  """(size, mtime in ns), a symlink's own; a request per file on gs://, whose listing gives
  no sizes."""
  if not is_remote(path):
    status = os.lstat(path)
    return status.st_size, status.st_mtime_ns
  with _os_errors(path) as gfile:
    status = gfile.stat(path)
    return status.length, status.mtime_nsec
