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
(``scaled_dot_product_attention``) runs per episode too: its CPU flash kernel splits
its work by batch, and 3 episodes of 3 queries over 19 keys round differently from
one (measured on an AMD EPYC host, torch 2.13). Layer norm and element-wise operations
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
from torch import Tensor, cat
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

# scaled_dot_product_attention's arguments, in their positional order.
_ATTENTION_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")

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
        if _SHARED.get():
            return func(*args, **kwargs)
        if func is F.scaled_dot_product_attention:
            return self._attention(func, args, kwargs)
        if func in _PER_EPISODE and args[0].dim() > 1:
            return cat([func(part, *args[1:], **kwargs) for part in self._chunks(func, args[0])])
        return func(*args, **kwargs)

    def _chunks(self, func: Callable, x: Tensor) -> tuple[Tensor, ...]:
        if x.shape[0] % self.episodes:
            raise ValueError(
                f"{func.__name__} of a batch of {self.episodes} episodes got a first dimension of "
                f"{x.shape[0]}: lay the batch out episode-major, or mark a computation all "
                "episodes share with par.invariant.shared()"
            )
        return x.chunk(self.episodes)

    def _attention(self, func: Callable, args: tuple, kwargs: dict) -> Tensor:
        """Query, key and value per episode, and the mask too where it has a batch dimension."""
        kwargs = {**dict(zip(_ATTENTION_ARGS, args, strict=False)), **kwargs}
        q, k, v = (kwargs.pop(name) for name in _ATTENTION_ARGS[:3])
        if q.dim() < 3:  # (L, E): no batch to split
            return func(q, k, v, **kwargs)
        mask = kwargs.pop("attn_mask", None)
        masks = self._chunks(func, mask) if _batched(mask, q.shape[0]) else [mask] * self.episodes
        parts = zip(self._chunks(func, q), self._chunks(func, k), self._chunks(func, v), masks, strict=True)
        return cat([func(qi, ki, vi, attn_mask=mi, **kwargs) for qi, ki, vi, mi in parts])


def _batched(mask: Tensor | None, batch: int) -> bool:
    """A mask with its own batch dimension (4-D, one row per batch row) splits with it; a
    2-D or 3-D mask, or a 4-D one of a single row, broadcasts over every episode."""
    return isinstance(mask, Tensor) and mask.dim() == 4 and mask.shape[0] == batch


@contextmanager
def batch_invariant(episodes: int) -> Iterator[None]:
    """Compute inside the block so that each of ``episodes`` episode-major episodes gets
    what it would get alone (see the module's doc). One episode: nothing to do."""
    if episodes < 1:
        raise ValueError(f"batch_invariant needs at least one episode, got {episodes}")
    with _PerEpisode(episodes) if episodes > 1 else nullcontext():
        yield
