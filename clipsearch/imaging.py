"""Finding image files, reading them once, fingerprinting and decoding them safely to RGB.

Nothing here touches the catalog or the model. Failures of one file raise ImageError with a
one-line reason; the indexer records it and goes on.
"""

from __future__ import annotations

import functools
import hashlib
import io
import itertools
import os
import stat
import warnings
from dataclasses import dataclass, field
from typing import Iterator

from ._sync import SharedExclusiveLock
from .errors import ImageError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff",
                              ".heic", ".heif", ".avif"})
# NAS and OS bookkeeping folders full of thumbnails or deleted files (hidden names are skipped anyway)
JUNK_DIRS = frozenset({b"@eaDir", b"#recycle", b"#snapshot", b"$RECYCLE.BIN", b"System Volume Information",
                       b"lost+found"})
HEIF_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"})
AVIF_BRANDS = frozenset({b"avif", b"avis"})
DEFAULT_MAX_PIXELS = 100_000_000  # a 100-megapixel image decodes to ~300 MB of RGB
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
_plugins_registered = False


@dataclass(frozen=True)
class Entry:
    """A regular file found by the walk, with what change detection needs."""

    path: bytes
    size: int
    mtime_ns: int
    ino: int
    ctime_ns: int | None = None  # None: unknown, not compared
    follow: bool = False  # reached through a symlink (--follow-symlinks): open it following links


@dataclass
class FileChangedError(ImageError):
    """The file changed (or vanished) between the walk and the read: not a property of the file, retry later."""

    def __init__(self, reason: str, *, vanished: bool = False):
        super().__init__(reason)
        self.vanished = vanished


@dataclass
class WalkErrors:
    """Directories the walk could not read: their subtrees are incomplete, so nothing is swept."""

    errors: list[tuple[bytes, str]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.errors)


def is_image_name(name: bytes) -> bool:
    dot = name.rfind(b".")
    return dot > 0 and os.fsdecode(name[dot:]).lower() in IMAGE_EXTENSIONS


SORT_LIMIT = 4096


def _scan(d: bytes, errors: WalkErrors) -> Iterator[os.DirEntry]:
    """The entries of directory `d`: sorted by name when there are fewer than SORT_LIMIT, otherwise streamed
    in the file system's order (a flat folder of a million files must not be held in memory: 490 MB measured).
    A directory that cannot be opened or read to the end is recorded, so its subtree is never swept."""
    try:
        it = os.scandir(d)
    except OSError as e:
        errors.errors.append((d, e.strerror or str(e)))
        return
    with it:
        try:
            head = list(itertools.islice(it, SORT_LIMIT))
            if len(head) < SORT_LIMIT:
                head.sort(key=lambda e: e.name)
                yield from head
                return
            yield from head
            del head
            yield from it
        except OSError as e:
            errors.errors.append((d, e.strerror or str(e)))


def walk(root: bytes, errors: WalkErrors, *, include_hidden: bool = False,
         follow_symlinks: bool = False) -> Iterator[Entry]:
    """Depth-first, sorted (up to SORT_LIMIT entries per folder), regular image files only. Symlinks are not followed (so no loops), unless
    `follow_symlinks`: then every directory and file is visited once by (st_dev, st_ino), so loops end and
    a file reachable by several paths is indexed once (under the first path in walk order)."""
    follow = follow_symlinks
    if follow:
        try:
            st = os.stat(root)
        except OSError as e:
            errors.errors.append((root, e.strerror or str(e)))
            return
        seen_dirs = {(st.st_dev, st.st_ino)}
        seen_files: set[tuple[int, int]] = set()
    stack = [root]
    while stack:
        d = stack.pop()
        entries = _scan(d, errors)
        subdirs = []
        for e in entries:
            if not include_hidden and e.name.startswith(b"."):
                continue
            try:
                is_dir = e.is_dir(follow_symlinks=follow)
                if is_dir and not follow:  # no stat needed: a directory is not a link here
                    if e.name not in JUNK_DIRS:
                        subdirs.append(e.path)
                    continue
                if not is_dir and not is_image_name(e.name):
                    continue
                st = e.stat(follow_symlinks=follow)
            except OSError as err:
                if follow and (isinstance(err, FileNotFoundError) or err.errno == getattr(os, "ELOOP", 40)):
                    continue  # a dangling link, or a link to itself
                errors.errors.append((e.path, err.strerror or str(err)))
                continue
            if is_dir:  # following links: each directory once
                key = (st.st_dev, st.st_ino)
                if e.name not in JUNK_DIRS and key not in seen_dirs:
                    seen_dirs.add(key)
                    subdirs.append(e.path)
            elif stat.S_ISREG(st.st_mode):
                if follow:
                    key = (st.st_dev, st.st_ino)
                    if key in seen_files:
                        continue
                    seen_files.add(key)
                yield Entry(e.path, st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns, follow=follow and e.is_symlink())
        stack.extend(reversed(subdirs))


