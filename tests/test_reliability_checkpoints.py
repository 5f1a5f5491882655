"""Untrusted checkpoints (reliability.md case 48): a pickle whose __reduce__ runs code, placed where a
checkpoint is expected, fails to load with a clear error and never runs its payload (a sentinel file)."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest

from clipsearch.errors import ModelUnavailableError

from conftest import make_image, run_cli, write_checkpoint


class Payload:
    def __init__(self, sentinel: Path):
        self.sentinel = str(sentinel)

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


def evil_files(directory: Path, sentinel: Path) -> dict[str, Path]:
    import torch

    directory.mkdir(parents=True, exist_ok=True)
    zip_pt = directory / "evil.pt"
    torch.save({"state_dict": {"w": Payload(sentinel)}}, zip_pt)  # torch's zip format, a pickle inside
    legacy = directory / "evil-legacy.bin"
    with open(legacy, "wb") as f:
        pickle.dump({"w": Payload(sentinel)}, f)  # a bare pickle
    return {"zip": zip_pt, "legacy": legacy}


def test_read_state_dict_refuses_code(tmp_path):
    from clipsearch.encoders.openclip import read_state_dict

    sentinel = tmp_path / "pwned"
    for kind, path in evil_files(tmp_path / "x", sentinel).items():
        with pytest.raises(ModelUnavailableError, match="refusing to load"):
            read_state_dict(path)
        assert not sentinel.exists(), kind
    # the control: the payload does run when unpickled without weights_only (so the test can fail)
    with open(tmp_path / "x" / "evil-legacy.bin", "rb") as f:
        pickle.load(f)
    assert sentinel.exists()


def cli_index(*args):
    """The CLI in this process (torch is imported already): the same code path as `clipsearch index`."""
    from click.testing import CliRunner

    from clipsearch.cli import cli

    res = CliRunner().invoke(cli, ["index", *args, "-q"])
    return res.exit_code, res.output


def test_cli_with_a_malicious_checkpoint_file_and_directory(tmp_path):
    import torch

    sentinel = tmp_path / "pwned"
    files = evil_files(tmp_path / "x", sentinel)
    photos = tmp_path / "photos"
    make_image(photos / "a.png", 1)
    # --model ARCH:/path/evil.pt
    code, out = cli_index(str(photos), "--library", str(tmp_path / "lib1"), "--model", f"ViT-B-32:{files['zip']}")
    assert code == 1 and "refusing to load" in out and "Traceback" not in out, out
    assert not sentinel.exists()
    # a checkpoint directory whose weights are open_clip_pytorch_model.bin
    good = write_checkpoint(tmp_path / "good")
    bad = tmp_path / "bad-ckpt"
    bad.mkdir()
    shutil.copy(good / "open_clip_config.json", bad)
    for kind in ("zip", "legacy"):
        shutil.copy(files[kind], bad / "open_clip_pytorch_model.bin")
        code, out = cli_index(str(photos), "--library", str(tmp_path / f"lib-{kind}"), "--model", str(bad))
        assert code == 1 and "refusing to load" in out, out
        assert not sentinel.exists(), kind
    # the control: the same directory with plain tensors in the .bin loads and indexes
    from safetensors.torch import load_file

    torch.save(load_file(str(good / "open_clip_model.safetensors")), bad / "open_clip_pytorch_model.bin")
    code, out = cli_index(str(photos), "--library", str(tmp_path / "lib-ok"), "--model", str(bad), "--json")
    assert code == 0, out
    assert json.loads(out)["added"] == 1
    # and one real child process, as a user runs it
    res = run_cli("index", str(photos), "--library", str(tmp_path / "lib2"), "--model", f"ViT-B-32:{files['zip']}", "-q")
    assert res.returncode == 1 and "refusing to load" in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert not sentinel.exists()


def test_no_pickle_of_our_own_artifacts():
    """Case 49: nothing in the package unpickles (np.load allow_pickle, pickle, joblib), so our files are data."""
    root = Path(__file__).resolve().parent.parent / "clipsearch"
    offenders = []
    for p in root.rglob("*.py"):
        text = p.read_text()
        for needle in ("import pickle", "pickle.load", "joblib", "allow_pickle=True"):
            if needle in text:
                offenders.append(f"{p.relative_to(root)}: {needle}")
        for needle in ("read_index(", "deserialize_index("):
            if needle in text and p.name != "vector_index.py":
                offenders.append(f"{p.relative_to(root)}: {needle}")
    assert not offenders, offenders
    # FAISS parses the cache only in VectorIndex.load, and only after the checksum of what it will parse
    import inspect

    from clipsearch import vector_index
    from clipsearch.vector_index import VectorIndex

    source = inspect.getsource(vector_index)
    load = inspect.getsource(VectorIndex.load)
    assert source.count("read_index(") == load.count("read_index(") == 1 and "deserialize_index(" not in source
    assert load.index('raise IntegrityError(f"{path}: checksum mismatch")') < load.index("read_index(")
