"""The core engine end to end, with a real (tiny, random-weight) open_clip model."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from clipsearch import Library
from clipsearch.cli import cli
from clipsearch.errors import ConfigError, EmptyLibraryError, LibraryNotFoundError, ModelMismatchError
from clipsearch.store import blob_to_vector

from conftest import make_image


def stored_vectors(lib_dir: Path) -> dict[str, np.ndarray]:
    """path -> vector straight from SQLite, for brute-force checks."""
    con = sqlite3.connect(lib_dir / "library.db")
    rows = con.execute(
        "SELECT f.path, e.vector FROM files f JOIN embeddings e ON e.id = f.embedding_id WHERE f.status = 'ok'"
    ).fetchall()
    con.close()
    return {os.fsdecode(p): blob_to_vector(v) for p, v in rows}


@pytest.fixture
def lib(tmp_path, tiny_model):
    library = Library.open(tmp_path / "lib", model=tiny_model)
    yield library
    library.close()


def test_index_then_query_matches_brute_force(lib, photos, tmp_path):
    report = lib.index([photos])
    assert (report.added, report.updated, report.unchanged, report.removed) == (10, 0, 0, 0)
    assert report.embedded == 10 and not report.skipped
    vectors = stored_vectors(lib.path)
    assert len(vectors) == 10
    for v in vectors.values():
        assert v.shape == (32,) and abs(np.linalg.norm(v) - 1) < 1e-5

    for text in ["a red circle", "a dorsal hand", "sunset over the sea"]:
        results = lib.search(text, k=10)
        q = lib.text_encoder().embed_texts([text])[0]  # the tower queries use (numpy fp32 here)
        paths = list(vectors)
        scores = np.array([vectors[p] @ q for p in paths])
        expected = [paths[i] for i in np.argsort(-scores, kind="stable")]
        assert [r.path for r in results] == expected
        assert np.allclose([r.score for r in results], np.sort(scores)[::-1], atol=1e-5)
        assert [r.rank for r in results] == list(range(1, 11))

    top = lib.search(image=photos / "img3.png", k=3)
    assert top[0].path == str(photos / "img3.png") and top[0].score == pytest.approx(1.0, abs=1e-4)
    assert len(lib.search("x", k=3)) == 3


def test_incremental_modify_delete_rename(lib, photos):
    lib.index([photos])
    again = lib.index([photos])
    assert (again.added, again.updated, again.unchanged, again.removed, again.embedded) == (0, 0, 10, 0, 0)

    make_image(photos / "img1.png", 101)  # new content at the same path
    os.utime(photos / "img1.png", ns=(1, 1))
    (photos / "img2.png").unlink()
    (photos / "sub" / "img6.jpg").rename(photos / "renamed.jpg")
    shutil.copy(photos / "img4.png", photos / "copy-of-4.png")

    r = lib.index([photos])
    assert r.updated == 1 and r.embedded == 1  # only the modified file went through the model
    assert r.added == 2 and r.reused == 2  # the renamed and the copied file reuse vectors
    assert r.removed == 2  # img2 deleted, img6 renamed away
    paths = {x.path for x in lib.search("anything", k=100)}
    assert str(photos / "img2.png") not in paths
    assert str(photos / "sub" / "img6.jpg") not in paths
    assert {str(photos / "renamed.jpg"), str(photos / "copy-of-4.png"), str(photos / "img4.png")} <= paths
    assert len(paths) == 10
    # copies share one vector, so they share a score
    by_path = {x.path: x for x in lib.search(image=photos / "img4.png", k=2)}
    assert set(by_path) == {str(photos / "img4.png"), str(photos / "copy-of-4.png")}
    assert lib.status()["images"] == 10

    # a deleted file that comes back reuses its vector
    make_image(photos / "img2.png", 2)
    r = lib.index([photos])
    assert r.added == 1 and r.embedded == 0 and r.reused == 1


def test_corrupt_image_in_the_middle_of_a_batch(tmp_path, tiny_model):
    root = tmp_path / "photos"
    for i in range(5):
        make_image(root / f"a{i}.png", i)
    (root / "a2b-broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    (root / "a3b-truncated.jpg").write_bytes(make_image(tmp_path / "t.jpg", 9).read_bytes()[:200])
    with Library.open(tmp_path / "lib", model=tiny_model, batch_size=8) as lib:
        report = lib.index([root])
        assert report.added == 5 and report.batches == 1
        skipped = {Path(s.path).name: s.reason for s in report.skipped}
        assert set(skipped) == {"a2b-broken.png", "a3b-truncated.jpg"}
        assert all(reason and "\n" not in reason for reason in skipped.values())
        # every good file keeps its own vector: equal to embedding it alone
        stored = stored_vectors(lib.path)
        from PIL import Image

        for i in range(5):
            p = root / f"a{i}.png"
            alone = lib.encoder.embed_images([Image.open(p).convert("RGB")])[0]
            assert np.allclose(stored[str(p)], alone, atol=1e-5)
        # a failed file is not retried until it changes
        again = lib.index([root])
        assert again.embedded == 0 and not again.skipped and again.unchanged == 7


def test_exif_orientation_is_applied(tmp_path, tiny_model):
    from PIL import Image

    root = tmp_path / "photos"
    root.mkdir()
    rng = np.random.default_rng(3)
    pixels = Image.fromarray(rng.integers(0, 255, (4, 8, 3), dtype=np.uint8)).resize((64, 32), Image.NEAREST)
    upright = pixels.transpose(Image.Transpose.ROTATE_270)  # what a viewer shows for orientation 6
    upright.save(root / "upright.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display
    pixels.save(root / "tagged.jpg", exif=exif, quality=100)
    with Library.open(tmp_path / "lib", model=tiny_model) as lib:
        lib.index([root])
        v = stored_vectors(lib.path)
        cos_same = float(v[str(root / "tagged.jpg")] @ v[str(root / "upright.png")])
        unrotated = lib.encoder.embed_images([pixels.convert("RGB")])[0]
        cos_raw = float(v[str(root / "tagged.jpg")] @ unrotated)
        assert cos_same > 0.99
        assert cos_same > cos_raw


def test_model_mismatch_is_refused(tmp_path, photos, tiny_model, other_tiny_model):
    with Library.open(tmp_path / "lib", model=tiny_model) as lib:
        lib.index([photos])
    with pytest.raises(ModelMismatchError) as e:
        Library.open(tmp_path / "lib", model=other_tiny_model)
    assert tiny_model in str(e.value) and other_tiny_model in str(e.value)

    # the same path with other weights behind it: caught by the fingerprint
    shutil.copy(Path(other_tiny_model) / "open_clip_model.safetensors", Path(tiny_model).parent / "swap.safetensors")
    backup = (Path(tiny_model) / "open_clip_model.safetensors").read_bytes()
    try:
        shutil.copy(Path(other_tiny_model) / "open_clip_model.safetensors", Path(tiny_model) / "open_clip_model.safetensors")
        with Library.open(tmp_path / "lib") as lib:
            with pytest.raises(ModelMismatchError) as e:
                lib.search("a red circle")
            assert "sha256:" in str(e.value)
    finally:
        (Path(tiny_model) / "open_clip_model.safetensors").write_bytes(backup)

    runner = CliRunner()
    res = runner.invoke(cli, ["query", "x", "--library", str(tmp_path / "lib"), "--model", other_tiny_model])
    assert res.exit_code == 1 and "built with model" in res.output


def test_library_that_never_indexed_can_change_model(tmp_path, tiny_model, other_tiny_model, photos):
    Library.open(tmp_path / "lib", model=tiny_model).close()
    with Library.open(tmp_path / "lib", model=other_tiny_model) as lib:
        assert lib.model_name == other_tiny_model
        lib.index([photos])


def test_api_errors(tmp_path, lib, photos):
    with pytest.raises(LibraryNotFoundError):
        Library.open(tmp_path / "nowhere", create=False)
    with pytest.raises(EmptyLibraryError):
        lib.search("a red circle")
    lib.index([photos])
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError):
            lib.search("x", k=bad)
    with pytest.raises(ConfigError):
        lib.search("   ")
    with pytest.raises(ConfigError):
        lib.search("x", image=photos / "img0.png")


def test_cli_json_shapes_and_errors(tmp_path, photos, tiny_model):
    runner = CliRunner()
    libdir = str(tmp_path / "lib")
    res = runner.invoke(cli, ["query", "x", "--library", libdir])
    assert res.exit_code == 1 and "no library" in res.output and "Traceback" not in res.output

    res = runner.invoke(cli, ["index", str(photos), "--library", libdir, "--model", tiny_model, "-q", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["added"] == 10 and report["skipped"] == [] and report["removed"] == 0
    assert set(report) >= {"added", "updated", "unchanged", "removed", "skipped"}

    res = runner.invoke(cli, ["query", "a red circle", "--library", libdir, "--json", "-k", "3"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert [r["rank"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert os.path.isabs(r["path"]) and os.path.exists(r["path"]) and isinstance(r["score"], float)
        assert -1.0 <= r["score"] <= 1.0

    res = runner.invoke(cli, ["query", "a red circle", "--library", libdir, "--json", "--min-score", "1.5"])
    assert res.exit_code == 0 and json.loads(res.stdout) == []

    res = runner.invoke(cli, ["query", "a red circle", "--library", libdir, "-k", "2"])
    lines = res.stdout.strip().splitlines()
    assert res.exit_code == 0 and len(lines) == 2 and lines[0].split()[0] == "1"

    res = runner.invoke(cli, ["query", "--image", str(photos / "img0.png"), "--include-self", "--library", libdir, "--json",
                               "-k", "1"])
    assert json.loads(res.stdout)[0]["path"] == str(photos / "img0.png")

    res = runner.invoke(cli, ["status", "--library", libdir, "--json"])
    st = json.loads(res.stdout)
    assert st["model"] == tiny_model and st["dim"] == 32 and st["images"] == 10
    assert st["roots"] == [str(photos)] and st["last_index"]

    env = {"CLIPSEARCH_HOME": libdir}
    res = runner.invoke(cli, ["status", "--json"], env=env)
    assert json.loads(res.stdout)["images"] == 10

    for args, code in [
        (["query", "x", "-k", "0"], 2),
        (["query", "   "], 2),
        (["query"], 2),
        (["query", "--image", str(tmp_path / "missing.jpg")], 1),
        (["query", "--image", str(photos)], 1),
        (["index", str(tmp_path / "missing-folder")], 2),
    ]:
        res = runner.invoke(cli, args + ["--library", libdir])
        assert res.exit_code == code, (args, res.output)
        assert "Traceback" not in res.output and res.output.strip()
    (tmp_path / "not-an-image.jpg").write_text("hello")
    res = runner.invoke(cli, ["query", "--image", str(tmp_path / "not-an-image.jpg"), "--library", libdir])
    assert res.exit_code == 1 and "cannot use query image" in res.output


def test_empty_library_query_is_an_error(tmp_path, tiny_model):
    runner = CliRunner()
    empty = tmp_path / "empty"
    empty.mkdir()
    res = runner.invoke(cli, ["index", str(empty), "--library", str(tmp_path / "lib"), "--model", tiny_model, "-q"])
    assert res.exit_code == 0
    res = runner.invoke(cli, ["query", "x", "--library", str(tmp_path / "lib")])
    assert res.exit_code == 1 and "no images" in res.output


def test_cache_is_rebuilt_when_missing_or_damaged(lib, photos):
    lib.index([photos])
    expected = [(r.path, r.score) for r in lib.search("a cat", k=5)]
    cache = lib.path / "index.faiss"
    for damage in ("delete", "truncate", "garbage"):
        if damage == "delete":
            cache.unlink()
        elif damage == "truncate":
            cache.write_bytes(cache.read_bytes()[:100])
        else:
            cache.write_bytes(b"x" * 5000)
        with Library.open(lib.path) as again:
            got = [(r.path, r.score) for r in again.search("a cat", k=5)]
        assert [p for p, _ in got] == [p for p, _ in expected]
        lib.index([photos])  # a writer publishes a good cache again


def test_help_does_not_import_heavy_modules():
    code = (
        "import sys\n"
        "from clipsearch.cli import cli\n"
        "try:\n    cli(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'open_clip', 'faiss', 'torchvision', 'alembic', 'PIL', 'sqlalchemy') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_python_m_clipsearch_and_console_script(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "clipsearch", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "query" in proc.stdout
    exe = Path(sys.executable).parent / "clipsearch"
    proc = subprocess.run([str(exe), "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and "version" in proc.stdout


def test_schema_head_constant_matches_migrations():
    from clipsearch.store import SCHEMA_HEAD, head_revision

    assert SCHEMA_HEAD == head_revision()


def test_query_opens_while_a_writer_holds_a_transaction(lib, photos):
    """Opening a library and searching never needs the write lock."""
    lib.index([photos])
    import sqlite3 as sq

    writer = sq.connect(lib.path / "library.db", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("UPDATE meta SET value = value WHERE key = 'seq'")
    try:
        with Library.open(lib.path, create=False) as reader:
            reader.catalog._reader.dispose()
            assert len(reader.search("a red circle", k=3)) == 3
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_config_file_precedence(tmp_path, photos, tiny_model):
    """flag > CLIPSEARCH_* environment > config file > default."""
    from conftest import run_cli
    from clipsearch.config import load_default_map, param_names

    lib_a, lib_b, lib_c = (str(tmp_path / n) for n in ("a", "b", "c"))
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'library = "{lib_a}"\n[index]\nmodel = "{tiny_model}"\nbatch-size = 3\n[query]\nlimit = 2\n')
    env = {"CLIPSEARCH_CONFIG": str(cfg)}
    out = json.loads(run_cli("index", str(photos), "-q", "--json", env=env, check=True).stdout)
    # 10 images in batches of 3, from the file: 3, 3, 3, 1 whatever the decode threads' timing (batches are full but
    # the last; tests/test_indexer_batching.py forces the timings; a held-back full batch once got the 10th: 3, 3, 4)
    assert out["batches"] == 4
    assert len(json.loads(run_cli("query", "x", "--json", env=env, check=True).stdout)) == 2

    runner = CliRunner()
    defaults = param_names(cli, load_default_map(cfg))
    res = runner.invoke(cli, ["query", "x", "--json", "-k", "4"], default_map=defaults)
    assert len(json.loads(res.stdout)) == 4
    # the environment beats the file, the flag beats the environment
    res = runner.invoke(cli, ["index", str(photos), "-q"], env={"CLIPSEARCH_HOME": lib_b}, default_map=defaults)
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["index", str(photos), "-q", "--library", lib_c], env={"CLIPSEARCH_HOME": lib_b},
                        default_map=defaults)
    assert res.exit_code == 0, res.output
    assert all((Path(d) / "library.db").exists() for d in (lib_a, lib_b, lib_c))
    cfg.write_text("[nonsense\n")
    bad = run_cli("status", env=env)
    assert bad.returncode == 2 and "config file" in bad.stderr


def test_package_imports_from_any_directory(tmp_path):
    """The installed package (editable or not) is a regular package, not a namespace."""
    code = "import clipsearch; assert clipsearch.__file__, clipsearch.__path__; from clipsearch import Library"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr


def test_readme_configuration_section_is_true(tmp_path, monkeypatch):
    """The README's example config file gives the defaults it says, from the place it names."""
    import re

    import click

    from clipsearch.config import config_path, load_default_map, param_names

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("### Configuration"):]
    example = re.search(r"```toml\n(.*?)```", section, re.S).group(1)
    cfg = tmp_path / "config.toml"
    cfg.write_text(example)
    defaults = param_names(cli, load_default_map(cfg))
    assert defaults["index"] == {"library": "~/my-library", "model": "ViT-B-32:laion2b_s34b_b79k", "batch_size": 64,
                                 "workers": 2}
    assert defaults["query"] == {"library": "~/my-library", "k": 20}
    assert defaults["status"] == {"library": "~/my-library"}
    # the place: CLIPSEARCH_CONFIG, else $XDG_CONFIG_HOME/clipsearch/config.toml
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert config_path({}) == tmp_path / "xdg" / "clipsearch" / "config.toml"
    assert Path(click.get_app_dir("clipsearch")) == tmp_path / "xdg" / "clipsearch"
    assert config_path({"CLIPSEARCH_CONFIG": str(cfg)}) == cfg
    for name in ("CLIPSEARCH_HOME", "CLIPSEARCH_MODEL", "CLIPSEARCH_CONFIG", "CLIPSEARCH_DUPLICATES_THRESHOLD"):
        assert name in section
    envvars = {p.envvar for c in cli.commands.values() for p in c.params if getattr(p, "envvar", None)}
    assert envvars == {"CLIPSEARCH_HOME", "CLIPSEARCH_MODEL", "CLIPSEARCH_DUPLICATES_THRESHOLD"}  # all documented


