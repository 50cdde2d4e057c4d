"""Whole episodes: `TrajectoryBuffer.sample_episodes` draws windows that start at the
first step of an episode, uniformly over the episodes whose first step is still stored.

A stored step starts an episode when it is its row's first step ever, or when the step
before it is stored and ended an episode (`episode_end`); the oldest stored step of a
wrapped row does not, since the step before it is gone.

Cost. Drawing uniformly among the starts needs their number, so every call reads the
flag of every stored step once (one pass over the ring's episode-end leaf, a byte per
step), and draws among them as `_random.below_flagged` does.
"""

from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, Bool, PRNGKeyArray, PyTree

from . import _ring
from ._abstract_trajectory import AbstractTrajectoryState
from ._episodes import episode_ends
from ._random import below, count_flagged, find_flagged
from ._windows import Drawn


def draw_episode_starts(
    where: str,
    episode_end: Callable[[PyTree], Any],
    state: AbstractTrajectoryState,
    key: PRNGKeyArray,
    count: int,
) -> Drawn:
    """`count` episode starts drawn uniformly with replacement among those stored (`ok`:
    whether there is one)."""
    storage, current_index, is_full = state.experience, state.current_index, state.is_full
    rows, capacity = jtu.tree_leaves(storage)[0].shape[:2]
    ends = episode_ends(where, episode_end, storage, (rows, capacity), "the stored steps")
    # A stored step starts an episode when the stored step before it ended one: drawn as
    # that end, among the stored ends but the newest step's (its successor is not
    # stored); and when the ring has not wrapped, each row's first step.
    t = jnp.arange(capacity, dtype=jnp.int32)
    newest = _ring.rem(current_index + capacity - 1, capacity)
    stored = is_full | (t < current_index)
    flagged = count_flagged(ends & stored & (t != newest))
    firsts = jnp.where(~is_full & (current_index > 0), rows, 0)
    total = flagged.total + firsts
    (rank,) = below(key, (count,), (total,))
    end_row, end = find_flagged(flagged, jnp.clip(rank, 0, jnp.maximum(flagged.total - 1, 0)))
    first = rank >= flagged.total  # a row's first step ever
    row = jnp.where(first, rank - flagged.total, end_row)
    time = jnp.where(first, 0, _ring.rem(end + 1, capacity))
    return Drawn(row, time, total > 0)


def episode_mask(
    where: str,
    episode_end: Callable[[PyTree], Any],
    windows: PyTree[Array],
    drawn: Drawn,
    state: AbstractTrajectoryState,
) -> Bool[Array, "samples length"]:
    """For windows that start an episode: whether each step belongs to that episode (no
    episode end before it in the window) and is stored (not past the newest step)."""
    samples, length = jtu.tree_leaves(windows)[0].shape[:2]
    ends = episode_ends(where, episode_end, windows, (samples, length), "the sampled windows")
    before = jnp.cumsum(ends, axis=1, dtype=jnp.int32) - ends  # episode ends before each step
    capacity = jtu.tree_leaves(state.experience)[0].shape[1]
    oldest = jnp.where(state.is_full, state.current_index, 0)
    stored = jnp.where(state.is_full, capacity, state.current_index)
    first = _ring.rem(drawn.starts - oldest + capacity, capacity)  # logical
    newest = stored - 1 - first  # steps from the window's first to the newest stored
    return (before == 0) & (jnp.arange(length, dtype=jnp.int32) <= newest[:, None])
