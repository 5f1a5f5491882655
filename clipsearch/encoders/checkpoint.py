"""Reading checkpoint weights safely and building an open_clip model around them, strictly: every weight
of the architecture is loaded from the file, or ModelUnavailableError; never a randomly initialised model."""

from __future__ import annotations

import logging
from pathlib import Path

from ..errors import ModelUnavailableError
from . import ModelSpec

logger = logging.getLogger(__name__)


def unavailable(spec: ModelSpec, why: str) -> ModelUnavailableError:
    return ModelUnavailableError(f"cannot load model {spec.name}: {why}")


def read_state_dict(path: Path) -> dict:
    """Weights from safetensors, or a torch file loaded with weights_only=True (no pickle code runs)."""
    import torch

    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(path))
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # the unpickler refuses anything but tensors and plain containers
            raise ModelUnavailableError(f"refusing to load {path}: not a plain weights file ({type(e).__name__})") from None
        if isinstance(sd, dict) and "state_dict" in sd:
            sd = sd["state_dict"]
        if not isinstance(sd, dict):
            raise ModelUnavailableError(f"{path} does not hold a state dict")
    if sd and next(iter(sd)).startswith("module."):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _build(model_cfg: dict, arch_name: str, *, meta: bool = False):
    """An open_clip model from a config dict, with uninitialised (to be loaded) weights."""
    from open_clip.model import CLIP, CustomTextCLIP

    cfg = dict(model_cfg)
    cfg.pop("custom_text", None)
    cls = CustomTextCLIP if model_cfg.get("custom_text") or "hf_model_name" in cfg.get("text_cfg", {}) else CLIP
    if meta:
        import torch

        # no memory allocated and no random init (2-3 s for ViT-B-32): the weights are assigned next
        with torch.device("meta"):
            return cls(**cfg)
    return cls(**cfg)


def _materialize_buffers(model) -> None:
    """Non-persistent buffers are not in a state dict: rebuild the causal masks a meta build left empty."""
    import torch

    for module in model.modules():
        for name, buf in list(module._buffers.items()):
            if buf is None or not buf.is_meta:
                continue
            if name == "attn_mask" and buf.dim() == 2 and buf.shape[0] == buf.shape[1]:
                module._buffers[name] = torch.full(tuple(buf.shape), float("-inf"), dtype=buf.dtype).triu_(1)
            else:
                raise RuntimeError(f"cannot materialise buffer {name} of {type(module).__name__}")


def build_loaded(model_cfg: dict, arch_name: str, sd: dict, spec: ModelSpec):
    """Build on the meta device and assign the checkpoint's tensors (no init, no copy); the slow way if that fails."""
    try:
        model = _build(model_cfg, arch_name, meta=True)
        _load_weights(model, sd, spec, assign=True)
        _materialize_buffers(model)
        return model
    except ModelUnavailableError:
        raise
    except Exception:  # an architecture that cannot be built on the meta device
        logger.debug("meta-device build failed for %s; building normally", arch_name, exc_info=True)
        model = _build(model_cfg, arch_name)
        _load_weights(model, sd, spec)
        return model


def _load_weights(model, sd: dict, spec: ModelSpec, *, assign: bool = False) -> None:
    import torch

    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    if missing or unexpected:
        raise unavailable(spec, f"the weights do not fit the architecture (missing {missing[:3]}, unexpected {unexpected[:3]})")
    for k, v in sd.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise unavailable(spec, f"weight {k} has shape {tuple(v.shape)}, the architecture wants {tuple(own[k].shape)}")
    with torch.no_grad():
        model.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()}, strict=True, assign=assign)
