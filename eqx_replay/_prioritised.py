"""The prioritised trajectory buffer: windows sampled in proportion to their priority."""

from collections.abc import Callable
from typing import Any, Literal

import equinox as eqx
import jax.lax as lax
import jax.numpy as jnp
import numpy as np
from beartype import beartype
from jax.sharding import NamedSharding
from jaxtyping import Array, ArrayLike, Bool, Float, Int, jaxtyped, PRNGKeyArray, PyTree, Shaped

from . import _ring
from ._abstract_trajectory import AbstractTrajectoryBuffer, AbstractTrajectoryState
from ._base import AbstractPrioritisedBuffer
from ._checks import check_beta, check_priorities, describe
from ._config import check_exponent, donate_flag, grid_config, trajectory_config
from ._data import AbstractMaskedSample, PER_DEVICE, REPLICATED, ROWS
from ._episodes import Boundary, Episodes
from ._frames import drop_incomplete, FrameStack, FrameStackState, written_frames
from ._sharding import sharded_set_priorities, sharded_totals
from ._sum_tree import priority_leaves, SumTree
from ._windows import (
    Drawn,
    Grid,
    is_valid,
    item_windows,
    update_items,
    window_number,
    Write,
)


@jaxtyped(typechecker=beartype)
class PrioritisedTrajectoryBufferState(AbstractTrajectoryState):
    """What a prioritised trajectory buffer stores.

    **Fields:**

    - `experience`, `current_index`, `is_full`: as in `TrajectoryBufferState`.
    - `priorities`: a `SumTree` of each item's priority (zero while the item's window is not
      valid).
    - `generation`: a counter per item, odd exactly while the item's window is valid
      (complete, not crossing the write head and, with `boundary="strict"`, inside one
      episode). It moves on whenever the window changes: by one when the window becomes
      valid or invalid, by two when a valid window is overwritten by a new valid one. A
      priority update made for an older generation is ignored.
    - `max_priority`: the largest priority set so far (1.0 at first), given to new windows.
    - `grid`, `strict` (static): where the windows are (rows, steps per row, window length,
      period) and whether episode ends are enforced, so that a buffer whose windows mean
      something else refuses the state.
    - `frame_stack`: with `frame_stack`, a `FrameStackState` (see
      `FrameStackedTrajectoryBufferState`; the windows whose first stack needs a frame
      that is gone are not valid); None otherwise.

    Items are numbered column by column: item `column * add_batch_size + row` is the window
    of row `row` that starts at time index `column * period`.

    A sharded buffer (`sharding=...`) keeps one sum tree per device, over its own rows:
    `priorities.nodes`, `generation` and `max_priority` then have a leading axis of one
    entry per device, and `grid` is a device's.
    """

    experience: PyTree[Shaped[Array, "add_batch time ..."]] = eqx.field(metadata=ROWS)
    current_index: Int[Array, ""] = eqx.field(metadata=REPLICATED)
    is_full: Bool[Array, ""] = eqx.field(metadata=REPLICATED)
    priorities: SumTree = eqx.field(metadata=PER_DEVICE)
    generation: Int[Array, "*shards items"] = eqx.field(metadata=PER_DEVICE)
    max_priority: Float[Array, "*shards"] = eqx.field(metadata=PER_DEVICE)
    grid: Grid = eqx.field(static=True)
    strict: bool = eqx.field(static=True)
    frame_stack: FrameStackState | None = eqx.field(default=None, metadata=ROWS)

    @property
    def _frame_stack(self) -> FrameStackState | None:
        return self.frame_stack

    @property
    def valid(self) -> Bool[Array, " items"]:
        """Whether each item's window can be sampled (its generation is odd)."""
        return is_valid(self.generation)


@jaxtyped(typechecker=beartype)
class PrioritisedTrajectoryBufferSample(AbstractMaskedSample):
    """A batch of windows drawn in proportion to priority.

    **Fields:**

    - `experience`: the example's pytree, each leaf `(sample_batch, sample_time, ...)`.
    - `indices`: a handle per window, to pass back to `set_priorities`; it names the item and
      its generation, so an update for a window overwritten since is ignored.
    - `probabilities`: the probability with which each window was drawn.
    - `mask`: with `boundary="mask"`, as in `TrajectoryBufferSample`; None otherwise.
    """

    experience: PyTree[Shaped[Array, "sample_batch sample_time ..."]]
    indices: Int[Array, " sample_batch"]
    probabilities: Float[Array, " sample_batch"]
    mask: Bool[Array, "sample_batch sample_time"] | None = None


