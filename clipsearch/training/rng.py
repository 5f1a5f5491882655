"""Seeded randomness for one training run, without touching the caller's random state.

Training's own draws (split, shuffling, caption sampling) use a numpy Generator and
`replace_projections` a torch.Generator, both made from the seed and passed down. Two kinds of
draw cannot be given a generator: the initial weights of a new model (open_clip's modules draw
from torch's default generator while they are built) and dropout, if a config asks for it. Those
run inside `seeded_torch(seed)`, which forks torch's default CPU generator, seeds the fork, and
puts the caller's generator state back on exit, so torch.random.get_rng_state() is the same
before and after a training call. While the block runs the default generator is the fork's: do
not draw from it in other threads of the same process at the same time.
"""

from __future__ import annotations

import contextlib
from typing import Iterator


@contextlib.contextmanager
def seeded_torch(seed: int) -> Iterator[None]:
    """Run the block with torch's default CPU generator seeded with `seed`; restore it after."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        yield
