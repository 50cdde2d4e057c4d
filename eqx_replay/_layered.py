"""Kinds that are a trajectory buffer seen differently: the flat and item buffers, uniform
or prioritised.

Each such kind holds a `TrajectoryBuffer` or `PrioritisedTrajectoryBuffer` (`buffer`),
whose state it uses as its own (Flashbax's states, element for element), and defines only
what differs: how an added batch maps onto the rows and steps of the ring (`_rows`) and
what a sample looks like (`_draw`). Everything else, from the checks to the ring and the sum
tree, is the trajectory buffer's.
"""

import abc
from typing import Any, cast

import equinox as eqx
from jaxtyping import Array, ArrayLike, Bool, PRNGKeyArray, PyTree

from ._base import AbstractPrioritisedBuffer, AbstractReplayBuffer
from ._checks import check_key, per_buffer
from ._guard import poison_sample
from ._jit import compiled_method
from ._prioritised import PrioritisedTrajectoryBuffer
from ._sharding import sharded_sample
from ._trajectory import TrajectoryBuffer


class AbstractLayeredBuffer(AbstractReplayBuffer):
    """A buffer kind over a trajectory buffer (see the module docstring)."""

    buffer: eqx.AbstractVar[TrajectoryBuffer | PrioritisedTrajectoryBuffer]

    @abc.abstractmethod
    def _rows(self, where: str, storage: PyTree[Array], batch: PyTree) -> PyTree[Array]:
        """Checks an added batch and shapes it `(rows, steps, ...)` for the ring
        `storage`."""

    def init(self, experience: PyTree) -> Any:
        """An empty state for steps shaped like `experience`: zeros
        `(rows, time, *leaf.shape)`, as in `TrajectoryBuffer.init`."""
        return self.buffer._init(f"{type(self).__name__}.init", experience)

    # The state is annotated loosely: the buffer's own checks name what is wrong with it.
    def _check_state(self, where: str, state: object) -> None:
        self.buffer._check_state(where, state)

    def _can_sample(self, state: Any) -> Bool[Array, ""]:
        return self.buffer._can_sample(state)

    @compiled_method(donates_state=True)
    def add(self, state: Any, batch: PyTree) -> Any:
        """Stores `batch`, shaped as the kind's add mode says; its buffers are donated
        unless the buffer was made with `donate_state=False`."""
        where = f"{type(self).__name__}.add"
        self._check_state(where, state)
        return self.buffer._write(where, state, self._rows(where, state.experience, batch))

    @compiled_method()
    def can_sample(self, state: Any) -> Bool[Array, "*batch"]:
        """Whether `min_length` items have been added (and, when prioritised, some has a
        positive priority)."""
        where = f"{type(self).__name__}.can_sample"
        return per_buffer(where, state, self._check_state, self._can_sample)

    @compiled_method()
    def sample(self, state: Any, rng_key: ArrayLike) -> Any:
        """Draws `sample_batch_size` items; poison when `can_sample` is false."""
        where = f"{type(self).__name__}.sample"
        key = cast(PRNGKeyArray, rng_key)  # checked in `_draw`
        shards = self.buffer._shards
        if shards is not None:
            self._check_state(where, state)
            check_key(where, key)
            inner = self.buffer
            finish = (
                inner._sharded_handles if isinstance(inner, PrioritisedTrajectoryBuffer) else None
            )
            return sharded_sample(shards, self._local(), where, state, key, finish)
        return poison_sample(*self._draw(where, state, key, self.sample_batch_size))

    def _local(self) -> "AbstractLayeredBuffer":
        """The buffer each device runs on its own rows when the buffer is sharded; kinds
        that take `sharding` define it."""
        raise TypeError(f"{type(self).__name__} cannot be sharded")

    @abc.abstractmethod
    def _draw(
        self, where: str, state: Any, key: PRNGKeyArray, count: int
    ) -> tuple[Bool[Array, ""], Any]:
        """`count` items, not yet poisoned, and whether the buffer could be sampled."""


class AbstractLayeredPrioritisedBuffer(AbstractLayeredBuffer, AbstractPrioritisedBuffer):
    """A buffer kind over a prioritised trajectory buffer."""

    buffer: eqx.AbstractVar[PrioritisedTrajectoryBuffer]

    @compiled_method(donates_state=True)
    def set_priorities(self, state: Any, indices: ArrayLike, priorities: ArrayLike) -> Any:
        """Sets the priorities of sampled items (see
        `PrioritisedTrajectoryBuffer.set_priorities`)."""
        where = f"{type(self).__name__}.set_priorities"
        return self._set_priorities(where, state, indices, priorities)

    def _set_priorities(
        self, where: str, state: Any, indices: ArrayLike, priorities: ArrayLike
    ) -> Any:
        return self.buffer._set_priorities(where, state, indices, priorities)
