"""Windows as items: the bookkeeping shared by every buffer that samples through a sum tree
(the prioritised buffer, and either buffer with `boundary="strict"`).

An item is one row and one window start at a physical time index that is a multiple of the
period. Items are numbered column by column: the window of row `row` starting at
`column * period` is item `column * rows + row`, so the windows of all rows that start at
one time are consecutive items, and so are those of consecutive starts. An item is *valid*
while its window is sampleable: all of its steps are stored, it does not cross the write
head, and, when episode ends are enforced, no episode ends before its last step.

Only a write can change validity, and only for the windows it completes or overwrites:
those start in two ranges of consecutive times, which are two runs of consecutive items.
So an `add` of at most `period` steps (one start per run) updates its items with slices
(`dynamic_update_slice`, in place), with no scatter; a longer one scatters its few items.
Either way its work is proportional to the steps added, never to the capacity.
"""

from typing import NamedTuple

import jax.lax as lax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from . import _ring
from ._data import Data
from ._sum_tree import SumTree


class Grid(NamedTuple):
    """Where the windows of a buffer are: `rows` rows of `capacity` steps, windows of
    `length` steps starting at the physical multiples of `period` (of which `capacity` is
    one)."""

    rows: int
    capacity: int
    length: int
    period: int

    @property
    def num_items(self) -> int:
        """How many items (windows) there are."""
        return self.rows * (self.capacity // self.period)


class Drawn(NamedTuple):
    """Where a sample's windows are, before they are read: `rows` and physical `starts`,
    whether the buffer could be sampled (`ok`: the read is poisoned otherwise), and for
    prioritised buffers the windows' handles and probabilities."""

    rows: Int[Array, " samples"]
    starts: Int[Array, " samples"]
    ok: Bool[Array, ""]
    indices: Int[Array, " samples"] | None = None
    probabilities: Float[Array, " samples"] | None = None


def item_windows(
    items: Int[Array, " samples"], grid: Grid
) -> tuple[Int[Array, " samples"], Int[Array, " samples"]]:
    """The row and physical start of each item's window, for `_ring.read`. Items past the
    last (a sum tree with zero total returns them) are read as the last item's window."""
    items = jnp.minimum(items, grid.num_items - 1)
    column, row = jnp.divmod(items, grid.rows)
    return row, column * grid.period


def is_valid(generation: Int[Array, "*shape"]) -> Bool[Array, "*shape"]:
    """Whether items are valid, from their generation: odd exactly while valid."""
    return (generation & 1) == 1


def window_number(generation: Int[Array, "*shape"]) -> Int[Array, "*shape"]:
    """Which of the windows stored at an item it holds, counted one by one: a generation
    moves on by two from one valid window to the next (through an invalid one or not), so
    half of it counts them."""
    return generation >> 1


class Write(NamedTuple):
    """A write to the ring, as the windows' bookkeeping sees it: `steps` steps per row
    written at `current_index`, leaving the write head at `new_index` and fullness
    `new_is_full`; `ends`, the episode-end flag of every stored step after the write when
    episode ends are enforced, `None` otherwise; `frame_stack`, for a buffer that stores
    frames once, what it keeps beside them after the write (`_frames.FrameStackState`),
    `None` otherwise."""

    current_index: Int[Array, ""]
    steps: int
    new_index: Int[Array, ""]
    new_is_full: Bool[Array, ""]
    ends: Bool[Array, "rows capacity"] | None
    frame_stack: Data | None = None


def update_items(
    tree: SumTree,
    generation: Int[Array, " items"] | None,
    weight: Float[Array, ""],
    grid: Grid,
    write: Write,
) -> tuple[SumTree, Int[Array, " items"] | None]:
    """Updates the items whose validity a write of `steps` steps at `current_index` may
    change: each gets `weight` in `tree` if it is valid after the write and zero if not.

    With `generation`, each also gets a new generation when the write changed it while it
    was valid before or after: its generation stays odd exactly while it is valid, so it
    moves on by one when the window becomes valid or invalid, and by two when a valid
    window is replaced by a new valid one.

    **Arguments:**

    - `tree`, `generation`: the items' weights and generations before the write.
    - `weight`: the weight of a valid item.
    - `grid`: where the items' windows are.
    - `write`: the write (see `Write`).

    **Returns:** `(tree, generation)` after the write.
    """
    rows, capacity, length, period = grid
    current_index, steps, new_index, new_is_full, ends, _ = write
    total = grid.num_items
    starts, real = _ring.changed_window_runs(current_index, steps, length, period, capacity)
    runs, columns = starts.shape
    valid = _ring.window_complete(starts, new_index, new_is_full, capacity, length)
    valid = jnp.broadcast_to(valid[..., None], (runs, columns, rows))
    if ends is not None:
        inside = jnp.stack(
            [_ring.ends_inside(ends, first, columns, period, length) for first in starts[:, 0]]
        )  # (runs, rows, columns)
        valid = valid & ~inside.transpose(0, 2, 1)
    valid = valid.reshape(runs, columns * rows)
    real = jnp.repeat(real, rows, axis=1)
    # Each run's items: `columns * rows` consecutive items from its first start's column.
    first_items = _ring.div(starts[:, 0], period) * rows
    size = columns * rows
    if columns == 1:
        # One start per run: `rows` items that do not wrap, updated by slices in place.
        for first, now, change in zip(first_items, valid, real):
            if generation is not None:
                old = lax.dynamic_slice_in_dim(generation, first, size)
                new = jnp.where(change, _next(old, now), old)
                generation = lax.dynamic_update_slice_in_dim(generation, new, first, 0)
            values = jnp.where(now, weight, jnp.zeros_like(weight))
            values = jnp.where(change, values, tree.leaves(first, size))
            tree = tree.set_leaves(first, values)
    else:
        # Several starts per run (a write of more steps than the period): a run may wrap
        # around the items, and one scatter of their few items beats two masked slices per
        # run.
        items = _ring.rem(first_items[:, None] + jnp.arange(size), total).reshape(-1)
        valid, real = valid.reshape(-1), real.reshape(-1)
        if generation is not None:
            new = _next(generation[items], valid)
            generation = generation.at[jnp.where(real, items, total)].set(new, mode="drop")
        values = jnp.where(valid, weight, jnp.zeros_like(weight))
        tree = tree.set(items, values, real, duplicates_agree=True)
    return tree, generation


def _next(generation: Int[Array, " k"], valid: Bool[Array, " k"]) -> Int[Array, " k"]:
    """The generation of changed items after a write that leaves them `valid`: odd exactly
    while valid, moved on by two when a valid window is replaced by a new valid one."""
    was = is_valid(generation)
    return (
        generation
        + (was != valid).astype(generation.dtype)
        + 2 * (was & valid).astype(generation.dtype)
    )
