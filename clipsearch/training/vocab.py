"""A reduced text vocabulary for small domain models.

open_clip's tokenizer has 49,408 tokens; a domain such as "shapes" uses a few dozen. A checkpoint
may keep only some of the original token ids: its open_clip_config.json then holds
`"clipsearch": {"token_ids": [...]}` (the sorted ORIGINAL ids kept, pad 0 not listed). The
reduced layout is

    new id 0      pad (original 0)
    new id 1      UNK (any original id not kept)
    new id 2, 3.. the kept ids in ascending order

so text_cfg.vocab_size = len(token_ids) + 2 (the largest new id is len(token_ids) + 1). Because SOT (49406) and EOT
(49407) are the two largest original ids, EOT keeps the largest new id, which open_clip's text
pooling (argmax over token ids) relies on.
"""

from __future__ import annotations

from typing import Iterable, Sequence

SOT = 49406
EOT = 49407


def normalize_token_ids(token_ids: Iterable[int]) -> list[int]:
    """Sorted unique kept ids without pad (0); SOT and EOT always included."""
    ids = {int(t) for t in token_ids if int(t) != 0}
    ids.update((SOT, EOT))
    return sorted(ids)


def reduced_vocab_size(token_ids: Sequence[int]) -> int:
    """Rows of the token embedding needed: pad, UNK and one per kept id."""
    return len(normalize_token_ids(token_ids)) + 2


def remap_tokens(tokens, token_ids: list[int]):
    """Map original tokenizer ids to the reduced vocabulary (see module doc).

    tokens: LongTensor of original ids (any shape). Returns a LongTensor of the same shape on the same
    device: 0 -> 0, kept ids -> 2, 3, ... in ascending order of original id, anything else -> 1. The mapping
    itself is the encoders' (encoders/_common.py), so training and search read texts the same way.
    """
    import torch

    from ..encoders._common import remap_token_ids

    tokens = torch.as_tensor(tokens, dtype=torch.long)
    return torch.from_numpy(remap_token_ids(tokens.cpu().numpy(), token_ids)).to(tokens.device)


def token_ids_for_texts(texts: Iterable[str], tokenizer=None) -> list[int]:
    """The kept-id list covering every token of these texts (plus SOT/EOT), pad excluded."""
    if tokenizer is None:
        import open_clip

        tokenizer = open_clip.get_tokenizer("ViT-B-32")
    ids: set[int] = set()
    texts = list(texts)
    for i in range(0, len(texts), 1024):
        ids.update(int(t) for t in tokenizer(texts[i:i + 1024]).flatten().tolist())
    return normalize_token_ids(ids)
