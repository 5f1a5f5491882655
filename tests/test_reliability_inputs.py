"""Bad image inputs (reliability.md section I, cases 16-26; the fuzzing of 25 is tests/test_reliability_fuzz.py):
every one is skip-and-report with a reason, batch-mates unaffected, memory bounded, no descriptor leaks, no
exception escaping the per-file guard."""

from __future__ import annotations

import io
import json
import os
import random
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipsearch import Library, imaging

from conftest import make_image
from reliability_helpers import FakeEncoder, db_rows, open_fds

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny_encoder(tiny_model):
    from clipsearch.encoders import load_encoder

    return load_encoder(tiny_model, device="cpu", precision="fp32")


def stored(lib_dir: Path) -> dict[bytes, np.ndarray]:
    rows = db_rows(lib_dir, "SELECT f.path, e.vector FROM files f JOIN embeddings e ON e.id=f.embedding_id "
                            "WHERE f.status='ok'")
    return {p: np.frombuffer(v, "<f4") for p, v in rows}


def reasons(report) -> dict[str, str]:
    return {Path(s.path).name: s.reason for s in report.skipped}


def png_header_only(w: int, h: int) -> bytes:
    """A tiny PNG that claims w x h pixels (a decompression bomb in a few dozen bytes)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64, 9)) + chunk(b"IEND", b"")


def gif_header_only(w: int, h: int) -> bytes:
    return (b"GIF89a" + struct.pack("<HHBBB", w, h, 0, 0, 0) + b"\x2c" + struct.pack("<HHHHB", 0, 0, w, h, 0)
            + b"\x02\x02\x4c\x01\x00\x3b")


def jpeg_with_size(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (90, 120, 30)).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    i = data.index(b"\xff\xc0")
    data[i + 5:i + 9] = struct.pack(">HH", h, w)
    return bytes(data)


# -- 16 ---------------------------------------------------------------------------------------------------
def test_bad_files_in_a_batch_of_64_do_not_shift_vectors(tmp_path, tiny_encoder):
    root = tmp_path / "photos"
    for i in range(60):
        make_image(root / f"g{i:02d}.png", 300 + i)
    (root / "g10-zero.jpg").write_bytes(b"")
    (root / "g20-text.jpg").write_text("hello, I am a text file\n")
    (root / "g30-page.png").write_text("<html><body>not a png</body></html>")
    (root / "g40-two.jpg").write_bytes(b"\xff\xd8")
    with Library.open(tmp_path / "lib", encoder=tiny_encoder, batch_size=64) as lib:
        report = lib.index([root])
    r = reasons(report)
    assert set(r) == {"g10-zero.jpg", "g20-text.jpg", "g30-page.png", "g40-two.jpg"}
    for name in ("g10-zero.jpg", "g20-text.jpg", "g30-page.png"):
        assert r[name].startswith("not a readable image"), r[name]
    assert report.added == 60 and report.batches <= 2
    vecs = stored(tmp_path / "lib")
    assert len(vecs) == 60
    for i in range(60):
        p = root / f"g{i:02d}.png"
        alone = tiny_encoder.embed_images([Image.open(p).convert("RGB")])[0]
        assert float(vecs[os.fsencode(p)] @ alone) >= 0.999
    failed = dict(db_rows(tmp_path / "lib", "SELECT path, error FROM files WHERE status='failed'"))
    assert len(failed) == 4  # in the catalog too, and not retried until changed
    with Library.open(tmp_path / "lib", encoder=tiny_encoder) as lib:
        again = lib.index([root])
    assert again.embedded == 0 and not again.skipped


# -- 17 ---------------------------------------------------------------------------------------------------
def test_truncated_files_and_tolerated_damage(tmp_path):
    root = tmp_path / "photos"
    jpg = make_image(tmp_path / "src.jpg", 1, size=(200, 160)).read_bytes()
    png = make_image(tmp_path / "src.png", 2, size=(200, 160)).read_bytes()
    root.mkdir()
    (root / "cut.jpg").write_bytes(jpg[: len(jpg) // 2])
    (root / "cut.png").write_bytes(png[: len(png) // 2])
    (root / "no-iend.png").write_bytes(png[:-12])  # PNG without IEND: Pillow decodes it, so do we
    enc = FakeEncoder()
    with Library.open(tmp_path / "lib", encoder=enc) as lib:
        report = lib.index([root])
    r = reasons(report)
    assert r["cut.jpg"].startswith("truncated") and r["cut.png"].startswith("truncated"), r
    assert "no-iend.png" not in r and report.added == 1


def test_allow_truncated_indexes_with_a_warning(tmp_path, tiny_model):
    root = tmp_path / "photos"
    root.mkdir()
    jpg = make_image(tmp_path / "src.jpg", 1, size=(200, 160)).read_bytes()
    (root / "cut.jpg").write_bytes(jpg[: len(jpg) * 2 // 3])
    make_image(root / "fine.png", 2)
    with Library.open(tmp_path / "lib", encoder=FakeEncoder(), allow_truncated=True) as lib:
        report = lib.index([root])
    assert report.added == 2 and not report.skipped
    assert [(Path(w.path).name, w.reason.split(":")[0]) for w in report.warnings] == [("cut.jpg", "truncated")]
    from PIL import ImageFile

    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # the process-wide switch is restored
    from click.testing import CliRunner

    from clipsearch.cli import cli

    res = CliRunner().invoke(cli, ["index", str(root), "--library", str(tmp_path / "lib2"), "--model",
                                                   tiny_model, "--allow-truncated", "-q"])
    assert res.exit_code == 0 and f"warning {root / 'cut.jpg'}: truncated" in res.stderr, res.output


def test_garbled_jpeg_scan_data_is_decoded(tmp_path):
    data = bytearray(make_image(tmp_path / "src.jpg", 3, size=(256, 256)).read_bytes())
    sos = data.index(b"\xff\xda")
    rng = random.Random(0)
    for i in rng.sample(range(sos + 20, len(data) - 10), 40):
        data[i] = rng.randrange(256) if data[i] != 0xFF else 0xFF
    img, size = imaging.decode(bytes(data), draft=None)  # libjpeg decodes garbled scan data (no error to report)
    assert img.mode == "RGB" and size == img.size == (256, 256)


# -- 18, 19 -------------------------------------------------------------------------------------------------
BOMB_SCRIPT = r"""
import json, resource, sys
from clipsearch import imaging
from clipsearch.errors import ImageError
out = {}
for name in sys.argv[2:]:
    data = open(name, "rb").read()
    try:
        imaging.decode(data, max_pixels=int(float(sys.argv[1])), draft=224)
        out[name] = "decoded"
    except ImageError as e:
        out[name] = e.reason
