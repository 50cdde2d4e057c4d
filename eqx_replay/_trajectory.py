"""The trajectory buffer: batches of trajectories stored along a circular time axis, sampled
uniformly as windows of consecutive steps on a period grid."""

from collections.abc import Callable
from typing import Any, cast, Literal, TYPE_CHECKING, TypeVar

import equinox as eqx
import jax.numpy as jnp
from beartype import beartype
from jax.sharding import NamedSharding
from jaxtyping import Array, ArrayLike, Bool, Int, jaxtyped, PRNGKeyArray, PyTree, Shaped

from . import _ring
from ._abstract_trajectory import AbstractTrajectoryBuffer, AbstractTrajectoryState
from ._checks import check_key
from ._config import donate_flag, grid_config, trajectory_config
from ._data import AbstractMaskedSample, PER_DEVICE, REPLICATED, ROWS
from ._episode_starts import draw_episode_starts, episode_mask
from ._episodes import Boundary, Episodes, need_episode_end
from ._frames import drop_incomplete, FrameStack, FrameStackState, written_frames
from ._guard import poison_sample
from ._jit import compiled_method
from ._random import below
from ._sharding import sharded_sample
from ._sum_tree import SumTree
from ._windows import Drawn, Grid, item_windows, update_items, Write


@jaxtyped(typechecker=beartype)
class TrajectoryBufferState(AbstractTrajectoryState):
    """What a trajectory buffer stores.

    **Fields:**

    - `experience`: the example's pytree, each leaf stored as `(add_batch, time, ...)`.
    - `current_index`: the time index the next step is written at (the write head).
    - `is_full`: whether the time axis has been filled at least once, so that every stored
      step is valid and the oldest step sits at the write head.
    """

    experience: PyTree[Shaped[Array, "add_batch time ..."]] = eqx.field(metadata=ROWS)
    current_index: Int[Array, ""] = eqx.field(metadata=REPLICATED)
    is_full: Bool[Array, ""] = eqx.field(metadata=REPLICATED)

    @property
    def _frame_stack(self) -> None:
        return None


@jaxtyped(typechecker=beartype)
class FrameStackedTrajectoryBufferState(AbstractTrajectoryState):
    """The state of a trajectory or flat buffer built with `frame_stack`: the fields of a
    `TrajectoryBufferState`, the stacked observation stored as its newest frame, and one
    more field.

    **Fields:**

    - `experience`: as in `TrajectoryBufferState`, but the stacked observation's leaf is
      `(add_batch, time, *frame)`: each step's newest frame only.
    - `current_index`, `is_full`: as in `TrajectoryBufferState`.
    - `frame_stack`: a `FrameStackState`: whether each stored step starts an episode,
      from which the stacks are rebuilt, and the count of added stacks that broke the
      rule (with `FrameStack(check=True)`).
    """

    experience: PyTree[Shaped[Array, "add_batch time ..."]] = eqx.field(metadata=ROWS)
    current_index: Int[Array, ""] = eqx.field(metadata=REPLICATED)
    is_full: Bool[Array, ""] = eqx.field(metadata=REPLICATED)
    frame_stack: FrameStackState = eqx.field(metadata=ROWS)

    @property
    def _frame_stack(self) -> FrameStackState:
        return self.frame_stack


@jaxtyped(typechecker=beartype)
class StrictTrajectoryBufferState(AbstractTrajectoryState):
    """The state of a trajectory buffer with `boundary="strict"`: the fields of a
    `TrajectoryBufferState`, and two more.

    **Fields:**

    - `experience`, `current_index`, `is_full`: as in `TrajectoryBufferState`.

    - `windows`: a `SumTree` with weight 1 for every window (row and start on the physical
      period grid) that is stored, does not cross the write head and has no episode end
      before its last step, 0 for the others.
    - `grid`: where those windows are (static): rows, steps per row, window length and
      period, so that a buffer with other windows refuses the state.
    - `frame_stack`: with `frame_stack`, as in `FrameStackedTrajectoryBufferState`
      (and the windows whose first stack needs a frame that is gone have weight 0);
      None otherwise.
    """

    experience: PyTree[Shaped[Array, "add_batch time ..."]] = eqx.field(metadata=ROWS)
    current_index: Int[Array, ""] = eqx.field(metadata=REPLICATED)
    is_full: Bool[Array, ""] = eqx.field(metadata=REPLICATED)
    windows: SumTree = eqx.field(metadata=PER_DEVICE)
    grid: Grid = eqx.field(static=True)
    frame_stack: FrameStackState | None = eqx.field(default=None, metadata=ROWS)

    @property
    def _frame_stack(self) -> FrameStackState | None:
        return self.frame_stack


