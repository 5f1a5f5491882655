"""bfloat16 against float32 on the shipped shapes demo model: how many search outcomes stay the same.

    python benchmarks/bf16_agreement.py [--sample DIR]   # default: ../shared/shapes-sample beside the checkout

Runs the evaluation's searches over the independent shapes sample (partial descriptions with their
relevance, full captions, example images) once in fp32 and once in bf16 and prints, side by side:
- evaluation outcomes: each search's precision@10 count (partial descriptions, example images) or its
  recall@1 / recall@5 hit (full captions), and how many of them are identical in bf16;
- top-10 lists identical in order, and the differing ones split into swaps among results whose fp32
  scores are within NEAR_TIE of each other (bf16's own score noise) and real changes;
- the minimum cosine between the fp32 and bf16 embedding of every image and every text.
tests/test_perf.py::test_bf16_keeps_shapes_demo_rankings asserts on the same computation (no real changes).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(REPO))  # this checkout's clipsearch, installed or not
from _common import machine, versions  # noqa: E402

NEAR_TIE = 2e-3  # bf16's own noise on a cosine score (measured max |error| 0.0026 on the shapes sample)


def default_sample() -> Path:
    given = os.environ.get("CLIPSEARCH_SHAPES_SAMPLE")
    return Path(given) if given else REPO.parent / "shared" / "shapes-sample"


def shapes_outcomes(model: str, sample: Path) -> dict:
    """fp32 and bf16 runs of the evaluation's searches over `sample`: top-10 lists, scores, outcomes, embeddings."""
    from clipsearch import imaging
    from clipsearch.encoders import load_encoder
    from clipsearch.training.evaluate import example_relevance, load_eval_folder, partial_queries, partial_relevance

    paths, captions, scenes = load_eval_folder(sample)
    qs = partial_queries(scenes)
    rel, ex = partial_relevance(scenes, qs), example_relevance(scenes)
    out = {}
    for precision in ("fp32", "bf16"):
        enc = load_encoder(model, device="cpu", precision=precision)
        assert enc.precision == precision, (enc.precision, precision)
        tensors = [enc.preprocess(imaging.decode(Path(p).read_bytes(), draft=enc.image_size)[0]) for p in paths]
        img = np.concatenate([enc.embed_batch(tensors[i:i + 64]) for i in range(0, len(tensors), 64)])
        part, caps = enc.embed_texts([q[1] for q in qs]), enc.embed_texts(list(captions))
        s_img = img @ img.T
        np.fill_diagonal(s_img, -np.inf)  # an example image's own file is not a result
        runs = [("partial", part @ img.T, rel), ("caption", caps @ img.T, None), ("example", s_img, ex)]
        tops, scores, judged = [], [], []
        for kind, sim, relevant in runs:
            for qi in range(len(sim)):
                order = np.argsort(-sim[qi], kind="stable")
                tops.append(order[:10])
                scores.append(sim[qi])
                if relevant is not None:
                    judged.append((kind, qi, int(relevant[qi, order[:10]].sum())))  # precision@10's numerator
                else:
                    r = int(np.where(order == qi)[0][0])
                    judged.append((kind, qi, r < 1, r < 5))  # recall@1, recall@5
        out[precision] = {"img": img, "txt": np.concatenate([part, caps]), "tops": tops, "scores": scores,
                          "judged": judged}
    return out


def agreement(r: dict) -> dict:
    """What stayed the same in bf16, and every top-10 change that is not a swap among fp32 near-ties."""
    f, b = r["fp32"], r["bf16"]
    changed, near_ties = [], 0
    for qi, (t32, t16, s32) in enumerate(zip(f["tops"], b["tops"], f["scores"])):
        if np.array_equal(t32, t16):
            continue
        if set(t32) != set(t16):
            # a result entering or leaving at the cut-off must tie with the one it displaces
            gone, came = sorted(set(t32) - set(t16)), sorted(set(t16) - set(t32))
            worst, kind = float(max(s32[gone]) - min(s32[came])), "set"
        else:
            worst, kind = float(np.abs(s32[t32] - s32[t16]).max()), "order"
        if worst > NEAR_TIE:
            changed.append((qi, kind, worst))
        else:
            near_ties += 1
    n = len(f["judged"])
    return {
        "outcomes": n,
        "identical_outcomes": sum(x == y for x, y in zip(f["judged"], b["judged"])),
        "identical_top10": sum(np.array_equal(x, y) for x, y in zip(f["tops"], b["tops"])),
        "near_tie_swaps": near_ties,
        "changed_beyond_near_ties": changed,
        "min_cosine_images": float(np.sum(f["img"] * b["img"], axis=1).min()),
        "min_cosine_texts": float(np.sum(f["txt"] * b["txt"], axis=1).min()),
        "max_score_error": float(max(np.abs(x[np.isfinite(x)] - y[np.isfinite(x)]).max()
                                     for x, y in zip(f["scores"], b["scores"]))),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sample", type=Path, default=default_sample(), help="the shapes sample folder")
    ap.add_argument("--model", default="shapes")
    args = ap.parse_args()
    if not (args.sample / "scenes.jsonl").is_file():
        raise SystemExit(f"no shapes sample at {args.sample} (give --sample DIR)")
    print(f"# {machine()}\n# {versions()}\n# model {args.model}, sample {args.sample}")
    a = agreement(shapes_outcomes(args.model, args.sample))
    n = a["outcomes"]
    print(f"evaluation outcomes (P@10 counts, R@1/R@5 hits) identical to fp32: {a['identical_outcomes']} of {n}")
    print(f"top-10 lists identical to fp32: {a['identical_top10']} of {n}; the others: {a['near_tie_swaps']} swaps "
          f"among fp32 near-ties (within {NEAR_TIE}), {len(a['changed_beyond_near_ties'])} other changes")
    print(f"minimum cosine bf16 to fp32: images {a['min_cosine_images']:.6f}, texts {a['min_cosine_texts']:.6f}; "
          f"largest score difference {a['max_score_error']:.4f}")
    print(json.dumps(a))


if __name__ == "__main__":
    main()
