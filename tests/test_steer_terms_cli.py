"""`clipsearch query`'s flags and usage errors, prompt templates, and the plain "nothing found" sentence."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from clipsearch.cli import build_query, cli
from clipsearch.errors import ConfigError
from clipsearch.library import Library
from clipsearch.query import DEFAULT_TEMPLATES, Query, Term
from clipsearch.search import plan


@pytest.fixture(scope="module")
def small_lib(tmp_path_factory):
    """Eight pictures of the shapes domain drawn by the project's renderer, indexed with the demo model."""
    from clipsearch.training.shapes import write_dataset

    tmp = tmp_path_factory.mktemp("steercli")
    write_dataset(tmp / "data", 8, seed=99)
    with Library.open(tmp / "lib", model="shapes") as lib:
        lib.index([tmp / "data" / "images"])
    return tmp / "lib", tmp / "data" / "images"


def invoke(*args: str):
    return CliRunner().invoke(cli, ["query", *args])


def shapes_text_sources():
    from clipsearch.encoders import parse_model_spec
    from clipsearch.encoders.textfast import load_text_encoder

    enc = load_text_encoder(parse_model_spec("shapes"))

    class Sources:
        calls: list = []

        def embed_texts(self, texts):
            self.calls.append(list(texts))
            return enc.embed_texts(texts)

    return Sources(), enc


# -- prompt templates -----------------------------------------------------------------------------------------
def test_templates_average_the_prompts_unit_vectors():
    sources, enc = shapes_text_sources()
    q = Query(terms=(Term.text("a red star"), Term.text("at the top", -0.5)),
              templates=("a photo of {}", "{} on a white background"))
    got = plan(q, sources).vector
    assert sources.calls == [["a photo of a red star", "a red star on a white background",
                              "a photo of at the top", "at the top on a white background"]]  # one batch
    e = enc.embed_texts(sources.calls[0])
    star = e[0] + e[1]
    top = e[2] + e[3]
    want = star / np.linalg.norm(star) - 0.5 * top / np.linalg.norm(top)
    np.testing.assert_allclose(got, want / np.linalg.norm(want), atol=1e-6)
    plain = plan(Query(terms=(Term.text("a red star"),)), sources).vector
    np.testing.assert_allclose(plain, enc.embed_texts(["a red star"])[0], atol=1e-6)
    assert not np.allclose(plain, plan(Query(terms=(Term.text("a red star"),), templates=("a photo of {}",)),
                                       sources).vector, atol=1e-3)


def test_templates_are_off_by_default_as_the_readme_says():
    assert DEFAULT_TEMPLATES == () and Query.text("x").templates == ()
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "prompt templates are off by default" in readme.lower()


@pytest.mark.parametrize("templates", [("a photo of",), ("{} and {}",), "a photo of {}", ("{}",) * 17])
def test_bad_templates_are_refused(templates):
    with pytest.raises(ConfigError):
        Query(terms=(Term.text("x"),), templates=templates).validate()


def test_template_flag_reaches_the_search(small_lib):
    lib_dir, _ = small_lib
    res = invoke("a red circle", "--template", "a photo of {}", "--library", str(lib_dir), "--json")
    assert res.exit_code == 0, res.output
    via_cli = [(r["path"], r["score"]) for r in json.loads(res.stdout)]
    with Library.open(lib_dir, create=False) as lib:
        api = [(r.path, r.score) for r in lib.search(Query(terms=(Term.text("a red circle"),),
                                                           templates=("a photo of {}",)))]
        plain = [(r.path, r.score) for r in lib.search("a red circle")]
    assert via_cli == api and via_cli != plain
    res = invoke("a red circle", "--no-templates", "--library", str(lib_dir), "--json")
    assert [(r["path"], r["score"]) for r in json.loads(res.stdout)] == plain


# -- the flags of the filters half: parsed here, into the Query ---------------------------------------------
def _build(**over):
    args = dict(text="a dog", and_texts=(), not_texts=(), images=(), not_images=(), likes=(), unlikes=(), k=10,
                min_score=None, cutoff=None, sort="score", include_self=False, templates=(), no_templates=False,
                folder=None, path_glob=None, modified_after=None, modified_before=None, taken_after=None,
                taken_before=None, min_width=None, min_height=None, min_megapixels=None, max_megapixels=None,
                formats=())
    args.update(over)
    return build_query(**args)


