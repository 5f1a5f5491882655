"""Example images sent by the page: checked, kept as files in a private temporary folder, named by their hash.

A query names an upload by that hash (64 hex digits), never by a path, so the next page of results, a
Back button or a combination with words reuses the same file; the oldest are removed past
MAX_UPLOADS, and the folder when the server stops.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

from .. import imaging
from ..errors import ImageError

MAX_UPLOADS = 32
DEFAULT_MAX_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_PIXELS = 40_000_000
_KEY = re.compile(r"[0-9a-f]{64}")


class UploadTooLarge(ImageError):
    pass


def check_image(data: bytes, *, max_pixels: int) -> None:
    """Refuse what is not an image, or is larger than the cap (checked before the pixels are decoded)."""
    if not data:
        raise ImageError("the uploaded file is empty")
    try:
        imaging.decode(data, max_pixels=max_pixels, draft=256)
    except ImageError as e:
        if e.reason.startswith("too large"):
            raise UploadTooLarge(f"the uploaded image is {e.reason}") from None
        raise ImageError(f"the uploaded file is {e.reason}" if e.reason.startswith("not")
                         else f"the uploaded image cannot be used: {e.reason}") from None


class UploadStore:
    def __init__(self, directory: Path | None = None, *, max_items: int = MAX_UPLOADS):
        self._given = directory
        self._dir: Path | None = None
        self.max_items = max_items
        self._items: OrderedDict[str, Path] = OrderedDict()
        self._lock = threading.Lock()

    def _directory(self) -> Path:
        if self._dir is None:
            if self._given is not None:
                self._given.mkdir(parents=True, exist_ok=True)
                self._dir = Path(tempfile.mkdtemp(prefix="uploads-", dir=self._given))
            else:
                self._dir = Path(tempfile.mkdtemp(prefix="clipsearch-uploads-"))  # mode 0700
        return self._dir

    def put(self, data: bytes) -> str:
        key = hashlib.sha256(data).hexdigest()
        with self._lock:
            if key in self._items and self._items[key].exists():
                self._items.move_to_end(key)
                return key
            path = self._directory() / key
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            self._items[key] = path
            while len(self._items) > self.max_items:
                _, old = self._items.popitem(last=False)
                old.unlink(missing_ok=True)
        return key

    def path(self, key: str) -> str | None:
        """The file of an upload still kept, or None."""
        if not isinstance(key, str) or not _KEY.fullmatch(key):
            return None
        with self._lock:
            p = self._items.get(key)
            if p is None:
                return None
            self._items.move_to_end(key)
            return str(p)

    def close(self) -> None:
        with self._lock:
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
            self._items.clear()
