"""The Encoder seam: anything that turns images and texts into unit vectors.

Nothing here imports torch (nor numpy, so the CLI can name DEFAULT_MODEL in its help cheaply);
`load_encoder` imports the open_clip implementation lazily.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, Sequence

from ..errors import ConfigError, ModelUnavailableError

if TYPE_CHECKING:
    import numpy as np

BUILTIN_MODELS = {"shapes": "the offline demo model trained on the shapes domain (ships with clipsearch)"}
DEFAULT_MODEL = "ViT-B-32:laion2b_s34b_b79k"


class TextEncoder(Protocol):
    """What a text query needs: the full model (openclip.OpenClipEncoder) or its text tower in numpy
    (textfast.NumpyTextEncoder). Rows are L2-normalised, C-contiguous float32 of shape (n, dim)."""

    name: str  # the --model value as parse_model_spec spells it
    dim: int
    tokenizer: object  # .encode(text) -> token ids: counts a query's tokens (the library warns when it is cut)
    context_length: int  # tokens the text tower reads, start and end tokens included

    @property
    def fingerprint(self) -> dict: ...  # identity.py compares it with the library's (all but "model")

    @property
    def weights_source(self) -> dict: ...  # _common.weights_source: the weights file, its identity and sha256

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray: ...


class Encoder(TextEncoder, Protocol):
    """What indexing and image queries use besides: preprocess (in the decoding threads), then embed_batch
    (in the main thread). A stand-in (tests) may leave out tokenizer, context_length and weights_source."""

    image_size: int  # the model's input side: JPEGs are decoded in draft mode down to about this size

    def preprocess(self, image) -> object: ...  # an RGB PIL image -> the model's input tensor

    def embed_batch(self, tensors: Sequence) -> np.ndarray: ...

    def embed_images(self, images: Sequence) -> np.ndarray: ...  # preprocess + embed_batch


@dataclass(frozen=True)
class ModelSpec:
    """A parsed `--model` value.

    kind is one of:
      builtin   a model shipped inside the package (`shapes`); path is its checkpoint directory
      dir       a checkpoint directory (open_clip_config.json + weights), as `clipsearch train` writes
      file      `ARCH:/path/to/weights.safetensors` (or .pt/.bin, loaded with weights_only=True)
      pretrained `ARCH:TAG`, fetched and cached by open_clip (Hugging Face cache)
      hf-hub    `hf-hub:org/repo`, fetched and cached by open_clip
    """

    name: str
    kind: str
    arch: str | None = None
    pretrained: str | None = None
    path: Path | None = None


def builtin_model_dir(name: str) -> Path:
    return Path(__file__).resolve().parent.parent / "models" / name


def parse_model_spec(name: str) -> ModelSpec:
    name = (name or "").strip()
    if not name:
        raise ConfigError("empty model name")
    if name in BUILTIN_MODELS:
        return ModelSpec(name=name, kind="builtin", path=builtin_model_dir(name))
    if name.startswith("hf-hub:"):
        return ModelSpec(name=name, kind="hf-hub", arch=name)
    if name.startswith("local-dir:"):
        name = name[len("local-dir:"):]
    expanded = Path(os.path.expanduser(name))
    if expanded.is_dir():
        path = expanded.resolve()
        return ModelSpec(name=str(path), kind="dir", path=path)
    if ":" not in name and (os.sep in name or name.startswith(("~", "."))):
        raise ModelUnavailableError(
            f"the model checkpoint directory {name} does not exist. If it was moved, give its new place with "
            f"--model NEWPATH (a library accepts it when its weights are the same)")
    if ":" in name:
        arch, _, rest = name.partition(":")
        if not arch or not rest:
            raise ConfigError(f"model {name!r} is not of the form ARCH:PRETRAINED or ARCH:/path/to/weights")
        rest_path = Path(os.path.expanduser(rest))
        if rest_path.suffix in (".safetensors", ".pt", ".pth", ".bin") or os.sep in rest:
            if not rest_path.is_file():
                raise ConfigError(f"model weights file {rest} does not exist (if it was moved, give its new place "
                                  f"with --model {arch}:NEWPATH)")
            path = rest_path.resolve()
            return ModelSpec(name=f"{arch}:{path}", kind="file", arch=arch, path=path)
        return ModelSpec(name=name, kind="pretrained", arch=arch, pretrained=rest)
    raise ConfigError(
        f"unknown model {name!r}: use ARCH:PRETRAINED (e.g. {DEFAULT_MODEL}), ARCH:/path/to/weights, "
        f"a checkpoint directory, or one of: {', '.join(BUILTIN_MODELS)}"
    )


def load_encoder(name: str, *, device: str = "auto", precision: str = "auto", cache_dir: str | None = None) -> Encoder:
    """Load a model strictly (never random weights) as an Encoder."""
    from .openclip import OpenClipEncoder

    return OpenClipEncoder.load(parse_model_spec(name), device=device, precision=precision, cache_dir=cache_dir)


def l2_normalize(x: "np.ndarray") -> "np.ndarray":
    import numpy as np

    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return np.ascontiguousarray(x / norms, dtype=np.float32)