def test_config_settings_no_command_takes_are_named_not_dropped_silently(tmp_path, photos, tiny_model):
    from conftest import run_cli

    lib = tmp_path / "lib"
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'library = "{lib}"\nlibary = "typo"\n[index]\nmodel = "{tiny_model}"\nbatch-size = 3\n'
                   '[query]\nlimt = 2\nlimit = 3\n')
    env = {"CLIPSEARCH_CONFIG": str(cfg)}
    run_cli("index", str(photos), "-q", env=env, check=True)
    res = run_cli("query", "x", "--json", env=env)
    assert res.returncode == 0 and len(json.loads(res.stdout)) == 3  # the known settings still apply
    warnings = [line for line in res.stderr.splitlines() if line.startswith("Warning: config file")]
    assert warnings == [f"Warning: config file {cfg}: no command has a setting 'libary'; it is ignored",
                        f"Warning: config file {cfg}: [query] has no setting 'limt'; it is ignored"]


def test_ctrl_c_before_a_command_runs_exits_130(monkeypatch):
    """Ctrl-C while click parses or while the group's callback runs: the same status as inside a command."""
    import clipsearch.cli as cli_module

    def interrupt(verbose=False):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_module, "configure_logging", interrupt)
    res = CliRunner().invoke(cli, ["status"])
    assert res.exit_code == 130 and "Interrupted." in res.stderr and "Aborted" not in res.stderr
