"""The ring: every piece of circular index arithmetic that the buffers share.

A buffer's storage is a pytree of arrays shaped `(rows, capacity, ...)`. New steps are written
along the time axis at the write head, wrapping around; reads take windows of consecutive
steps that start on the period grid, counted from the oldest step still stored.
"""

import math

import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jax.custom_batching import custom_vmap
from jaxtyping import Array, ArrayLike, Bool, Int, PyTree, Shaped

from ._control import by_platform, for_each_true, run_if


def rem(x: Int[Array, "*shape"], n: int) -> Int[Array, "*shape"]:
    """`x % n` for `x >= 0`: `lax.rem`, without the sign corrections of `%`, so that XLA
    fuses the index arithmetic into fewer kernels."""
    return lax.rem(x, jnp.asarray(n, x.dtype))


def div(x: Int[Array, "*shape"], n: int) -> Int[Array, "*shape"]:
    """`x // n` for `x >= 0` (see `rem`)."""
    return lax.div(x, jnp.asarray(n, x.dtype))


def empty(
    example: PyTree[ArrayLike], rows: int, capacity: int
) -> tuple[PyTree[Shaped[Array, "rows capacity ..."]], Int[Array, ""], Bool[Array, ""]]:
    """An empty ring for steps shaped like `example`: zeros `(rows, capacity, *leaf.shape)`
    in each leaf's dtype, the write head at 0, not full.

    **Returns:** `(storage, current_index, is_full)`.
    """

    def storage(leaf: ArrayLike) -> Array:
        dtype = jax.dtypes.canonicalize_dtype(jnp.result_type(leaf))
        return jnp.zeros((rows, capacity) + jnp.shape(leaf), dtype)

    return jtu.tree_map(storage, example), jnp.array(0, jnp.int32), jnp.array(False)


def advance(
    current_index: Int[Array, ""], is_full: Bool[Array, ""], steps: int, capacity: int
) -> tuple[Int[Array, ""], Bool[Array, ""]]:
    """Moves the write head forward by `steps` (`1 <= steps <= capacity`).

    **Returns:** the new `(current_index, is_full)`.
    """
    end = current_index + steps
    return end % capacity, is_full | (end >= capacity)


def oldest(current_index: Int[Array, ""], is_full: Bool[Array, ""]) -> Int[Array, ""]:
    """The physical time of each row's oldest stored step: 0 before the ring has wrapped,
    the write head after."""
    return jnp.where(is_full, current_index, 0)


def stored(
    current_index: Int[Array, ""], is_full: Bool[Array, ""], capacity: int
) -> Int[Array, ""]:
    """How many steps each row stores."""
    return jnp.where(is_full, capacity, current_index)


