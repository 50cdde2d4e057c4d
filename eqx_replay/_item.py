"""The item buffer: independent items sampled one by one, Flashbax's `make_item_buffer` (and
its prioritised twin) as a thin layer over the trajectory buffers.

An item buffer of `max_length` items is a trajectory buffer of one row of `max_length`
steps whose windows are one step long. An add stores its items one after the other along
that row, in Flashbax's four modes:

| `add_batches` | `add_sequences` | a batch leaf    | items stored  |
|---------------|-----------------|-----------------|---------------|
| False         | False           | `(...)`         | 1             |
| True          | False           | `(b, ...)`      | b             |
| False         | True            | `(t, ...)`      | t             |
| True          | True            | `(b, t, ...)`   | b × t         |
"""

import math
from typing import Never, TypeVar

import equinox as eqx
import jax
import jax.tree_util as jtu
from beartype import beartype
from jaxtyping import Array, Float, Int, jaxtyped, PyTree, Shaped

from . import _ring
from ._abstract_trajectory import AbstractTrajectoryState
from ._checks import Axis, check_leading
from ._config import check_exponent, donate_flag, item_config, TrajectoryConfig
from ._data import AbstractSample
from ._layered import AbstractLayeredBuffer, AbstractLayeredPrioritisedBuffer
from ._prioritised import PrioritisedTrajectoryBuffer, PrioritisedTrajectoryBufferState
from ._trajectory import TrajectoryBuffer, TrajectoryBufferState
from ._windows import Drawn


@jaxtyped(typechecker=beartype)
class ItemBufferSample(AbstractSample):
    """A batch of items drawn from an item buffer.

    **Fields:**

    - `experience`: the example's pytree, each leaf `(sample_batch, ...)`.
    """

    experience: PyTree[Shaped[Array, "sample_batch ..."]]


@jaxtyped(typechecker=beartype)
class PrioritisedItemBufferSample(AbstractSample):
    """A batch of items drawn in proportion to priority.

    **Fields:**

    - `experience`: as in `ItemBufferSample`.
    - `indices`, `probabilities`: as in `PrioritisedTrajectoryBufferSample`.
    """

    experience: PyTree[Shaped[Array, "sample_batch ..."]]
    indices: Int[Array, " sample_batch"]
    probabilities: Float[Array, " sample_batch"]


State = TypeVar("State", bound=AbstractTrajectoryState)
Sample = TypeVar("Sample")


class AbstractItemBuffer(AbstractLayeredBuffer[State, Sample]):
    """What the uniform and prioritised item buffers share: the add modes and the
    configuration of their trajectory buffer of one row. They are not sharded."""

    max_length: eqx.AbstractVar[int]
    min_length: eqx.AbstractVar[int]
    add_sequences: eqx.AbstractVar[bool]
    add_batches: eqx.AbstractVar[bool]

    @property
    def sharding(self) -> None:
        """Item buffers are not sharded."""
        return None

    def _trajectory_config(self) -> TrajectoryConfig:
        """The configuration of the trajectory buffer underneath, validated."""
        return item_config(
            max_length=self.max_length,
            min_length=self.min_length,
            sample_batch_size=self.sample_batch_size,
            add_sequences=self.add_sequences,
            add_batches=self.add_batches,
        )

    def _local(self) -> Never:
        raise TypeError(f"{type(self).__name__} cannot be sharded")

    def _rows(
        self, where: str, storage: PyTree[Array | jax.ShapeDtypeStruct], batch: PyTree
    ) -> PyTree[Array]:
        """Checks a batch in the item buffer's add mode and shapes it `(1, items, ...)`."""
        capacity = jtu.tree_leaves(storage)[0].shape[1]
        axes = ((Axis("b", 1, capacity),) if self.add_batches else ()) + (
            (Axis("t", 1, capacity),) if self.add_sequences else ()
        )
        sizes = check_leading(where, storage, batch, axes)
        items = math.prod(sizes)
        if items > capacity:
            raise ValueError(
                f"`{where}`: the batch holds {' x '.join(map(str, sizes))} = {items} items; at "
                f"most `max_length` ({capacity}) can be added at once"
            )
        return jtu.tree_map(lambda x: x.reshape((1, items, *x.shape[len(axes) :])), batch)

    def _items(self, state: State, drawn: Drawn) -> PyTree[Array]:
        """The drawn items, not yet poisoned."""
        return _ring.read_steps(state.experience, drawn.rows, drawn.starts)


