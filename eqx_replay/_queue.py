"""The trajectory queue: first in, first out, per row, Flashbax's `make_trajectory_queue` on
the same ring as the buffers.

Every row is a ring of `max_length_time_axis` steps with two heads shared by all rows: the
write head, where `add` writes, and the read head, from where `sample` reads the next
`sample_sequence_length` unread steps of every row and then moves past them. Nothing unread
is ever overwritten: an `add` that does not fit in the free steps (`can_add` says whether
the configured `add_sequence_length` does) writes nothing, and counts itself in the state's
`refused_adds`. We chose that over raising with `eqx.error_if`: an error raised while a
compiled call runs comes after the state was donated to it, so the queue's data would be
lost with it, and the check would make every `add` pay for a host callback.
"""

import dataclasses

import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu
from beartype import beartype
from jax.sharding import NamedSharding
from jaxtyping import Array, Bool, Int, jaxtyped, PyTree, Shaped

from . import _ring
from ._base import AbstractBuffer
from ._checks import check_batch, check_example, check_state, check_unsplit, per_buffer
from ._config import donate_flag, queue_config
from ._data import AbstractSample, AbstractState, REPLICATED, ROWS
from ._guard import poison_unless
from ._jit import compiled_method
from ._sharding import quietly, shard_config, sharded_empty, sharded_read, sharded_write, Shards


@jaxtyped(typechecker=beartype)
class TrajectoryQueueState(AbstractState):
    """What a trajectory queue stores.

    **Fields:**

    - `experience`: the example's pytree, each leaf stored as `(add_batch, time, ...)`.
    - `write_index`: the time index the next added step is written at.
    - `read_index`: the time index of the oldest unread step.
    - `is_full`: whether every stored step is unread (then `write_index == read_index`).
    - `refused_adds`: how many `add` calls wrote nothing because their steps did not fit
      in the free steps (0 in a loop that checks `can_add`). Flashbax's state has the
      other four fields.
    """

    experience: PyTree[Shaped[Array, "add_batch time ..."]] = eqx.field(metadata=ROWS)
    write_index: Int[Array, ""] = eqx.field(metadata=REPLICATED)
    read_index: Int[Array, ""] = eqx.field(metadata=REPLICATED)
    is_full: Bool[Array, ""] = eqx.field(metadata=REPLICATED)
    refused_adds: Int[Array, ""] = eqx.field(metadata=REPLICATED)

    @property
    def _write_head(self) -> Int[Array, ""]:
        """`write_index`."""
        return self.write_index


@jaxtyped(typechecker=beartype)
class TrajectoryQueueSample(AbstractSample):
    """The next unread steps of every row.

    **Fields:**

    - `experience`: the example's pytree, each leaf `(add_batch, sample_time, ...)`.
    """

    experience: PyTree[Shaped[Array, "add_batch sample_time ..."]]