def num_windows(
    current_index: Int[Array, ""],
    is_full: Bool[Array, ""],
    capacity: int,
    length: int,
    period: int,
) -> Int[Array, ""]:
    """How many windows of `length` steps start on the period grid of the stored steps."""
    steps = stored(current_index, is_full, capacity)
    return jnp.where(steps >= length, (steps - length) // period + 1, 0)


def window_complete(
    start: Int[Array, "*shape"],
    current_index: Int[Array, ""],
    is_full: Bool[Array, ""],
    capacity: int,
    length: int,
) -> Bool[Array, "*shape"]:
    """Whether the `length` steps from physical index `start` are all stored and do not
    cross the write head (for windows on a grid of physical indices)."""
    # Steps from `start` forward up to the newest one, in [1, capacity] (`rem` of a
    # non-negative value: `0 <= start < capacity`).
    ahead = rem(current_index - 1 - start + capacity, capacity) + 1
    return (ahead >= length) & (is_full | (start < current_index))


def changed_window_runs(
    current_index: Int[Array, ""], steps: int, length: int, period: int, capacity: int
) -> tuple[Int[Array, "2 windows"], Bool[Array, "2 windows"]]:
    """The windows of `length` steps on the grid of multiples of `period` whose validity or
    content a write of `steps` steps at `current_index` can change while they are valid
    before or after it: the windows it completes (those ending inside the write) and the
    windows it overwrites (those starting inside it). The other windows it writes into
    cross the write head both before and after.

    **Returns:** `(starts, real)`: two runs, the completed windows and then the overwritten
    ones, each a static number of consecutive grid starts (physical, so modulo
    `capacity`), and which of them are real. No window is real in both runs.
    """
    # Each range of starts begins at `lowest`: `length - 1` steps before the write for the
    # completed windows, at it for the overwritten ones. Both runs are computed as one
    # vector, and offset by `capacity` to stay non-negative, so that `div` and `rem` need
    # no sign corrections: XLA makes a few small kernels, not one per scalar.
    lowest = current_index + jnp.array([capacity - length + 1, 0], current_index.dtype)
    grid = lowest if period == 1 else div(lowest + period - 1, period) * period
    candidates = grid[:, None] + period * jnp.arange(-(-steps // period))
    real = candidates < lowest[:, None] + steps
    # The two ranges are `length - 1` steps apart on a ring of `capacity`.
    if steps > length - 1 or steps > capacity - length + 1:
        in_completed = rem(candidates[1] - lowest[0] + capacity, capacity) < steps
        real = jnp.stack([real[0], real[1] & ~in_completed])
    return rem(candidates, capacity), real


def span(
    array: Shaped[Array, "rows capacity *item"], first: Int[Array, ""], width: int
) -> Shaped[Array, "rows {width} *item"]:
    """The `width` consecutive time steps of every row from physical index `first`,
    wrapping around the ring (`width <= capacity`).

    Read with slices, never a gather: XLA:CPU judges a gather by the size of the array it
    reads from, and splits a gather from a large ring over its thread pool, which costs
    more (measured: 6 to 28 us) than the read itself; and a gather of steps comes out in
    another layout, copied once more (the queue's `sample`, `benchmarks/compare_family.py`
    row l).
    """
    capacity = array.shape[1]
    tail = jnp.minimum(first, capacity - width)  # a slice from `tail` does not wrap
    # The slice from `tail` and the ring's first `width` steps: the window starts `first -
    # tail` steps into them (0 unless it wraps) and runs on into the head.
    pieces = jnp.concatenate(
        [lax.dynamic_slice_in_dim(array, tail, width, axis=1), array[:, :width]], axis=1
    )
    return lax.dynamic_slice_in_dim(pieces, first - tail, width, axis=1)


def ends_inside(
    ends: Bool[Array, "rows capacity"],
    first: Int[Array, ""],
    columns: int,
    period: int,
    length: int,
) -> Bool[Array, "rows {columns}"]:
    """Whether, in each row, an episode ends at any of the first `length - 1` steps of the
    windows from the physical starts `first`, `first + period`, ... (`columns` of them,
    modulo the capacity); an end at a window's last step is allowed."""
    rows, capacity = ends.shape
    if length == 1:
        return jnp.zeros((rows, columns), bool)
    width = period * (columns - 1) + length - 1  # the steps the windows cover, together
    begin = period * np.arange(columns)
    if width > capacity:  # windows that together cover more than the ring
        times = (first + begin[:, None] + np.arange(length - 1)) % capacity
        return jnp.any(ends[:, times], axis=-1)
    # Ends before each step, over the steps the windows cover: a window's ends are a
    # difference of two of these counts.
    counts = jnp.cumsum(span(ends, first, width), axis=1, dtype=jnp.int32)
    counts = jnp.pad(counts, ((0, 0), (1, 0)))
    return counts[:, begin + length - 1] > counts[:, begin]


def window_start(
    window: Int[Array, " samples"],
    current_index: Int[Array, ""],
    is_full: Bool[Array, ""],
    capacity: int,
    period: int,
) -> Int[Array, " samples"]:
    """Physical time index of the first step of the `window`-th window on the period grid.

    Windows are counted from the oldest stored step: index 0 before the ring has wrapped,
    the write head after.
    """
    return (oldest(current_index, is_full) + window * period) % capacity


def write(
    storage: Shaped[Array, "rows capacity *item"],
    steps: Shaped[Array, "rows steps *item"],
    current_index: Int[Array, ""],
) -> Shaped[Array, "rows capacity *item"]:
    """Writes `steps` at time indices `(current_index + arange(steps)) % capacity`.

    Never a scatter, which XLA cannot always perform in place and which is slow on GPU: a
    write that does not wrap is one `dynamic_update_slice`, a write that wraps is two.
    Requires `1 <= steps <= capacity`.
    """
    if steps.shape[1] == 1:
        if math.prod(steps.shape[2:]) * steps.dtype.itemsize >= _MERGED_WRITE_BYTES:
            # Merged with what it replaces under a predicate that always holds (XLA cannot
            # prove it): XLA:CPU emits this read-select-write loop faster than the plain
            # copy of the update, 15-20% for 128 Atari frames (`u8[84, 84, 4]`) into a
            # buffer of 100K (a side-by-side script, 266-312 against 332-368 us). Still
            # one in-place `dynamic_update_slice`.
            old = lax.dynamic_slice_in_dim(storage, current_index, 1, axis=1)
            steps = jnp.where(current_index >= 0, steps, old)
        return lax.dynamic_update_slice_in_dim(storage, steps, current_index, axis=1)
    return _write_steps(storage, steps, current_index)


# The size of a row's step from which a one-step write is merged with the step it replaces.
_MERGED_WRITE_BYTES = 1024


@custom_vmap
def _write_steps(storage: Array, steps: Array, current_index: Array) -> Array:
    # One slice write, or the masked pair when the write wraps, each in a loop that runs
    # only when needed, on every platform. (The masked pair for every write, branch-free,
    # was tried for accelerators: on an H200 one test of `tests/test_queue.py` then found
    # a state unlike Flashbax's, while the same choice is exact on the CPU. Not yet
    # understood, so writes keep this path everywhere.)
    capacity, num_steps = storage.shape[1], steps.shape[1]
    wraps = current_index + num_steps > capacity
    storage = run_if(
        ~wraps,
        lambda s: lax.dynamic_update_slice_in_dim(s, steps, current_index, axis=1),
        storage,
    )
    return run_if(wraps, lambda s: _write_wrapping(s, steps, current_index), storage)


@_write_steps.def_vmap
def _write_steps_vmap(
    axis_size: int, in_batched: list[bool], storage: Array, steps: Array, current_index: Array
) -> tuple[Array, bool]:
    # Under `vmap` a loop with a batched predicate would select over the whole storage on
    # every call; the branch-free write costs only the size of the steps.
    args = [
        x if batched else jnp.broadcast_to(x, (axis_size, *x.shape))
        for x, batched in zip((storage, steps, current_index), in_batched)
    ]
    return jax.vmap(_write_wrapping)(*args), True


def _write_wrapping(
    storage: Array, steps: Array, current_index: Array, ok: Array | bool = True
) -> Array:
    """`write` for any `current_index`, without control flow: two slice writes, each masked
    so that only the positions that belong to this write change (none unless `ok`)."""
    capacity, num_steps = storage.shape[1], steps.shape[1]
    # The last `wrapped` steps go to the front of the ring. Rolling them to the front of
    # `steps` lets both pieces be written by slices of static size: the tail slice
    # `[capacity - num_steps, capacity)` and the head slice `[0, num_steps)`.
    wrapped = jnp.maximum(current_index + num_steps - capacity, 0)
    rolled = jnp.roll(steps, wrapped, axis=1)
    offset = jnp.arange(num_steps).reshape((1, num_steps) + (1,) * (steps.ndim - 2))
    tail_start = jnp.minimum(current_index, capacity - num_steps)
    old_tail = lax.dynamic_slice_in_dim(storage, tail_start, num_steps, axis=1)
    storage = lax.dynamic_update_slice_in_dim(
        storage, jnp.where((offset >= wrapped) & ok, rolled, old_tail), tail_start, axis=1
    )
    # Read after the first write: the two slices overlap when `2 * num_steps > capacity`.
    old_head = lax.slice_in_dim(storage, 0, num_steps, axis=1)
    return lax.dynamic_update_slice_in_dim(
        storage, jnp.where((offset < wrapped) & ok, rolled, old_head), 0, axis=1
    )


def write_if(
    storage: Shaped[Array, "rows capacity *item"],
    steps: Shaped[Array, "rows steps *item"],
    current_index: Int[Array, ""],
    ok: Bool[Array, ""],
) -> Shaped[Array, "rows capacity *item"]:
    """`write` if `ok`, otherwise `storage` unchanged; branch-free, so that under `vmap` it
    costs the size of the steps, never the storage's.

    On the CPU, the masked pair of slice writes (`_write_wrapping`), masked off entirely
    when not `ok`: for the few steps of a queue's add, cheaper than `write`'s loops and a
    read of the slots to keep, and, with the queue's reads in between, than a scatter
    (`benchmarks/compare_family.py`, row l). On an accelerator, `write` of the steps or of
    the slots as they were (see `_write_steps` for why not the masked pair there).
    """
    return by_platform(_write_wrapping, _write_if_selected, storage, steps, current_index, ok)


def _write_if_selected(storage: Array, steps: Array, current_index: Array, ok: Array) -> Array:
    """`write_if` as `write` of the steps or of the slots as they were (an accelerator's)."""
    kept = jnp.where(ok, steps, span(storage, current_index, steps.shape[1]))
    return write(storage, kept, current_index)


def append(
    storage: PyTree[Shaped[Array, "rows capacity ..."]],
    steps: PyTree[Shaped[Array, "rows steps ..."]],
    current_index: Int[Array, ""],
    is_full: Bool[Array, ""],
) -> tuple[PyTree[Shaped[Array, "rows capacity ..."]], Int[Array, ""], Bool[Array, ""]]:
    """Writes every leaf of `steps` at the write head and moves the head past them.

    **Returns:** `(storage, current_index, is_full)` after the write.
    """
    num_steps = jtu.tree_leaves(steps)[0].shape[1]
    capacity = jtu.tree_leaves(storage)[0].shape[1]
    storage = jtu.tree_map(lambda store, new: write(store, new, current_index), storage, steps)
    return storage, *advance(current_index, is_full, num_steps, capacity)


def read(
    storage: PyTree[Shaped[Array, "rows capacity ..."]],
    rows: Int[Array, " samples"],
    starts: Int[Array, " samples"],
    length: int,
) -> PyTree[Shaped[Array, "samples {length} ..."]]:
    """Reads, for each sample `i` and every leaf, the `length` consecutive steps of row
    `rows[i]` from time `starts[i]`, wrapping around the ring. Requires `length <= capacity`.

    On the CPU each window is read as one contiguous slice (a gather of `(1, length, ...)`
    blocks), which XLA runs about a third faster than a gather of single steps. A block
    cannot wrap: the gather clamps a start past `capacity - length` back to it, so the few
    windows that wrap (about `samples * (length - 1) / capacity` per call) are read again
    step by step, one loop iteration each, written over the sample in place. When more
    than a few windows can wrap (windows nearly as long as the ring), the loop would cost
    more than the blocks save, so every step is gathered at its own wrapped time instead,
    with no loop: `benchmarks/compare_family.py`, row n. So it is on an accelerator, where
    each test of a loop's predicate synchronises with the host (`_control.by_platform`).
    """
    samples, capacity = rows.shape[0], jtu.tree_leaves(storage)[0].shape[1]
    if samples * (length - 1) > _LOOP_WRAPS * capacity:
        return read_each_step(storage, rows, starts, length)
    return by_platform(
        lambda store, r, t: _read_blocks(store, r, t, length),
        lambda store, r, t: read_each_step(store, r, t, length),
        storage,
        rows,
        starts,
    )


# How many wrapping windows a sample may expect (`samples * (length - 1) / capacity`) before
# `read` gathers single steps instead of blocks and a loop: the crossover of the two on the
# CPU (`benchmarks/compare_family.py`, row n, is far past it).
_LOOP_WRAPS = 8


def read_each_step(
    storage: PyTree[Shaped[Array, "rows capacity ..."]],
    rows: Int[Array, " samples"],
    starts: Int[Array, " samples"],
    length: int,
) -> PyTree[Shaped[Array, "samples {length} ..."]]:
    """`read` as a gather of single steps, each at its wrapped time: no loop on any
    platform. On the CPU it is what the flat buffers use for their two-step windows of small
    leaves, where the loop that `read` runs for wrapping windows costs more than the blocks
    save."""
    capacity = jtu.tree_leaves(storage)[0].shape[1]
    times = rem(starts[:, None] + jnp.arange(length, dtype=starts.dtype), capacity)
    return jtu.tree_map(lambda store: store[rows[:, None], times], storage)


def _read_blocks(
    storage: PyTree[Shaped[Array, "rows capacity ..."]],
    rows: Int[Array, " samples"],
    starts: Int[Array, " samples"],
    length: int,
) -> PyTree[Shaped[Array, "samples {length} ..."]]:
    """`read` as a gather of blocks, the wrapping windows read again in a loop."""
    capacity = jtu.tree_leaves(storage)[0].shape[1]
    # One (row, start) pair per sample, shared by the gathers of every leaf.
    where = jnp.stack([rows, starts], axis=1)

    def windows(store: Array) -> Array:
        trailing = tuple(range(2, store.ndim))
        numbers = lax.GatherDimensionNumbers(
            offset_dims=(1, *trailing), collapsed_slice_dims=(0,), start_index_map=(0, 1)
        )
        return lax.gather(
            store,
            where,
            numbers,
            (1, length, *store.shape[2:]),
            mode=lax.GatherScatterMode.CLIP,
        )

    def reread(i: Array, out: PyTree[Array]) -> PyTree[Array]:
        times = (starts[i] + jnp.arange(length)) % capacity
        return jtu.tree_map(
            lambda o, store: lax.dynamic_update_index_in_dim(o, store[rows[i], times], i, 0),
            out,
            storage,
        )

    out = jtu.tree_map(windows, storage)
    if length == 1:  # a single step never wraps
        return out
    return for_each_true(starts > capacity - length, reread, out)


def read_steps(
    storage: PyTree[Shaped[Array, "rows capacity ..."]],
    rows: Int[Array, " samples"],
    times: Int[Array, " samples"],
) -> PyTree[Shaped[Array, "samples ..."]]:
    """Reads, for each sample `i` and every leaf, the step of row `rows[i]` at physical time
    `times[i]`: a gather of single steps, straight into an array of its own."""
    return jtu.tree_map(lambda x: x[:, 0], read(storage, rows, times, 1))