@pytest.fixture
def utc_minus_5(monkeypatch):
    """Local time five hours behind UTC (a POSIX TZ string: no time zone database needed)."""
    monkeypatch.setenv("TZ", "XYZ+5")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_filter_flags_become_query_fields(tmp_path, monkeypatch, utc_minus_5):
    monkeypatch.chdir(tmp_path)
    q = _build(folder="pics", path_glob="*/2024/*", modified_after="2024-05-01", modified_before="2024-06-01T12:30",
               taken_after="2023-01-01T00:00:00+00:00", taken_before="2023-12-31T23:59:59Z", min_width=640,
               min_height=480, min_megapixels=0.5, max_megapixels=12, formats=("JPG", "png", "jpeg"), sort="date",
               cutoff="auto", min_score=0.2, include_self=True)
    f = q.filters
    assert f.folder == str(tmp_path / "pics") and f.path_glob == "*/2024/*"
    assert f.modified_after == 1714539600.0  # 2024-05-01 00:00 local = 05:00 UTC
    assert f.modified_before == 1717263000.0  # 2024-06-01 12:30 local = 17:30 UTC
    assert f.taken_after == 1672531200.0 and f.taken_before == 1704067199.0
    assert (f.min_width, f.min_height, f.min_megapixels, f.max_megapixels) == (640, 480, 0.5, 12)
    assert f.formats == ("jpeg", "png")
    assert (q.sort, q.cutoff, q.min_score, q.include_self) == ("date", "auto", 0.2, True)
    assert _build().cutoff == Query.text("x").cutoff  # no --cutoff: the engine's default


def test_terms_from_flags(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "12").write_bytes(b"")  # a file named like an id is a path
    q = _build(text="2:a dog + on a beach", and_texts=("0.5:grass",), not_texts=("at night",), images=("a.jpg",),
               not_images=("b.jpg",), likes=("7", "12"), unlikes=("c.jpg",))
    assert [(t.kind, t.value, t.weight) for t in q.terms] == [
        ("text", "a dog", 2.0), ("text", "on a beach", 1.0), ("text", "grass", 0.5), ("text", "at night", -1.0),
        ("image", "a.jpg", 1.0), ("image", "b.jpg", -1.0), ("like", 7, 1.0), ("like", str(tmp_path / "12"), 1.0),
        ("like", str(tmp_path / "c.jpg"), -1.0)]


@pytest.mark.parametrize("args,message", [
    ([], "give something to search for"),
    (["--not", "red"], "at least one positive term"),
    (["x", "--template", "a {}", "--no-templates"], "contradict"),
    (["x", "--template", "a photo"], "exactly once"),
    (["x", "--json", "-0"], "one of them"),
    (["x", "--min-megapixels", "5", "--max-megapixels", "2"], "range is empty"),
    (["x", "--modified-after", "2024-06-01", "--modified-before", "2024-05-01"], "range is empty"),
    (["x", "--taken-after", "2024-05-01", "--taken-before", "2024-05-01"], "range is empty"),
    (["x", "--taken-after", "yesterday"], "not an ISO date"),
    (["x", "--min-width", "0"], "--min-width"),
    (["x", "--sort", "size"], "--sort"),
    (["x", "--cutoff", "strict"], "--cutoff"),
    (["x", "-k", "0"], "k must be at least 1"),
    (["x", "--and", "0:y"], "non-zero"),
    (["   "], "query is empty"),
])
def test_bad_combinations_are_usage_errors(small_lib, args, message):
    lib_dir, _ = small_lib
    res = invoke(*args, "--library", str(lib_dir))
    assert res.exit_code == 2, (args, res.output)
    assert message in res.output and "Traceback" not in res.output


def test_nothing_found_is_a_sentence_and_exit_0(small_lib, monkeypatch):
    lib_dir, _ = small_lib
    res = invoke("a red circle", "--min-score", "1.5", "--library", str(lib_dir))
    assert res.exit_code == 0 and res.stdout == ""
    assert "no image matches well enough" in res.stderr
    res = invoke("a red circle", "--min-score", "1.5", "--library", str(lib_dir), "--json")
    assert res.exit_code == 0 and json.loads(res.stdout) == []
    seen = []

    def no_results(self, query, **kw):
        seen.append(query)
        return []

    monkeypatch.setattr(Library, "search", no_results)  # what the engine answers when a filter leaves nothing
    res = invoke("a red circle", "--format", "webp", "--library", str(lib_dir))
    assert res.exit_code == 0 and res.stdout == "" and "no image passes the filters" in res.stderr
    assert seen[0].filters.formats == ("webp",)


def test_json_keeps_its_fields_and_like_errors_are_clear(small_lib):
    lib_dir, images = small_lib
    one = sorted(images.iterdir())[0]
    res = invoke("--like", str(one), "-k", "3", "--library", str(lib_dir), "--json")
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert len(rows) == 3 and all({"rank", "score", "path", "id"} <= set(r) for r in rows)
    assert str(one) not in [r["path"] for r in rows]
    res = invoke("--like", str(images.parent / "captions.csv"), "--library", str(lib_dir))
    assert res.exit_code == 1 and "not an indexed image" in res.output and "--image" in res.output
    res = invoke("--like", "99999", "--library", str(lib_dir))
    assert res.exit_code == 1 and "no indexed image with id 99999" in res.output