@jaxtyped(typechecker=beartype)
class TrajectoryBufferSample(AbstractMaskedSample):
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


# The state type of a `TrajectoryBuffer`: a `StrictTrajectoryBufferState` with
# `boundary="strict"`, a `FrameStackedTrajectoryBufferState` with `frame_stack`, a
# `TrajectoryBufferState` otherwise. Type checkers take the last unless told
# (`TrajectoryBuffer[StrictTrajectoryBufferState]`), as every state was one before the
# strict state became its own class.
if TYPE_CHECKING:
    from typing_extensions import TypeVar as _TypeVar

    State = _TypeVar(
        "State",
        TrajectoryBufferState,
        StrictTrajectoryBufferState,
        FrameStackedTrajectoryBufferState,
        default=TrajectoryBufferState,
    )
else:
    State = TypeVar(
        "State",
        TrajectoryBufferState,
        StrictTrajectoryBufferState,
        FrameStackedTrajectoryBufferState,
    )


class TrajectoryBuffer(AbstractTrajectoryBuffer[State, TrajectoryBufferSample]):
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
        donate_state: bool = True,
        episode_end: Callable[[PyTree], Any] | None = None,
        boundary: Literal["ignore", "mask", "strict"] = "ignore",
        sharding: NamedSharding | None = None,
        frame_stack: FrameStack | None = None,
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
        - `sharding`: a `NamedSharding` that splits the rows over devices (see "Scaling
            out" in the docs), or None.
        - `frame_stack`: an `eqx_replay.FrameStack`, to store a stacked observation as
            its newest frame only and rebuild the stacks when sampling (needs
            `episode_end`); see "Frames stored once" in the docs. Windows whose first
            stack needs a frame that is no longer stored are not drawn.
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
        donate = donate_flag(donate_state)
        episodes = Episodes(episode_end, boundary)
        if episodes.strict:
            config = grid_config(config, handles=False)
        self._configure(config, episodes, donate, sharding, frame_stack)
        if self._shards is not None and episodes.strict:
            raise ValueError(
                "`TrajectoryBuffer`: `boundary='strict'` cannot be combined with `sharding` "
                "(its windows are counted over all rows); use `boundary='mask'`"
            )

    def _state_type(self) -> type[State]:
        if self._episodes.strict:
            return cast(type[State], StrictTrajectoryBufferState)
        if self.frame_stack is not None:
            return cast(type[State], FrameStackedTrajectoryBufferState)
        return cast(type[State], TrajectoryBufferState)

    def _empty(self, experience: PyTree) -> State:
        rows, capacity = self.add_batch_size, self.max_length_time_axis
        ring = _ring.empty(experience, rows, capacity)
        kept = None if self.frame_stack is None else self.frame_stack.empty(rows, capacity)
        if self._episodes.strict:
            grid = self._grid
            windows = SumTree.zeros(grid.num_items)
            return cast(State, StrictTrajectoryBufferState(*ring, windows, grid, kept))
        if kept is not None:
            return cast(State, FrameStackedTrajectoryBufferState(*ring, kept))
        return cast(State, TrajectoryBufferState(*ring))

    def _written(self, state: State, experience: PyTree[Array], write: Write) -> State:
        new = (experience, write.new_index, write.new_is_full)
        if isinstance(state, FrameStackedTrajectoryBufferState):
            kept = written_frames(write)
            assert kept is not None
            return cast(State, FrameStackedTrajectoryBufferState(*new, kept))
        if not isinstance(state, StrictTrajectoryBufferState):
            return cast(State, TrajectoryBufferState(*new))
        one = jnp.array(1.0, jnp.float32)
        windows, _ = update_items(state.windows, None, one, self._grid, write)
        windows, _ = drop_incomplete(self.frame_stack, windows, None, self._grid, write)
        kept = written_frames(write)
        return cast(State, StrictTrajectoryBufferState(*new, windows, state.grid, kept))

    def _has_windows(self, state: State) -> Bool[Array, ""] | None:
        if isinstance(state, StrictTrajectoryBufferState):
            return state.windows.total() > 0
        if isinstance(state, FrameStackedTrajectoryBufferState):
            return jnp.sum(self._stacked_windows(state)[1]) > 0
        return None

    def _stacked_windows(
        self, state: FrameStackedTrajectoryBufferState
    ) -> tuple[Int[Array, " rows"], Int[Array, " rows"]]:
        """With `frame_stack`, per row: how many of its oldest windows cannot be drawn
        (their first stack needs a frame that is gone), and how many can."""
        assert self.frame_stack is not None
        grid = self._grid
        skipped = self.frame_stack.skipped(
            state.frame_stack.episode_starts, state.current_index, state.is_full
        )
        skipped_windows = _ring.div(skipped + grid.period - 1, grid.period)
        windows = _ring.num_windows(
            state.current_index, state.is_full, grid.capacity, grid.length, grid.period
        )
        return skipped_windows, jnp.maximum(windows - skipped_windows, 0)

    def _pick(
        self,
        state: State,
        key: PRNGKeyArray,
        count: int,
    ) -> Drawn:
        """The row and the window start are drawn independently, uniformly: starts lie on
        the period grid counted from the oldest stored step. With `boundary="strict"`,
        uniformly over the allowed windows, through the sum tree of their weights (as
        prioritised sampling with equal priorities)."""
        grid = self._grid
        if isinstance(state, StrictTrajectoryBufferState):
            items, _ = state.windows.sample(key, count)
            rows, starts = item_windows(items, grid)
        elif isinstance(state, FrameStackedTrajectoryBufferState):
            # Uniformly over the windows that can be drawn, whose number differs by row.
            skipped, counts = self._stacked_windows(state)
            ends = jnp.cumsum(counts)
            (drawn,) = below(key, (count,), (ends[-1],))
            rows = jnp.minimum(jnp.searchsorted(ends, drawn, side="right"), grid.rows - 1)
            window = skipped[rows] + drawn - (ends[rows] - counts[rows])
            starts = _ring.window_start(
                window, state.current_index, state.is_full, grid.capacity, grid.period
            )
            rows = rows.astype(jnp.int32)
        else:
            windows = _ring.num_windows(
                state.current_index, state.is_full, grid.capacity, grid.length, grid.period
            )
            window, rows = below(key, (count,), (windows, grid.rows))
            starts = _ring.window_start(
                window, state.current_index, state.is_full, grid.capacity, grid.period
            )
        return Drawn(rows, starts, self._can_sample(state))

    # `rng_key` is annotated loosely so that a wrong key gets `check_key`'s message.
    @compiled_method()
    def sample_episodes(self, state: State, rng_key: ArrayLike) -> TrajectoryBufferSample:
        """Draws `sample_batch_size` whole episodes: windows of `sample_sequence_length`
        steps, each starting at the first step of an episode drawn uniformly, with
        replacement, among the episodes whose first step is still stored. Needs
        `episode_end`; works with every `boundary`.

        A stored step is an episode's first step when it is its row's first step ever, or
        when the step before it is stored and ended an episode; the oldest stored step of
        a full ring is not one, since the step before it is gone (the state is
        Flashbax's, which keeps no more: a ring filled exactly, whose oldest step is the
        row's first, cannot be told from one filled twice).

        The sample's `mask` is True exactly where the window's step belongs to the
        episode and is stored: up to and including the episode's end, and not past the
        newest stored step of an episode still running. Longer episodes are cut at the
        window's length; what the masked-out steps hold is unspecified.

        Not gated by `can_sample`: the whole sample is poison (the mask too) only when no
        episode's first step is stored. Each call reads every stored step's episode end
        once (to count the episodes' first steps), so it costs more than `sample` in
        buffers much larger than the sample (see `benchmarks/episodes.py`).

        Sharded, each device draws its share of the sample among its own rows' episodes
        (uniformly there), as it does for `sample`; a device that holds no episode's
        first step poisons its share.

        **Arguments:**

        - `state`: the current state; it is not consumed.
        - `rng_key`: a key from `jax.random.key` or `jax.random.PRNGKey`.

        **Returns:** a `TrajectoryBufferSample` with experience leaves
        `(sample_batch_size, sample_sequence_length, ...)` and its `mask`.
        """
        where = f"{type(self).__name__}.sample_episodes"
        need_episode_end(where, self.episode_end, "episodes are told apart by their ends")
        self._check_state(where, state)
        check_key(where, rng_key)
        key = cast(PRNGKeyArray, rng_key)
        shards = self._shards
        if shards is not None:
            return sharded_sample(
                shards,
                self._local(),
                where,
                state,
                key,
                lambda _, sample: sample,
                lambda local_state, local_key, count: self._local()._episodes_drawn(
                    where, local_state, local_key, count
                ),
            )
        return self._episodes_drawn(where, state, key, self.sample_batch_size)

    def _episodes_drawn(
        self, where: str, state: State, key: PRNGKeyArray, count: int
    ) -> TrajectoryBufferSample:
        """`sample_episodes` on one device, after its checks: the sample, poisoned when no
        episode's first step is stored."""
        assert self.episode_end is not None
        drawn = draw_episode_starts(where, self.episode_end, state, key, count)
        windows = self._read(state, drawn, self.sample_sequence_length, _ring.read)
        mask = episode_mask(where, self.episode_end, windows, drawn, state)
        return poison_sample(drawn.ok, TrajectoryBufferSample(windows, mask))

    def _every_window(self, state: State) -> tuple[Drawn, Bool[Array, " candidates"]]:
        """With `boundary="strict"`, every item of the physical grid, allowed when its
        weight is positive; otherwise every window of the logical grid from the oldest
        stored step (as `_pick` numbers them), drawable while it is stored (and with
        `frame_stack`, its first stack complete)."""
        grid = self._grid
        if isinstance(state, StrictTrajectoryBufferState):
            items = jnp.arange(grid.num_items, dtype=jnp.int32)
            rows, starts = item_windows(items, grid)
            allowed = state.windows.get(items) > 0
            return Drawn(rows, starts, jnp.any(allowed)), allowed
        per_row = (grid.capacity - grid.length) // grid.period + 1
        window, rows = jnp.divmod(jnp.arange(per_row * grid.rows, dtype=jnp.int32), grid.rows)
        if isinstance(state, FrameStackedTrajectoryBufferState):
            skipped, counts = self._stacked_windows(state)
            eligible = (window >= skipped[rows]) & (window < skipped[rows] + counts[rows])
        else:
            windows = _ring.num_windows(
                state.current_index, state.is_full, grid.capacity, grid.length, grid.period
            )
            eligible = window < windows
        starts = _ring.window_start(
            window, state.current_index, state.is_full, grid.capacity, grid.period
        )
        return Drawn(rows, starts, jnp.any(eligible)), eligible

    def _sample(
        self, drawn: Drawn, windows: PyTree[Array], mask: Bool[Array, "samples length"] | None
    ) -> TrajectoryBufferSample:
        return TrajectoryBufferSample(windows, mask)

    def _sharded_sample(self, state: State, sample: Any) -> Any:
        return sample


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
    boundary: Literal["ignore", "mask", "strict"] = "ignore",
    sharding: NamedSharding | None = None,
    frame_stack: FrameStack | None = None,
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
        frame_stack=frame_stack,
    )
