"""The skeleton of the trajectory buffers: what the uniform and the prioritised kinds share,
implemented once.

In the style of Optimistix's `AbstractQuasiNewton`: `AbstractTrajectoryBuffer` implements
`init`, `add`, `can_sample`, `sample`, their checks and the sharding plumbing, and each
final kind supplies only its fields and these hooks:

- `_state_type()`, `_empty(experience)`: the kind's state, and an empty one on one device;
- `_written(state, experience, write)`: the state after the ring was written (the kind's
  bookkeeping of the windows the write changed);
- `_has_windows(state)`: whether some window can be drawn, beyond the steps stored;
- `_pick(state, key, count)`: where `count` drawn windows are (`_windows.Drawn`);
- `_every_window(state)`: every window the buffer might hold, and which can be drawn (for
  `epoch`);
- `_sample(drawn, windows, mask)`: the kind's sample of the windows read;
- `_sharded_sample(state, sample)`: a device's sample made the whole sample's, when sharded.
"""

import abc
import dataclasses
from collections.abc import Callable
from typing import Any, cast, TypeVar

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, ArrayLike, Bool, Int, PRNGKeyArray, PyTree, Shaped

from . import _ring
from ._base import AbstractReplayBuffer
from ._checks import check_batch, check_example, check_key, check_state, check_unsplit, per_buffer
from ._config import TrajectoryConfig
from ._data import AbstractState
from ._episodes import Boundary, Episodes
from ._epoch import epoch
from ._frames import check_frame_stack, FrameStack, FrameStackState
from ._guard import poison_sample
from ._jit import compiled_method
from ._sharding import (
    global_state,
    quietly,
    shard_config,
    sharded_empty,
    sharded_sample,
    sharded_write,
    Shards,
)
from ._windows import Drawn, Grid, Write


class AbstractTrajectoryState(AbstractState):
    """The state of a trajectory buffer: `experience` stored `(add_batch, time, ...)`, the
    write head `current_index` and `is_full` (see `TrajectoryBufferState`)."""

    current_index: eqx.AbstractVar[Int[Array, ""]]

    @property
    @abc.abstractmethod
    def _frame_stack(self) -> FrameStackState | None:
        """With `frame_stack`, what the buffer keeps beside its frames (see `_frames`);
        None for a state that stores whole observations."""

    @property
    def _write_head(self) -> Int[Array, ""]:
        """`current_index`."""
        return self.current_index


State = TypeVar("State", bound=AbstractTrajectoryState)
Sample = TypeVar("Sample")
_Kind = TypeVar("_Kind", bound="AbstractTrajectoryBuffer")