class PrioritisedTrajectoryBuffer(
    AbstractTrajectoryBuffer[PrioritisedTrajectoryBufferState, PrioritisedTrajectoryBufferSample],
    AbstractPrioritisedBuffer[PrioritisedTrajectoryBufferState, PrioritisedTrajectoryBufferSample],
):
    """A trajectory buffer whose windows are sampled in proportion to
    `priority ** priority_exponent`, Flashbax's `PrioritisedTrajectoryBuffer` as an Equinox
    Module.

    An item is a window of `sample_sequence_length` steps of one row starting at a physical
    time index that is a multiple of `period`. A window gets the largest priority set so far
    as soon as all its steps are stored, and priority zero (it cannot be sampled) while it is
    being overwritten or would cross the write head, so a sample never joins new data to
    old. `add` and `set_priorities` update the state in place (see `TrajectoryBuffer`).

    `sample` is stratified: the `j`-th of its draws falls in the `j`-th of equal slices of
    the total priority. It returns a `PrioritisedTrajectoryBufferSample`; when `can_sample`
    is false its windows are poison and its probabilities zero, never NaN. With
    `boundary="strict"`, a completed window in which an episode ends before its last step
    gets priority zero and stays invalid: no `set_priorities` revives it.
    """

    add_batch_size: int = eqx.field(static=True)
    sample_batch_size: int = eqx.field(static=True)
    sample_sequence_length: int = eqx.field(static=True)
    period: int = eqx.field(static=True)
    min_length_time_axis: int = eqx.field(static=True)
    max_length_time_axis: int = eqx.field(static=True)
    priority_exponent: float = eqx.field(static=True)
    donate_state: bool = eqx.field(static=True)
    episode_end: Callable[[PyTree], Any] | None = eqx.field(static=True)
    boundary: Boundary = eqx.field(static=True)
    sharding: NamedSharding | None = eqx.field(static=True)
    frame_stack: FrameStack | None = eqx.field(static=True)

    def __init__(
        self,
        add_batch_size: int,
        sample_batch_size: int,
        sample_sequence_length: int,
        period: int,
        min_length_time_axis: int,
        max_size: int | None = None,
        max_length_time_axis: int | None = None,
        priority_exponent: float | int | np.floating | np.integer = 0.6,
        donate_state: bool = True,
        episode_end: Callable[[PyTree], Any] | None = None,
        boundary: Literal["ignore", "mask", "strict"] = "ignore",
        sharding: NamedSharding | None = None,
        frame_stack: FrameStack | None = None,
    ):
        """**Arguments:** those of `TrajectoryBuffer`, and

        - `priority_exponent`: windows are drawn in proportion to
            `priority ** priority_exponent` (0 gives uniform sampling over the valid windows
            whose priority is not 0).

        With `sharding`, each device keeps a sum tree over its own rows and draws
        `sample_batch_size / n` windows from it: a window of device `d` is drawn by one of
        `d`'s draws with probability `p / total_d`, and `sample.probabilities` reports
        `p / (n * total_d)`, its probability under the whole sample (see "Scaling out" in
        the docs).

        The time axis is rounded down to a multiple of `period`, with a warning.
        """
        config = trajectory_config(
            add_batch_size=add_batch_size,
            sample_batch_size=sample_batch_size,
            sample_sequence_length=sample_sequence_length,
            period=period,
            min_length_time_axis=min_length_time_axis,
            max_size=max_size,
            max_length_time_axis=max_length_time_axis,
        )
        self.priority_exponent = check_exponent(priority_exponent)
        config = grid_config(config, handles=True)
        donate = donate_flag(donate_state)
        episodes = Episodes(episode_end, boundary)
        self._configure(config, episodes, donate, sharding, frame_stack)

    @property
    def _generations(self) -> int:
        # `indices` carry the window number (see `window_number`) modulo `_generations`
        # above the item number, in an int32.
        return (2**31 - 1) // self._grid.num_items

    def _state_type(self) -> type[PrioritisedTrajectoryBufferState]:
        return PrioritisedTrajectoryBufferState

    def _empty(self, experience: PyTree) -> PrioritisedTrajectoryBufferState:
        storage, current_index, is_full = _ring.empty(
            experience, self.add_batch_size, self.max_length_time_axis
        )
        items = self._grid.num_items
        return PrioritisedTrajectoryBufferState(
            experience=storage,
            current_index=current_index,
            is_full=is_full,
            priorities=SumTree.zeros(items),
            generation=jnp.zeros(items, jnp.int32),
            max_priority=jnp.array(1.0, jnp.float32),
            grid=self._grid,
            strict=self._episodes.strict,
            frame_stack=None
            if self.frame_stack is None
            else self.frame_stack.empty(self.add_batch_size, self.max_length_time_axis),
        )

    def _written(
        self, state: PrioritisedTrajectoryBufferState, experience: PyTree[Array], write: Write
    ) -> PrioritisedTrajectoryBufferState:
        """Windows that the write completes get the largest priority set so far and a new
        generation; windows it overwrites that were valid get priority zero and a new
        generation."""
        priorities, generation = update_items(
            state.priorities, state.generation, state.max_priority, self._grid, write
        )
        priorities, generation = drop_incomplete(
            self.frame_stack, priorities, generation, self._grid, write
        )
        assert generation is not None
        return PrioritisedTrajectoryBufferState(
            experience,
            write.new_index,
            write.new_is_full,
            priorities,
            generation,
            state.max_priority,
            state.grid,
            state.strict,
            written_frames(write),
        )

    def _has_windows(self, state: PrioritisedTrajectoryBufferState) -> Bool[Array, ""]:
        shards = self._shards
        if shards is not None:
            # Every device must be able to draw its share: one boolean per device, reduced.
            return jnp.all(sharded_totals(shards, state) > 0)
        return state.priorities.total() > 0

    def _pick(
        self, state: PrioritisedTrajectoryBufferState, key: PRNGKeyArray, count: int
    ) -> Drawn:
        """Windows drawn in proportion to their priority (stratified: the `j`-th draw falls
        in the `j`-th of equal slices of the total priority), with their handles and
        probabilities (zero when the buffer cannot be sampled)."""
        grid = self._grid
        items, probabilities = state.priorities.sample(key, count)
        rows, starts = item_windows(items, grid)
        items = jnp.minimum(items, grid.num_items - 1)  # only when the total is zero
        ok = self._can_sample(state)
        indices = self._handles(state, items)
        return Drawn(rows, starts, ok, indices, jnp.where(ok, probabilities, 0.0))

    def _handles(
        self, state: PrioritisedTrajectoryBufferState, items: Int[Array, " n"]
    ) -> Int[Array, " n"]:
        """The handles of `items` (`sample.indices`): the item and its window number
        modulo `_generations`, so that an update aimed at an earlier window is ignored."""
        number = window_number(state.generation[items]) % self._generations
        return number * self._grid.num_items + items

    def _every_window(
        self, state: PrioritisedTrajectoryBufferState
    ) -> tuple[Drawn, Bool[Array, " candidates"]]:
        """Every item, drawable while its window is valid (whatever its priority), with its
        handle and the probability `sample` would draw it with."""
        grid = self._grid
        items = jnp.arange(grid.num_items, dtype=jnp.int32)
        rows, starts = item_windows(items, grid)
        valid = is_valid(state.generation)
        probabilities = state.priorities.probabilities(items)
        handles = self._handles(state, items)
        return Drawn(rows, starts, jnp.any(valid), handles, probabilities), valid

    def _sample(
        self, drawn: Drawn, windows: PyTree[Array], mask: Bool[Array, "samples length"] | None
    ) -> PrioritisedTrajectoryBufferSample:
        assert drawn.indices is not None and drawn.probabilities is not None
        return PrioritisedTrajectoryBufferSample(
            experience=windows, indices=drawn.indices, probabilities=drawn.probabilities, mask=mask
        )

    def _sharded_sample(self, state: PrioritisedTrajectoryBufferState, sample: Any) -> Any:
        """Inside a sharded `sample`, on one device: the local sample's handles made global
        (they name the device, see `_handle_parts`) and its probabilities made the whole
        sample's (each device draws `1 / n` of it)."""
        shards = self._shards
        assert shards is not None
        items_total = self._local()._grid.num_items
        items = sample.indices % items_total
        number = window_number(state.generation[items]) % self._generations
        device = lax.axis_index(shards.axis)
        indices = number * self._grid.num_items + device * items_total + items
        probabilities = sample.probabilities / shards.count
        return eqx.tree_at(lambda s: (s.indices, s.probabilities), sample, (indices, probabilities))

    def _set_priorities(
        self,
        where: str,
        state: PrioritisedTrajectoryBufferState,
        indices: ArrayLike,
        priorities: ArrayLike,
    ) -> PrioritisedTrajectoryBufferState:
        """`set_priorities`, with errors reported as coming from `where`."""
        self._check_state(where, state)
        indices, priorities = check_priorities(where, indices, priorities)
        shards = self._shards
        if shards is not None:
            local_buffer = self._local()
            return sharded_set_priorities(
                shards, local_buffer, where, state, indices, priorities, self._local_handles
            )
        items_total = self._grid.num_items
        generation, items = jnp.divmod(indices, items_total)
        in_range = (indices >= 0) & (generation < self._generations)
        items = jnp.where(in_range, items, 0)
        stored = state.generation[items]
        current = is_valid(stored) & (window_number(stored) % self._generations == generation)
        # NaN and negative priorities are ignored; +inf is kept, and capped below.
        keep = in_range & current & (priorities >= 0)
        values = priority_leaves(
            jnp.where(keep, priorities, 0.0), self.priority_exponent, items_total
        )
        tree = state.priorities.set(items, values, keep)
        max_priority = jnp.maximum(
            state.max_priority, jnp.max(jnp.where(keep, values, 0.0), initial=0.0)
        )
        return PrioritisedTrajectoryBufferState(
            state.experience,
            state.current_index,
            state.is_full,
            tree,
            state.generation,
            max_priority,
            state.grid,
            state.strict,
            state.frame_stack,
        )

    def _local_handles(
        self, state: PrioritisedTrajectoryBufferState, indices: Int[Array, " k"]
    ) -> Int[Array, " k"]:
        """Inside a sharded `set_priorities`, on one device: the global handles as its local
        buffer's, and -1 (ignored) for a handle that is stale, out of range, or drawn by
        another device."""
        shards = self._shards
        assert shards is not None
        local_buffer = self._local()
        local_items = local_buffer._grid.num_items
        generation, global_item = jnp.divmod(indices, self._grid.num_items)
        device, items = jnp.divmod(global_item, local_items)
        mine = (indices >= 0) & (generation < self._generations)
        mine = mine & (device == lax.axis_index(shards.axis))
        items = jnp.where(mine, items, 0)
        stored = state.generation[items]
        current = (
            mine & is_valid(stored) & (window_number(stored) % self._generations == generation)
        )
        number = window_number(stored) % local_buffer._generations
        return jnp.where(current, number * local_items + items, -1)


