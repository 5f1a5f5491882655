"""From an image id to bytes the server may send: the only way the web page reaches a file.

An id is a database id (a live embedding); its files come from the catalog, never from the client. A
file is used only when its real path (symlinks resolved) is inside one of the library's roots (real
paths too, compared with a trailing separator), it opens without following a final symlink as a
regular file, and it is the file that was indexed: its size, mtime and inode are those the catalog
recorded, or else its bytes hash to the indexed content. Anything else is refused.
"""

from __future__ import annotations

import io
import logging
import os
import re
import stat
import struct
import warnings
from dataclasses import dataclass
from datetime import datetime

from .. import imaging
from ..errors import NotFoundError

logger = logging.getLogger(__name__)

MAX_ID = 2 ** 63 - 1
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_ID = re.compile(r"[1-9][0-9]{0,18}")
_HEX = re.compile(r"[0-9a-f]{8,128}")
# what a browser is told a file is: from the decoder's verdict, never from the name or the client
CONTENT_TYPES = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif",
                 "BMP": "image/bmp", "TIFF": "image/tiff", "HEIF": "image/heif", "AVIF": "image/avif",
                 "MPO": "image/jpeg"}


def _pil_errors() -> tuple[type[BaseException], ...]:
    from PIL import Image

    # what Pillow raises on hostile headers (the same classes imaging.decode turns into a reason)
    return (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError, ZeroDivisionError, KeyError,
            AttributeError, struct.error, RuntimeError, MemoryError, Image.DecompressionBombError)


class RefusedError(NotFoundError):
    """The file exists but may not be served (outside the roots, not a regular file): answered 403."""


def parse_id(text: str) -> int:
    """A path segment to an image id; anything that is not a plain positive integer is not found."""
    if not _ID.fullmatch(text) or int(text) > MAX_ID:
        raise NotFoundError("no such image")
    return int(text)


@dataclass(frozen=True)
class LiveFile:
    row: dict  # the catalog's row: path, size, mtime_ns, ino, content_hash, width, height, ...
    real: bytes  # its real path, inside a root

    @property
    def content_hash(self) -> str:
        return self.row["content_hash"]


def root_realpaths(catalog) -> list[bytes]:
    return [os.path.realpath(r["path"]).rstrip(b"/") + b"/" for r in catalog.roots()]


def _inside(real: bytes, roots: list[bytes]) -> bool:
    return any(real.startswith(root) for root in roots)


def locate(catalog, image_id: int) -> list[LiveFile]:
    """The image's live files that pass the path checks, best first; NotFoundError/RefusedError if none."""
    rows = catalog.image_files(image_id)
    if not rows:
        raise NotFoundError(f"no indexed image with id {image_id}")
    roots = root_realpaths(catalog)
    out, refused = [], False
    for row in rows:
        if not isinstance(row["content_hash"], str) or not _HEX.fullmatch(row["content_hash"]):
            continue
        real = os.path.realpath(row["path"])
        if not _inside(real, roots):
            refused = True
            continue
        try:
            st = os.lstat(real)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode):
            refused = True
            continue
        out.append(LiveFile(row, real))
    if not out:
        if refused:
            raise RefusedError(f"image {image_id} is not served: its file is not a regular file inside the "
                               f"library's folders")
        raise NotFoundError(f"the file of image {image_id} is gone; run `clipsearch index` to update the library")
    return out


def unchanged(live: LiveFile) -> bool:
    """Whether the file still has the size, mtime and inode the catalog recorded (no read)."""
    try:
        st = os.stat(live.real)
    except OSError:
        return False
    return (st.st_size, st.st_mtime_ns, st.st_ino) == (live.row["size"], live.row["mtime_ns"], live.row["ino"])


def read_verified(live: LiveFile, *, max_bytes: int = imaging.DEFAULT_MAX_BYTES) -> bytes:
    """The bytes of the indexed file, checked to be what was indexed."""
    try:
        fd = os.open(live.real, _OPEN_FLAGS)
    except OSError:
        raise NotFoundError("the image's file cannot be opened") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise RefusedError("the image's file is not a regular file")
        if st.st_size > max_bytes:
            raise NotFoundError("the image's file is too large to serve")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError:
        raise NotFoundError("the image's file cannot be read") from None
    finally:
        os.close(fd)
    row = live.row
    same = (st.st_size, st.st_mtime_ns, st.st_ino) == (row["size"], row["mtime_ns"], row["ino"]) \
        and len(data) == st.st_size
    if not same and imaging.content_hash(data) != live.content_hash:
        raise NotFoundError("the image's file changed since it was indexed; run `clipsearch index` to update "
                            "the library")
    return data


def first_readable(catalog, image_id: int, *, max_bytes: int = imaging.DEFAULT_MAX_BYTES) -> tuple[LiveFile, bytes]:
    """The first of the image's files that passes every check, with its bytes."""
    error: NotFoundError | None = None
    for live in locate(catalog, image_id):
        try:
            return live, read_verified(live, max_bytes=max_bytes)
        except NotFoundError as e:
            error = error or e
    raise error


def sniff_format(data: bytes) -> str | None:
    """The image format the decoder recognises in these bytes (header only), or None."""
    from PIL import Image

    header_errors = _pil_errors()
    imaging.register_plugins()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as im:
                return im.format
    except header_errors:  # any failure to identify means "not an image we serve"
        return None


_EXIF_DATE = re.compile(r"(\d{4}):(\d{2}):(\d{2})[ T](\d{2}):(\d{2}):(\d{2})")


def photo_facts(live: LiveFile) -> dict:
    """What the file says about itself, from its header: format, the date it was taken (EXIF), and whether
    its EXIF orientation turns it by 90 degrees (then it is shown with width and height swapped)."""
    from PIL import Image

    header_errors = _pil_errors()
    facts: dict = {"format": None, "taken": None, "turned": False}
    try:
        fd = os.open(live.real, _OPEN_FLAGS)
    except OSError:
        return facts
    try:
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                return facts
            imaging.register_plugins()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with Image.open(f) as im:
                    facts["format"] = im.format
                    exif = im.getexif()
                    facts["turned"] = exif.get(0x0112) in (5, 6, 7, 8)  # shown rotated by 90 degrees
                    raw = exif.get_ifd(0x8769).get(36867) or exif.get_ifd(0x8769).get(36868) or exif.get(306)
        facts["taken"] = _exif_date(raw)
    except header_errors as e:  # a damaged header only loses the facts, never the request
        logger.debug("no facts from %r: %s", live.real, e)
    return facts


def _exif_date(raw) -> str | None:
    if not isinstance(raw, str):
        return None
    m = _EXIF_DATE.match(raw.strip())
    if not m:
        return None
    try:
        return datetime(*map(int, m.groups())).isoformat()
    except ValueError:
        return None
