"""Where recordings are written: a small interface and a local directory.

The recorder writes one file per recording through ``open_write`` and never
touches paths itself, so that an object store can be added behind
:class:`RecordingStorage` without changing it. The HTTP face serves a file
from ``local_path`` (with range requests) when the storage has one.

The quota counts the bytes of every file in the storage: a write that would
go past it fails as a full disk does (``OSError`` with ``ENOSPC``), so the
recorder handles both the same way.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path
from typing import BinaryIO, Protocol

KEY = re.compile(r"[A-Za-z0-9_-]{1,64}\.(webm|mp4)")


class QuotaExceeded(OSError):
    def __init__(self, quota: int) -> None:
        super().__init__(errno.ENOSPC, f"recordings quota of {quota} bytes reached")


class RecordingStorage(Protocol):
    def open_write(self, key: str) -> BinaryIO: ...
    def size(self, key: str) -> int | None: ...
    def local_path(self, key: str) -> Path | None: ...
    def delete(self, key: str) -> bool: ...
    def usage(self) -> int: ...


class LocalDirectoryStorage:
    """Files in one directory (created when missing); ``quota`` bytes, 0 = none."""

    def __init__(self, directory: str | os.PathLike[str], quota: int = 0) -> None:
        self.directory = Path(directory)
        self.quota = quota

    def _path(self, key: str) -> Path:
        if not KEY.fullmatch(key):
            raise ValueError(f"bad recording key {key!r}")
        return self.directory / key

    def open_write(self, key: str) -> BinaryIO:
        self.directory.mkdir(parents=True, exist_ok=True)
        raw = open(self._path(key), "xb")  # noqa: SIM115 - owned by the returned writer
        if not self.quota:
            return raw
        return QuotaWriter(raw, self.quota, self.usage())  # type: ignore[return-value]

    def size(self, key: str) -> int | None:
        try:
            return self._path(key).stat().st_size
        except (FileNotFoundError, ValueError):
            return None

    def local_path(self, key: str) -> Path | None:
        path = self._path(key)
        return path if path.is_file() else None

    def delete(self, key: str) -> bool:
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            return False
        return True

    def usage(self) -> int:
        if not self.directory.is_dir():
            return 0
        return sum(p.stat().st_size for p in self.directory.iterdir() if p.is_file())


class QuotaWriter:
    """A file that refuses, as a full disk would, to grow the storage past its quota."""

    def __init__(self, raw: BinaryIO, quota: int, used_by_others: int) -> None:
        self.raw = raw
        self.quota = quota
        self.others = used_by_others

    def write(self, data: bytes) -> int:
        end = max(self.raw.tell() + len(data), self._size())
        if self.others + end > self.quota:
            raise QuotaExceeded(self.quota)
        return self.raw.write(data)

    def _size(self) -> int:
        return os.fstat(self.raw.fileno()).st_size

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.raw.seek(offset, whence)

    def tell(self) -> int:
        return self.raw.tell()

    def flush(self) -> None:
        self.raw.flush()

    def close(self) -> None:
        self.raw.close()

    @property
    def closed(self) -> bool:
        return self.raw.closed

    def __enter__(self) -> QuotaWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