class ItemBuffer(AbstractItemBuffer[TrajectoryBufferState, ItemBufferSample]):
    """A buffer of independent items sampled uniformly, Flashbax's item buffer as an
    Equinox Module (see the module docstring for the add modes).

    The state is a `TrajectoryBufferState` of one row, element for element Flashbax's.
    """

    max_length: int = eqx.field(static=True)
    min_length: int = eqx.field(static=True)
    sample_batch_size: int = eqx.field(static=True)
    add_sequences: bool = eqx.field(static=True)
    add_batches: bool = eqx.field(static=True)
    donate_state: bool = eqx.field(static=True)
    buffer: TrajectoryBuffer = eqx.field(static=True, init=False)

    def __init__(
        self,
        max_length: int,
        min_length: int,
        sample_batch_size: int,
        add_sequences: bool = False,
        add_batches: bool = False,
        donate_state: bool = True,
    ):
        """**Arguments:**

        - `max_length`: items held; the oldest are overwritten first.
        - `min_length`: items needed before `can_sample` is true (at least 1).
        - `sample_batch_size`: items per `sample`; at most `max_length`.
        - `add_sequences`, `add_batches`: whether an added batch has a time axis and a
            batch axis (see the module docstring).
        - `donate_state`: as in `TrajectoryBuffer`.
        """
        self.max_length, self.min_length = max_length, min_length
        self.sample_batch_size = sample_batch_size
        self.add_sequences, self.add_batches = add_sequences, add_batches
        self.donate_state = donate_flag(donate_state)
        config = self._trajectory_config()
        self.buffer = TrajectoryBuffer(**config._asdict(), donate_state=self.donate_state)

    def _sample_of(
        self, where: str, state: TrajectoryBufferState, drawn: Drawn
    ) -> ItemBufferSample:
        """The items drawn (uniformly with replacement, by `sample`)."""
        return ItemBufferSample(self._items(state, drawn))


class PrioritisedItemBuffer(
    AbstractItemBuffer[PrioritisedTrajectoryBufferState, PrioritisedItemBufferSample],
    AbstractLayeredPrioritisedBuffer[PrioritisedItemBufferSample],
):
    """An item buffer whose items are sampled in proportion to
    `priority ** priority_exponent`, Flashbax's prioritised item buffer as an Equinox
    Module, over a `PrioritisedTrajectoryBuffer` (whose state is its state)."""

    max_length: int = eqx.field(static=True)
    min_length: int = eqx.field(static=True)
    sample_batch_size: int = eqx.field(static=True)
    add_sequences: bool = eqx.field(static=True)
    add_batches: bool = eqx.field(static=True)
    priority_exponent: float = eqx.field(static=True)
    donate_state: bool = eqx.field(static=True)
    buffer: PrioritisedTrajectoryBuffer = eqx.field(static=True, init=False)

    def __init__(
        self,
        max_length: int,
        min_length: int,
        sample_batch_size: int,
        add_sequences: bool = False,
        add_batches: bool = False,
        priority_exponent: float | int = 0.6,
        donate_state: bool = True,
    ):
        """**Arguments:** those of `ItemBuffer`, and `priority_exponent`, in `[0, 1]` as
        Flashbax requires for this kind."""
        self.max_length, self.min_length = max_length, min_length
        self.sample_batch_size = sample_batch_size
        self.add_sequences, self.add_batches = add_sequences, add_batches
        self.priority_exponent = check_exponent(priority_exponent, unit=True)
        self.donate_state = donate_flag(donate_state)
        self.buffer = PrioritisedTrajectoryBuffer(
            **self._trajectory_config()._asdict(),
            priority_exponent=self.priority_exponent,
            donate_state=self.donate_state,
        )

    def _sample_of(
        self, where: str, state: PrioritisedTrajectoryBufferState, drawn: Drawn
    ) -> PrioritisedItemBufferSample:
        """The items drawn (in proportion to priority, stratified, by `sample`, as in
        `PrioritisedTrajectoryBuffer.sample`)."""
        assert drawn.indices is not None and drawn.probabilities is not None
        return PrioritisedItemBufferSample(
            self._items(state, drawn), drawn.indices, drawn.probabilities
        )


def make_item_buffer(
    max_length: int,
    min_length: int,
    sample_batch_size: int,
    add_sequences: bool = False,
    add_batches: bool = False,
    donate_state: bool = True,
) -> ItemBuffer:
    """Makes an `ItemBuffer`; the arguments are those of its constructor and of Flashbax's
    `make_item_buffer`."""
    return ItemBuffer(
        max_length=max_length,
        min_length=min_length,
        sample_batch_size=sample_batch_size,
        add_sequences=add_sequences,
        add_batches=add_batches,
        donate_state=donate_state,
    )


def make_prioritised_item_buffer(
    max_length: int,
    min_length: int,
    sample_batch_size: int,
    add_sequences: bool = False,
    add_batches: bool = False,
    priority_exponent: float | int = 0.6,
    device: str = "cpu",
    donate_state: bool = True,
) -> PrioritisedItemBuffer:
    """Makes a `PrioritisedItemBuffer`; the arguments are those of its constructor and of
    Flashbax's `make_prioritised_item_buffer` (`device` is accepted and ignored)."""
    del device
    return PrioritisedItemBuffer(
        max_length=max_length,
        min_length=min_length,
        sample_batch_size=sample_batch_size,
        add_sequences=add_sequences,
        add_batches=add_batches,
        priority_exponent=priority_exponent,
        donate_state=donate_state,
    )
