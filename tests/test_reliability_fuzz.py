"""Fuzzed images (reliability.md case 25): mutated JPEG/PNG/GIF/TIFF/WebP/AVIF files decode or fail with one
of the reasons the decoder gives for the exception classes Pillow really raises; anything else fails."""

from __future__ import annotations

import io
import random
import struct
import time

import numpy as np
import pytest
from PIL import Image

from clipsearch import Library, imaging
from clipsearch.errors import ImageError

from reliability_helpers import FakeEncoder
from test_reliability_inputs import gif_header_only

def seed_corpus() -> list[bytes]:
    from PIL import features

    base = Image.fromarray(np.random.default_rng(3).integers(0, 256, (24, 24, 3), dtype=np.uint8))
    out = []
    for fmt in ("JPEG", "PNG", "GIF", "TIFF", "WEBP") + (("AVIF",) if features.check("avif") else ()):
        buf = io.BytesIO()
        base.save(buf, fmt)
        out.append(buf.getvalue())
    return out


def mutate(data: bytes, rng: random.Random) -> bytes:
    d = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(5)
        if op == 0 and d:
            for _ in range(rng.randint(1, 8)):
                d[rng.randrange(len(d))] = rng.randrange(256)
        elif op == 1:
            d = d[: rng.randrange(1, len(d) + 1)]
        elif op == 2:
            i = rng.randrange(len(d) + 1)
            d[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif op == 3 and len(d) > 8:  # big numbers where sizes live
            i = rng.randrange(len(d) - 4)
            d[i:i + 4] = rng.choice([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x7f\xff\xff\xff"])
        else:
            i, j = sorted(rng.randrange(len(d) + 1) for _ in range(2))
            d[i:i] = d[i:j]
    return bytes(d)


# What Pillow raises for these fuzzed files (measured: 243,000 of them, seeds 1-7 and 2026), and the reasons the
# decoder gives them (imaging._pillow_error). Any other class, or an exception that is not an ImageError, fails.
PILLOW_CLASSES = {"UnidentifiedImageError", "DecompressionBombError", "DecompressionBombWarning", "OSError",
                  "SyntaxError", "ValueError", "RuntimeError", "TypeError"}
REASONS = {"not a readable image", "truncated", "too large", "cannot decode",
           "HEIC/HEIF support not installed"}  # a damaged AVIF that lost its avif brand still names HEIF's mif1


def fuzz(n: int, seed: int) -> dict:
    rng = random.Random(seed)
    corpus = seed_corpus()
    classes: dict[tuple[str, str], int] = {}
    slowest = 0.0
    for k in range(n):
        data = mutate(corpus[k % len(corpus)], rng)
        t = time.perf_counter()
        try:
            imaging.decode(data, draft=32)
            cls = ("decoded", "")
        except imaging.PillowDecodeError as e:  # anything else, an ImageError of ours included, fails the test
            cls = (e.reason.split(":")[0], e.cause)
        classes[cls] = classes.get(cls, 0) + 1
        slowest = max(slowest, time.perf_counter() - t)
    return {"classes": classes, "slowest_s": slowest}


def check_fuzz_classes(out: dict) -> None:
    for reason, cause in out["classes"]:
        if reason != "decoded":
            assert reason in REASONS and cause in PILLOW_CLASSES, (reason, cause)
    decoded = out["classes"].get(("decoded", ""), 0)
    assert 0 < decoded < sum(out["classes"].values())  # the mutations hit both ways


def test_fuzz_corpus_only_known_failure_classes():
    out = fuzz(3000, seed=2026)
    print(f"\nfuzz 3000: {out}")
    check_fuzz_classes(out)
    assert out["slowest_s"] < 10


@pytest.mark.slow
def test_fuzz_corpus_40k():
    out = fuzz(40_000, seed=7)
    print(f"\nfuzz 40000: {out}")
    check_fuzz_classes(out)
    assert out["slowest_s"] < 10


def tiff_with_byte_strip_offsets() -> bytes:
    """An 8x8 TIFF whose StripOffsets tag is typed UNDEFINED: Pillow seeks to a bytes object (TypeError)."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 200, 30)).save(buf, "TIFF")
    d = bytearray(buf.getvalue())
    ifd = struct.unpack_from("<I", d, 4)[0]
    for i in range(struct.unpack_from("<H", d, ifd)[0]):
        at = ifd + 2 + 12 * i
        if struct.unpack_from("<H", d, at)[0] == 273:
            struct.pack_into("<H", d, at + 2, 7)
    return bytes(d)


def test_pillow_failures_become_reasons_and_ours_surface(monkeypatch):
    """An exception raised inside Pillow is the file's: a one-line reason naming what Pillow said. One raised
    by our own code is a bug: it is not dressed up as a bad file."""
    cases = {
        b"": ("not a readable image", "UnidentifiedImageError"),
        tiff_with_byte_strip_offsets(): ("cannot decode", "TypeError"),  # Pillow's own bug on a nonsense tag
        noise_png()[:600]: ("truncated", "OSError"),
        gif_header_only(65535, 65535): ("too large", "DecompressionBombError"),  # Pillow's limit, at open
        gif_header_only(200, 200): ("too large", None),  # our limit (max_pixels below), before decoding
    }
    for data, (reason, cause) in cases.items():
        with pytest.raises(ImageError) as e:
            imaging.decode(data, max_pixels=10_000)
        assert e.value.reason.split(":")[0] == reason and getattr(e.value, "cause", None) == cause, e.value.reason
        assert "\n" not in e.value.reason
    good = make_image_bytes()

    def broken_to_rgb(im):
        raise TypeError("a bug in our conversion")

    monkeypatch.setattr(imaging, "to_rgb", broken_to_rgb)
    with pytest.raises(TypeError, match="a bug in our conversion"):
        imaging.decode(good)


def noise_png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def make_image_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buf, "PNG")
    return buf.getvalue()


def test_fuzzed_files_through_the_indexer(tmp_path):
    rng = random.Random(11)
    corpus = seed_corpus()
    root = tmp_path / "fz"
    root.mkdir()
    ext = [".jpg", ".png", ".gif", ".tif", ".webp", ".avif"]
    for k in range(300):
        (root / f"f{k:04d}{ext[k % len(corpus)]}").write_bytes(mutate(corpus[k % len(corpus)], rng))
    with Library.open(tmp_path / "lib", encoder=FakeEncoder(), batch_size=32) as lib:
        report = lib.index([root])
        assert report.added + len(report.skipped) == 300
        assert lib.check().ok
