"""Windows as items: the bookkeeping shared by every buffer that samples through a sum tree
(the prioritised buffer, and either buffer with `boundary="strict"`).

An item is one row and one window start at a physical time index that is a multiple of the
period, numbered `row * (capacity // period) + start // period`. An item is *valid* while
its window is sampleable: all of its steps are stored, it does not cross the write head,
and, when episode ends are enforced, no episode ends before its last step. Only a write can
change validity, and only for the windows it completes or overwrites, so the work per `add`
is proportional to the steps added, never to the capacity.
"""

import jax.numpy as jnp
from jaxtyping import Array, Bool, Int

from . import _ring


def num_items(rows: int, capacity: int, period: int) -> int:
    """How many items a buffer of `rows` rows of `capacity` steps has."""
    return rows * (capacity // period)


def item_windows(
    items: Int[Array, " samples"], rows: int, capacity: int, period: int
) -> tuple[Int[Array, " samples"], Int[Array, " samples"]]:
    """The row and physical start of each item's window, for `_ring.read`. Items past the
    last (a sum tree with zero total returns them) are read as the last item's window."""
    items = jnp.minimum(items, num_items(rows, capacity, period) - 1)
    row, grid = jnp.divmod(items, capacity // period)
    return row, grid * period


def changed_items(
    *,
    current_index: Int[Array, ""],
    steps: int,
    new_index: Int[Array, ""],
    new_is_full: Bool[Array, ""],
    rows: int,
    capacity: int,
    length: int,
    period: int,
    ends: Bool[Array, "rows capacity"] | None = None,
) -> tuple[Int[Array, " items"], Bool[Array, " items"], Bool[Array, " items"]]:
    """The items whose validity a write of `steps` steps at `current_index` may change.

    **Arguments:**

    - `current_index`: the write head before the write.
    - `steps`: the number of steps written per row.
    - `new_index`, `new_is_full`: the ring after the write.
    - `rows`, `capacity`, `length`, `period`: the buffer's shape (`capacity` a multiple of
      `period`).
    - `ends`: the episode-end flag of every stored step after the write, when episode ends
      are enforced; `None` otherwise.

    **Returns:** `(items, touched, valid)`, each of a static size: the item numbers, which
    entries are real (an item may be listed twice, with equal values), and whether each is
    valid after the write.
    """
    starts, touched = _ring.changed_window_starts(current_index, steps, length, period, capacity)
    valid = _ring.window_complete(starts, new_index, new_is_full, capacity, length)
    valid = jnp.broadcast_to(valid, (rows, starts.shape[0]))
    if ends is not None:
        valid = valid & ~_ring.ends_inside(ends, starts, length)
    row = jnp.arange(rows)[:, None]
    items = (row * (capacity // period) + starts // period).reshape(-1)  # see `num_items`
    touched = jnp.broadcast_to(touched, (rows, starts.shape[0])).reshape(-1)
    return items, touched, valid.reshape(-1)
