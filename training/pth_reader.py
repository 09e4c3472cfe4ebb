"""Read PyTorch checkpoints into numpy arrays without PyTorch and without trusting the pickle.

Both layouts ``torch.save`` has produced are understood:

* **legacy** (before torch 1.6): a run of pickles — magic number, protocol version, system info, the
  object pickle (tensors point at storages through ``persistent_load`` ids), the list of storage keys —
  then each storage's raw bytes in that order, each prefixed by its 8-byte little-endian element count;
* **zip**: ``<archive>/data.pkl`` plus one ``<archive>/data/<key>`` entry of raw bytes per storage.

The object pickle is read by :class:`_RestrictedUnpickler`, whose ``find_class`` hands out inert
placeholders for the handful of names a state dict needs (``collections.OrderedDict``, the tensor
rebuild functions, the ``torch.*Storage`` types) and raises :class:`UnsafeCheckpointError` for anything
else, so no function or class named by the file is ever imported or called.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

# torch storage type name → numpy dtype of one element ("BFloat16" is read as uint16, widened later).
STORAGE_DTYPES: dict[str, np.dtype[Any]] = {
    "DoubleStorage": np.dtype("<f8"),
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "BFloat16Storage": np.dtype("<u2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class CheckpointError(ValueError):
    """A checkpoint file cannot be read; the message names the file and says why."""


class UnsafeCheckpointError(CheckpointError):
    """The checkpoint's pickle names a global outside the small allow-list of a plain state dict."""


@dataclass(frozen=True)
class _StorageType:
    """Stands in for ``torch.FloatStorage`` & co. while unpickling."""

    name: str

    @property
    def dtype(self) -> np.dtype[Any]:
        return STORAGE_DTYPES[self.name]


@dataclass
class _Storage:
    """A storage referenced by the pickle; ``data`` is filled in once its bytes are read."""

    key: str
    dtype: np.dtype[Any]
    numel: int
    bfloat16: bool = False
    data: np.ndarray | None = None


@dataclass(frozen=True)
class _StorageView:
    """What a tensor points at: a whole storage, or (legacy layout) a window of ``numel`` elements of it."""

    base: _Storage
    offset: int = 0
    numel: int | None = None  # None: the whole storage


@dataclass(frozen=True)
class _TensorRef:
    """A tensor as the pickle describes it; materialised into numpy after all storages are read."""

    storage: _StorageView
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(  # noqa: PLR0917 (torch's own positional signature)
    storage: _StorageView,
    storage_offset: int,
    size: tuple[int, ...],
    stride: tuple[int, ...],
    requires_grad: bool = False,
    backward_hooks: object = None,
    metadata: object = None,
) -> _TensorRef:
    if not isinstance(storage, _StorageView):
        raise pickle.UnpicklingError("tensor rebuilt from something that is not a storage")
    return _TensorRef(
        storage, int(storage_offset), tuple(int(s) for s in size), tuple(int(s) for s in stride)
    )


def _rebuild_parameter(
    data: _TensorRef, requires_grad: bool = False, backward_hooks: object = None
) -> _TensorRef:
    return data


