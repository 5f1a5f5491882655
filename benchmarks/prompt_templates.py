"""Do prompt templates help text queries on the demo model? recall@1/5 (full captions) and P@10 (partial
descriptions) of clipsearch/training/evaluate.py, with and without a few template sets.

    .venv/bin/python benchmarks/prompt_templates.py [--sample ../shared/shapes-sample] [--rendered 1000]

Text vectors are made exactly as a query makes them (search.text_vectors: each prompt embedded, the unit
vectors averaged); images and texts go through the library's own query-time towers (encoders/imagefast.py,
encoders/textfast.py, the same functions as the full model). Two folders: the spec's independent sample,
and images drawn by the project's renderer with a seed the demo model was not trained on.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TEMPLATE_SETS = {
    "none": (),
    "a photo of {}": ("a photo of {}",),
    "an image of {}": ("an image of {}",),
    "{} + photo/picture/image of {}": ("{}", "a photo of {}", "a picture of {}", "an image of {}"),
    "{} + there is {} + {} in the picture": ("{}", "there is {}", "{} in the picture"),
    "{} + a scene with {}": ("{}", "a scene with {}"),
}


class _Sources:
    def __init__(self, text):
        self.text = text

    def embed_texts(self, texts):
        return self.text.embed_texts(list(texts))


def measure(folder: Path, image_enc, text_enc) -> list[tuple[str, dict]]:
    from PIL import Image

    from clipsearch.search import text_vectors
    from clipsearch.training.evaluate import evaluate_embeddings, load_eval_folder

    paths, captions, scenes = load_eval_folder(folder)
    imgs = []
    for p in paths:
        with Image.open(p) as im:
            imgs.append(image_enc.preprocess(im.convert("RGB")))
    img = np.concatenate([image_enc.embed_batch(imgs[i:i + 64]) for i in range(0, len(imgs), 64)])
    out = []
    src = _Sources(text_enc)
    for name, templates in TEMPLATE_SETS.items():
        def embed(texts, templates=templates):
            return np.concatenate([text_vectors(list(texts[i:i + 256]), templates, src)
                                   for i in range(0, len(texts), 256)]).astype(np.float32)

        res = evaluate_embeddings(img, embed(list(captions)), captions, scenes, embed_texts=embed)
        out.append((name, {"recall@1": res["full_caption"]["recall@1"], "recall@5": res["full_caption"]["recall@5"],
                           "P@10 partial": res["partial"]["precision@10"]}))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sample", type=Path, default=REPO.parent / "shared" / "shapes-sample")
    ap.add_argument("--rendered", type=int, default=1000, help="images to render with a held-out seed (0: none)")
    ap.add_argument("--seed", type=int, default=424242)
    args = ap.parse_args()

    from clipsearch.encoders import parse_model_spec
    from clipsearch.encoders.imagefast import load_image_encoder
    from clipsearch.encoders.textfast import load_text_encoder

    spec = parse_model_spec("shapes")
    image_enc, text_enc = load_image_encoder(spec), load_text_encoder(spec)
    folders = []
    if (args.sample / "captions.csv").is_file():
        folders.append((f"shapes-sample ({args.sample.name}, independent renderer)", args.sample))
    tmp = tempfile.TemporaryDirectory()
    if args.rendered:
        from clipsearch.training.shapes import write_dataset

        write_dataset(Path(tmp.name), args.rendered, seed=args.seed)
        folders.append((f"rendered, {args.rendered} images, seed {args.seed}", Path(tmp.name)))
    for title, folder in folders:
        rows = measure(folder, image_enc, text_enc)
        print(f"\n{title}")
        print(f"  {'templates':<40} {'recall@1':>9} {'recall@5':>9} {'P@10 partial':>13}")
        for name, r in rows:
            print(f"  {name:<40} {r['recall@1']:>9.3f} {r['recall@5']:>9.3f} {r['P@10 partial']:>13.3f}")
    tmp.cleanup()


if __name__ == "__main__":
    main()