class AbstractTrajectoryBuffer(AbstractReplayBuffer[State, Sample]):
    """A buffer of trajectories: `add_batch_size` rows, each a stream of consecutive steps
    on a ring of `max_length_time_axis` steps, sampled as windows of
    `sample_sequence_length` steps whose starts lie on a `period` grid (see
    `TrajectoryBuffer` and `PrioritisedTrajectoryBuffer`, the final kinds)."""

    add_batch_size: eqx.AbstractVar[int]
    sample_sequence_length: eqx.AbstractVar[int]
    period: eqx.AbstractVar[int]
    min_length_time_axis: eqx.AbstractVar[int]
    max_length_time_axis: eqx.AbstractVar[int]
    episode_end: eqx.AbstractVar[Callable[[PyTree], Any] | None]
    boundary: eqx.AbstractVar[Boundary]
    frame_stack: eqx.AbstractVar[FrameStack | None]

    # -- hooks --------------------------------------------------------------------------

    @abc.abstractmethod
    def _state_type(self) -> type[State]:
        """The type of this buffer's states."""

    @abc.abstractmethod
    def _empty(self, experience: PyTree) -> State:
        """An empty state on one device, unsharded (`init` without its checks)."""

    @abc.abstractmethod
    def _written(self, state: State, experience: PyTree[Array], write: Write) -> State:
        """The state after `write` left the ring's steps as `experience`: the kind's
        bookkeeping of the windows that the write changed."""

    @abc.abstractmethod
    def _has_windows(self, state: State) -> Bool[Array, ""] | None:
        """Whether some window can be drawn (the steps stored are counted apart); None when
        every window of the stored steps can."""

    @abc.abstractmethod
    def _pick(self, state: State, key: PRNGKeyArray, count: int) -> Drawn:
        """Where `count` windows drawn for `sample` are (`ok` included)."""

    @abc.abstractmethod
    def _every_window(self, state: State) -> tuple[Drawn, Bool[Array, " candidates"]]:
        """Every window the buffer might hold (`Drawn` with handles and probabilities for a
        prioritised kind), and which of them `sample` can draw now."""

    @abc.abstractmethod
    def _sample(
        self, drawn: Drawn, windows: PyTree[Array], mask: Bool[Array, "samples length"] | None
    ) -> Sample:
        """The kind's sample of the `windows` read where `drawn` says, not yet poisoned."""

    @abc.abstractmethod
    def _sharded_sample(self, state: State, sample: Any) -> Any:
        """Inside a sharded `sample`, on one device: its local sample as its part of the
        whole sample."""

    # -- shared machinery ---------------------------------------------------------------

    def _configure(
        self,
        config: TrajectoryConfig,
        episodes: Episodes,
        donate_state: bool,
        sharding: object,
        frame_stack: object = None,
    ) -> None:
        """Sets the fields every kind has from its validated arguments (called by the kinds'
        `__init__`, in which fields may be set), and checks `sharding` against the sizes
        that split over it and `frame_stack` against the rest."""
        (
            self.add_batch_size,
            self.sample_batch_size,
            self.sample_sequence_length,
            self.period,
            self.min_length_time_axis,
            self.max_length_time_axis,
        ) = config
        self.donate_state = donate_state
        self.episode_end, self.boundary = episodes.episode_end, episodes.boundary
        self.sharding = sharding  # pyright: ignore[reportAttributeAccessIssue] # checked below
        self._shards
        self.frame_stack = check_frame_stack(
            type(self).__name__,
            frame_stack,
            episodes,
            config.sample_sequence_length,
            config.period,
            config.max_length_time_axis,
            "`max_length_time_axis`",
        )

    @property
    def _episodes(self) -> Episodes:
        return Episodes(self.episode_end, self.boundary)

    @property
    def _grid(self) -> Grid:
        return Grid(
            self.add_batch_size, self.max_length_time_axis, self.sample_sequence_length, self.period
        )

    @property
    def _shards(self) -> Shards | None:
        """How the rows are split over devices (the `sharding` checked), or None."""
        return shard_config(
            type(self).__name__,
            self.sharding,
            add_batch_size=self.add_batch_size,
            sample_batch_size=self.sample_batch_size,
        )

    def _local(self: _Kind) -> _Kind:
        """The buffer each device runs on its own rows when sharded: this kind and
        configuration with `1 / n` of the rows and of the draws, unsharded."""
        shards = self._shards
        assert shards is not None
        return quietly(
            lambda: dataclasses.replace(
                self,
                add_batch_size=self.add_batch_size // shards.count,
                sample_batch_size=self.sample_batch_size // shards.count,
                sharding=None,
            )
        )

    def init(self, experience: PyTree) -> State:
        """Creates an empty state.

        **Arguments:**

        - `experience`: one step of experience, e.g. `{"obs": obs, "reward": reward}`; only
            the structure, shapes and dtypes of its leaves are used.

        **Returns:** the kind's state (a `TrajectoryBufferState`, with `boundary="strict"` a
        `StrictTrajectoryBufferState`; a `PrioritisedTrajectoryBufferState`) whose
        experience leaves are zeros of shape
        `(add_batch_size, max_length_time_axis, *leaf.shape)` and the leaf's dtype.
        """
        return self._init(f"{type(self).__name__}.init", experience)

    def _init(self, where: str, experience: PyTree) -> State:
        check_example(where, experience)
        self._episodes.check(where, experience, (), "the example")
        if self.frame_stack is not None:
            frames = self.frame_stack
            frames.check_episode_end(where, self._episodes, experience)
            experience = frames.stored_example(where, experience)
        shards = self._shards
        if shards is not None:
            return sharded_empty(shards, self._local(), experience)
        return self._empty(experience)

    def _global_empty(self, experience: PyTree) -> State:
        """`_empty`, or for a sharded buffer the shapes of the whole state."""
        shards = self._shards
        if shards is None:
            return self._empty(experience)
        return global_state(shards, self._local()._empty(experience))

    # `state` is annotated loosely so that a wrong state gets `check_state`'s message, also
    # under jaxtyping's import hook.
    def _check_state(self, where: str, state: object) -> None:
        check_state(
            where,
            state,
            self._state_type(),
            (self.add_batch_size, self.max_length_time_axis),
            self._global_empty,
            sharded=self.sharding is not None,
        )

    @compiled_method(donates_state=True)
    def add(self, state: State, batch: PyTree) -> State:
        """Appends a batch of trajectory pieces, continuing each row where the last add
        stopped. In a prioritised buffer, windows that the write completes get the largest
        priority set so far and a new generation; windows it overwrites that were valid get
        priority zero and a new generation.

        **Arguments:**

        - `state`: the current state; its buffers are donated unless the buffer was made
            with `donate_state=False`.
        - `batch`: the example's pytree with leaves `(add_batch, t, ...)`,
            `1 <= t <= max_length_time_axis`, in the example's dtypes. It is not consumed.

        **Returns:** the new state.
        """
        where = f"{type(self).__name__}.add"
        self._check_state(where, state)
        steps = check_batch(where, self._seen(state.experience), batch, self.max_length_time_axis)
        self._episodes.check(where, batch, (self.add_batch_size, steps), "the batch")
        return self._write(where, state, batch)

    def _write(self, where: str, state: State, batch: PyTree[Shaped[Array, "..."]]) -> State:
        """`add` after its checks: `batch` is `(add_batch, t, ...)`."""
        shards = self._shards
        if shards is not None:
            return sharded_write(shards, self._local(), where, state, batch)
        check_unsplit(where, "the batch's", batch)
        return self._append(where, state, batch)

    def _seen(self, storage: PyTree[Array]) -> PyTree[Array | jax.ShapeDtypeStruct]:
        """The storage as the user sees it (with `frame_stack`, its frames as stacks), to
        check added batches against."""
        if self.frame_stack is None:
            return storage
        return self.frame_stack.stacked_view(storage)

    def _append(self, where: str, state: State, batch: PyTree[Shaped[Array, "..."]]) -> State:
        """An add on one device, after its checks: `batch` is `(rows, t, ...)`."""
        steps = jtu.tree_leaves(batch)[0].shape[1]
        frames = self.frame_stack
        if frames is None:
            experience, current_index, is_full = _ring.append(
                state.experience, batch, state.current_index, state.is_full
            )
            kept_after = None
        else:
            kept = state._frame_stack
            assert self.episode_end is not None and kept is not None
            experience, kept_after = frames.append(
                where,
                self.episode_end,
                state.experience,
                kept,
                batch,
                state.current_index,
                state.is_full,
            )
            capacity = self.max_length_time_axis
            current_index, is_full = _ring.advance(
                state.current_index, state.is_full, steps, capacity
            )
        ends = self._episodes.stored(where, experience)
        write = Write(state.current_index, steps, current_index, is_full, ends, kept_after)
        return self._written(state, experience, write)

    @compiled_method()
    def can_sample(self, state: State) -> Bool[Array, "*batch"]:
        """Whether `state` holds `min_length_time_axis` steps per row (or has wrapped); with
        `boundary="strict"`, also whether some window lies inside one episode; in a
        prioritised buffer, also whether some window has a positive priority."""
        where = f"{type(self).__name__}.can_sample"
        return per_buffer(where, state, self._check_state, self._can_sample)

    @compiled_method()
    def size(self, state: State) -> Int[Array, "*batch"]:
        """The number of steps stored now, summed over the rows: `add_batch_size` times the
        steps of a row (`max_length_time_axis` once the ring has wrapped). A state with
        batch axes in front (from `jax.pmap(buffer.add)`) gets one number per buffer."""
        where = f"{type(self).__name__}.size"
        return per_buffer(where, state, self._check_state, self._size)

    def _size(self, state: State) -> Int[Array, ""]:
        steps = _ring.stored(state.current_index, state.is_full, self.max_length_time_axis)
        return self.add_batch_size * steps.astype(jnp.int32)

    def _can_sample(self, state: State) -> Bool[Array, ""]:
        enough = state.is_full | (state.current_index >= self.min_length_time_axis)
        windows = self._has_windows(state)
        return enough if windows is None else enough & windows

    # `rng_key` is annotated loosely so that a wrong key gets `check_key`'s message, also
    # under jaxtyping's import hook.
    @compiled_method()
    def sample(self, state: State, rng_key: ArrayLike) -> Sample:
        """Draws `sample_batch_size` windows, with replacement.

        `TrajectoryBuffer`: uniformly; the row and the window start are drawn independently,
        starts on the period grid counted from the oldest stored step (with
        `boundary="strict"`, uniformly over the windows inside one episode).
        `PrioritisedTrajectoryBuffer`: in proportion to `priority ** priority_exponent`,
        stratified (the `j`-th draw falls in the `j`-th of equal slices of the total).

        A window never runs past the newest stored step. Sampling a state for which
        `can_sample` is false returns poison instead of zeros: NaN, the largest integer, or
        True, in every element (see "Sampling semantics" in the docs); a prioritised
        sample's probabilities are then zero, never NaN.

        **Arguments:**

        - `state`: the current state; it is not consumed.
        - `rng_key`: a key from `jax.random.key` or `jax.random.PRNGKey`.

        **Returns:** a `TrajectoryBufferSample` (a `PrioritisedTrajectoryBufferSample`, with
        `indices` and `probabilities` of shape `(sample_batch_size,)`) whose experience
        leaves are `(sample_batch_size, sample_sequence_length, ...)`, and with
        `boundary="mask"` its `mask`, `(sample_batch_size, sample_sequence_length)`.
        """
        where = f"{type(self).__name__}.sample"
        shards = self._shards
        if shards is not None:
            self._check_state(where, state)
            check_key(where, rng_key)
            return sharded_sample(
                shards, self._local(), where, state, rng_key, self._sharded_sample
            )
        return poison_sample(*self._draw(where, state, rng_key, self.sample_batch_size))

    def _draw(
        self, where: str, state: State, key: ArrayLike, count: int
    ) -> tuple[Bool[Array, ""], Sample]:
        """`count` windows, not yet poisoned, and whether the buffer could be sampled."""
        drawn = self._choose(where, state, key, count)
        return drawn.ok, self._sample_of(where, state, drawn)

    def _sample_of(self, where: str, state: State, drawn: Drawn) -> Sample:
        """The kind's sample of the windows `drawn`, not yet poisoned."""
        windows = self._read(state, drawn, self.sample_sequence_length, _ring.read)
        return self._sample(drawn, windows, self._episodes.mask(where, windows))

    # `rng_key` is annotated loosely so that a wrong key gets `check_key`'s message.
    @compiled_method()
    def epoch(self, state: State, rng_key: ArrayLike) -> tuple[Sample, Bool[Array, "M S"]]:
        """Every window that `sample` can draw now, each exactly once, in a uniformly random
        order, as `M` batches of `sample_batch_size`: an epoch over the stored data (e.g.
        a dataset read from a Vault), for training inside `jit` or `lax.scan`. None before
        `min_length_time_axis` steps are stored, as `sample` draws none. A prioritised
        buffer's priorities are ignored: every window it can draw is there, those of
        priority zero too.

        `M = ceil(max_items / sample_batch_size)` is fixed by the configuration:
        `max_items = add_batch_size * ((max_length_time_axis - sample_sequence_length) //
        period + 1)`, the most windows `sample` chooses among once the ring is full.

        **Arguments:**

        - `state`: the current state; it is not consumed.
        - `rng_key`: a key from `jax.random.key` or `jax.random.PRNGKey`.

        **Returns:** `(sample, mask)`: the kind's sample whose leaves (the experience, and
        a `boundary="mask"` sample's mask, a prioritised sample's `indices` and
        `probabilities`) have a leading axis of `M` batches, and `mask`, `(M,
        sample_batch_size)`, True for the windows, which come first, and False for the
        padding after them, which is poison (NaN, the largest integer, True; its `indices`
        are ignored by `set_priorities`). A prioritised sample's `indices` are the
        windows' handles and its `probabilities` those `sample` would draw them with.
        """
        where = f"{type(self).__name__}.epoch"
        return self._epoch(where, state, rng_key, self._sample_of)

    def _epoch(
        self,
        where: str,
        state: State,
        key: ArrayLike,
        sample_of: Callable[[str, State, Drawn], Any],
    ) -> Any:
        """`epoch`, whose sample is `sample_of(where, state, drawn)` (the flat and item
        kinds make their own)."""
        self._check_state(where, state)
        check_key(where, key)
        if self._shards is not None:
            raise TypeError(
                f"`{where}`: a sharded buffer has no `epoch` (it would shuffle every "
                "device's windows together); call it on each device's rows, or on a state "
                "loaded unsharded"
            )
        grid = self._grid
        windows = grid.rows * ((grid.capacity - grid.length) // grid.period + 1)
        every, eligible = self._every_window(state)
        # None before `min_length_time_axis` steps, as `sample` draws none (priorities
        # aside: an epoch has every window, those of priority zero too).
        enough = state.is_full | (state.current_index >= self.min_length_time_axis)
        return epoch(
            cast(PRNGKeyArray, key),
            every,
            eligible & enough,
            windows,
            self.sample_batch_size,
            lambda drawn: sample_of(where, state, drawn),
        )

    def _read(
        self,
        state: State,
        drawn: Drawn,
        length: int,
        read: Callable[[PyTree[Array], Array, Array, int], PyTree[Array]],
    ) -> PyTree[Array]:
        """The drawn windows of `length` steps, read from the ring by `read` (with
        `frame_stack`, their stacks rebuilt)."""
        frames = self.frame_stack
        if frames is None:
            return read(state.experience, drawn.rows, drawn.starts, length)
        kept = state._frame_stack
        assert kept is not None
        return frames.read(
            state.experience,
            kept.episode_starts,
            drawn.rows,
            drawn.starts,
            length,
            lambda others: read(others, drawn.rows, drawn.starts, length),
        )

    def _choose(self, where: str, state: State, key: ArrayLike, count: int) -> Drawn:
        """Where `count` windows drawn for `sample` are, the state and key checked (the
        flat and item buffers read them their own way)."""
        self._check_state(where, state)
        check_key(where, key)
        return self._pick(state, cast(PRNGKeyArray, key), count)
