"""The trajectory buffer: batches of trajectories stored along a circular time axis, sampled
as windows of consecutive steps on a period grid."""

from collections.abc import Callable
from typing import Any, cast

import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu
from beartype import beartype
from jax.sharding import NamedSharding
from jaxtyping import Array, ArrayLike, Bool, Int, jaxtyped, PRNGKeyArray, PyTree, Shaped

from . import _ring
from ._base import AbstractReplayBuffer
from ._checks import (
    check_batch,
    check_example,
    check_key,
    check_state,
    check_unsplit,
    per_buffer,
)
from ._config import (
    Boundary,
    check_items,
    donate_flag,
    episode_config,
    grid_capacity,
    trajectory_config,
)
from ._data import AbstractState, Data
from ._episodes import check_ends, sample_mask, stored_ends
from ._guard import poison_sample
from ._jit import compiled_method
from ._random import below
from ._sharding import (
    local_rows,
    row_shards,
    sharded_empty,
    sharded_sample,
    sharded_write,
    Shards,
)
from ._sum_tree import SumTree
from ._windows import Drawn, Grid, item_windows, update_items


@jaxtyped(typechecker=beartype)
class TrajectoryBufferState(AbstractState):
    """What a trajectory buffer stores.

    **Fields:**

    - `experience`: the example's pytree, each leaf stored as `(add_batch, time, ...)`.
    - `current_index`: the time index the next step is written at (the write head).
    - `is_full`: whether the time axis has been filled at least once, so that every stored
      step is valid and the oldest step sits at the write head.
    """

    experience: PyTree[Shaped[Array, "add_batch time ..."]]
    current_index: Int[Array, ""]
    is_full: Bool[Array, ""]


@jaxtyped(typechecker=beartype)
class StrictTrajectoryBufferState(TrajectoryBufferState):
    """The state of a trajectory buffer with `boundary="strict"`: a `TrajectoryBufferState`
    with one more field.

    **Fields:**

    - `windows`: a `SumTree` with weight 1 for every window (row and start on the physical
      period grid) that is stored, does not cross the write head and has no episode end
      before its last step, 0 for the others.
    - `grid`: where those windows are (static): rows, steps per row, window length and
      period, so that a buffer with other windows refuses the state.
    """

    windows: SumTree
    grid: Grid = eqx.field(static=True)


@jaxtyped(typechecker=beartype)
class TrajectoryBufferSample(Data):
    """A batch of windows drawn from a trajectory buffer.

    **Fields:**

    - `experience`: the example's pytree, each leaf `(sample_batch, sample_time, ...)`.
    - `mask`: with `boundary="mask"`, True at each window's first step and at every later
        step up to and including the window's first episode end, False after it; None
        otherwise. When the buffer cannot be sampled it is poisoned like the experience:
        all True, so that masking does not hide the poison.
    """

    experience: PyTree[Shaped[Array, "sample_batch sample_time ..."]]
    mask: Bool[Array, "sample_batch sample_time"] | None = None