def read_file(entry: Entry, *, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """One read of a regular file's bytes; the file must not change while it is read."""
    if entry.size > max_bytes:
        raise ImageError(f"file is {entry.size / 1e6:.0f} MB, over the {max_bytes / 1e6:.0f} MB limit")
    try:
        fd = os.open(entry.path, os.O_RDONLY | os.O_NONBLOCK | (0 if entry.follow else getattr(os, "O_NOFOLLOW", 0)))
    except FileNotFoundError:
        raise FileChangedError("vanished: deleted after the folder was read", vanished=True) from None
    except OSError as e:
        raise ImageError(f"cannot open: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ImageError("not a regular file")
        if (st.st_size, st.st_mtime_ns, st.st_ino) != (entry.size, entry.mtime_ns, entry.ino):
            raise FileChangedError("changed after the folder was read; it will be indexed on the next run")
        chunks = []
        remaining = max_bytes + 1
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 1 << 22))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        data = b"".join(chunks)
        after = os.fstat(fd)
    except OSError as e:
        raise ImageError(f"cannot read: {e.strerror or e}") from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise ImageError(f"file is over the {max_bytes / 1e6:.0f} MB limit")
    if (after.st_size, after.st_mtime_ns) != (st.st_size, st.st_mtime_ns) or len(data) != after.st_size:
        raise FileChangedError("file changed while it was read; it will be indexed on the next run")
    return data


def content_hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=20).hexdigest()


# Pillow's LOAD_TRUNCATED_IMAGES is process-wide: every decode holds the shared side, and the --allow-truncated
# retry, which flips the switch, the exclusive side, so no other decode runs while it is flipped
_decode_lock = SharedExclusiveLock()


def decode(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, draft: int | None = None,
           allow_truncated: bool = False):
    """Bytes to an RGB PIL image: pixel limit before decoding, JPEG draft, EXIF orientation, modes.

    `draft` asks JPEG decoding to scale down in the DCT domain while keeping both sides >= draft.
    `allow_truncated` decodes a truncated file as far as it goes (the missing part grey) instead of
    refusing it; the image then has info["truncated"] = True so the caller can warn.
    """
    try:
        _decode_lock.acquire_shared()  # (not `with .shared()`: ~0.8 us a decode against 2.7)
        try:
            return _decode(data, max_pixels=max_pixels, draft=draft)
        finally:
            _decode_lock.release_shared()
    except ImageError as e:
        if not (allow_truncated and e.reason.startswith("truncated")):
            raise
    from PIL import ImageFile

    with _decode_lock.exclusive():
        old = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = True
        try:
            rgb, size = _decode(data, max_pixels=max_pixels, draft=draft)
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = old
    rgb.info["truncated"] = True
    return rgb, size


