"""Token layout of a context window and the PAR attention mask, built in one place.

A window is ``task_tokens`` task tokens followed by physical steps. A physical step
``t`` is laid out as::

    [frame tokens of o_t (N)] [state token s_t (0/1)] [BOA] [action tokens a_t (L)]

and ``a_t`` is the chunk executed from ``o_t``. The rules (docs/model.md):

* task tokens see each other and are seen by everyone;
* full attention inside a frame (frame and state tokens form the frame group);
* causal inside an action chunk (BOA first, then a_t[0], a_t[1], ...);
* action-group tokens see the frame group of the same step (implicit inverse
  kinematics), the frame group never sees the same step's actions;
* strictly causal across steps: a token sees every token of earlier steps and
  nothing of later ones (under ``no_ar`` it sees no other step at all).

Positions (for RoPE) are ``task_tokens + step * step_tokens + offset``, the same in
video mode (frame tokens only), so video-pretrained weights see the same relative
geometry as the physical model. Under ``no_ar`` every step sits at step slot 0,
exactly as it does at inference where the window holds one step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from par.config import ModelConfig

TASK, FRAME, STATE, BOA, ACTION = 0, 1, 2, 3, 4
GROUP_TASK, GROUP_FRAME, GROUP_ACTION = 0, 1, 2


@dataclass(frozen=True)
class Layout:
    """Per-token metadata of a token sequence (all 1-D long tensors, same length)."""

    kind: torch.Tensor  # TASK / FRAME / STATE / BOA / ACTION
    step: torch.Tensor  # step slot in the window; -1 for task tokens
    index: torch.Tensor  # index within its kind in the step (frame patch, action j)
    position: torch.Tensor  # RoPE position

    def __len__(self) -> int:
        return int(self.kind.numel())

    @property
    def group(self) -> torch.Tensor:
        group = torch.full_like(self.kind, GROUP_ACTION)
        group[(self.kind == FRAME) | (self.kind == STATE)] = GROUP_FRAME
        group[self.kind == TASK] = GROUP_TASK
        return group

    @property
    def order(self) -> torch.Tensor:
        """Order inside the action group: BOA 0, a[j] j + 1; 0 elsewhere."""
        return torch.where(self.kind == ACTION, self.index + 1, torch.zeros_like(self.index))

    def cat(self, other: Layout) -> Layout:
        return Layout(*(torch.cat([getattr(self, f), getattr(other, f)]) for f in _FIELDS))

    def select(self, keep: torch.Tensor) -> Layout:
        return Layout(*(getattr(self, f)[keep] for f in _FIELDS))


_FIELDS = ("kind", "step", "index", "position")


def task_layout(config: ModelConfig) -> Layout:
    n = config.task_tokens
    return Layout(
        kind=torch.full((n,), TASK),
        step=torch.full((n,), -1),
        index=torch.arange(n),
        position=torch.arange(n),
    )


def step_layout(config: ModelConfig, step: int, parts: tuple[str, ...] = ("frame", "state", "boa", "action")) -> Layout:
    """Layout of one step's tokens, restricted to ``parts`` (in canonical order)."""
    n_frame, n_state, chunk = config.frame_tokens, config.state_tokens, config.chunk_len
    pieces = {
        "frame": (FRAME, n_frame, 0),
        "state": (STATE, n_state, n_frame),
        "boa": (BOA, 1, n_frame + n_state),
        "action": (ACTION, chunk, n_frame + n_state + 1),
    }
    unknown = set(parts) - set(pieces)
    if unknown:
        raise ValueError(f"unknown layout parts {sorted(unknown)}")
    slot = 0 if config.no_ar else step
    base = config.task_tokens + slot * config.step_tokens
    kinds, index, position = [], [], []
    for name in ("frame", "state", "boa", "action"):
        if name not in parts:
            continue
        kind, count, offset = pieces[name]
        kinds.append(torch.full((count,), kind))
        index.append(torch.arange(count))
        position.append(base + offset + torch.arange(count))
    kind_t = torch.cat(kinds)
    return Layout(
        kind=kind_t,
        step=torch.full_like(kind_t, step),
        index=torch.cat(index),
        position=torch.cat(position),
    )


def window_layout(config: ModelConfig, steps: int, video: bool = False) -> Layout:
    """Task tokens + ``steps`` whole steps (frame tokens only when ``video``)."""
    parts = ("frame",) if video else ("frame", "state", "boa", "action")
    layout = task_layout(config)
    for t in range(steps):
        layout = layout.cat(step_layout(config, t, parts))
    return layout


def attention_mask(query: Layout, key: Layout, no_ar: bool = False) -> torch.Tensor:
    """Boolean mask ``[len(query), len(key)]``; True where the query may attend."""
    q_group, k_group = query.group[:, None], key.group[None, :]
    q_step, k_step = query.step[:, None], key.step[None, :]
    q_order, k_order = query.order[:, None], key.order[None, :]

    k_task = k_group == GROUP_TASK
    q_task = q_group == GROUP_TASK
    both_steps = ~q_task & ~k_task

    earlier = k_step < q_step
    if no_ar:
        earlier = torch.zeros_like(earlier)
    same = k_step == q_step
    same_allowed = (k_group == GROUP_FRAME) | (
        (q_group == GROUP_ACTION) & (k_group == GROUP_ACTION) & (k_order <= q_order)
    )
    allowed = k_task | (both_steps & (earlier | (same & same_allowed)))
    # Task tokens attend to task tokens only (k_task covers it; q_task rows end here).
    return allowed & (~q_task | k_task)


def build_mask(config: ModelConfig, steps: int, video: bool = False) -> torch.Tensor:
    """The PAR mask of a whole window of ``steps`` steps."""
    layout = window_layout(config, steps, video)
    return attention_mask(layout, layout, no_ar=config.no_ar)
