"""The files of a Qdrant Edge store beside its shards: metadata JSON, the alias file and write locks.

:mod:`indexer.store.edge` keeps the shards and the store's logic; this module owns how its small files
are written (atomically: temp + fsync + ``os.replace``), read (parsed once, read again when one
``stat`` shows the file changed) and locked (``flock``, released by the kernel if the holder dies).
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from indexer.store.base import CollectionBusy, StoreError

ALIASES_FILE = "aliases.json"
ALIASES_LOCK = "aliases.lock"


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temp file next to ``path``, fsync it, then ``os.replace`` it into place."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class JsonFiles:
    """JSON files parsed once and read again only when their inode, size or times change."""

    def __init__(self) -> None:
        self._texts: dict[Path, tuple[tuple[int, int, int, int], Any]] = {}  # path → (stat key, parsed)

    def read(self, path: Path) -> Any:
        """The file's JSON (a copy the caller may change); raises ``FileNotFoundError``, ``ValueError``.

        Parsing once matters: a collection's metadata carries its match calibration (~80 KB of base64),
        and every search reads the metadata (a deep copy costs ~15 µs, parsing it again ~250 µs).
        """
        try:
            st = os.stat(path)
        except FileNotFoundError:
            self._texts.pop(path, None)
            raise
        key = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        cached = self._texts.get(path)
        if cached is None or cached[0] != key:
            # Replaced between the stat and this read: the next stat differs from ``key`` and reads again.
            cached = (key, json.loads(path.read_text(encoding="utf-8")))
            self._texts[path] = cached
        return copy.deepcopy(cached[1])


def lock_for_write(lock_file: Path, name: str) -> int:
    """The descriptor holding an exclusive ``flock`` on ``lock_file``; :class:`CollectionBusy` if taken."""
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise CollectionBusy(
            f"collection {name!r} is being written by another process (lock {lock_file})"
        ) from None
    return fd


class AliasFile:
    """``<root>/aliases.json`` (alias → collection), changed under ``<root>/aliases.lock``."""

    def __init__(self, root: Path, collections_dir: Path, files: JsonFiles) -> None:
        self.path = root / ALIASES_FILE
        self.lock_path = root / ALIASES_LOCK
        self.root = root
        self.collections_dir = collections_dir
        self.files = files

    def read(self) -> dict[str, str]:
        # Two looks: a folder that comes back (remounted) between a failed read and the folder check is
        # read again before its alias counts as unset.
        for look in (1, 2):
            try:
                data = self.files.read(self.path)
                break
            except FileNotFoundError:
                if not self.collections_dir.is_dir():  # the folder itself went away (unmounted, moved)
                    raise StoreError(f"the Qdrant Edge folder {self.root} is not there any more") from None
                if look == 2:
                    return {}
            except (OSError, ValueError) as exc:
                raise StoreError(f"{self.path}: unreadable alias file: {exc}") from None
        return {str(k): str(v) for k, v in dict(data).items()}

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, str]]:
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield self.read()
        finally:
            os.close(fd)

    def set(self, alias: str, collection: str) -> str | None:
        """Point ``alias`` at ``collection``; the collection it pointed at before."""
        with self._locked() as current:
            previous = current.get(alias)
            current[alias] = collection
            write_json_atomic(self.path, current)
        return previous

    def delete(self, alias: str) -> None:
        with self._locked() as current:
            if current.pop(alias, None) is not None:
                write_json_atomic(self.path, current)
