"""Which weights built a library: recorded by content (sha256) and checked on every index and query.

The two-cache reproduction (issue 10): two offline Hugging Face caches hold different random ViT-B-32
weights under the default model's tag. A library indexed with the first must refuse every full load
from the second, naming both, and its text queries must keep ranking as before. Also: a checkpoint
folder that moved is accepted under its new path when its weights are the same; libraries recorded
before the hash was kept go on working; and the first run fails well where weights cannot be fetched.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_MODEL_CFG, make_image, run_cli, write_checkpoint

from clipsearch.encoders import DEFAULT_MODEL

REPO = Path(__file__).resolve().parent.parent
ARCH, TAG = DEFAULT_MODEL.split(":")
COMMIT = "89abcdef0123456789abcdef0123456789abcdef"


# -- helpers ------------------------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def private_home(tmp_path, monkeypatch):
    """Nothing here reads or writes the user's own directories (the weight-hash memo lives in the cache dir)."""
    home = tmp_path / "home"
    for var, sub in (("HOME", ""), ("XDG_CACHE_HOME", ".cache"), ("XDG_DATA_HOME", ".local/share"),
                     ("XDG_CONFIG_HOME", ".config"), ("HF_HOME", ".cache/huggingface")):
        (home / sub).mkdir(parents=True, exist_ok=True)
        monkeypatch.setenv(var, str(home / sub))
    monkeypatch.delenv("CLIPSEARCH_HOME", raising=False)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    return home


