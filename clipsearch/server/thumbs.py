"""Thumbnails: made on demand from the indexed file (EXIF-rotated, at most SIZE px a side, WebP or JPEG),
cached on disk in the library directory under thumbs/, the oldest removed past a size cap.

A thumbnail is named by the content hash of its image, so it never goes stale: an image id's content
never changes (ids are not reused), and changed files get new ids when they are indexed again.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from pathlib import Path

from .. import imaging

logger = logging.getLogger(__name__)

SIZES = (256, 1024)  # the grid's tiles, the detail view
THUMB_VERSION = 1  # part of the ETag: bump when the rendering changes
DEFAULT_CACHE_BYTES = 1 << 30
_HEX = re.compile(r"[0-9a-f]{8,128}")


def thumbnail_format() -> tuple[str, str]:
    """(Pillow format, MIME type): WebP when this Pillow can write it, else JPEG."""
    from PIL import features

    return ("WEBP", "image/webp") if features.check("webp") else ("JPEG", "image/jpeg")


def render(data: bytes, size: int, *, max_pixels: int, fmt: str) -> bytes:
    """Encoded thumbnail of an image file's bytes (raises ImageError when they do not decode)."""
    import io

    from PIL import Image

    rgb, _ = imaging.decode(data, max_pixels=max_pixels, draft=size)
    rgb.thumbnail((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0)
    out = io.BytesIO()
    if fmt == "WEBP":
        rgb.save(out, "WEBP", quality=80, method=4)
    else:
        rgb.save(out, "JPEG", quality=85, optimize=True)
    return out.getvalue()


class ThumbnailStore:
    """The on-disk cache (None directory or a directory that cannot be written: no caching)."""

    def __init__(self, directory: Path | None, *, max_bytes: int = DEFAULT_CACHE_BYTES):
        self.directory = Path(directory) if directory is not None else None
        self.max_bytes = max_bytes
        self.format, self.media_type = thumbnail_format()
        self.ext = "webp" if self.format == "WEBP" else "jpg"
        self._lock = threading.Lock()
        self._total: int | None = None  # bytes on disk, counted on the first write
        self._disabled = directory is None or max_bytes <= 0

    def etag(self, content_hash: str, size: int) -> str:
        return f'"{content_hash}-{size}-{self.ext}-v{THUMB_VERSION}"'

    def _path(self, content_hash: str, size: int) -> Path:
        if not _HEX.fullmatch(content_hash) or size not in SIZES:
            raise ValueError("bad thumbnail key")
        return self.directory / f"{size}" / content_hash[:2] / f"{content_hash}.{self.ext}"

    def get(self, content_hash: str, size: int) -> bytes | None:
        if self._disabled:
            return None
        path = self._path(content_hash, size)
        try:
            data = path.read_bytes()
        except OSError:
            return None
        try:
            os.utime(path)  # recently used: kept longest
        except OSError:
            pass
        return data

    def put(self, content_hash: str, size: int, data: bytes) -> None:
        if self._disabled:
            return
        path = self._path(content_hash, size)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except OSError as e:
            logger.warning("thumbnails are not cached: cannot write %s (%s)", path.parent, e.strerror or e)
            self._disabled = True
            try:
                tmp.unlink()
            except OSError:
                pass
            return
        with self._lock:
            if self._total is None:
                self._total = self._scan_total()
            else:
                self._total += len(data)
            if self._total > self.max_bytes:
                self._evict()

    def _files(self) -> list[tuple[float, int, str]]:
        out = []
        for dirpath, _, names in os.walk(self.directory):
            for name in names:
                p = os.path.join(dirpath, name)
                try:
                    st = os.stat(p)
                except OSError:
                    continue
                out.append((st.st_mtime, st.st_size, p))
        return out

    def _scan_total(self) -> int:
        return sum(size for _, size, _ in self._files())

    def _evict(self) -> None:
        """Remove the least recently used thumbnails until the cache is at 90 % of its cap."""
        files = sorted(self._files())
        total = sum(size for _, size, _ in files)
        target = int(self.max_bytes * 0.9)
        for _, size, p in files:
            if total <= target:
                break
            try:
                os.unlink(p)
                total -= size
            except OSError:
                pass
        self._total = total

    @property
    def bytes_on_disk(self) -> int:
        with self._lock:
            if self._total is None and not self._disabled and self.directory is not None and self.directory.exists():
                self._total = self._scan_total()
            return self._total or 0
