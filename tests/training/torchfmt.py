"""Write PyTorch checkpoint files (legacy and zip layouts) without torch, for reader tests.

``torch`` globals are pickled by name through stand-in modules placed in ``sys.modules`` only while a
file is written, so the bytes match what ``torch.save`` produces for a plain state dict.
"""

from __future__ import annotations

import collections
import contextlib
import io
import pickle
import struct
import sys
import types
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.pth_reader import LEGACY_MAGIC_NUMBER, LEGACY_PROTOCOL_VERSION

STORAGE_NAMES = {
    np.dtype("float32"): "FloatStorage",
    np.dtype("float64"): "DoubleStorage",
    np.dtype("float16"): "HalfStorage",
    np.dtype("int64"): "LongStorage",
    np.dtype("int32"): "IntStorage",
    np.dtype("uint8"): "ByteStorage",
    np.dtype("bool"): "BoolStorage",
}


@dataclass(frozen=True)
class RawTensor:
    """A tensor as a view (offset, size, stride in elements) into the named storage."""

    storage: str
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


@dataclass(frozen=True)
class _StorageRef:
    key: str
    type_name: str
    numel: int


@contextlib.contextmanager
def _fake_torch() -> Iterator[types.ModuleType]:
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args: object) -> None: ...

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2  # type: ignore[attr-defined]
    for name in STORAGE_NAMES.values():
        setattr(torch, name, type(name, (), {"__module__": "torch", "__qualname__": name}))
    torch._utils = utils  # type: ignore[attr-defined]
    saved = {k: sys.modules.get(k) for k in ("torch", "torch._utils")}
    sys.modules["torch"], sys.modules["torch._utils"] = torch, utils
    try:
        yield torch
    finally:
        for key, value in saved.items():
            if value is None:
                sys.modules.pop(key, None)
            else:
                sys.modules[key] = value


class _Tensor:
    def __init__(self, ref: _StorageRef, spec: RawTensor, torch: types.ModuleType) -> None:
        self.ref, self.spec, self.torch = ref, spec, torch

    def __reduce__(self) -> tuple[object, ...]:
        s = self.spec
        rebuild = self.torch._utils._rebuild_tensor_v2
        return rebuild, (self.ref, s.offset, s.size, s.stride, False, collections.OrderedDict())


def _state_pickle(
    tensors: dict[str, RawTensor], storages: dict[str, np.ndarray], torch: types.ModuleType, legacy: bool
) -> bytes:
    refs = {k: _StorageRef(k, STORAGE_NAMES[a.dtype], a.size) for k, a in storages.items()}

    class Writer(pickle.Pickler):
        def persistent_id(self, obj: object) -> object:
            if isinstance(obj, _StorageRef):
                pid = ("storage", getattr(torch, obj.type_name), obj.key, "cpu", obj.numel)
                return (*pid, None) if legacy else pid
            return None

    buffer = io.BytesIO()
    state = collections.OrderedDict((name, _Tensor(refs[t.storage], t, torch)) for name, t in tensors.items())
    Writer(buffer, protocol=2).dump(state)
    return buffer.getvalue()


def as_raw(arrays: dict[str, np.ndarray]) -> tuple[dict[str, RawTensor], dict[str, np.ndarray]]:
    """Each array in its own contiguous storage."""
    tensors, storages = {}, {}
    for index, (name, given) in enumerate(arrays.items()):
        key = str(1000 + index)
        array = np.ascontiguousarray(given)
        storages[key] = array.reshape(-1)
        strides = tuple(s // array.itemsize for s in array.strides)
        tensors[name] = RawTensor(key, 0, tuple(array.shape), strides)
    return tensors, storages


def write_legacy(path: Path, tensors: dict[str, RawTensor], storages: dict[str, np.ndarray]) -> None:
    with _fake_torch() as torch:
        body = _state_pickle(tensors, storages, torch, legacy=True)
    parts = [
        pickle.dumps(LEGACY_MAGIC_NUMBER, protocol=2),
        pickle.dumps(LEGACY_PROTOCOL_VERSION, protocol=2),
        pickle.dumps({"protocol_version": 1001, "little_endian": True, "type_sizes": {"int": 4}}, protocol=2),
        body,
        pickle.dumps(list(storages), protocol=2),
    ]
    for array in storages.values():
        parts.append(struct.pack("<q", array.size) + array.astype(array.dtype.newbyteorder("<")).tobytes())
    path.write_bytes(b"".join(parts))


def write_zip(path: Path, tensors: dict[str, RawTensor], storages: dict[str, np.ndarray]) -> None:
    with _fake_torch() as torch:
        body = _state_pickle(tensors, storages, torch, legacy=False)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", body)
        archive.writestr("archive/byteorder", "little")
        for key, array in storages.items():
            archive.writestr(f"archive/data/{key}", array.tobytes())
        archive.writestr("archive/version", "3\n")


def legacy_with_payload(path: Path, payload: bytes, *, position: int = 3) -> None:
    """A legacy checkpoint whose ``position``-th pickle (0 = magic number, 3 = state dict) is ``payload``."""
    parts = [
        pickle.dumps(LEGACY_MAGIC_NUMBER, protocol=2),
        pickle.dumps(LEGACY_PROTOCOL_VERSION, protocol=2),
        pickle.dumps({"little_endian": True}, protocol=2),
        pickle.dumps(collections.OrderedDict(), protocol=2),
        pickle.dumps([], protocol=2),
    ]
    parts[position] = payload
    path.write_bytes(b"".join(parts))