def _rebuild_parameter_with_state(
    data: _TensorRef, requires_grad: bool = False, backward_hooks: object = None, state: object = None
) -> _TensorRef:
    return data


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
}
_ALLOWED_GLOBALS.update({("torch", name): _StorageType(name) for name in STORAGE_DTYPES})


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the allow-listed globals; storages come back as :class:`_Storage` placeholders."""

    def __init__(self, file: IO[bytes], storages: dict[str, _Storage]) -> None:
        super().__init__(file)
        self._storages = storages

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafeCheckpointError(
                f"refusing to load {module}.{name}: only plain state dicts of tensors are accepted"
            ) from None

    def persistent_load(self, pid: Any) -> _StorageView:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.80}")
        storage_type, key, _location, numel = pid[1:5]
        view_metadata = pid[5] if len(pid) > 5 else None
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"storage {key!r} has no known storage type")
        key = str(key)
        storage = self._storages.get(key)
        if storage is None:
            storage = _Storage(
                key, storage_type.dtype, int(numel), bfloat16=storage_type.name == "BFloat16Storage"
            )
            self._storages[key] = storage
        if view_metadata is None:
            return _StorageView(storage)
        _view_key, view_offset, view_size = view_metadata
        return _StorageView(storage, int(view_offset), int(view_size))


def _load_plain_pickle(fh: IO[bytes]) -> Any:
    """One of the legacy header pickles: must not name any global at all."""
    return _RestrictedUnpickler(fh, {}).load()


def _storage_array(ref: _StorageView) -> np.ndarray:
    data = ref.base.data
    if data is None:
        raise CheckpointError(f"storage {ref.base.key!r} has no data")
    if ref.numel is None:
        return data
    if ref.offset < 0 or ref.offset + ref.numel > data.size:
        raise CheckpointError(f"storage view of {ref.base.key!r} lies outside its storage")
    return data[ref.offset : ref.offset + ref.numel]


def _materialise(name: str, ref: _TensorRef) -> np.ndarray:
    data = _storage_array(ref.storage)
    if len(ref.size) != len(ref.stride):
        raise CheckpointError(f"tensor {name!r}: size {ref.size} and stride {ref.stride} differ in rank")
    if any(s < 0 for s in ref.size) or any(s < 0 for s in ref.stride) or ref.offset < 0:
        raise CheckpointError(f"tensor {name!r}: negative size, stride or offset")
    if 0 in ref.size:
        out = np.zeros(ref.size, dtype=data.dtype)
    else:
        last = ref.offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride, strict=True))
        if last >= data.size:
            raise CheckpointError(
                f"tensor {name!r}: shape {ref.size} stride {ref.stride} offset {ref.offset} "
                f"reaches element {last} of a storage with {data.size}"
            )
        view = np.lib.stride_tricks.as_strided(
            data[ref.offset :],
            shape=ref.size,
            strides=tuple(s * data.itemsize for s in ref.stride),
            writeable=False,
        )
        out = np.array(view, copy=True, order="C")
    if ref.storage.base.bfloat16:
        out = (out.astype(np.uint32) << 16).view(np.float32)
    return out.astype(out.dtype.newbyteorder("="), copy=False)


def _state_dict_of(obj: Any) -> Mapping[str, Any]:
    """The state dict itself, or the one stored under a usual key of a training checkpoint."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"expected a state dict (a mapping), found {type(obj).__name__}")
    if not any(isinstance(v, _TensorRef) for v in obj.values()):
        for key in ("state_dict", "model_state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                return inner
    return obj


def _collect(obj: Any) -> dict[str, np.ndarray]:
    state = _state_dict_of(obj)
    arrays = {str(k): _materialise(str(k), v) for k, v in state.items() if isinstance(v, _TensorRef)}
    if not arrays:
        raise CheckpointError("the checkpoint holds no tensors")
    return arrays


def _read_exact(fh: IO[bytes], n: int, what: str) -> bytes:
    data = fh.read(n)
    if len(data) != n:
        raise CheckpointError(f"file is truncated: {what} needs {n} bytes, only {len(data)} left")
    return data


def _load_legacy(fh: IO[bytes]) -> dict[str, np.ndarray]:
    magic = _load_plain_pickle(fh)
    if magic != LEGACY_MAGIC_NUMBER:
        raise CheckpointError("not a PyTorch checkpoint (bad magic number)")
    protocol = _load_plain_pickle(fh)
    if protocol != LEGACY_PROTOCOL_VERSION:
        raise CheckpointError(f"unsupported legacy checkpoint protocol {protocol!r}")
    sys_info = _load_plain_pickle(fh)
    if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
        raise CheckpointError("big-endian checkpoints are not supported")
    storages: dict[str, _Storage] = {}
    obj = _RestrictedUnpickler(fh, storages).load()
    keys = _load_plain_pickle(fh)
    if not isinstance(keys, list):
        raise CheckpointError("storage key list is missing or malformed")
    for key in keys:
        storage = storages.get(str(key))
        if storage is None:
            raise CheckpointError(f"storage {key!r} is listed but never referenced")
        (numel,) = struct.unpack("<q", _read_exact(fh, 8, f"size of storage {key!r}"))
        if numel < 0:
            raise CheckpointError(f"storage {key!r} has a negative size")
        raw = _read_exact(fh, numel * storage.dtype.itemsize, f"storage {key!r} ({numel} elements)")
        storage.data = np.frombuffer(raw, dtype=storage.dtype)
    missing = sorted(k for k, s in storages.items() if s.data is None)
    if missing:
        raise CheckpointError(f"storages referenced but not stored: {missing[:5]}")
    return _collect(obj)


def _load_zip(path: Path) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
        if not pickles:
            raise CheckpointError("zip archive has no <name>/data.pkl: not a PyTorch checkpoint")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder_name = prefix + "byteorder"
        if byteorder_name in names and archive.read(byteorder_name).strip() not in (b"little", b""):
            raise CheckpointError("big-endian checkpoints are not supported")
        storages: dict[str, _Storage] = {}
        obj = _RestrictedUnpickler(io.BytesIO(archive.read(pickles[0])), storages).load()
        for key, storage in storages.items():
            entry = f"{prefix}data/{key}"
            if entry not in names:
                raise CheckpointError(f"storage {key!r} is missing from the archive ({entry})")
            raw = archive.read(entry)
            need = storage.numel * storage.dtype.itemsize
            if len(raw) < need:
                raise CheckpointError(
                    f"file is truncated: storage {key!r} needs {need} bytes, has {len(raw)}"
                )
            storage.data = np.frombuffer(raw[:need], dtype=storage.dtype)
    return _collect(obj)


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Read a ``torch.save``'d state dict (legacy or zip layout) as ``{name: array}``; errors name it."""
    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            return _load_zip(path)
        with path.open("rb") as fh:
            return _load_legacy(fh)
    except UnsafeCheckpointError as exc:
        raise UnsafeCheckpointError(f"{path}: {exc}") from None
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except EOFError:
        raise CheckpointError(f"{path}: file is truncated (pickle stream ended early)") from None
    except (
        pickle.UnpicklingError,
        zipfile.BadZipFile,
        struct.error,
        ValueError,
        TypeError,
        KeyError,
        IndexError,
        AttributeError,
    ) as exc:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint: {exc}") from None
