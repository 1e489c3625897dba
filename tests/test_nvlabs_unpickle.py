"""The restricted NVIDIA-pickle reader runs nothing from the file: each malicious pickle is
refused with one line naming what it asked for, and its side effect (a marker file) never happens."""

import builtins
import importlib
import io
import os
import pickle
import subprocess
import sys
import types

import numpy as np
import pytest
import torch

from animegen.errors import UserError
from animegen.nvlabs.unpickle import read_snapshot


class Reduce:
    """Pickles as `func(*args)`, which an unrestricted unpickler would call."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


class Persistent:
    """Pickles as NVIDIA's persistence does: _reconstruct_persistent_obj(meta)."""

    def __init__(self, meta):
        self.meta = meta

    def __reduce__(self):
        return _reconstruct, (self.meta,)


def _reconstruct(meta):
    raise AssertionError("never called: only its name goes into the pickle")


_reconstruct.__module__, _reconstruct.__qualname__ = "torch_utils.persistence", "_reconstruct_persistent_obj"
# the module NVIDIA's pickles name, so that pickle can write the global (it looks it up)
_PERSISTENCE = types.ModuleType("torch_utils.persistence")
_PERSISTENCE._reconstruct_persistent_obj = _reconstruct


def _dumps(obj) -> bytes:
    fakes = {"torch_utils": types.ModuleType("torch_utils"), "torch_utils.persistence": _PERSISTENCE}
    sys.modules.update(fakes)
    try:
        return pickle.dumps(obj)
    finally:
        for name in fakes:
            del sys.modules[name]


def _attacks(marker):
    touch = f"touch {marker}"
    code = f"open({str(marker)!r}, 'w').close()"
    inner_storage = io.BytesIO()
    inner_storage.write(pickle.dumps(Reduce(os.system, touch)))
    return {
        "os.system": ({"G": Reduce(os.system, touch)}, "posix.system"),
        "eval": ({"G": Reduce(builtins.eval, code)}, "builtins.eval"),
        "exec": ({"G": Reduce(builtins.exec, code)}, "builtins.exec"),
        "subprocess": ({"G": Reduce(subprocess.Popen, ["touch", str(marker)])}, "subprocess.Popen"),
        "getattr": ({"G": Reduce(builtins.getattr, Reduce(importlib.import_module, "os"), "system")}, "builtins.getattr"),
        "nested in state": ({"G": Persistent({"type": "class", "class_name": "Generator", "module_src": "",
                                              "state": {"_modules": {"x": Reduce(os.system, touch)}}})},
                            "posix.system"),
        "inside a storage": ({"G": Reduce(torch.storage._load_from_bytes, inner_storage.getvalue())}, "posix.system"),
        "torch.load": ({"G": Reduce(torch.load, str(marker))}, "torch.serialization.load"),
    }


@pytest.mark.parametrize("attack", list(_attacks("m")))
def test_malicious_pickles_are_refused_and_run_nothing(tmp_path, attack):
    marker = tmp_path / "marker"
    snapshot, named = _attacks(marker)[attack]
    path = tmp_path / "evil.pkl"
    path.write_bytes(_dumps(snapshot))
    with pytest.raises(UserError, match=f"refusing to load {named}"):
        read_snapshot(path)
    assert not marker.exists()


def test_module_src_is_never_executed(tmp_path):
    marker = tmp_path / "marker"
    meta = {"type": "class", "version": 4, "class_name": "Generator", "state": {"z_dim": 3},
            "module_src": f"open({str(marker)!r}, 'w').close()\n"}
    path = tmp_path / "snapshot.pkl"
    path.write_bytes(_dumps({"G": Persistent(meta)}))
    snapshot = read_snapshot(path)
    assert snapshot["G"].class_name == "Generator" and snapshot["G"].state == {"z_dim": 3}
    assert not marker.exists()


def test_persistent_ids_in_the_outer_pickle_are_refused(tmp_path):
    class External(pickle.Pickler):
        def persistent_id(self, obj):
            return "file" if obj == "x" else None

    buffer = io.BytesIO()
    External(buffer).dump({"G": "x"})
    path = tmp_path / "ext.pkl"
    path.write_bytes(buffer.getvalue())
    with pytest.raises(UserError, match="persistent id"):
        read_snapshot(path)


@pytest.mark.parametrize("value", [
    {"kwargs": np.zeros(2, dtype=[("a", "<f8")])},  # an array whose field offsets the pickle sets
    {"kwargs": np.zeros(2, dtype=[("a", "<f8")])[0]},  # a structured scalar
    {"kwargs": np.array(["x", object()], dtype=object)},
])
def test_numpy_values_other_than_plain_numbers_are_refused(tmp_path, value):
    path = tmp_path / "structured.pkl"
    path.write_bytes(pickle.dumps(value))
    with pytest.raises(UserError, match="refusing|only plain numbers"):
        read_snapshot(path)
    path.write_bytes(pickle.dumps({"kwargs": np.arange(3, dtype=np.int64), "p": np.float32(0.25)}))
    assert read_snapshot(path)["p"] == np.float32(0.25)  # plain numbers still read
