"""Retrieval quality of a model on a captioned folder (and, for the shapes domain, its scenes).

Three measures, as search uses them (embeddings come from `clipsearch.encoders.load_encoder`, so
eval measures exactly what `index`/`query` see):

- full captions: each image's caption is a text query over all images; recall@1/5/10 = share of
  queries whose image ranks within the first 1/5/10 (an image with an identical caption also
  counts as a hit).
- partial descriptions (needs scenes.jsonl): the spec's query kinds generated from the scenes,
  `a {shape}`, `a {color} {shape}`, `a {size} {color} {shape}`, `a {shape} {position}`,
  `a {color} {shape} {position}`; a result is relevant when one of its objects has every named
  attribute.
- example image (needs scenes.jsonl): each image is a query over the OTHER images; a result is
  relevant when it shares one (color, shape) pair with the query.

precision@10 is the share of relevant results in the first 10, divided by min(10, number of
relevant images): a query with only 4 relevant images scores 1.0 when those 4 rank first. (On 200
images a given (color, shape) occurs in ~6 images, so undivided precision@10 has a ceiling far
below 1; it is reported too, as `precision@10_raw`, with its ceiling.) Queries with no relevant
image are skipped. The headline precision@10 is the mean over queries.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

PARTIAL_KINDS = {
    "shape": dict(size=False, color=False, shape=True, position=False),
    "color shape": dict(size=False, color=True, shape=True, position=False),
    "size color shape": dict(size=True, color=True, shape=True, position=False),
    "shape position": dict(size=False, color=False, shape=True, position=True),
    "color shape position": dict(size=False, color=True, shape=True, position=True),
}


# --------------------------------------------------------------------------- metrics (pure)

def ranks_of(sim: np.ndarray) -> np.ndarray:
    """Indices of each row sorted by decreasing similarity (stable: ties keep index order)."""
    return np.argsort(-sim, axis=1, kind="stable")


def recall_at_k(sim: np.ndarray, hits: np.ndarray, ks: Sequence[int] = (1, 5, 10)) -> dict:
    """sim (q, n); hits (q, n) bool: the images counted as the query's own. Returns recall@k."""
    order = ranks_of(sim)
    out = {}
    for k in ks:
        top = order[:, :k]
        out[f"recall@{k}"] = float(np.mean(np.take_along_axis(hits, top, 1).any(1))) if len(sim) else float("nan")
    return out


def precision_at_k(sim: np.ndarray, relevant: np.ndarray, k: int = 10, exclude: np.ndarray | None = None) -> dict:
    """Mean precision@k over queries with >= 1 relevant item.

    exclude (q, n) bool: items removed from a query's ranking (e.g. the query image itself).
    Returns precision@k (divided by min(k, #relevant)), precision@k_raw (divided by k), the raw
    ceiling, and the number of queries used; per_query holds the normalised values.
    """
    sim = np.array(sim, dtype=np.float64, copy=True)
    relevant = np.asarray(relevant, dtype=bool)
    if exclude is not None:
        sim[exclude] = -np.inf
        relevant = relevant & ~exclude
    n_rel = relevant.sum(1)
    keep = n_rel > 0
    if not keep.any():
        return {f"precision@{k}": float("nan"), f"precision@{k}_raw": float("nan"), "raw_ceiling": float("nan"), "n_queries": 0, "per_query": []}
    order = ranks_of(sim[keep])
    top = order[:, :k]
    got = np.take_along_axis(relevant[keep], top, 1).sum(1)
    denom = np.minimum(k, n_rel[keep])
    norm = got / denom
    return {
        f"precision@{k}": float(norm.mean()),
        f"precision@{k}_raw": float((got / k).mean()),
        "raw_ceiling": float((denom / k).mean()),
        "n_queries": int(keep.sum()),
        "per_query": norm.tolist(),
    }


# --------------------------------------------------------------------------- shapes queries

def _obj_has(obj: dict, q: dict) -> bool:
    return all(obj.get(k) == v if k != "cell" else list(obj["cell"]) == list(v) for k, v in q.items())


def partial_queries(scenes: Sequence[dict]) -> list[tuple[str, str, dict]]:
    """(kind, text, attributes) for every distinct partial description of an object in the scenes."""
    from .shapes import partial_description

    seen: dict[str, tuple[str, str, dict]] = {}
    for s in scenes:
        for o in s["objects"]:
            for kind, flags in PARTIAL_KINDS.items():
                text = partial_description(o, **flags)
                if text in seen:
                    continue
                attrs = {"shape": o["shape"]}
                if flags["color"]:
                    attrs["color"] = o["color"]
                if flags["size"]:
                    attrs["size"] = o["size"]
                if flags["position"]:
                    attrs["cell"] = list(o["cell"])
                seen[text] = (kind, text, attrs)
    return list(seen.values())


def partial_relevance(scenes: Sequence[dict], queries: Sequence[tuple[str, str, dict]]) -> np.ndarray:
    rel = np.zeros((len(queries), len(scenes)), dtype=bool)
    for qi, (_, _, attrs) in enumerate(queries):
        for j, s in enumerate(scenes):
            rel[qi, j] = any(_obj_has(o, attrs) for o in s["objects"])
    return rel


