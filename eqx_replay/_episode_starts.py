"""Whole episodes: `TrajectoryBuffer.sample_episodes` draws windows that start at the
first step of an episode, uniformly over the episodes whose first step is still stored.

A stored step starts an episode when it is its row's first step ever, or when the step
before it is stored and ended an episode (`episode_end`); the oldest stored step of a
wrapped row does not, since the step before it is gone.

Cost. Drawing uniformly among the starts needs their number, so every call reads the
flag of every stored step once: one pass over the ring's episode-end leaf, a byte per
step (`_stored_ends`).
"""

from collections.abc import Callable
from typing import Any

import jax.lax as lax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, Bool, Int, PRNGKeyArray, PyTree

from . import _ring
from ._abstract_trajectory import AbstractTrajectoryState
from ._control import run_if
from ._episodes import episode_ends
from ._random import below, count_blocks, nth_true, padded_blocks, ranked
from ._windows import Drawn


_BLOCK = 128
# A gather of blocks of `_BLOCK` flags from the flattened flags, clamped at their end.
_BLOCKS = lax.GatherDimensionNumbers(
    offset_dims=(1,), collapsed_slice_dims=(), start_index_map=(0,)
)
_CLIP = lax.GatherScatterMode.CLIP


def _stored_ends(
    ends: Bool[Array, "rows capacity"],
    current_index: Int[Array, ""],
    is_full: Bool[Array, ""],
) -> tuple[Callable[[Array], tuple[Array, Array]], Int[Array, " blocks"]]:
    """The episode ends whose next step is stored and starts an episode: those of every
    stored step but the newest, counted by blocks of `_BLOCK` of the flattened flags.

    The count reads the episode-end flags as they are (`_random.count_blocks`), with no
    mask: a block within one row and on one side of its
    write head is all stored or none. Only the blocks that hold a row's first or last
    step, its newest step or its write head are counted again flag by flag, masked (four
    per row at most).

    **Returns:** `(counted_in, counts)`: the counted ends of given blocks (and where
    each block's read starts), and each block's count."""
    rows, capacity = ends.shape
    size = rows * capacity
    flat = ends.reshape(-1)
    if size < _BLOCK:  # a tiny ring: one block, padded
        flat = jnp.pad(flat, (0, _BLOCK - size))
    whole = size // _BLOCK
    counts = count_blocks(flat[: whole * _BLOCK].reshape(whole, _BLOCK))
    # The partial last block (counted below with the special blocks), and empty blocks to
    # whole groups of `Ranked`.
    padding = padded_blocks(-(-size // _BLOCK)) - whole
    counts = jnp.concatenate([counts, jnp.zeros((padding,), jnp.int32)])
    newest = _ring.rem(current_index + capacity - 1, capacity)

    def counted_in(blocks: Int[Array, " n"]) -> tuple[Bool[Array, "n block"], Int[Array, " n"]]:
        """The counted ends of `blocks`, and the flat position of each one's first flag
        read: each block is read at once (the partial last block from one block before
        the end, as the gather clamps it, its earlier flags dropped), and masked to the
        stored steps but the newest."""
        start = jnp.minimum(blocks * _BLOCK, flat.shape[0] - _BLOCK)
        read = lax.gather(flat, start[:, None], _BLOCKS, (_BLOCK,), mode=_CLIP)
        j = jnp.arange(_BLOCK, dtype=jnp.int32)
        position = start[:, None] + j
        if capacity >= _BLOCK:  # a block wraps round its row at most once: no division
            t = _ring.rem(start, capacity)[:, None] + j
            t = jnp.where(t >= capacity, t - capacity, t)
        else:
            t = _ring.rem(position, capacity)
        stored = (position < size) & (is_full | (t < current_index)) & (t != newest)
        return read & stored & (position >= blocks[:, None] * _BLOCK), start

    first = jnp.arange(counts.shape[0], dtype=jnp.int32) * _BLOCK
    all_stored = is_full | (_ring.rem(first, capacity) + _BLOCK <= current_index)
    counts = jnp.where(all_stored, counts, 0)
    row_first = jnp.arange(rows, dtype=jnp.int32) * capacity
    head = jnp.minimum(current_index, capacity - 1)
    special = _ring.div(
        jnp.concatenate(
            [row_first, row_first + capacity - 1, row_first + newest, row_first + head]
        ),
        _BLOCK,
    )
    counts = counts.at[special].set(jnp.sum(counted_in(special)[0], axis=1, dtype=jnp.int32))
    return counted_in, counts


def draw_episode_starts(
    where: str,
    episode_end: Callable[[PyTree], Any],
    state: AbstractTrajectoryState,
    key: PRNGKeyArray,
    count: int,
) -> Drawn:
    """`count` episode starts drawn uniformly with replacement among those stored (`ok`:
    whether there is one).

    A stored step starts an episode when the stored step before it ended one: it is
    drawn as that end (`_stored_ends`); and while the ring has not filled, each row's
    first step ever is one too."""
    storage, current_index, is_full = state.experience, state.current_index, state.is_full
    rows, capacity = jtu.tree_leaves(storage)[0].shape[:2]
    ends = episode_ends(where, episode_end, storage, (rows, capacity), "the stored steps")
    counted_in, counts = _stored_ends(ends, current_index, is_full)
    ends_ranked = ranked(counts)
    ended = ends_ranked.total
    firsts = jnp.where(~is_full & (current_index > 0), rows, 0)
    total = ended + firsts
    # Drawn inside a loop (of one iteration, which XLA cannot know), whose output it does
    # not fuse into the ranks' uses: fused, each of the many comparisons in
    # `Ranked.locate` would hash its draw again.
    (rank,) = run_if(
        total >= 0, lambda _: below(key, (count,), (total,)), (jnp.zeros((count,), jnp.int32),)
    )
    # The end of rank `rank`: its block from the blocks' counts (`Ranked.locate`), then its
    # place among the block's counted ends (`nth_true`).
    end_rank = jnp.clip(rank, 0, jnp.maximum(ended - 1, 0))
    block, inside = ends_ranked.locate(end_rank)
    kept, start = counted_in(block)
    place = nth_true(kept, inside)
    end_row, end = jnp.divmod(start + place, capacity)
    first = rank >= ended  # a row's first step ever
    row = jnp.where(first, rank - ended, end_row)
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
    steps = jnp.arange(length, dtype=jnp.int32)
    first_end = jnp.min(jnp.where(ends, steps, length), axis=1)  # the window's first end
    capacity = jtu.tree_leaves(state.experience)[0].shape[1]
    oldest = _ring.oldest(state.current_index, state.is_full)
    stored = _ring.stored(state.current_index, state.is_full, capacity)
    first = _ring.rem(drawn.starts - oldest + capacity, capacity)  # logical
    newest = stored - 1 - first  # steps from the window's first to the newest stored
    return (steps <= first_end[:, None]) & (steps <= newest[:, None])
