"""Reads PyTorch's legacy (non-zip) `torch.save` files into NumPy arrays, without torch.

A legacy file is five things written one after the other (torch/serialization.py):
  1. a pickle of the magic number 0x1950a86a20f9469cfc6c,
  2. a pickle of the protocol version, 1001,
  3. a pickle of sys_info ({"little_endian": ..., "type_sizes": ...}),
  4. a pickle of the object itself, usually an OrderedDict state dict, in which each tensor is
     torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...) and each storage the
     persistent id ("storage", <torch.FloatStorage>, key, location, numel, view_metadata),
  5. a pickle of the list of storage keys, then per key an 8-byte element count and the raw
     bytes of that storage.
The object comes before the bytes it points at, so each storage is allocated empty when the
object names it, its tensors are views into it, and the bytes are read into it afterwards.
Every one of the five pickles goes through the same restricted unpickler, which resolves only
the few globals a state dict needs: loading runs no code from the file.
"""

import collections
import pickle
from typing import Dict

import numpy as np

MAGIC_NUMBER = 0x1950a86a20f9469cfc6c
PROTOCOL_VERSION = 1001
ZIP_SIGNATURE = b"PK\x03\x04"  # torch >= 1.6 writes a zip archive instead

STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class LegacyFormatError(ValueError):
  """The file is not a legacy torch.save file this reader understands."""


def load_state_dict(path: str) -> Dict[str, np.ndarray]:
  """The state dict saved at `path`: parameter name -> read-only array, in file order."""
  with open(path, "rb") as f:
    if f.read(4) == ZIP_SIGNATURE:
      raise LegacyFormatError(f"{path} is a zip-format (torch >= 1.6) checkpoint; only the "
                              "legacy format is supported")
    f.seek(0)
    try:
      state = _read(f)
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as error:
      raise LegacyFormatError(f"{path} is not a legacy PyTorch checkpoint: {error}") from error
  if not isinstance(state, dict) or not all(
      isinstance(k, str) and isinstance(v, np.ndarray) for k, v in state.items()):
    raise LegacyFormatError(f"{path} holds a {type(state).__name__}, not a state dict of tensors")
  return state


def _read(f):
  unpickler = _RestrictedUnpickler(f)
  if unpickler.load() != MAGIC_NUMBER:
    raise LegacyFormatError("wrong magic number")
  if unpickler.load() != PROTOCOL_VERSION:
    raise LegacyFormatError("unknown protocol version")
  sys_info = unpickler.load()
  if not isinstance(sys_info, dict):
    raise LegacyFormatError(f"sys_info is a {type(sys_info).__name__}, not a dict")
  unpickler.byte_order = "<" if sys_info.get("little_endian", True) else ">"
  result = unpickler.load()
  storage_keys = unpickler.load()
  if not isinstance(storage_keys, list) or set(storage_keys) - set(unpickler.storages):
    raise LegacyFormatError("the storage keys do not match the storages the tensors use")
  for key in storage_keys:
    storage = unpickler.storages[key]
    count = int.from_bytes(f.read(8), "little" if unpickler.byte_order == "<" else "big")
    if count != storage.size:
      raise LegacyFormatError(f"storage {key}: {count} elements on disk, {storage.size} expected")
    if f.readinto(storage.view(np.uint8)) != storage.nbytes:
      raise LegacyFormatError(f"storage {key}: the file ends early")
  return result


class _StorageType:
  """What find_class gives for torch.FloatStorage and friends: only its dtype matters."""

  def __init__(self, dtype):
    self.dtype = dtype


def _rebuild_tensor_v2(storage, storage_offset, size, stride, *unused):
  """torch._utils._rebuild_tensor_v2: a strided view into a storage, bounds-checked because
  as_strided trusts its arguments."""
  size, stride = tuple(size), tuple(stride)
  if len(size) != len(stride) or min(stride, default=0) < 0 or storage_offset < 0:
    raise LegacyFormatError(f"bad tensor layout: size {size}, stride {stride}")
  if any(n == 0 for n in size):
    return np.zeros(size, storage.dtype)
  last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
  if last >= storage.size:
    raise LegacyFormatError(f"tensor of size {size} reaches past its storage of {storage.size}")
  return np.lib.stride_tricks.as_strided(storage[storage_offset:], shape=size,
                                         strides=[s * storage.itemsize for s in stride],
                                         writeable=False)


class _RestrictedUnpickler(pickle.Unpickler):
  """Reads the file's pickles one after the other; the storages the state dict names are kept
  for the bytes that follow it."""

  def __init__(self, file):
    super().__init__(file)
    self.byte_order = "<"  # until sys_info says otherwise; only storages depend on it
    self.storages: Dict[str, np.ndarray] = {}

  def find_class(self, module, name):
    if (module, name) == ("collections", "OrderedDict"):
      return collections.OrderedDict
    if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
      return _rebuild_tensor_v2
    if module == "torch" and name in STORAGE_DTYPES:
      return _StorageType(np.dtype(STORAGE_DTYPES[name]).newbyteorder(self.byte_order))
    raise pickle.UnpicklingError(f"unsupported global {module}.{name} (only state dicts of "
                                 "tensors can be read without torch)")

  def persistent_load(self, pid):
    kind, storage_type, key, _location, numel, view_metadata = pid
    if kind != "storage" or not isinstance(storage_type, _StorageType):
      raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
    if view_metadata is not None:
      raise pickle.UnpicklingError("storage views (torch < 0.4 files) are not supported")
    if key not in self.storages:
      self.storages[key] = np.empty(numel, storage_type.dtype)
    return self.storages[key]