def make_prioritised_trajectory_buffer(
    add_batch_size: int,
    sample_batch_size: int,
    sample_sequence_length: int,
    period: int,
    min_length_time_axis: int,
    max_size: int | None = None,
    max_length_time_axis: int | None = None,
    priority_exponent: float | int | np.floating | np.integer = 0.6,
    device: str | None = None,
    donate_state: bool = True,
    episode_end: Callable[[PyTree], Any] | None = None,
    boundary: Literal["ignore", "mask", "strict"] = "ignore",
    sharding: NamedSharding | None = None,
    frame_stack: FrameStack | None = None,
) -> PrioritisedTrajectoryBuffer:
    """Makes a `PrioritisedTrajectoryBuffer`; the arguments are those of its constructor and
    of Flashbax's `make_prioritised_trajectory_buffer`.

    `device` is accepted so that Flashbax code runs unchanged, and ignored: Flashbax uses it
    to pick a sum-tree update strategy per backend, while this buffer's writes (slices and a
    deduplicated scatter) are the right choice on every backend.
    """
    del device
    return PrioritisedTrajectoryBuffer(
        add_batch_size=add_batch_size,
        sample_batch_size=sample_batch_size,
        sample_sequence_length=sample_sequence_length,
        period=period,
        min_length_time_axis=min_length_time_axis,
        max_size=max_size,
        max_length_time_axis=max_length_time_axis,
        priority_exponent=priority_exponent,
        donate_state=donate_state,
        episode_end=episode_end,
        boundary=boundary,
        sharding=sharding,
        frame_stack=frame_stack,
    )