def _decode(data: bytes, *, max_pixels: int, draft: int | None):
    from PIL import Image, ImageOps

    global _plugins_registered
    if not _plugins_registered:
        _plugins_registered = True
        register_plugins()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            w, h = im.size
            if w * h > max_pixels:
                raise ImageError(f"too large: {w}x{h} is {w * h / 1e6:.0f} MP > the {max_pixels / 1e6:.0f} MP limit")
            if draft and im.format == "JPEG":
                im.draft("RGB", (draft, draft))
            im.load()
            im = ImageOps.exif_transpose(im)
            rgb = to_rgb(im)
    except ImageError:
        raise
    except MemoryError:
        raise ImageError("out of memory while decoding") from None
    except Exception as e:
        pillows_own = (Image.UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning)
        if not (isinstance(e, pillows_own) or _raised_by_pillow(e)):
            raise  # a fault of ours, not of the file: let it surface
        raise _pillow_error(e, data) from None
    return rgb, (w, h)


class PillowDecodeError(ImageError):
    """Pillow refused the bytes; `cause` names the exception class it raised (tests check which ones occur)."""

    def __init__(self, reason: str, cause: str):
        super().__init__(reason)
        self.cause = cause


def _pillow_error(e: Exception, data: bytes) -> PillowDecodeError:
    """One-line reason for an exception raised inside Pillow's own code while it read these bytes.

    What Pillow 13 raises for damaged or hostile data (fuzzed JPEG/PNG/GIF/TIFF/WebP/AVIF files, the mutator
    of tests/test_reliability_inputs.py, which fails on any other class):
    UnidentifiedImageError (no plugin accepts them), DecompressionBombError and the DecompressionBombWarning
    made an error here (pixel counts past Pillow's limits), OSError from the decoders ("broken data stream",
    "image file is truncated", "Truncated File Read", "could not create decoder object"), SyntaxError from
    the parsers ("broken PNG file"), ValueError ("tile cannot extend outside image", "Invalid dimensions"),
    RuntimeError from libavif ("Failed to decode image"), TypeError from a nonsense TIFF tile offset.
    Any exception raised inside Pillow is the file's fault; its class is kept in `cause`.
    """
    from PIL import Image

    cause = type(e).__name__
    if isinstance(e, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return PillowDecodeError(f"too large: decompression bomb ({e})", cause)
    if isinstance(e, Image.UnidentifiedImageError):
        return PillowDecodeError(_unidentified(data), cause)
    message = " ".join(str(e).split())[:200] or cause
    if "truncated" in message.lower():
        return PillowDecodeError(f"truncated: {message}", cause)
    return PillowDecodeError(f"cannot decode: {message}", cause)


def _raised_by_pillow(e: BaseException) -> bool:
    """Whether the innermost Python frame of `e`'s traceback is in Pillow (or its HEIF plugin)."""
    tb = e.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(_pillow_dirs())


@functools.cache
def _pillow_dirs() -> tuple[str, ...]:
    import importlib.util

    dirs = []
    for name in ("PIL", "pillow_heif"):
        spec = importlib.util.find_spec(name)
        for loc in (spec.submodule_search_locations or []) if spec else []:
            dirs.append(os.path.join(os.path.abspath(loc), ""))
    return tuple(dirs)


def _unidentified(data: bytes) -> str:
    """Why Pillow could not identify these bytes, naming a missing plugin when the container says which."""
    if len(data) >= 12 and data[4:8] == b"ftyp":
        brands = {data[8:12]} | {data[i:i + 4] for i in range(16, min(len(data), 64), 4)}
        from PIL import features

        if brands & AVIF_BRANDS:  # AVIF files name HEIF's brand mif1 too
            if not features.check("avif") and not _has_heif():
                return "AVIF support not installed: this Pillow was built without AVIF; pip install 'clipsearch[heif]'"
            return "not a readable image: a damaged HEIF/AVIF file"
        if brands & HEIF_BRANDS and not _has_heif():
            return "HEIC/HEIF support not installed: pip install 'clipsearch[heif]'"
        if brands & (AVIF_BRANDS | HEIF_BRANDS):
            return "not a readable image: a damaged HEIF/AVIF file"
    if not data:
        return "not a readable image: the file is empty"
    return "not a readable image: Pillow cannot identify it"


def _has_heif() -> bool:
    import importlib.util

    return importlib.util.find_spec("pillow_heif") is not None


def register_plugins() -> None:
    """Let Pillow open HEIC/HEIF (and AVIF on old Pillow) when pillow-heif is installed."""
    try:
        import pillow_heif
    except ImportError:
        return
    pillow_heif.register_heif_opener()


def to_rgb(im):
    """Convert any Pillow mode to RGB the way a person would see it.

    16-bit and 32-bit greyscale are scaled to 8 bits (convert('RGB') would clip them to white);
    transparency is composited onto white.
    """
    from PIL import Image
    import numpy as np

    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if im.mode.startswith("I;16") or a.max(initial=0) > 255 else 255.0
        a = np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(a, "L").convert("RGB")
    if im.mode == "F":
        a = np.nan_to_num(np.asarray(im, dtype=np.float64))
        lo, hi = float(a.min(initial=0)), float(a.max(initial=1))
        a = ((a - lo) / (hi - lo or 1.0) * 255.0 + 0.5).astype(np.uint8)
        return Image.fromarray(a, "L").convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, im).convert("RGB")
    return im.convert("RGB")


