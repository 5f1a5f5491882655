"""The model identity a library records: which weights built its vectors, checked on every index and query.

A library stores its model's fingerprint (architecture, weights identity, preprocessing, dimension) in
the catalog's meta when its first vectors are written; every later load of the model is compared with it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .errors import ModelMismatchError
from .store import Catalog, dumps


def fingerprint_id(fp: dict) -> str:
    return hashlib.sha256(dumps(fp).encode()).hexdigest()[:16]


def _mismatch(path: Path, stored: dict, default_name: str | None, fp: dict) -> ModelMismatchError:
    return ModelMismatchError(
        f"the library at {path} was built with model {stored.get('model', default_name)} "
        f"(weights {stored.get('weights')}, dim {stored.get('dim')}); the model now loaded is {fp.get('model')} "
        f"(weights {fp.get('weights')}, dim {fp.get('dim')}). Its vectors would not be comparable; "
        f"index into another --library"
    )


def check_fingerprint(catalog: Catalog, path: Path, encoder) -> None:
    """Record the encoder's fingerprint in a library that has none; refuse one that differs."""
    fp = dict(encoder.fingerprint)
    fid = fingerprint_id(fp)
    meta = catalog.all_meta()
    stored = meta.get("model_fingerprint")
    if stored is None:
        catalog.set_meta(model_fingerprint=fid, model_fingerprint_json=dumps(fp), dim=str(encoder.dim))
    elif stored != fid:
        raise _mismatch(path, json.loads(meta.get("model_fingerprint_json", "{}")), meta.get("model"), fp)


def check_text_fingerprint(catalog: Catalog, path: Path, light) -> None:
    """The light text tower (encoders/textfast.py) must be the library's model too."""
    stored = json.loads(catalog.get_meta("model_fingerprint_json") or "{}")
    mine = {"model": light.name, "arch": light.arch, "weights": light.weights_id, "dim": light.dim}
    if any(stored.get(k) != v for k, v in mine.items()):
        raise _mismatch(path, stored, catalog.get_meta("model"), mine)


def load_light_text_encoder(catalog: Catalog, path: Path, model_name: str):
    """The library's text tower in numpy (no torch import), checked against the library; None when it
    does not cover this model (the full model answers then)."""
    from .encoders import parse_model_spec
    from .encoders.textfast import load_text_encoder

    light = load_text_encoder(parse_model_spec(model_name))
    if light is not None:
        check_text_fingerprint(catalog, path, light)
    return light
