"""A restricted reader of NVIDIA snapshot pickles: it executes nothing from the file.

NVIDIA pickles every network with `torch_utils.persistence`, which stores the network's whole
module source in the pickle and `exec`s it on load. Here that reconstruct function is
replaced by one that returns the recorded state (`Persistent`); the source is never looked
at. Tensors are rebuilt from their raw bytes by our own functions, and every other global is
refused with one line naming it.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import struct
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from animegen.errors import UserError

# torch's legacy storage classes (the inner `torch.save` of each storage names one) and their dtypes
STORAGE_DTYPES = {"FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
                  "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
                  "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
                  "BoolStorage": torch.bool}


@dataclass
class Persistent:
    """What NVIDIA's persistence records for one network object: its class name and `__dict__`
    (`_parameters`, `_buffers`, `_modules`, `_init_kwargs`, ...)."""

    class_name: str
    state: dict


class EasyDict(dict):
    """NVIDIA's dnnlib.util.EasyDict, read as a plain dict (a subclass so that BUILD works)."""


def _reconstruct_persistent_obj(meta: dict) -> Persistent:
    if not isinstance(meta, dict) or meta.get("type") != "class":
        raise UserError("the pickle holds a persistent object that is not a class instance; refusing it.")
    return Persistent(str(meta["class_name"]), meta["state"])


def _rebuild_tensor(storage: torch.Tensor, offset: int, size, stride, requires_grad=False, hooks=None,
                    metadata=None) -> torch.Tensor:
    if not isinstance(storage, torch.Tensor):
        raise UserError("the pickle rebuilds a tensor from something that is not a storage; refusing it.")
    if math.prod(size) > MAX_TENSOR_ELEMENTS:  # as_strided checks the bounds; this, the copy's size
        raise UserError(f"the pickle holds a tensor of {math.prod(size)} elements; refusing it.")
    return storage.as_strided(tuple(size), tuple(stride), int(offset)).clone()


def _rebuild_parameter(data: torch.Tensor, requires_grad=False, hooks=None) -> torch.Tensor:
    return data


MULTIARRAY = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray  # numpy 2 / numpy 1
MAX_TENSOR_ELEMENTS = 2**31  # far above any StyleGAN tensor; a pickle asking for more is refused


def _check_dtype(dtype) -> None:
    """Plain numbers only: a structured dtype's field offsets come from the pickle itself
    (numpy's dtype.__setstate__), and could point outside the array's memory."""
    if not isinstance(dtype, np.dtype) or dtype.fields is not None or dtype.subdtype is not None \
            or dtype.kind not in "biufc":
        raise UserError(f"the pickle holds a numpy value of dtype {dtype!r}; only plain numbers are read.")


def _scalar(dtype, *args):
    _check_dtype(dtype)
    return MULTIARRAY.scalar(dtype, *args)


def _check_numpy_values(obj, seen: set) -> None:
    """Refuse any array the pickle built with a dtype other than plain numbers."""
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, (np.ndarray, np.generic)):
        _check_dtype(obj.dtype)
    elif isinstance(obj, dict):
        for key, value in obj.items():
            _check_numpy_values(key, seen)
            _check_numpy_values(value, seen)
    elif isinstance(obj, (list, tuple, set)):
        for item in obj:
            _check_numpy_values(item, seen)
    elif isinstance(obj, Persistent):
        _check_numpy_values(obj.state, seen)


OUTER_GLOBALS = {
    ("collections", "OrderedDict"): OrderedDict,
    ("dnnlib.util", "EasyDict"): EasyDict,
    ("numpy", "dtype"): np.dtype,
    ("numpy", "ndarray"): np.ndarray,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    # numpy 2 writes numpy._core, numpy 1 numpy.core
    **{(f"numpy.{core}.multiarray", name): value for core in ("_core", "core")
       for name, value in (("_reconstruct", MULTIARRAY._reconstruct), ("scalar", _scalar))},
}


class _Refusing(pickle.Unpickler):
    """Allows the globals in `allowed` only, and no persistent ids unless a subclass says how."""

    allowed: dict = {}

    def find_class(self, module: str, name: str):
        found = self.allowed.get((module, name))
        if found is None:
            raise UserError(f"refusing to load {module}.{name}: not a global an NVIDIA snapshot needs.")
        return found

    def persistent_load(self, pid):
        raise UserError("the pickle refers to an external object (a persistent id); refusing it.")


class _SnapshotUnpickler(_Refusing):
    allowed = {**OUTER_GLOBALS, ("torch.storage", "_load_from_bytes"): lambda data: load_storage_bytes(data)}


class _StorageHeaderUnpickler(_Refusing):
    """The inner pickle of a legacy `torch.save(storage)`: the storage is a persistent id
    ('storage', storage class, key, location, numel, view metadata); we keep (key, dtype)."""

    allowed = {("torch", name): name for name in STORAGE_DTYPES}

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage" and pid[1] in STORAGE_DTYPES
                and pid[5] is None):
            raise UserError(f"the pickle holds a malformed storage record {str(pid)[:80]!r}; refusing it.")
        return str(pid[2]), STORAGE_DTYPES[pid[1]]


def _plain(f) -> object:
    """A pickle of plain data only (numbers, strings, dicts): no global at all."""
    return _Refusing(f).load()


def load_storage_bytes(data: bytes) -> torch.Tensor:
    """A storage written by legacy (non-zip) `torch.save`, as a flat tensor: magic number,
    protocol version and system info; the storage record; the list of storage keys; then per
    key an int64 element count and the raw little-endian elements."""
    if not isinstance(data, bytes):
        raise UserError("the pickle holds a storage that is not bytes; refusing it.")
    f = io.BytesIO(data)
    for _ in range(3):
        _plain(f)
    key, dtype = _StorageHeaderUnpickler(f).load()
    if _plain(f) != [key]:
        raise UserError("the pickle holds a storage whose key list does not match; refusing it.")
    (count,) = struct.unpack("<q", f.read(8))
    size = count * torch.empty(0, dtype=dtype).element_size()
    raw = f.read(size)
    if count < 0 or len(raw) != size:
        raise UserError("the pickle holds a truncated storage; refusing it.")
    return torch.frombuffer(bytearray(raw), dtype=dtype) if count else torch.empty(0, dtype=dtype)


def read_snapshot(path: str | os.PathLike) -> dict:
    """The snapshot dict of an NVIDIA pickle (G, D, G_ema, augment_pipe, training_set_kwargs:
    any of them), networks as `Persistent` records. Nothing in the file is executed."""
    try:
        with open(path, "rb") as f:
            snapshot = _SnapshotUnpickler(f).load()
    except FileNotFoundError:
        raise UserError(f"{path} does not exist.") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError,
            RuntimeError, struct.error, MemoryError, OverflowError) as e:
        raise UserError(f"{path} is not a readable NVIDIA snapshot pickle ({type(e).__name__}: {e}).") from None
    if not isinstance(snapshot, dict):
        raise UserError(f"{path} holds a {type(snapshot).__name__}, not an NVIDIA snapshot dict.")
    _check_numpy_values(snapshot, set())
    return snapshot