# -- what search filters and sorts on: read from the header only ------------------------------------
META_VERSION = 1  # files.meta_version of a row whose header was read by this code
_EXIF_IFD = 0x8769
_DATETIME_ORIGINAL, _DATETIME_DIGITIZED = 36867, 36868


@dataclass(frozen=True)
class PhotoMeta:
    """The file format (lower case, filters.FORMATS spelling) and the photo's own date (EXIF
    DateTimeOriginal, else DateTimeDigitized: the camera's wall clock as seconds since the epoch, read
    as UTC), or None where the header does not say; size is the stored (width, height), as decode gives it."""

    format: str | None = None
    taken_at: float | None = None
    size: tuple[int, int] | None = None


def photo_meta(source) -> PhotoMeta:
    """Format and EXIF date of an image, from bytes or a binary file object; Pillow parses the header
    only (no pixels are decoded). Never raises: what cannot be read is None."""
    from PIL import Image

    from .filters import normalise_format, parse_exif_datetime

    global _plugins_registered
    if not _plugins_registered:
        _plugins_registered = True
        register_plugins()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source) as im:
                fmt = normalise_format(im.format) if im.format else None
                size = tuple(im.size)
                # PNG: only an eXIf chunk before the pixels (getexif() would decode the image to find a later one)
                raw = im.info.get("exif")
                if raw:
                    exif = Image.Exif()
                    exif.load(raw)
                elif im.format == "PNG":
                    exif = None
                else:
                    exif = im.getexif()
                taken = None
                if exif is not None:
                    ifd = exif.get_ifd(_EXIF_IFD)
                    for tag in (_DATETIME_ORIGINAL, _DATETIME_DIGITIZED):
                        taken = parse_exif_datetime(ifd.get(tag, exif.get(tag)))
                        if taken is not None:
                            break
    except Exception:  # a header Pillow cannot parse says nothing; the file's pixels are judged elsewhere
        return PhotoMeta()
    return PhotoMeta(fmt, taken, size)


def read_photo_meta(entry: Entry) -> PhotoMeta:
    """photo_meta of a file on disk, reading only as much of it as its header takes (for a library
    indexed before the header was recorded: its unchanged files are not read whole or decoded)."""
    try:
        fd = os.open(entry.path, os.O_RDONLY | os.O_NONBLOCK | (0 if entry.follow else getattr(os, "O_NOFOLLOW", 0)))
    except OSError:
        return PhotoMeta()
    with os.fdopen(fd, "rb") as f:
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return PhotoMeta()
        except OSError:
            return PhotoMeta()
        return photo_meta(f)