class TrajectoryQueue(AbstractBuffer[TrajectoryQueueState, TrajectoryQueueSample]):
    """A first-in first-out queue of trajectories, Flashbax's `TrajectoryQueue` as an Equinox
    Module (see the module docstring).

    `add`, `sample` and `can_add`/`can_sample` are compiled; `add` and `sample` donate the
    state (build with `donate_state=False` to keep old states valid).
    """

    max_length_time_axis: int = eqx.field(static=True)
    add_batch_size: int = eqx.field(static=True)
    add_sequence_length: int = eqx.field(static=True)
    sample_sequence_length: int = eqx.field(static=True)
    donate_state: bool = eqx.field(static=True)
    sharding: NamedSharding | None = eqx.field(static=True)

    def __init__(
        self,
        max_length_time_axis: int,
        add_batch_size: int,
        add_sequence_length: int,
        sample_sequence_length: int,
        max_size: int | None = None,
        donate_state: bool = True,
        sharding: NamedSharding | None = None,
    ):
        """**Arguments:**

        - `max_length_time_axis`: steps held per row.
        - `add_batch_size`: rows: the leading axis of every added leaf.
        - `add_sequence_length`: steps per `add`, for `can_add` (an add may carry any
            number of steps that fits).
        - `sample_sequence_length`: steps per row that `sample` reads.
        - `max_size`: when given, total steps held: it replaces `max_length_time_axis` by
            `max_size // add_batch_size`, with a warning, as in Flashbax.
        - `donate_state`: whether `add` and `sample` update the state in place.
        - `sharding`: as in `TrajectoryBuffer`: the rows are split over the devices of
            the mesh axis it names (`add_batch_size` must divide by their number), and
            each device reads its own rows.
        """
        (
            self.max_length_time_axis,
            self.add_batch_size,
            self.add_sequence_length,
            self.sample_sequence_length,
        ) = queue_config(
            max_length_time_axis=max_length_time_axis,
            add_batch_size=add_batch_size,
            add_sequence_length=add_sequence_length,
            sample_sequence_length=sample_sequence_length,
            max_size=max_size,
        )
        self.donate_state = donate_flag(donate_state)
        self.sharding = sharding
        self._shards  # checks `sharding`

    @property
    def _shards(self) -> Shards | None:
        return shard_config("TrajectoryQueue", self.sharding, add_batch_size=self.add_batch_size)

    def _local(self) -> "TrajectoryQueue":
        """The queue each device runs on its own rows (see `_sharding`)."""
        shards = self._shards
        assert shards is not None
        rows = self.add_batch_size // shards.count
        return quietly(lambda: dataclasses.replace(self, add_batch_size=rows, sharding=None))

    def init(self, experience: PyTree) -> TrajectoryQueueState:
        """An empty queue for steps shaped like `experience`: zeros
        `(add_batch_size, max_length_time_axis, *leaf.shape)`, both heads at 0."""
        check_example("TrajectoryQueue.init", experience)
        shards = self._shards
        if shards is not None:
            return sharded_empty(shards, self._local(), experience)
        return self._empty(experience)

    def _empty(self, experience: PyTree) -> TrajectoryQueueState:
        storage, write_index, full = _ring.empty(
            experience, self.add_batch_size, self.max_length_time_axis
        )
        # Each field its own array: a donated state may not hold one buffer twice.
        zero = jnp.array(0, jnp.int32)
        return TrajectoryQueueState(storage, write_index, jnp.array(0, jnp.int32), full, zero)

    def _check_state(self, where: str, state: object) -> None:
        check_state(
            where,
            state,
            TrajectoryQueueState,
            (self.add_batch_size, self.max_length_time_axis),
            self._empty,
            sharded=self.sharding is not None,
        )

    def _unread(self, state: TrajectoryQueueState) -> Int[Array, ""]:
        behind = _ring.rem(
            state.write_index - state.read_index + self.max_length_time_axis,
            self.max_length_time_axis,
        )
        return jnp.where(state.is_full, self.max_length_time_axis, behind)

    @compiled_method(donates_state=True)
    def add(self, state: TrajectoryQueueState, batch: PyTree) -> TrajectoryQueueState:
        """Appends `batch`, leaves `(add_batch, t, ...)` with `1 <= t <= max_length_time_axis`,
        at the write head, if its `t` steps fit in the free steps; otherwise writes nothing
        and adds one to `refused_adds`."""
        where = "TrajectoryQueue.add"
        self._check_state(where, state)
        check_batch(where, state.experience, batch, self.max_length_time_axis)
        shards = self._shards
        if shards is not None:
            return sharded_write(shards, self._local(), where, state, batch)
        check_unsplit(where, "the batch's", batch)
        return self._write(where, state, batch)

    def _write(
        self, where: str, state: TrajectoryQueueState, batch: PyTree[Shaped[Array, "..."]]
    ) -> TrajectoryQueueState:
        """`add` after its checks."""
        del where
        steps = jtu.tree_leaves(batch)[0].shape[1]
        fits = steps <= self.max_length_time_axis - self._unread(state)
        experience = jtu.tree_map(
            lambda store, new: _ring.write_if(store, new, state.write_index, fits),
            state.experience,
            batch,
        )
        written_to, _ = _ring.advance(
            state.write_index, state.is_full, steps, self.max_length_time_axis
        )
        write_index = jnp.where(fits, written_to, state.write_index)
        return TrajectoryQueueState(
            experience,
            write_index,
            state.read_index,
            jnp.where(fits, write_index == state.read_index, state.is_full),
            state.refused_adds + (~fits).astype(jnp.int32),
        )

    @compiled_method()
    def can_add(self, state: TrajectoryQueueState) -> Bool[Array, "*batch"]:
        """Whether an add of `add_sequence_length` steps fits without overwriting unread
        steps."""
        return per_buffer("TrajectoryQueue.can_add", state, self._check_state, self._can_add)

    def _can_add(self, state: TrajectoryQueueState) -> Bool[Array, ""]:
        return self.add_sequence_length <= self.max_length_time_axis - self._unread(state)

    @compiled_method()
    def size(self, state: TrajectoryQueueState) -> Int[Array, "*batch"]:
        """The number of unread steps stored now, summed over the rows; one number per
        buffer for a state with batch axes in front."""
        return per_buffer("TrajectoryQueue.size", state, self._check_state, self._size)

    def _size(self, state: TrajectoryQueueState) -> Int[Array, ""]:
        return self.add_batch_size * self._unread(state).astype(jnp.int32)

    @compiled_method()
    def can_sample(self, state: TrajectoryQueueState) -> Bool[Array, "*batch"]:
        """Whether `sample_sequence_length` unread steps are stored."""
        return per_buffer("TrajectoryQueue.can_sample", state, self._check_state, self._can_sample)

    def _can_sample(self, state: TrajectoryQueueState) -> Bool[Array, ""]:
        return self._unread(state) >= self.sample_sequence_length

    @compiled_method(donates_state=True)
    def sample(
        self, state: TrajectoryQueueState
    ) -> tuple[TrajectoryQueueState, TrajectoryQueueSample]:
        """Reads the next `sample_sequence_length` unread steps of every row and moves the
        read head past them. When `can_sample` is false the steps are poison (NaN, the
        largest integer, True) and the read head stays.

        **Returns:** `(state, sample)`, the sample's leaves
        `(add_batch_size, sample_sequence_length, ...)`.
        """
        where = "TrajectoryQueue.sample"
        self._check_state(where, state)
        shards = self._shards
        if shards is not None:
            return sharded_read(shards, self._local(), state)
        return self._read(state)

    def _read(
        self, state: TrajectoryQueueState
    ) -> tuple[TrajectoryQueueState, TrajectoryQueueSample]:
        """`sample` after its checks."""
        length = self.sample_sequence_length
        ok = self._can_sample(state)
        steps = jtu.tree_map(
            lambda store: _ring.span(store, state.read_index, length), state.experience
        )
        read_index = jnp.where(
            ok, _ring.rem(state.read_index + length, self.max_length_time_axis), state.read_index
        )
        new = TrajectoryQueueState(
            state.experience,
            state.write_index,
            read_index,
            state.is_full & ~ok,
            state.refused_adds,
        )
        return new, TrajectoryQueueSample(poison_unless(ok, steps))


def make_trajectory_queue(
    max_length_time_axis: int,
    add_batch_size: int,
    add_sequence_length: int,
    sample_sequence_length: int,
    max_size: int | None = None,
    donate_state: bool = True,
    sharding: NamedSharding | None = None,
) -> TrajectoryQueue:
    """Makes a `TrajectoryQueue`; the arguments are those of its constructor and of
    Flashbax's `make_trajectory_queue`."""
    return TrajectoryQueue(
        max_length_time_axis=max_length_time_axis,
        add_batch_size=add_batch_size,
        add_sequence_length=add_sequence_length,
        sample_sequence_length=sample_sequence_length,
        max_size=max_size,
        donate_state=donate_state,
        sharding=sharding,
    )
