"""Kinds that are a trajectory buffer seen differently: the flat and item buffers, uniform
or prioritised.

Each such kind holds a `TrajectoryBuffer` or `PrioritisedTrajectoryBuffer` (`buffer`),
whose state it uses as its own (Flashbax's states, element for element), and defines only
what differs: how an added batch maps onto the rows and steps of the ring (`_rows`), what a
sample looks like (`_draw`) and the buffer each device runs when sharded (`_local`); the
flat and item bases (`_flat.AbstractFlatBuffer`, `_item.AbstractItemBuffer`) supply `_rows`
and `_local` for their two kinds. Everything else, from the checks to the ring and the sum
tree, is the trajectory buffer's.
"""

import abc
from typing import Any, cast, TypeVar

import equinox as eqx
import jax
from jaxtyping import Array, ArrayLike, Bool, Int, PRNGKeyArray, PyTree

from ._abstract_trajectory import AbstractTrajectoryBuffer, AbstractTrajectoryState
from ._base import AbstractPrioritisedBuffer, AbstractReplayBuffer
from ._checks import check_key, per_buffer
from ._guard import poison_sample
from ._jit import compiled_method
from ._prioritised import PrioritisedTrajectoryBuffer, PrioritisedTrajectoryBufferState
from ._sharding import sharded_sample
from ._windows import Drawn


State = TypeVar("State", bound=AbstractTrajectoryState)
Sample = TypeVar("Sample")
_Kind = TypeVar("_Kind", bound="AbstractLayeredBuffer")


class AbstractLayeredBuffer(AbstractReplayBuffer[State, Sample]):
    """A buffer kind over a trajectory buffer (see the module docstring), whose state is
    that buffer's."""

    buffer: eqx.AbstractVar[AbstractTrajectoryBuffer[State, Any]]

    @abc.abstractmethod
    def _rows(
        self, where: str, storage: PyTree[Array | jax.ShapeDtypeStruct], batch: PyTree
    ) -> PyTree[Array]:
        """Checks an added batch and shapes it `(rows, steps, ...)` for the ring
        `storage`."""

    def init(self, experience: PyTree) -> State:
        """An empty state for steps shaped like `experience`: zeros
        `(rows, time, *leaf.shape)`, as in `TrajectoryBuffer.init`."""
        return self.buffer._init(f"{type(self).__name__}.init", experience)

    # The state is annotated loosely: the buffer's own checks name what is wrong with it.
    def _check_state(self, where: str, state: object) -> None:
        self.buffer._check_state(where, state)

    def _can_sample(self, state: State) -> Bool[Array, ""]:
        return self.buffer._can_sample(state)

    @compiled_method(donates_state=True)
    def add(self, state: State, batch: PyTree) -> State:
        """Stores `batch`, shaped as the kind's add mode says; its buffers are donated
        unless the buffer was made with `donate_state=False`."""
        where = f"{type(self).__name__}.add"
        self._check_state(where, state)
        batch = self._rows(where, self.buffer._seen(state.experience), batch)
        return self.buffer._write(where, state, batch)

    @compiled_method()
    def can_sample(self, state: State) -> Bool[Array, "*batch"]:
        """Whether `min_length` items have been added (and, when prioritised, some has a
        positive priority)."""
        where = f"{type(self).__name__}.can_sample"
        return per_buffer(where, state, self._check_state, self._can_sample)

    @compiled_method()
    def size(self, state: State) -> Int[Array, "*batch"]:
        """The number of steps (items, for the item buffers) stored now, summed over the
        rows; one number per buffer for a state with batch axes in front."""
        where = f"{type(self).__name__}.size"
        return per_buffer(where, state, self._check_state, self.buffer._size)

    @compiled_method()
    def sample(self, state: State, rng_key: ArrayLike) -> Sample:
        """Draws `sample_batch_size` items; poison when `can_sample` is false."""
        where = f"{type(self).__name__}.sample"
        key = cast(PRNGKeyArray, rng_key)  # checked in `_draw`
        shards = self.buffer._shards
        if shards is not None:
            self._check_state(where, state)
            check_key(where, key)
            finish = self.buffer._sharded_sample
            return sharded_sample(shards, self._local(), where, state, key, finish)
        return poison_sample(*self._draw(where, state, key, self.sample_batch_size))

    # `rng_key` is annotated loosely so that a wrong key gets `check_key`'s message.
    @compiled_method()
    def epoch(self, state: State, rng_key: ArrayLike) -> tuple[Sample, Bool[Array, "M S"]]:
        """Every item that `sample` can draw now (a transition, for the flat buffers), each
        exactly once, in a uniformly random order, as `M` batches of `sample_batch_size`,
        priorities ignored (see `TrajectoryBuffer.epoch`). `M = ceil(max_items /
        sample_batch_size)`, where `max_items` is the most items a full buffer holds: `rows
        x (time axis - 1)` transitions for a flat buffer, `max_length` items for an item
        buffer.

        **Returns:** `(sample, mask)`: the kind's sample with a leading axis of `M` batches
        on every leaf, and `mask`, `(M, sample_batch_size)`, True for the items (first) and
        False for the padding after them, which is poison.
        """
        where = f"{type(self).__name__}.epoch"
        return self.buffer._epoch(where, state, rng_key, self._sample_of)

    def _draw(
        self, where: str, state: State, key: PRNGKeyArray, count: int
    ) -> tuple[Bool[Array, ""], Sample]:
        """`count` items, not yet poisoned, and whether the buffer could be sampled."""
        drawn = self.buffer._choose(where, state, key, count)
        return drawn.ok, self._sample_of(where, state, drawn)

    @abc.abstractmethod
    def _local(self: _Kind) -> _Kind:
        """The buffer each device runs on its own rows when the buffer is sharded."""

    @abc.abstractmethod
    def _sample_of(self, where: str, state: State, drawn: Drawn) -> Sample:
        """The kind's sample of the items `drawn`, not yet poisoned."""


class AbstractLayeredPrioritisedBuffer(
    AbstractLayeredBuffer[PrioritisedTrajectoryBufferState, Sample],
    AbstractPrioritisedBuffer[PrioritisedTrajectoryBufferState, Sample],
):
    """A buffer kind over a prioritised trajectory buffer."""

    buffer: eqx.AbstractVar[PrioritisedTrajectoryBuffer]

    def _set_priorities(
        self,
        where: str,
        state: PrioritisedTrajectoryBufferState,
        indices: ArrayLike,
        priorities: ArrayLike,
    ) -> PrioritisedTrajectoryBufferState:
        return self.buffer._set_priorities(where, state, indices, priorities)