class TrajectoryBuffer(AbstractReplayBuffer[TrajectoryBufferState, TrajectoryBufferSample]):
    """A replay buffer of trajectories, Flashbax's `TrajectoryBuffer` as an Equinox Module.

    Each of the `add_batch_size` rows is one stream of consecutive steps, stored on a ring of
    `max_length_time_axis` steps. `sample` draws `sample_batch_size` windows of
    `sample_sequence_length` consecutive steps, each from a uniformly chosen row and a
    uniformly chosen start on the period grid counted from the oldest stored step. A window
    never crosses the write head, so it never stitches new data to old. With
    `boundary="mask"` the sample also says, per step, whether the step still belongs to the
    episode the window starts in.

    `add` and `sample` are compiled; repeated calls with the same shapes reuse the compiled
    code. `add` donates the state's buffers to its result, so the buffer is updated in place
    and the state passed in can no longer be used; build the buffer with
    `donate_state=False` to keep old states valid (every `add` then copies the buffer).

    A buffer is data, not a parameter: no gradient flows through its methods (a loss that
    samples from a state gets a zero gradient for it).
    """

    add_batch_size: int = eqx.field(static=True)
    sample_batch_size: int = eqx.field(static=True)
    sample_sequence_length: int = eqx.field(static=True)
    period: int = eqx.field(static=True)
    min_length_time_axis: int = eqx.field(static=True)
    max_length_time_axis: int = eqx.field(static=True)
    donate_state: bool = eqx.field(static=True)
    episode_end: Callable[[PyTree], Any] | None = eqx.field(static=True)
    boundary: Boundary = eqx.field(static=True)
    sharding: NamedSharding | None = eqx.field(static=True)

    def __init__(
        self,
        add_batch_size: int,
        sample_batch_size: int,
        sample_sequence_length: int,
        period: int,
        min_length_time_axis: int,
        max_size: int | None = None,
        max_length_time_axis: int | None = None,
        donate_state: bool = True,
        episode_end: Callable[[PyTree], Any] | None = None,
        boundary: Boundary = "ignore",
        sharding: NamedSharding | None = None,
    ):
        """**Arguments:**

        - `add_batch_size`: rows per `add`: the leading axis of every added leaf.
        - `sample_batch_size`: windows per `sample`.
        - `sample_sequence_length`: steps per sampled window.
        - `period`: spacing of window starts; `period=1` allows every start,
            `period=sample_sequence_length` gives windows that do not overlap.
        - `min_length_time_axis`: steps per row needed before `can_sample` is true; raised
            to `sample_sequence_length` (with a warning) when smaller.
        - `max_size`: total steps held, `add_batch_size * max_length_time_axis`; give this
            or `max_length_time_axis`, not both.
        - `max_length_time_axis`: steps held per row.
        - `donate_state`: whether `add` updates the state in place (the default). With
            `False`, states passed to `add` stay valid and each `add` copies the buffer.
        - `episode_end`: a function from experience to its boolean leaf that is True on
            the last step of an episode, e.g. `lambda step: step["done"]`; it is applied to
            a step, a batch `(add_batch, t, ...)` and windows
            `(sample_batch, sample_time, ...)` alike. Needed unless `boundary="ignore"`.
        - `boundary`: what sampling makes of episode ends. `"ignore"` (the default):
            nothing, windows run across them. `"mask"`: windows are drawn exactly as with
            `"ignore"` (the same key gives the same windows), and the sample carries a
            `mask` that is False after the window's first episode end. `"strict"`: only
            windows with no episode end before their last step are drawn, uniformly;
            their starts lie on the grid of physical multiples of `period` (the time
            axis is rounded down to a multiple of `period`, with a warning), and
            `can_sample` is False until such a window exists.
        """
        (
            self.add_batch_size,
            self.sample_batch_size,
            self.sample_sequence_length,
            self.period,
            self.min_length_time_axis,
            self.max_length_time_axis,
        ) = trajectory_config(
            add_batch_size=add_batch_size,
            sample_batch_size=sample_batch_size,
            sample_sequence_length=sample_sequence_length,
            period=period,
            min_length_time_axis=min_length_time_axis,
            max_size=max_size,
            max_length_time_axis=max_length_time_axis,
        )
        self.donate_state = donate_flag(donate_state)
        self.episode_end, self.boundary = episode_config(episode_end=episode_end, boundary=boundary)
        if self.boundary == "strict":
            self.max_length_time_axis = grid_capacity(
                self.max_length_time_axis,
                self.period,
                self.sample_sequence_length,
                self.min_length_time_axis,
            )
            check_items(self.add_batch_size, self.max_length_time_axis, self.period, handles=False)
        self.sharding = sharding
        shards = self._shards
        if shards is not None and self.boundary == "strict":
            raise ValueError(
                "`TrajectoryBuffer`: `boundary='strict'` cannot be combined with `sharding` "
                "(its windows are counted over all rows); use `boundary='mask'`"
            )

    @property
    def _shards(self) -> Shards | None:
        return row_shards(self)

    def _local(self) -> "TrajectoryBuffer":
        """The buffer each device runs on its own rows (see `_sharding`)."""
        return local_rows(self)

    def init(self, experience: PyTree) -> TrajectoryBufferState:
        """Creates an empty state.

        **Arguments:**

        - `experience`: one step of experience, e.g. `{"obs": obs, "reward": reward}`; only
            the structure, shapes and dtypes of its leaves are used.

        **Returns:** a `TrajectoryBufferState` whose leaves are zeros of shape
        `(add_batch_size, max_length_time_axis, *leaf.shape)` and the leaf's dtype.
        """
        return self._init("TrajectoryBuffer.init", experience)

    def _init(self, where: str, experience: PyTree) -> TrajectoryBufferState:
        check_example(where, experience)
        check_ends(where, self.episode_end, self.boundary, experience, (), "the example")
        shards = self._shards
        if shards is not None:
            return sharded_empty(shards, self._local(), experience)
        return self._empty(experience)

    def _empty(self, experience: PyTree) -> TrajectoryBufferState:
        ring = _ring.empty(experience, self.add_batch_size, self.max_length_time_axis)
        if self.boundary == "strict":
            grid = self._grid
            return StrictTrajectoryBufferState(*ring, SumTree.zeros(grid.num_items), grid)
        return TrajectoryBufferState(*ring)

    @property
    def _grid(self) -> Grid:
        return Grid(
            self.add_batch_size, self.max_length_time_axis, self.sample_sequence_length, self.period
        )

    # `state` is annotated loosely so that a wrong state gets `check_state`'s message, also
    # under jaxtyping's import hook.
    def _check_state(self, where: str, state: object) -> None:
        strict = self.boundary == "strict"
        check_state(
            where,
            state,
            StrictTrajectoryBufferState if strict else TrajectoryBufferState,
            (self.add_batch_size, self.max_length_time_axis),
            self._empty,
            sharded=self.sharding is not None,
        )

    @compiled_method(donates_state=True)
    def add(self, state: TrajectoryBufferState, batch: PyTree) -> TrajectoryBufferState:
        """Appends a batch of trajectory pieces, continuing each row where the last add
        stopped.

        **Arguments:**

        - `state`: the current state; its buffers are donated unless the buffer was made
            with `donate_state=False`.
        - `batch`: the example's pytree with leaves `(add_batch, t, ...)`,
            `1 <= t <= max_length_time_axis`, in the example's dtypes. It is not consumed.

        **Returns:** the new state.
        """
        where = "TrajectoryBuffer.add"
        self._check_state(where, state)
        steps = check_batch(where, state.experience, batch, self.max_length_time_axis)
        leading = (self.add_batch_size, steps)
        check_ends(where, self.episode_end, self.boundary, batch, leading, "the batch")
        return self._write(where, state, batch)

    def _write(
        self, where: str, state: TrajectoryBufferState, batch: PyTree[Shaped[Array, "..."]]
    ) -> TrajectoryBufferState:
        """`add` after its checks: `batch` is `(add_batch, t, ...)`."""
        shards = self._shards
        if shards is not None:
            return sharded_write(shards, self._local(), where, state, batch)
        check_unsplit(where, "the batch's", batch)
        steps = jtu.tree_leaves(batch)[0].shape[1]
        experience, current_index, is_full = _ring.append(
            state.experience, batch, state.current_index, state.is_full
        )
        if isinstance(state, StrictTrajectoryBufferState):
            windows, _ = update_items(
                state.windows,
                None,
                jnp.array(1.0, jnp.float32),
                self._grid,
                current_index=state.current_index,
                steps=steps,
                new_index=current_index,
                new_is_full=is_full,
                ends=stored_ends(where, self.episode_end, self.boundary, experience),
            )
            return StrictTrajectoryBufferState(
                experience, current_index, is_full, windows, state.grid
            )
        return TrajectoryBufferState(experience, current_index, is_full)

    @compiled_method()
    def can_sample(self, state: TrajectoryBufferState) -> Bool[Array, "*batch"]:
        """Whether `state` holds `min_length_time_axis` steps per row (or has wrapped); with
        `boundary="strict"`, also whether some window lies inside one episode."""
        return per_buffer("TrajectoryBuffer.can_sample", state, self._check_state, self._can_sample)

    def _can_sample(self, state: TrajectoryBufferState) -> Bool[Array, ""]:
        enough = state.is_full | (state.current_index >= self.min_length_time_axis)
        if isinstance(state, StrictTrajectoryBufferState):
            enough = enough & (state.windows.total() > 0)
        return enough

    # `rng_key` is annotated loosely so that a wrong key gets `check_key`'s message, also
    # under jaxtyping's import hook.
    @compiled_method()
    def sample(self, state: TrajectoryBufferState, rng_key: ArrayLike) -> TrajectoryBufferSample:
        """Draws `sample_batch_size` windows, uniformly and with replacement.

        The row and the window start are drawn independently. Starts lie on the period grid
        counted from the oldest stored step, and a window never runs past the newest one.
        Sampling a state for which `can_sample` is false returns poison instead of zeros:
        NaN, the largest integer, or True, in every element (see "Sampling semantics" in the
        README and the docs).

        **Arguments:**

        - `state`: the current state; it is not consumed.
        - `rng_key`: a key from `jax.random.key` or `jax.random.PRNGKey`.

        **Returns:** a `TrajectoryBufferSample` with leaves
        `(sample_batch_size, sample_sequence_length, ...)`, and with `boundary="mask"` its
        `mask`, `(sample_batch_size, sample_sequence_length)`.
        """
        where = "TrajectoryBuffer.sample"
        shards = self._shards
        if shards is not None:
            self._check_state(where, state)
            check_key(where, rng_key)
            local_buffer = self._local()
            return sharded_sample(shards, local_buffer, where, state, rng_key)
        return poison_sample(*self._draw(where, state, rng_key, self.sample_batch_size))

    def _draw(
        self, where: str, state: TrajectoryBufferState, key: ArrayLike, count: int
    ) -> tuple[Bool[Array, ""], TrajectoryBufferSample]:
        """`count` windows, not yet poisoned, and whether the buffer could be sampled."""
        drawn = self._choose(where, state, key, count)
        length = self.sample_sequence_length
        windows = _ring.read(state.experience, drawn.rows, drawn.starts, length)
        mask = sample_mask(where, self.episode_end, self.boundary, windows, count, length)
        return drawn.ok, TrajectoryBufferSample(windows, mask)

    def _choose(
        self, where: str, state: TrajectoryBufferState, key: ArrayLike, count: int
    ) -> Drawn:
        """Where `count` windows drawn for `sample` are (the state and key checked)."""
        self._check_state(where, state)
        check_key(where, key)
        key = cast(PRNGKeyArray, key)  # checked by `check_key` above
        grid = self._grid
        if not isinstance(state, StrictTrajectoryBufferState):
            windows = _ring.num_windows(
                state.current_index, state.is_full, grid.capacity, grid.length, grid.period
            )
            window, rows = below(key, (count,), (windows, grid.rows))
            starts = _ring.window_start(
                window, state.current_index, state.is_full, grid.capacity, grid.period
            )
        else:
            # Strict: uniform over the allowed windows, through the sum tree of their
            # weights (as prioritised sampling with equal priorities).
            items, _ = state.windows.sample(key, count)
            rows, starts = item_windows(items, grid)
        return Drawn(rows, starts, self._can_sample(state))


def make_trajectory_buffer(
    add_batch_size: int,
    sample_batch_size: int,
    sample_sequence_length: int,
    period: int,
    min_length_time_axis: int,
    max_size: int | None = None,
    max_length_time_axis: int | None = None,
    donate_state: bool = True,
    episode_end: Callable[[PyTree], Any] | None = None,
    boundary: Boundary = "ignore",
    sharding: NamedSharding | None = None,
) -> TrajectoryBuffer:
    """Makes a `TrajectoryBuffer`; the arguments are those of its constructor and of
    Flashbax's `make_trajectory_buffer`."""
    return TrajectoryBuffer(
        add_batch_size=add_batch_size,
        sample_batch_size=sample_batch_size,
        sample_sequence_length=sample_sequence_length,
        period=period,
        min_length_time_axis=min_length_time_axis,
        max_size=max_size,
        max_length_time_axis=max_length_time_axis,
        donate_state=donate_state,
        episode_end=episode_end,
        boundary=boundary,
        sharding=sharding,
    )
