"""Batch-invariant inference: each episode of a batch gets, bit for bit, what it would
get alone, whatever else is in the batch.

CPU matrix kernels choose their path and blocking from a product's shape: a linear
layer applied to the rows of 4 episodes at once rounds differently (by ~1e-7) from the
same layer applied to one episode's rows, and so does a convolution over 4 frames or a
group norm split over 2 threads. In closed loop such differences grow into different
trajectories (an episode that first succeeded at step 65 alone succeeded at step 66 in
a batch of 4). Inside :func:`batch_invariant` with ``episodes`` = n, a linear layer, a
convolution or a group norm runs once per episode on that episode's slice of the batch,
which is the very call the episode makes alone.

So an episode computes exactly what it computes when it runs alone outside the mode:
with one episode the mode is not entered at all and costs nothing, and a batched
evaluation reproduces a serial one. The inputs must be laid out episode-major (episode
i's rows form the i-th of n equal slices of the first dimension), as every batch in
``par`` is, and a computation the whole batch shares (a sampling call's timestep
embeddings) runs inside :func:`shared`, as it is. A first dimension that is not a
multiple of n is an error: a layout the mode cannot split. Attention
(``scaled_dot_product_attention``), layer norm and element-wise operations already
compute each batch row on its own. The price is the batching of those products: n
episodes cost about n times one (docs/performance.md). The mode is a
``TorchFunctionMode``: nothing is patched, and it ends with the ``with`` block.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from typing import Any

import torch.nn.functional as F
from torch import cat
from torch.overrides import TorchFunctionMode

# Operations whose CPU kernels choose their path or their threads' split from the batch.
_PER_EPISODE = (
    F.linear,
    F.conv1d,
    F.conv2d,
    F.conv3d,
    F.conv_transpose1d,
    F.conv_transpose2d,
    F.conv_transpose3d,
    F.group_norm,
)

_SHARED: ContextVar[bool] = ContextVar("shared", default=False)


@contextmanager
def shared() -> Iterator[None]:
    """Mark a computation the whole batch shares (a sampling call's timestep embeddings):
    the mode runs it as it is, whatever its first dimension."""
    token = _SHARED.set(True)
    try:
        yield
    finally:
        _SHARED.reset(token)


class _PerEpisode(TorchFunctionMode):
    def __init__(self, episodes: int) -> None:
        super().__init__()
        self.episodes = episodes

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in _PER_EPISODE and args[0].dim() > 1 and not _SHARED.get():
            if args[0].shape[0] % self.episodes:
                raise ValueError(
                    f"{func.__name__} of a batch of {self.episodes} episodes got a first dimension of "
                    f"{args[0].shape[0]}: lay the batch out episode-major, or mark a computation all "
                    "episodes share with par.invariant.shared()"
                )
            return cat([func(part, *args[1:], **kwargs) for part in args[0].chunk(self.episodes)])
        return func(*args, **kwargs)


@contextmanager
def batch_invariant(episodes: int) -> Iterator[None]:
    """Compute inside the block so that each of ``episodes`` episode-major episodes gets
    what it would get alone (see the module's doc). One episode: nothing to do."""
    if episodes < 1:
        raise ValueError(f"batch_invariant needs at least one episode, got {episodes}")
    with _PerEpisode(episodes) if episodes > 1 else nullcontext():
        yield