def importance_weights(
    probabilities: Float[ArrayLike, " sample_batch"], beta: float | Float[ArrayLike, ""]
) -> Float[Array, " sample_batch"]:
    """Prioritised replay's importance-sampling correction, normalised by the largest.

    With `N` stored windows, window `i` drawn with probability `P(i)` gets
    `w_i = (N * P(i)) ** -beta / max_j (N * P(j)) ** -beta = (min_j P(j) / P(i)) ** beta`
    (Schaul et al., 2016); `N` cancels. Windows with probability zero (a poisoned sample)
    get weight zero. Every window with a positive probability gets a positive weight:
    sampled probabilities are at least the smallest normal float32, so the ratio is too.

    **Arguments:**

    - `probabilities`: `sample.probabilities`, a 1-d float array (empty gives empty).
    - `beta`: the correction's strength, from 0 (none) to 1 (full), usually annealed to 1;
        a Python or NumPy number is checked to lie in `[0, 1]`, a traced one is not.

    **Returns:** the weights, of the shape of `probabilities`.
    """
    where = "importance_weights"
    dtype = getattr(probabilities, "dtype", None)
    shape = tuple(getattr(probabilities, "shape", ()))
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating) or len(shape) != 1:
        raise TypeError(
            f"`{where}`: `probabilities` must be a 1-d float array, `sample.probabilities`; "
            f"got {describe(probabilities)}"
        )
    check_beta(where, beta)
    p = jnp.asarray(probabilities)
    positive = p > 0
    smallest = jnp.min(jnp.where(positive, p, jnp.inf), initial=jnp.inf)
    return jnp.where(positive, (smallest / jnp.where(positive, p, 1.0)) ** beta, 0.0)
