"""Seeing and pruning what a library holds: list indexed files (and why some failed), forget a root,
and tell which roots are offline (an unmounted disk: reliability case 34).

    list_files(lib.catalog, failed=True)     # [FileEntry(path, status="failed", reason=...)]
    forget(lib, "~/Old photos")              # ForgetReport(root, files, seq)
    offline_roots(lib.catalog)               # ["/media/usb/photos"]
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator, Sequence

from ..errors import NotFoundError


@dataclass
class FileEntry:
    path: str
    status: str  # ok | failed
    reason: str | None  # why a failed file was skipped
    id: int | None  # its embedding (content) id
    size: int | None
    width: int | None
    height: int | None
    offline: bool = False  # under a root that is offline now

    def to_dict(self) -> dict:
        return {"path": self.path, "status": self.status, "reason": self.reason, "id": self.id, "size": self.size,
                "width": self.width, "height": self.height, "offline": self.offline}


@dataclass
class ForgetReport:
    root: str
    files: int  # file rows removed (failed ones included)
    seq: int

    def to_dict(self) -> dict:
        return {"root": self.root, "files": self.files, "seq": self.seq}


def _root_bytes(root) -> bytes:
    return os.fsencode(os.path.abspath(os.path.expanduser(os.fspath(root))))


def is_offline(root: bytes) -> bool:
    """A known root is offline when its directory is gone, unreadable, or an empty directory (a mount point
    with nothing mounted). The caller asks only about roots that have files."""
    try:
        with os.scandir(root) as it:
            return next(it, None) is None
    except OSError:
        return True


def offline_roots(catalog) -> list[str]:
    """Known roots that have indexed files but cannot be seen now."""
    out = []
    for r in catalog.roots():
        path = r["path"]
        if is_offline(path) and catalog.count_files_under(path, ("ok", "failed")):
            out.append(os.fsdecode(path))
    return out


def offline_prefixes(catalog) -> tuple[bytes, ...]:
    return tuple(os.fsencode(p).rstrip(b"/") + b"/" for p in offline_roots(catalog))


def list_files(catalog, *, root=None, failed: bool = False) -> Iterator[FileEntry]:
    """The library's files in path order: ok and failed ones (only failed with `failed=True`), optionally
    under one folder; those under an offline root are marked offline."""
    offline = offline_prefixes(catalog)
    statuses: Sequence[str] = ("failed",) if failed else ("ok", "failed")
    for row in catalog.list_files(root=None if root is None else _root_bytes(root), statuses=statuses):
        yield FileEntry(path=os.fsdecode(row["path"]), status=row["status"], reason=row["error"],
                        id=row["embedding_id"], size=row["size"], width=row["width"], height=row["height"],
                        offline=bool(offline) and row["path"].startswith(offline))


def offline_flags(paths: Sequence[str], catalog) -> list[bool]:
    """For search results' paths: whether each lies under a root that is offline now."""
    offline = offline_prefixes(catalog)
    if not offline:
        return [False] * len(paths)
    return [os.fsencode(p).startswith(offline) for p in paths]


def forget(lib, root) -> ForgetReport:
    """Remove a root and all its files from the library (a Library: takes the writer lock). Vectors no
    other file uses leave the search cache, which is caught up and published before the lock is released;
    the vectors stay in the database, so indexing the folder again needs no model run."""
    root_b = _root_bytes(root)
    known = [r["path"] for r in lib.catalog.roots()]
    if root_b not in known:
        names = ", ".join(os.fsdecode(p) for p in known) or "none"
        raise NotFoundError(f"{os.fsdecode(root_b)} is not a folder of this library (its folders: {names}); "
                            f"see `clipsearch status`")
    lib.lock.acquire()
    try:
        files, seq = lib.catalog.forget_root(root_b)
        if lib.dim is not None:
            index = lib.vector_index()  # caught up: the forgotten vectors are out
            lib.cache.publish(index)
    finally:
        lib.lock.release()
    return ForgetReport(os.fsdecode(root_b), files, seq)