def example_relevance(scenes: Sequence[dict]) -> np.ndarray:
    pairs = [{(o["color"], o["shape"]) for o in s["objects"]} for s in scenes]
    n = len(scenes)
    rel = np.zeros((n, n), dtype=bool)
    for i in range(n):
        for j in range(n):
            rel[i, j] = bool(pairs[i] & pairs[j])
    return rel


# --------------------------------------------------------------------------- evaluation

def evaluate_embeddings(img: np.ndarray, txt_caps: np.ndarray, captions: Sequence[str], scenes: Sequence[dict] | None,
                        embed_texts: Callable[[list[str]], np.ndarray] | None = None) -> dict:
    """All measures from unit-norm embeddings; embed_texts is needed for partial descriptions."""
    img = np.asarray(img, dtype=np.float32)
    caps = np.array(list(captions), dtype=object)
    res: dict = {"n_images": int(len(img))}
    sim = np.asarray(txt_caps, dtype=np.float32) @ img.T
    hits = caps[:, None] == caps[None, :]
    res["full_caption"] = {**recall_at_k(sim, hits), "n_queries": int(len(caps))}
    if scenes is not None:
        if embed_texts is not None:
            qs = partial_queries(scenes)
            rel = partial_relevance(scenes, qs)
            q_emb = embed_texts([q[1] for q in qs])
            p = precision_at_k(q_emb @ img.T, rel)
            per = np.array(p.pop("per_query"))
            kinds = np.array([q[0] for q in qs])
            kept = rel.any(1)
            by_kind = {}
            for kind in PARTIAL_KINDS:
                sel = kinds[kept] == kind
                if sel.any():
                    by_kind[kind] = {"precision@10": float(per[sel].mean()), "n_queries": int(sel.sum())}
            p["by_kind"] = by_kind
            res["partial"] = p
        eye = np.eye(len(img), dtype=bool)
        p = precision_at_k(img @ img.T, example_relevance(scenes), exclude=eye)
        p.pop("per_query")
        res["example_image"] = p
    return res


def load_eval_folder(folder: str | Path):
    """(paths, captions, scenes or None) of a captioned folder."""
    from .data import read_captioned_folder, resolve_image_path

    folder = Path(folder)
    items = read_captioned_folder(folder)
    scenes = [it.scene for it in items]
    if any(s is None for s in scenes):
        scenes = None
    return [resolve_image_path(folder, it.file) for it in items], [it.caption for it in items], scenes


def evaluate(folder: str | Path, model: str = "shapes", *, encoder=None, batch_size: int = 64,
             progress: Callable[[int], None] | None = None) -> dict:
    """Evaluate a model (a `--model` value, or a ready Encoder) on a captioned folder; returns a dict."""
    from PIL import Image

    t0 = time.time()
    paths, captions, scenes = load_eval_folder(folder)
    if encoder is None:
        encoder = get_encoder(model)
    embs = []
    for i in range(0, len(paths), batch_size):
        ims = []
        for p in paths[i:i + batch_size]:
            with Image.open(p) as im:
                ims.append(im.convert("RGB"))
        embs.append(encoder.embed_images(ims))
        if progress is not None:
            progress(len(ims))
    img = np.concatenate(embs)
    txt = encoder.embed_texts(list(captions))
    res = evaluate_embeddings(img, txt, captions, scenes, embed_texts=lambda t: encoder.embed_texts(list(t)))
    res["model"] = getattr(encoder, "name", model)
    res["folder"] = str(folder)
    res["seconds"] = round(time.time() - t0, 2)
    return res


def get_encoder(model: str):
    """clipsearch's own encoder (what index/query use); a local fallback until it exists."""
    try:
        from ..encoders import openclip as _oc  # noqa: F401
    except ImportError:
        return LocalEncoder(model)
    from ..encoders import load_encoder

    return load_encoder(model, device="cpu")


class LocalEncoder:
    """Encoder over models.load_model (used only when clipsearch.encoders.openclip is missing)."""

    def __init__(self, model: str):
        import torch

        from .models import load_model

        self.lm = load_model(model)
        self.lm.model.eval()
        self.name = model
        self.dim = int(self.lm.model_cfg["embed_dim"])
        self._torch = torch

    def embed_images(self, images) -> np.ndarray:
        from .data import normalize_batch, preprocess_to_uint8

        with self._torch.no_grad():
            x = normalize_batch(preprocess_to_uint8(images, self.lm.preprocess_cfg), self.lm.preprocess_cfg)
            return self.lm.model.encode_image(x, normalize=True).float().numpy()

    def embed_texts(self, texts) -> np.ndarray:
        out = []
        with self._torch.no_grad():
            for i in range(0, len(texts), 256):
                out.append(self.lm.model.encode_text(self.lm.tokenize(texts[i:i + 256]), normalize=True).float().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)


def headline(res: dict) -> dict:
    """The four figures the demo model is judged on."""
    return {
        "partial precision@10": res.get("partial", {}).get("precision@10"),
        "full recall@1": res["full_caption"]["recall@1"],
        "full recall@5": res["full_caption"]["recall@5"],
        "example precision@10": res.get("example_image", {}).get("precision@10"),
    }