# VmHWM belongs to this program's memory map (ru_maxrss would carry the forking parent's peak across exec)
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
out["maxrss_mb"] = int(hwm.split()[1]) / 1024
print(json.dumps(out))
"""


def run_decode_child(files, max_pixels=imaging.DEFAULT_MAX_PIXELS) -> dict:
    res = subprocess.run([sys.executable, "-c", BOMB_SCRIPT, str(max_pixels), *map(str, files)],
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_decompression_bombs_are_refused_with_bounded_memory(tmp_path):
    files = {
        "png20k.png": png_header_only(20000, 20000),
        "gif65535.gif": gif_header_only(65535, 65535),
        "jpeg65500.jpg": jpeg_with_size(65500, 65500),
        "warning-tier.png": png_header_only(12000, 12000),  # 144 MP: only a warning in default Pillow
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    assert len(files["png20k.png"]) < 120 and len(files["gif65535.gif"]) < 40
    out = run_decode_child([tmp_path / n for n in files])
    for n in files:
        assert out[str(tmp_path / n)].startswith("too large"), out
    assert out["maxrss_mb"] < 200, out
    # a higher cap than the warning tier: Pillow's warning is an error for us, memory still bounded
    out = run_decode_child([tmp_path / "warning-tier.png"], max_pixels=150_000_000)
    assert out[str(tmp_path / "warning-tier.png")].startswith("too large"), out
    assert out["maxrss_mb"] < 200, out
    # in a folder: skipped with the reason, the good images indexed, the run goes on
    root = tmp_path / "photos"
    root.mkdir()
    for n, data in files.items():
        (root / n).write_bytes(data)
    make_image(root / "good.png", 7)
    with Library.open(tmp_path / "lib", encoder=FakeEncoder()) as lib:
        report = lib.index([root])
    assert report.added == 1 and all(v.startswith("too large") for v in reasons(report).values())


# -- 20 ---------------------------------------------------------------------------------------------------
def test_big_jpeg_decodes_through_draft(tmp_path, tiny_encoder):
    big = tmp_path / "big.jpg"
    make_image(big, 11, size=(8000, 6000))  # 48 MP
    out = run_decode_child([big])
    assert out[str(big)] == "decoded" and out["maxrss_mb"] < 100, out
    data = big.read_bytes()
    drafted, size = imaging.decode(data, draft=tiny_encoder.image_size)
    assert size == (8000, 6000) and max(drafted.size) < 8000
    full = Image.open(big).convert("RGB")
    a, b = tiny_encoder.embed_images([drafted])[0], tiny_encoder.embed_images([full])[0]
    assert float(a @ b) >= 0.99


# -- 21 ---------------------------------------------------------------------------------------------------
def ramp(w=64, h=48) -> np.ndarray:
    x = np.linspace(0, 1, w)[None, :] * np.linspace(0.3, 1, h)[:, None]
    return x


def test_mode_zoo(tmp_path, tiny_encoder):
    root = tmp_path / "zoo"
    root.mkdir()
    base = make_image(tmp_path / "base.png", 5, size=(64, 48))
    rgb = Image.open(base).convert("RGB")
    r = ramp()
    rgb.convert("CMYK").save(root / "cmyk.jpg")
    rgb.convert("CMYK").save(root / "cmyk.tif")
    Image.fromarray((r * 65535).astype(np.uint16)).save(root / "i16.png")  # mode I;16
    Image.fromarray((r * 65535).astype(np.uint16)).save(root / "i16.tif")
    Image.fromarray((r * 255).astype(np.uint8), "L").save(root / "l8.png")  # its 8-bit version
    Image.fromarray(r.astype(np.float32), "F").save(root / "f.tif")
    rgb.convert("1").save(root / "bw.png")
    rgb.convert("P").save(root / "p.png")
    p = rgb.convert("P")
    p.info["transparency"] = 0
    p.save(root / "ptrns.png", transparency=0)
    rgb.convert("LA").save(root / "la.png")
    rgba = rgb.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(root / "rgba.png")
    hidden = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 4), dtype=np.uint8), "RGBA")
    hidden.putalpha(0)
    hidden.save(root / "clear.png")
    modes = {f.name: Image.open(f).mode for f in root.iterdir()}
    assert {"CMYK", "I;16", "F", "1", "P", "LA", "RGBA"} <= set(modes.values()), modes
    with Library.open(tmp_path / "lib", encoder=tiny_encoder) as lib:
        report = lib.index([root])
    assert not report.skipped and report.added == len(modes)
    vecs = {Path(os.fsdecode(k)).name: v for k, v in stored(tmp_path / "lib").items()}
    for name, v in vecs.items():
        assert np.all(np.isfinite(v)) and abs(np.linalg.norm(v) - 1) < 1e-4, name
    # 16-bit looks like its 8-bit version, not like white
    img16, _ = imaging.decode((root / "i16.png").read_bytes())
    img8, _ = imaging.decode((root / "l8.png").read_bytes())
    assert np.abs(np.asarray(img16, float) - np.asarray(img8, float)).mean() < 1.5
    assert float(vecs["i16.png"] @ vecs["l8.png"]) >= 0.95 and float(vecs["i16.tif"] @ vecs["l8.png"]) >= 0.95
    # transparency is composited onto a fixed (white) background: hidden colours do not leak
    clear, _ = imaging.decode((root / "clear.png").read_bytes())
    assert np.asarray(clear).min() == 255


# -- 22 ---------------------------------------------------------------------------------------------------
def multi_frame(kind: str, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    frames = [Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)) for _ in range(3)]
    buf = io.BytesIO()
    fmt = {"gif": "GIF", "tif": "TIFF", "apng": "PNG"}[kind]
    frames[0].save(buf, fmt, save_all=True, append_images=frames[1:])
    return buf.getvalue(), frames[0]


def test_multi_frame_first_frame_and_no_descriptor_leak(tmp_path):
    for kind in ("gif", "tif", "apng"):
        data, first = multi_frame(kind, 1)
        assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3, kind
        img, _ = imaging.decode(data)
        diff = np.abs(np.asarray(img, float) - np.asarray(first.convert("RGB"), float)).mean()
        assert diff < (40 if kind == "gif" else 1), (kind, diff)  # GIF is palettised
    root = tmp_path / "frames"
    root.mkdir()
    n = int(os.environ.get("CLIPSEARCH_MULTIFRAME_FILES", "1500"))  # 5000 in the reliability bar; CI time
    for i in range(n):
        kind = ("gif", "tif", "apng")[i % 3]
        data, _ = multi_frame(kind, i)
        (root / f"m{i:05d}.{'png' if kind == 'apng' else kind}").write_bytes(data)
    before = open_fds()
    enc = FakeEncoder()
    with Library.open(tmp_path / "lib", encoder=enc, batch_size=256) as lib:
        report = lib.index([root])
    assert report.added == n and not report.skipped
    assert open_fds() <= before


# -- 23 ---------------------------------------------------------------------------------------------------
STORE_FOR = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
             5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
             8: Image.Transpose.ROTATE_270}


def test_exif_orientation_all_values(tmp_path):
    upright = Image.open(make_image(tmp_path / "u.png", 8, size=(48, 32))).convert("RGB")
    for o, t in STORE_FOR.items():
        exif = Image.Exif()
        exif[0x0112] = o
        buf = io.BytesIO()
        upright.transpose(t).save(buf, "PNG", exif=exif)
        img, _ = imaging.decode(buf.getvalue())
        assert np.array_equal(np.asarray(img), np.asarray(upright)), o
    for bad in (0, 9, 65535):
        exif = Image.Exif()
        exif[0x0112] = bad
        buf = io.BytesIO()
        upright.save(buf, "JPEG", exif=exif)
        img, _ = imaging.decode(buf.getvalue())  # ignored, no crash
        assert img.size == (48, 32)
    buf = io.BytesIO()
    upright.save(buf, "JPEG", exif=b"Exif\x00\x00" + bytes(random.Random(1).randrange(256) for _ in range(200)))
    img, _ = imaging.decode(buf.getvalue())  # a garbage EXIF block: no orientation in it, the pixels as stored
    assert np.array_equal(np.asarray(img), np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")))


# -- 24 ---------------------------------------------------------------------------------------------------
def test_heic_without_plugin_names_the_fix(tmp_path):
    try:
        import pillow_heif  # noqa: F401
        pytest.skip("pillow-heif is installed here: HEIC decodes")
    except ImportError:
        pass
    heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(200)
    root = tmp_path / "p"
    root.mkdir()
    (root / "IMG_0001.HEIC").write_bytes(heic)
    (root / "renamed-heic.jpg").write_bytes(heic)
    rgb = Image.open(make_image(tmp_path / "a.png", 4)).convert("RGB")
    from PIL import features

    if features.check("avif"):  # this Pillow decodes AVIF natively: it indexes
        rgb.save(root / "real.avif")
    with Library.open(tmp_path / "lib", encoder=FakeEncoder()) as lib:
        report = lib.index([root])
    r = reasons(report)
    assert r["IMG_0001.HEIC"] == r["renamed-heic.jpg"] == "HEIC/HEIF support not installed: pip install 'clipsearch[heif]'"
    if features.check("avif"):
        assert "real.avif" not in r


# -- 26 ---------------------------------------------------------------------------------------------------
def test_non_finite_and_zero_vectors_are_rejected(tmp_path):
    root = tmp_path / "p"
    for i in range(20):
        make_image(root / f"n{i:02d}.png", 700 + i)
    enc = FakeEncoder()
    enc.poison = {3, 11}
    real = enc.embed_batch

    def with_zero(tensors):
        out = real(tensors)
        if enc.images - len(tensors) <= 15 < enc.images:
            out[15 - (enc.images - len(tensors))] = 0
        return out

    enc.embed_batch = with_zero
    with Library.open(tmp_path / "lib", encoder=enc, batch_size=8) as lib:
        report = lib.index([root])
        assert len(report.skipped) == 3 and all("non-finite" in s.reason for s in report.skipped), report.skipped
        assert report.added == 17
        index = lib.vector_index()
        n_ok = db_rows(lib.path, "SELECT count(*) FROM files WHERE status='ok'")[0][0]
        assert n_ok == index.ntotal == 17
        ids, vecs = lib.catalog.live_vectors(enc.dim)
        for i, v in zip(ids, vecs):
            scores, got = index.search(v, 1)
            assert got[0] == i
        assert lib.check().ok
