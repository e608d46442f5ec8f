"""Batch-invariant inference: every row of a batch gets, bit for bit, what it would get
alone, whatever else is in the batch and however many threads run.

CPU matrix kernels choose their path and blocking from a product's shape: a linear
layer applied to the rows of 4 episodes at once rounds differently (by ~1e-7) from the
same layer applied to one episode's rows, and so does a convolution over 4 frames. In
closed loop such differences grow into different trajectories (an episode that first
succeeded at step 65 alone succeeded at step 66 in a batch of 4). Inside
:func:`batch_invariant`:

* a linear layer runs as a batched product of fixed blocks of ``BLOCK`` rows (the last
  one zero-padded): every block has the same shape, so the same kernel and the same
  order of sums, and a row's result depends on that row alone;
* a convolution or group norm runs one sample at a time.

Attention (``scaled_dot_product_attention``), normalisation and element-wise operations
already compute each batch row on its own. The price is the policy's linear layers at
about 1.3-1.5x their cost on this CPU (docs/performance.md). The mode is a
``TorchFunctionMode``: nothing is patched, and it ends with the ``with`` block.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

BLOCK = 8  # rows a product; 8 and 16 measured row-invariant at 1 and 2 threads
# Per-sample operations whose CPU kernels split a batch by its size: run one sample at a
# time (GroupNorm parallelises over samples x groups, and with 2 threads rounds a batch
# of 4 differently from one sample).
_PER_SAMPLE = (
    F.conv1d,
    F.conv2d,
    F.conv3d,
    F.conv_transpose1d,
    F.conv_transpose2d,
    F.conv_transpose3d,
    F.group_norm,
)


def blocked_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear`` as a batched product of ``BLOCK``-row blocks: each output row depends
    only on its input row."""
    out_features, in_features = weight.shape
    rows = x.reshape(-1, in_features)
    count = rows.shape[0]
    padded = F.pad(rows, (0, 0, 0, -count % BLOCK))
    blocks = padded.reshape(-1, BLOCK, in_features)
    y = torch.bmm(blocks, weight.t().unsqueeze(0).expand(blocks.shape[0], in_features, out_features))
    y = y.reshape(-1, out_features)[:count]
    if bias is not None:
        y = y + bias
    return y.reshape(*x.shape[:-1], out_features)


class _RowInvariant(TorchFunctionMode):
    def __torch_function__(self, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is F.linear:
            return blocked_linear(*args, **kwargs)
        if func in _PER_SAMPLE and args[0].dim() > 1 and args[0].shape[0] > 1:
            return torch.cat([func(sample, *args[1:], **kwargs) for sample in args[0].split(1)])
        return func(*args, **kwargs)


@contextmanager
def batch_invariant() -> Iterator[None]:
    """Compute inside the block so that each batch row gets what it would get alone
    (see the module's doc)."""
    with _RowInvariant():
        yield