@pytest.fixture(scope="module")
def vit_weights(tmp_path_factory):
    """Two different random ViT-B-32 checkpoints (safetensors), A and B, and the model of A."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("vit")
    out = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = open_clip.create_model(ARCH, pretrained=None)
        path = d / f"w{seed}.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
        out.append(path)
    return out[0], out[1]


def hf_cache(root: Path, weights: Path) -> Path:
    """A Hugging Face cache laid out as huggingface_hub writes one: the default tag's repo at one snapshot,
    whose file is a symbolic link to a blob (here a hard link to `weights`, so no copy is made)."""
    import open_clip

    repo = open_clip.get_pretrained_cfg(ARCH, TAG)["hf_hub"].strip("/")
    repo_dir = root / ("models--" + repo.replace("/", "--"))
    (repo_dir / "blobs").mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(COMMIT)
    blob = repo_dir / "blobs" / "weights-blob"
    os.link(weights, blob)
    snap = repo_dir / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    (snap / "open_clip_model.safetensors").symlink_to(os.path.relpath(blob, snap))
    return root


def sha(path: Path) -> str:
    return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()


def short(weights_id: str) -> str:
    return weights_id[:19]  # "sha256:" and 12 hex digits, as the messages print them


def env_for(cache: Path | None, **extra) -> dict:
    env = {"HF_HUB_OFFLINE": "1"}
    if cache is not None:
        env["HF_HUB_CACHE"] = str(cache)
    env.update(extra)
    return env


def meta(lib: Path) -> dict:
    con = sqlite3.connect(lib / "library.db")
    try:
        return dict(con.execute("SELECT key, value FROM meta"))
    finally:
        con.close()


def set_meta(lib: Path, **values) -> None:
    con = sqlite3.connect(lib / "library.db")
    try:
        with con:
            for k, v in values.items():
                if v is None:
                    con.execute("DELETE FROM meta WHERE key=?", (k,))
                else:
                    con.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (k, v))
    finally:
        con.close()


def text_query(lib: Path, env: dict, text: str = "a photo of a hand", k: int = 6):
    proc = run_cli("query", text, "--library", str(lib), "--json", "-k", str(k), env=env)
    return proc, (json.loads(proc.stdout) if proc.returncode == 0 else None)


@pytest.fixture
def photos(tmp_path):
    for i in range(6):
        make_image(tmp_path / "photos" / f"p{i}.png", 40 + i, size=(240, 200))
    return tmp_path / "photos"


# -- the two-cache reproduction -------------------------------------------------------------------------------
def test_two_caches_same_tag_other_weights_are_refused(tmp_path, vit_weights, photos):
    wa, wb = vit_weights
    cache_a, cache_b = hf_cache(tmp_path / "hf-a", wa), hf_cache(tmp_path / "hf-b", wb)
    lib = tmp_path / "lib"
    proc = run_cli("index", str(photos), "--library", str(lib), "-q", "--json", "--precision", "fp32",
                   env=env_for(cache_a))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["added"] == 6
    assert "Loading full pretrained weights" not in proc.stderr  # open_clip's logging: only with -v
    fp = json.loads(meta(lib)["model_fingerprint_json"])
    assert fp["weights"] == sha(wa)
    record = json.loads(meta(lib)["model_weights_json"])
    assert record["path"] == os.path.realpath(cache_a / next(cache_a.iterdir()).name / "blobs" / "weights-blob")
    assert record["text"]["model_cfg"]["text_cfg"]["width"] == 512

    proc, before = text_query(lib, env_for(cache_a))
    assert proc.returncode == 0, proc.stderr
    assert len(before) == 6

    # full loads from cache B: refused, naming both sets of weights. The first one without HF_HUB_OFFLINE
    # and with no hub to reach (a closed local port): the cached weights are used at once, no retries
    example = make_image(tmp_path / "not-indexed.png", 77, size=(240, 200))  # an indexed one needs no model
    no_hub = {"HF_HUB_CACHE": str(cache_b), "HF_HUB_OFFLINE": "", "HF_ENDPOINT": "http://127.0.0.1:9"}
    proc = run_cli("query", "--image", str(example), "--library", str(lib), env=no_hub)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "Retrying" not in proc.stderr
    assert short(sha(wa)) in proc.stderr and short(sha(wb)) in proc.stderr, proc.stderr
    make_image(photos / "new.png", 99, size=(240, 200))
    proc = run_cli("index", str(photos), "--library", str(lib), "-q", "-v", env=env_for(cache_b))
    assert proc.returncode == 1 and short(sha(wa)) in proc.stderr and short(sha(wb)) in proc.stderr, proc.stderr
    assert "Loading full pretrained weights" in proc.stderr  # -v lets open_clip's logging through
    assert meta(lib)["model_fingerprint_json"] == json.dumps(fp, sort_keys=True, separators=(",", ":"))

    # ... and the library's text queries rank exactly as before, whichever cache the environment names
    for cache in (cache_a, cache_b):
        proc, after = text_query(lib, env_for(cache))
        assert proc.returncode == 0, proc.stderr
        assert after == before

    # the weights file at the recorded path replaced by other bytes: the text query is refused
    blob = Path(record["path"])
    replacement = blob.with_name("replacement")
    shutil.copyfile(wb, replacement)
    os.replace(replacement, blob)
    proc, _ = text_query(lib, env_for(cache_a))
    assert proc.returncode == 1 and short(sha(wa)) in proc.stderr and short(sha(wb)) in proc.stderr, proc.stderr


def test_recorded_file_gone_then_a_library_from_before_the_hash(tmp_path, vit_weights, photos):
    """The recorded weights file gone: the full model is resolved by open_clip and checked, and the library
    records the new place. Then the same library as libraries were before the hash was kept (fingerprint
    weights `pretrained:TAG`, no record): accepted, hashed on its next full load, and checked from then on."""
    wa, wb = vit_weights
    cache_a = hf_cache(tmp_path / "hf-a", wa)
    lib = tmp_path / "lib"
    assert run_cli("index", str(photos), "--library", str(lib), "-q", "--precision", "fp32",
                   env=env_for(cache_a)).returncode == 0
    proc, before = text_query(lib, env_for(cache_a))
    assert proc.returncode == 0, proc.stderr
    shutil.rmtree(cache_a)  # the recorded blob is gone

    cache_c = hf_cache(tmp_path / "hf-c", wa)  # the same weights elsewhere
    proc, after = text_query(lib, env_for(cache_c))
    assert proc.returncode == 0, proc.stderr
    assert [r["path"] for r in after] == [r["path"] for r in before]
    assert np.allclose([r["score"] for r in after], [r["score"] for r in before], atol=1e-5)
    assert json.loads(meta(lib)["model_weights_json"])["path"].startswith(str(cache_c))

    old = json.loads(meta(lib)["model_fingerprint_json"])
    old["weights"] = f"pretrained:{TAG}"
    old_id = "0123456789abcdef"
    set_meta(lib, model_fingerprint_json=json.dumps(old, sort_keys=True, separators=(",", ":")),
             model_fingerprint=old_id, model_weights_json=None)
    proc, again = text_query(lib, env_for(cache_c))
    assert proc.returncode == 0, proc.stderr
    assert [r["path"] for r in again] == [r["path"] for r in before]
    m = meta(lib)
    assert json.loads(m["model_fingerprint_json"])["weights"] == sha(wa)
    assert json.loads(m["model_weights_json"])["sha256"] == sha(wa)[len("sha256:"):]
    assert m["model_fingerprint"] == old_id  # the cache file's header still matches: no rebuild

    shutil.rmtree(cache_c)
    cache_b = hf_cache(tmp_path / "hf-b", wb)
    proc, _ = text_query(lib, env_for(cache_b))
    assert proc.returncode == 1 and short(sha(wa)) in proc.stderr and short(sha(wb)) in proc.stderr, proc.stderr


def test_upgrade_note_is_logged(tmp_path, tiny_model, caplog):
    """The same upgrade in the Python API, for a library whose model is an ARCH:TAG name: a logged note."""
    import logging

    from clipsearch import identity
    from clipsearch.encoders import load_encoder
    from clipsearch.store import Catalog, dumps

    enc = load_encoder(tiny_model, device="cpu", precision="fp32")
    fp = {**enc.fingerprint, "model": "RN50:openai"}
    cat = Catalog.open(tmp_path / "library.db")
    try:
        legacy = dumps({**fp, "weights": "pretrained:openai"})
        cat.set_meta(model="RN50:openai", model_fingerprint="x", model_fingerprint_json=legacy,
                     dim=str(enc.dim))

        class Renamed:
            name, dim, weights_source = "RN50:openai", enc.dim, enc.weights_source
            fingerprint = fp

        with caplog.at_level(logging.INFO, logger="clipsearch"):
            identity.check_fingerprint(cat, tmp_path, Renamed())
        assert any("now records the weights" in r.getMessage() for r in caplog.records)
        assert json.loads(cat.get_meta("model_fingerprint_json"))["weights"] == enc.fingerprint["weights"]
    finally:
        cat.close()


# -- a checkpoint that moved ------------------------------------------------------------------------------------
def test_moved_checkpoint_is_accepted_under_its_new_path(tmp_path):
    from clipsearch import Library
    from clipsearch.errors import ModelMismatchError, ModelUnavailableError

    old = write_checkpoint(tmp_path / "ckpt", seed=3)
    for i in range(5):
        make_image(tmp_path / "photos" / f"p{i}.png", 200 + i)
    with Library.open(tmp_path / "lib", model=str(old), precision="fp32") as lib:
        lib.index([tmp_path / "photos"])
    with Library.open(tmp_path / "lib", precision="fp32") as lib:
        before = [(r.path, r.score) for r in lib.search("a red circle", k=5)]
    fid = meta(tmp_path / "lib")["model_fingerprint"]

    new = tmp_path / "moved" / "ckpt"
    new.parent.mkdir()
    os.rename(old, new)
    with Library.open(tmp_path / "lib", precision="fp32") as lib:
        with pytest.raises(ModelUnavailableError, match="--model NEWPATH"):
            lib.search("a red circle", k=5)
    with Library.open(tmp_path / "lib", model=str(new), precision="fp32") as lib:
        assert [(r.path, r.score) for r in lib.search("a red circle", k=5)] == before  # the light text path
    assert meta(tmp_path / "lib")["model"] == str(new)
    with Library.open(tmp_path / "lib", precision="fp32") as lib:  # no --model: the new place is remembered
        make_image(tmp_path / "photos" / "extra.png", 300)
        assert lib.index([tmp_path / "photos"]).added == 1  # a full load from the new path, checked
        assert type(lib.encoder).__name__ == "OpenClipEncoder"
    assert meta(tmp_path / "lib")["model_fingerprint"] == fid

    # the identity holds no path: the same weights elsewhere give the same fingerprint id
    other_lib = tmp_path / "lib2"
    with Library.open(other_lib, model=str(new), precision="fp32") as lib:
        lib.index([tmp_path / "photos"])
    assert meta(other_lib)["model_fingerprint"] == fid

    # other weights at yet another path: refused at once, naming both
    impostor = write_checkpoint(tmp_path / "impostor", seed=4)
    with pytest.raises(ModelMismatchError) as e:
        Library.open(tmp_path / "lib", model=str(impostor))
    assert short(sha(new / "open_clip_model.safetensors")) in str(e.value)
    assert short(sha(impostor / "open_clip_model.safetensors")) in str(e.value)
    # ... and a checkpoint replaced in place by other weights, too
    shutil.rmtree(new)
    shutil.copytree(impostor, new)
    with Library.open(tmp_path / "lib", precision="fp32") as lib:
        with pytest.raises(ModelMismatchError, match="sha256:"):
            lib.search("a red circle", k=5)


def test_old_fingerprint_format_of_a_checkpoint_keeps_working(tmp_path, tiny_model):
    """A library written before this change (fingerprint id over a dict holding the model's path, no weights
    record): searched and indexed as before, and the record is added."""
    from clipsearch import Library

    for i in range(4):
        make_image(tmp_path / "photos" / f"p{i}.png", 500 + i)
    with Library.open(tmp_path / "lib", model=tiny_model, precision="fp32") as lib:
        lib.index([tmp_path / "photos"])
    fp = json.loads(meta(tmp_path / "lib")["model_fingerprint_json"])
    set_meta(tmp_path / "lib", model_fingerprint="feedfacefeedface", model_weights_json=None)
    with Library.open(tmp_path / "lib", precision="fp32") as lib:
        assert len(lib.search("a red circle", k=3)) == 3
    record = json.loads(meta(tmp_path / "lib")["model_weights_json"])
    assert "sha256:" + record["sha256"] == fp["weights"]
    assert meta(tmp_path / "lib")["model_fingerprint"] == "feedfacefeedface"


def test_logit_scale_of_a_tag_model_is_read_from_the_library_record(tmp_path, tiny_model):
    """cutoff="auto" reads the model's logit scale from the weights file the library recorded (ARCH:TAG
    models have no path of their own; a per-user record used to say where the last load found them)."""
    import math

    from clipsearch import Library, cutoff
    from clipsearch.identity import recorded_weights

    make_image(tmp_path / "photos" / "a.png", 1)
    with Library.open(tmp_path / "lib", model=tiny_model, precision="fp32") as lib:
        lib.index([tmp_path / "photos"])
        recorded = recorded_weights(lib.catalog)
    assert recorded == Path(os.path.realpath(Path(tiny_model) / "open_clip_model.safetensors"))
    assert cutoff.model_logit_scale(DEFAULT_MODEL) is None
    assert math.isclose(cutoff.model_logit_scale(DEFAULT_MODEL, recorded), 1 / 0.07, rel_tol=1e-4)


# -- the first run, where weights cannot be fetched ---------------------------------------------------------
def _assert_short_help(err: str, tmp_path: Path) -> None:
    err = err.replace(str(tmp_path), "TMP")
    assert "Traceback" not in err and "Retrying" not in err and "huggingface_hub" not in err, err
    assert DEFAULT_MODEL in err and "--model shapes" in err and f"{ARCH}:/path/to/weights.safetensors" in err
    assert "checkpoint directory" in err and "HF_HOME" in err and "connect to the network" in err
    lines = err.strip().splitlines()
    assert 4 <= len(lines) <= 8 and max(len(line) for line in lines) < 180, err


def test_offline_without_weights_is_a_short_message(tmp_path, photos):
    proc = run_cli("index", str(photos), "--library", str(tmp_path / "lib"), "-q", env=env_for(tmp_path / "empty"))
    assert proc.returncode == 1
    assert "not in the Hugging Face cache" in proc.stderr
    _assert_short_help(proc.stderr, tmp_path)


def test_no_network_fails_at_once_with_the_short_message(tmp_path, photos):
    """No HF_HUB_OFFLINE and a hub that cannot be reached (a closed local port): no retries, the same help."""
    env = {"HF_HUB_CACHE": str(tmp_path / "empty"), "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": ""}
    proc = run_cli("index", str(photos), "--library", str(tmp_path / "lib"), "-q", env=env)
    assert proc.returncode == 1
    assert "http://127.0.0.1:9 cannot be reached" in proc.stderr
    _assert_short_help(proc.stderr, tmp_path)


def test_index_help_names_the_default_model():
    from click.testing import CliRunner

    from clipsearch.cli import cli

    res = CliRunner().invoke(cli, ["index", "--help"])
    assert res.exit_code == 0 and DEFAULT_MODEL in " ".join(res.output.split())
    assert "-v, --verbose" in res.output


def test_cli_logging_lets_other_libraries_through_only_when_verbose():
    """The CLI's logging: clipsearch's own warnings always; open_clip's (the root logger), huggingface_hub's
    and Python warnings only with -v."""
    code = (
        "import logging, sys, warnings\n"
        "from clipsearch.cli_logging import configure_logging\n"
        "configure_logging(sys.argv[1] == 'verbose')\n"
        "import huggingface_hub.file_download  # as a download does: its own handler on 'huggingface_hub'\n"
        "logging.warning('open_clip style warning')\n"
        "logging.info('open_clip style info')\n"
        "logging.getLogger('huggingface_hub.utils._http').warning('Retrying in 1s')\n"
        "logging.getLogger('clipsearch.library').warning('our warning')\n"
        "warnings.warn('a python warning')\n"
    )
    runs = {}
    for mode in ("quiet", "verbose"):
        out = subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True, cwd=REPO, timeout=120,
                             env={k: v for k, v in os.environ.items() if k != "HF_HUB_VERBOSITY"})
        assert out.returncode == 0, out.stderr
        runs[mode] = out.stderr
    assert runs["quiet"].strip() == "our warning"
    verbose = runs["verbose"]
    for text in ("open_clip style warning", "open_clip style info", "our warning", "a python warning"):
        assert text in verbose, verbose
    assert verbose.count("Retrying in 1s") == 1, verbose  # huggingface_hub's own handler, not twice


def test_hub_probe_reports_a_closed_port():
    from clipsearch.encoders.hub import probe

    assert "refused" in probe("http://127.0.0.1:9")


# -- encoder module hygiene ---------------------------------------------------------------------------------
def test_encoders_do_not_import_training():
    for path in sorted((REPO / "clipsearch" / "encoders").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                name = ("." * node.level) + (node.module or "")
                assert "training" not in name, f"{path.name} imports {name}"
            elif isinstance(node, ast.Import):
                assert not any("training" in a.name for a in node.names), path.name
        assert len(path.read_text().splitlines()) <= 500, f"{path.name} is over 500 lines"


def test_reduced_vocabulary_model_loads_without_the_training_package(tmp_path):
    """The shipped `shapes` layout (token remap) through the full model and the numpy tower, in a process
    that never imports clipsearch.training."""
    from clipsearch.training.vocab import normalize_token_ids, token_ids_for_texts

    keep = normalize_token_ids(token_ids_for_texts(["a red circle", "a blue square"]))
    cfg = json.loads(json.dumps(TINY_MODEL_CFG))
    cfg["text_cfg"]["vocab_size"] = len(keep) + 2
    d = write_checkpoint(tmp_path / "reduced", cfg, seed=6)
    conf = json.loads((d / "open_clip_config.json").read_text())
    conf["clipsearch"]["token_ids"] = keep
    (d / "open_clip_config.json").write_text(json.dumps(conf))
    code = (
        "import sys, numpy as np\n"
        "from clipsearch.encoders import load_encoder, parse_model_spec\n"
        "from clipsearch.encoders.textfast import load_text_encoder\n"
        "full = load_encoder(sys.argv[1], device='cpu', precision='fp32')\n"
        "light = load_text_encoder(parse_model_spec(sys.argv[1]))\n"
        "t = ['a red circle', 'a blue zebra']\n"
        "assert np.array_equal(full.loaded.tokenize(t).numpy(), light.tokenize(t))\n"
        "assert full.loaded.tokenize(t)[1].tolist().count(1) == 1  # 'zebra' is UNK\n"
        "print(sorted(m for m in sys.modules if m.startswith('clipsearch.training')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(d)], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_full_model_text_is_open_clips_encode_text(tiny_model, precision):
    """One text tower besides open_clip's own: the full model's embed_texts is open_clip's encode_text (in
    bf16 too, where only the image tower is mixed), and the numpy tower agrees with it."""
    import torch

    from clipsearch.encoders import l2_normalize, load_encoder, parse_model_spec
    from clipsearch.encoders.textfast import load_text_encoder

    texts = ["a red circle", "Ünïcödé &amp; café", "x " * 40, ""]
    enc = load_encoder(tiny_model, device="cpu", precision=precision)
    with torch.inference_mode():
        ref = l2_normalize(enc.loaded.model.encode_text(enc.loaded.tokenize(texts)).float().numpy())
    assert np.array_equal(enc.embed_texts(texts), ref)
    fp32 = load_encoder(tiny_model, device="cpu", precision="fp32")
    assert np.array_equal(enc.embed_texts(texts), fp32.embed_texts(texts))
    light = load_text_encoder(parse_model_spec(tiny_model))
    assert np.sum(light.embed_texts(texts) * enc.embed_texts(texts), axis=1).min() >= 0.99999


def test_warm_query_after_index_agrees_with_a_fresh_library(tmp_path, tiny_model):
    """The same Library object after index (its full model answers) and a freshly opened one (the numpy
    tower answers): the same results, in the default precision."""
    from clipsearch import Library

    for i in range(8):
        make_image(tmp_path / "photos" / f"p{i}.png", 700 + i)
    with Library.open(tmp_path / "lib", model=tiny_model) as lib:
        lib.index([tmp_path / "photos"])
        warm = lib.search("a red circle", k=8)
    with Library.open(tmp_path / "lib") as lib:
        cold = lib.search("a red circle", k=8)
        assert type(lib.text_encoder()).__name__ == "NumpyTextEncoder"
    assert [r.path for r in warm] == [r.path for r in cold]
    assert np.allclose([r.score for r in warm], [r.score for r in cold], atol=1e-5)


def test_encoders_have_what_the_protocol_states(tiny_model):
    from clipsearch.encoders import Encoder, TextEncoder, load_encoder, parse_model_spec
    from clipsearch.encoders.textfast import load_text_encoder

    def members(proto) -> set[str]:
        names = set()
        for klass in proto.__mro__:
            if klass in (object,) or klass.__name__ in ("Protocol", "Generic"):
                continue
            names.update(getattr(klass, "__annotations__", {}))
            names.update(k for k, v in vars(klass).items()
                         if not k.startswith("_") and (callable(v) or isinstance(v, property)))
        return names

    full = load_encoder(tiny_model, device="cpu", precision="fp32")
    light = load_text_encoder(parse_model_spec(tiny_model))
    assert {"preprocess", "embed_batch", "image_size", "fingerprint", "weights_source"} <= members(Encoder)
    assert [m for m in sorted(members(Encoder)) if not hasattr(full, m)] == []
    assert [m for m in sorted(members(TextEncoder)) if not hasattr(light, m)] == []
    assert hasattr(full.tokenizer, "encode") and hasattr(light.tokenizer, "encode")
