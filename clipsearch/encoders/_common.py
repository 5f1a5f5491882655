"""What the open_clip encoder (openclip.py) and the numpy text tower (textfast.py) share, without torch.

Checkpoint layout, the weights' identity (a file's stat identity and its content hash, hashed once and
remembered), where open_clip's package data lives, and the reduced-vocabulary token remap.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path

import numpy as np

CONFIG_NAME = "open_clip_config.json"
SAFETENSORS_NAME = "open_clip_model.safetensors"
WEIGHT_NAMES = (SAFETENSORS_NAME, "open_clip_pytorch_model.bin", "open_clip_model.bin")
STAT_KEYS = ("size", "mtime_ns", "ctime_ns", "ino")


# -- checkpoint directories --------------------------------------------------------------------------
def read_checkpoint_config(directory: Path) -> dict | None:
    """A checkpoint directory's open_clip_config.json, or None when it has none."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def find_weights(directory: Path) -> Path | None:
    """The weights file of a checkpoint directory (safetensors first)."""
    return next((Path(directory) / n for n in WEIGHT_NAMES if (Path(directory) / n).is_file()), None)


def open_clip_dir() -> Path | None:
    """open_clip's package directory (its model configs and BPE vocabulary), found without importing it."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


# -- the weights' identity ----------------------------------------------------------------------------
def file_identity(path: str | os.PathLike) -> dict:
    """Where a file really is (symbolic links resolved, as in a Hugging Face cache) and its stat identity."""
    real = os.path.realpath(path)
    st = os.stat(real)
    return {"path": real, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns,
            "ino": st.st_ino}


def same_file(a: dict, b: dict) -> bool:
    """The same path with the same stat identity: its recorded hash can be trusted without reading it."""
    return a.get("path") == b.get("path") and all(a.get(k) == b.get(k) for k in STAT_KEYS)


def weights_source(path: str | os.PathLike, *, text: dict | None = None, known: dict | None = None) -> dict:
    """A weights file's record: its identity and sha256, and what the light text path needs (`text`).

    `known` is an earlier record (the library's): when its path and stat identity are this file's, its hash is
    trusted; otherwise the file is hashed (or its hash found in the per-user memo)."""
    ident = file_identity(path)
    if known and known.get("sha256") and same_file(known, ident):
        digest = known["sha256"]
    else:
        digest = sha256_file(ident["path"])
    kind = "safetensors" if str(path).endswith(".safetensors") else "torch"  # the name resolved, not the blob's
    return {**ident, "sha256": digest, "format": kind, "text": text}


def weights_label(digest: str) -> str:
    return f"sha256:{digest}"


def short_weights(weights_id: str | None) -> str:
    """`sha256:` and the first 12 hex digits: enough to tell two sets of weights apart in a message."""
    if isinstance(weights_id, str) and weights_id.startswith("sha256:"):
        return weights_id[:19]
    return str(weights_id)


def sha256_file(path: str | os.PathLike) -> str:
    """The file's sha256, remembered by (path, size, mtime, ctime, inode) in the user's cache directory:
    hashing 600 MB of weights costs ~0.75 s otherwise. The memo is only a shortcut: libraries record the hash
    themselves (identity.py), so a lost or unwritable memo costs time, never correctness."""
    path = Path(path)
    try:
        st = os.stat(path)
        key = f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}|{st.st_ino}"
    except OSError:
        key = None
    memo = _read_memo() if key else {}
    if key and key in memo:
        return memo[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    digest = h.hexdigest()
    if key:
        memo = {k: v for k, v in memo.items() if not k.startswith(os.path.abspath(path) + "|")}
        memo[key] = digest
        _write_memo(memo)
    return digest


def hash_cache_path() -> Path | None:
    """Where weight hashes are remembered (the user cache dir); None turns the memo off."""
    try:
        import platformdirs
    except ImportError:
        return None
    return Path(platformdirs.user_cache_dir("clipsearch")) / "weights-sha256.json"


def _read_memo() -> dict:
    p = hash_cache_path()
    try:
        data = json.loads(p.read_text()) if p else {}
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_memo(memo: dict) -> None:
    p = hash_cache_path()
    if p is None:
        return
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f"{p.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(dict(list(memo.items())[-64:])))
        os.replace(tmp, p)
    except OSError:  # a read-only home: hash again next time
        pass


# -- the reduced vocabulary ------------------------------------------------------------------------------
def remap_token_ids(tokens, token_ids) -> np.ndarray:
    """Original tokenizer ids -> a checkpoint's reduced vocabulary (training/vocab.py explains the layout):
    0 -> 0 (pad), the kept ids -> 2, 3, ... in ascending order of original id, any other id -> 1 (UNK)."""
    ids = np.array(sorted({int(t) for t in token_ids if int(t) != 0}), np.int64)
    tokens = np.asarray(tokens, dtype=np.int64)
    if ids.size == 0:
        return np.where(tokens == 0, 0, 1).astype(np.int64)
    pos = np.searchsorted(ids, np.clip(tokens, 0, None)).clip(max=ids.size - 1)
    out = np.where(ids[pos] == tokens, pos + 2, 1)
    return np.where(tokens == 0, 0, out).astype(np.int64)
