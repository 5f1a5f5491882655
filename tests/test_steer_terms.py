"""Steering a search by its terms, on the demo model's own domain: --and/--not, the one-string syntax,
--like/--unlike from stored vectors, example images left out of their own results, the light image tower.

The library is the spec's independent shapes sample (../shared/shapes-sample), indexed with `--model shapes`,
plus two near copies of one of its pictures. Expectations were measured on it (see each test)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from clipsearch.cli import cli
from clipsearch.library import Library
from clipsearch.query import Query, Term

REPO = Path(__file__).resolve().parents[1]
SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "shapes-sample"
SOURCE = "sample_00002.png"  # a large yellow square on the right: the picture the near copies are made of
COLOURS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown")
SHAPES = ("circle", "square", "diamond", "triangle", "star", "cross")


def need_sample() -> None:
    if not (SAMPLE / "scenes.jsonl").is_file():
        if os.environ.get("CI"):
            pytest.fail(f"the shapes sample is missing at {SAMPLE} (CI must have ../shared beside the repo)")
        pytest.skip(f"the shapes sample is not at {SAMPLE}")


@pytest.fixture(scope="module")
def shapes_lib(tmp_path_factory):
    """(library dir, photos dir, scenes by file name, the near copies' paths)."""
    need_sample()
    from PIL import Image

    tmp = tmp_path_factory.mktemp("steer")
    photos = tmp / "photos"
    photos.mkdir()
    for p in (SAMPLE / "images").iterdir():
        (photos / p.name).write_bytes(p.read_bytes())
    with Image.open(photos / SOURCE) as im:
        im = im.convert("RGB")
        im.resize((200, 200), Image.LANCZOS).save(photos / "copy_small.jpg", quality=80)
        im.resize((260, 260), Image.BICUBIC).save(photos / "copy_large.png")
    with Library.open(tmp / "lib", model="shapes") as lib:
        report = lib.index([photos])
    assert report.added == 202 and not report.skipped
    scenes = {}
    for line in (SAMPLE / "scenes.jsonl").read_text().splitlines():
        s = json.loads(line)
        scenes[s["file"]] = s
    return tmp / "lib", photos, scenes, [photos / "copy_small.jpg", photos / "copy_large.png"]


def query_json(lib_dir: Path, *args: str) -> list[dict]:
    """The ranking itself: `--cutoff none` unless a test asks for a cut-off (tests/test_cutoff.py measures it)."""
    if "--cutoff" not in args:
        args = (*args, "--cutoff", "none")
    res = CliRunner().invoke(cli, ["query", *args, "--library", str(lib_dir), "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


def pairs(scenes: dict, row: dict) -> set[tuple[str, str]]:
    name = os.path.basename(row["path"])
    if name.startswith("copy_"):
        name = SOURCE
    return {(o["color"], o["shape"]) for o in scenes[name]["objects"]}


def run_without_torch(*args: str) -> tuple[list[dict], bool]:
    """`clipsearch query ... --json` in a fresh process; returns its results and whether torch was imported."""
    if "--cutoff" not in args:
        args = (*args, "--cutoff", "none")
    code = ("import sys, io, contextlib\n"
            "from clipsearch.cli import main\n"
            "sys.argv = ['clipsearch', 'query', *sys.argv[1:], '--json']\n"
            "out = io.StringIO()\n"
            "try:\n"
            "    with contextlib.redirect_stdout(out):\n"
            "        main()\n"
            "except SystemExit as e:\n"
            "    assert not e.code, e.code\n"
            "print(repr(('torch' in sys.modules, 'open_clip' in sys.modules, out.getvalue())))\n")
    env = {k: v for k, v in os.environ.items() if k != "CLIPSEARCH_HOME"}
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=300,
                          cwd=str(REPO))
    assert proc.returncode == 0, proc.stderr
    import ast

    torch, open_clip, out = ast.literal_eval(proc.stdout.strip().splitlines()[-1])
    return json.loads(out), torch or open_clip


# -- --not ---------------------------------------------------------------------------------------------------
# measured: the top 5 of "a square" holds 3 images with something blue, "a star" 2 red, "a diamond" 3 green,
# "a triangle" 2 blue; with --not that colour, none, and all five still have the shape
@pytest.mark.parametrize("shape,colour", [("square", "blue"), ("star", "red"), ("diamond", "green"),
                                          ("triangle", "blue")])
def test_not_a_colour_removes_it_from_the_top_results(shapes_lib, shape, colour):
    lib_dir, _, scenes, _ = shapes_lib
    plain = query_json(lib_dir, f"a {shape}", "-k", "5")
    steered = query_json(lib_dir, f"a {shape}", "--not", colour, "-k", "5")
    coloured = lambda rows: sum(any(c == colour for c, _ in pairs(scenes, r)) for r in rows)  # noqa: E731
    assert coloured(plain) >= 2
    assert coloured(steered) == 0
    assert all(any(s == shape for _, s in pairs(scenes, r)) for r in steered)


# -- + -------------------------------------------------------------------------------------------------------
def test_plus_an_attribute_raises_images_that_have_both(shapes_lib):
    """Measured over the 24 (shape, colour) pairs below: images holding that coloured shape in the top 10 of
    "a SHAPE" 34 in all, of "a SHAPE + COLOUR" 119; never fewer for any pair; 9-10 of 10 keep the shape."""
    lib_dir, _, scenes, _ = shapes_lib
    before = after = 0
    for shape in SHAPES:
        for colour in ("red", "blue", "green", "yellow"):
            a = query_json(lib_dir, f"a {shape}")
            b = query_json(lib_dir, f"a {shape} + {colour}")
            na = sum((colour, shape) in pairs(scenes, r) for r in a)
            nb = sum((colour, shape) in pairs(scenes, r) for r in b)
            assert nb >= na, (shape, colour, na, nb)
            assert sum(any(s == shape for _, s in pairs(scenes, r)) for r in b) >= 9, (shape, colour)
            before, after = before + na, after + nb
    assert after >= 3 * before, (before, after)


def test_one_string_syntax_and_flags_give_the_same_ranking(shapes_lib):
    lib_dir, _, _, _ = shapes_lib
    one = query_json(lib_dir, "2:a star + yellow - 0.5:large", "-k", "20")
    flags = query_json(lib_dir, "2:a star", "--and", "yellow", "--not", "0.5:large", "-k", "20")
    assert [(r["path"], r["score"]) for r in one] == [(r["path"], r["score"]) for r in flags]
    plain = query_json(lib_dir, "a star", "-k", "20")
    assert [r["path"] for r in plain] != [r["path"] for r in one]  # the extra terms did something


# -- --like / --image and the example itself ----------------------------------------------------------------
def test_like_an_indexed_image_finds_its_near_copies_first_without_a_model(shapes_lib):
    lib_dir, photos, _, copies = shapes_lib
    rows, heavy = run_without_torch("--like", str(photos / SOURCE), "-k", "5", "--library", str(lib_dir))
    assert not heavy, "a --like query imported torch or open_clip"
    assert {r["path"] for r in rows[:2]} == {str(c) for c in copies}
    assert str(photos / SOURCE) not in [r["path"] for r in rows]  # the example itself is left out
    # by id, the same vector
    with Library.open(lib_dir, create=False) as lib:
        emb_id = lib.catalog.file_embedding_id(os.fsencode(photos / SOURCE))
    by_id = query_json(lib_dir, "--like", str(emb_id), "-k", "5")
    assert [r["path"] for r in by_id] == [r["path"] for r in rows]


def test_include_self_keeps_the_example_and_the_api_keeps_it_by_default(shapes_lib):
    lib_dir, photos, _, _ = shapes_lib
    src = str(photos / SOURCE)
    for flag in ("--like", "--image"):
        assert src not in [r["path"] for r in query_json(lib_dir, flag, src, "-k", "10")]
        top = query_json(lib_dir, flag, src, "--include-self", "-k", "3")
        assert src in [r["path"] for r in top]  # with its two near copies, at scores within float rounding of 1
        assert all(r["score"] > 0.999 for r in top)
    with Library.open(lib_dir, create=False) as lib:
        assert src in [r.path for r in lib.search(image=src, k=3)]  # Library.search(image=...) includes it (documented)
        assert src not in [r.path for r in lib.search(Query(terms=(Term.image(src),), k=10))]


def test_an_example_already_in_the_library_is_not_embedded_again(shapes_lib, tmp_path):
    """Same content hash, another path: the stored vector, no model (not even the light tower)."""
    lib_dir, photos, _, _ = shapes_lib
    outside = tmp_path / "elsewhere.png"
    outside.write_bytes((photos / SOURCE).read_bytes())
    rows, heavy = run_without_torch("--image", str(outside), "-k", "3", "--library", str(lib_dir))
    assert not heavy
    # the indexed file is not the example (another path), so it is a result, with its near copies
    assert {os.path.basename(r["path"]) for r in rows} == {SOURCE, "copy_small.jpg", "copy_large.png"}
    with Library.open(lib_dir, create=False) as lib:
        def no_tower(*a, **k):
            raise AssertionError("the image was embedded again")

        lib.reader.image_encoder = no_tower
        assert str(photos / SOURCE) in [r.path for r in lib.search(image=outside, k=3)]


def test_a_new_example_image_goes_through_the_light_tower_without_torch(shapes_lib, tmp_path):
    lib_dir, photos, scenes, _ = shapes_lib
    from PIL import Image, ImageOps

    with Image.open(photos / SOURCE) as im:
        ImageOps.mirror(im.convert("RGB")).save(tmp_path / "mirrored.jpg", quality=85)
    rows, heavy = run_without_torch("--image", str(tmp_path / "mirrored.jpg"), "-k", "10", "--library", str(lib_dir))
    assert not heavy, "a new example image imported torch or open_clip"
    # a mirrored large yellow square: its own picture and copies first, then other yellow squares
    assert os.path.basename(rows[0]["path"]) in (SOURCE, "copy_small.jpg", "copy_large.png")
    assert sum(("yellow", "square") in pairs(scenes, r) for r in rows) >= 5


def test_unlike_moves_away_from_an_example(shapes_lib):
    lib_dir, photos, scenes, _ = shapes_lib
    star = next(f for f, s in scenes.items() if [(o["color"], o["shape"]) for o in s["objects"]] == [("red", "star")])
    plain = query_json(lib_dir, "a star", "-k", "10")
    away = query_json(lib_dir, "a star", "--unlike", str(photos / star), "-k", "10")
    red = lambda rows: sum(("red", "star") in pairs(scenes, r) for r in rows)  # noqa: E731
    assert red(away) < red(plain)


# -- the light image tower ----------------------------------------------------------------------------------
def test_light_image_tower_equals_open_clip_on_shapes_images():
    need_sample()
    from PIL import Image

    from clipsearch.encoders import load_encoder, parse_model_spec
    from clipsearch.encoders.imagefast import load_image_encoder

    light = load_image_encoder(parse_model_spec("shapes"))
    full = load_encoder("shapes", device="cpu", precision="fp32")
    assert light is not None and light.weights_id == full.fingerprint["weights"]
    assert {k: light.preprocess_cfg[k] for k in sorted(light.preprocess_cfg)} == full.fingerprint["preprocess"]
    files = sorted((SAMPLE / "images").iterdir())[:24]
    images = []
    for f in files:
        with Image.open(f) as im:
            images.append(im.convert("RGB"))
    images.append(images[0].resize((300, 170)))  # not square: the resize and the crop
    for im in images:
        assert np.array_equal(light.preprocess(im), full.preprocess(im).numpy())
    a = full.embed_images(images)
    b = light.embed_images(images)
    assert b.dtype == np.float32 and b.shape == a.shape
    assert float((a * b).sum(axis=1).min()) >= 1 - 1e-5


def test_light_image_tower_refuses_what_it_does_not_compute(tmp_path, tiny_model):
    from clipsearch.encoders import parse_model_spec
    from clipsearch.encoders.imagefast import load_image_encoder

    assert load_image_encoder(parse_model_spec(tiny_model)) is None  # a ViT tower
    assert load_image_encoder(parse_model_spec("ViT-B-32:laion2b_s34b_b79k")) is None


def test_a_library_of_other_weights_refuses_the_light_tower(shapes_lib, tmp_path):
    """The light tower checks the library's recorded model like the full one does."""
    from clipsearch.errors import ModelMismatchError
    from clipsearch.reader import Reader

    lib_dir, _, _, _ = shapes_lib
    import shutil

    other = tmp_path / "lib"
    shutil.copytree(lib_dir, other)
    with Reader.open(other) as reader:
        fp = json.loads(reader.catalog.get_meta("model_fingerprint_json"))
        fp["weights"] = "sha256:" + "0" * 64
        reader.catalog.set_meta(model_fingerprint_json=json.dumps(fp))
        with pytest.raises(ModelMismatchError):
            reader.image_encoder()
