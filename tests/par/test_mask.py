"""Contract 1: every (query, key) cell of the attention mask follows PAR's rules."""

from __future__ import annotations

import itertools

import pytest

from par.mask import build_mask
from tests.par.helpers import tiny_config


def enumerate_tokens(config, steps: int, video: bool) -> list[tuple[str, int, int]]:
    """(kind, step, index) of every token, written out from the spec, not from par.mask."""
    tokens = [("task", -1, i) for i in range(config.task_tokens)]
    for t in range(steps):
        tokens += [("frame", t, i) for i in range(config.frame_tokens)]
        if video:
            continue
        tokens += [("state", t, 0)] * config.state_tokens
        tokens += [("boa", t, 0)]
        tokens += [("action", t, j) for j in range(config.chunk_len)]
    return tokens


def allowed(query, key, no_ar: bool) -> bool:
    q_kind, q_step, q_index = query
    k_kind, k_step, k_index = key
    if k_kind == "task":
        return True  # the instruction is visible to everyone
    if q_kind == "task":
        return False  # task tokens see only task tokens
    if k_step < q_step:
        return not no_ar  # earlier steps: visible, except in the no-history ablation
    if k_step > q_step:
        return False  # strictly causal across steps
    frame_group = ("frame", "state")
    if k_kind in frame_group:
        return True  # full attention inside a frame; actions see their own step's frame
    if q_kind in frame_group:
        return False  # a frame never sees the actions of its own step
    order = {"boa": 0, "action": None}
    q_order = order["boa"] if q_kind == "boa" else q_index + 1
    k_order = order["boa"] if k_kind == "boa" else k_index + 1
    return k_order <= q_order  # causal inside the action chunk


@pytest.mark.parametrize(
    "overrides, video",
    [
        ({}, False),
        ({"proprio_dim": 0}, False),
        ({"task_tokens": 3}, False),
        ({"no_ar": True}, False),
        ({}, True),
    ],
)
def test_mask_matches_rules_cell_by_cell(overrides, video):
    config = tiny_config(**overrides)
    steps = 3
    mask = build_mask(config, steps, video=video)
    tokens = enumerate_tokens(config, steps, video)
    assert mask.shape == (len(tokens), len(tokens))
    for (qi, q), (ki, k) in itertools.product(enumerate(tokens), enumerate(tokens)):
        assert bool(mask[qi, ki]) == allowed(q, k, config.no_ar), f"query {q} key {k}"


def test_mask_spot_checks():
    """A few cells named in docs/model.md, by position, as a reader would check them."""
    config = tiny_config(task_tokens=1, proprio_dim=0, chunk_len=2, latent_height=2, latent_width=2)
    # Per step: 1 frame token, BOA, a0, a1 -> positions 1..4 (step 0), 5..8 (step 1).
    mask = build_mask(config, 2)
    frame0, boa0, a00, a01, frame1, boa1, a10 = 1, 2, 3, 4, 5, 6, 7
    assert mask[a00, frame0]  # inverse kinematics: actions see their frame
    assert not mask[frame0, a00]  # the frame does not see its actions
    assert mask[a01, a00] and not mask[a00, a01]  # causal in the chunk
    assert mask[boa0, frame0] and not mask[boa0, a00]
    assert mask[frame1, a01] and mask[a10, a01]  # later steps see earlier actions
    assert not mask[a01, frame1] and not mask[frame0, boa1]  # nothing sees the future
    assert mask[frame1, 0] and not mask[0, frame1]  # task token
