"""The interface every buffer kind shares, so that what combines buffers (the mixer, and
later sharding and checkpointing) accepts any kind.

Abstract-or-final, as in Equinox: these classes declare what a kind must define (and
`AbstractPrioritisedBuffer` implements `set_priorities` over its hook); every kind is a
final class that defines it, with no `super()` chains. The public methods (`add`,
`sample`, ...) are compiled (`_jit.compiled_method`); each calls a private method that takes
the name of the call, so that a kind built on another (a flat buffer on a trajectory
buffer, a mixer on several buffers) reports errors under its own name and can draw any
number of samples.
"""

import abc
from typing import Any, Generic, TypeVar

import equinox as eqx
from jax.sharding import NamedSharding
from jaxtyping import Array, ArrayLike, Bool, PRNGKeyArray, PyTree

from ._jit import compiled_method


State = TypeVar("State")
Sample = TypeVar("Sample")


class AbstractBuffer(eqx.Module, Generic[State, Sample]):
    """A replay buffer or queue: `init`, `add`, `can_sample`, `sample`.

    **Fields** every kind defines:

    - `donate_state`: whether the calls that update the state (`add`, and the others that
      return a new state) update it in place, consuming the state passed in.
    - `sharding`: the `jax.sharding.NamedSharding` whose mesh axis the rows are split over,
      or None for a buffer on one device.

    **Methods** every kind defines (see each kind for the shapes):

    - `init(experience) -> state`: an empty state for steps shaped like `experience`.
    - `add(state, batch) -> state`: the state with `batch` stored.
    - `can_sample(state) -> Bool[Array, ""]`: whether `sample` returns data, not poison.
    - `sample(state, ...)`: random buffers take a key and return a sample
      (`AbstractReplayBuffer`); the trajectory queue takes none and returns
      `(state, sample)`.
    """

    donate_state: eqx.AbstractVar[bool]
    sharding: eqx.AbstractVar[NamedSharding | None]

    @abc.abstractmethod
    def init(self, experience: PyTree) -> State:
        """An empty state for steps shaped like `experience`."""

    @abc.abstractmethod
    def add(self, state: State, batch: PyTree) -> State:
        """The state with `batch` stored."""

    @abc.abstractmethod
    def can_sample(self, state: State) -> Bool[Array, "*batch"]:
        """Whether `sample` returns data rather than poison."""

    @abc.abstractmethod
    def sample(self, state: State, *args: Any) -> Any:
        """A sample (see the kind)."""

    @abc.abstractmethod
    def _check_state(self, where: str, state: object) -> None:
        """Raises, naming `where`, unless `state` is what this buffer's `init` makes (type,
        structure, shapes and dtypes). Called while tracing."""

    @abc.abstractmethod
    def _can_sample(self, state: State) -> Bool[Array, ""]:
        """`can_sample` without its checks."""


class AbstractReplayBuffer(AbstractBuffer[State, Sample]):
    """A buffer sampled at random: `sample(state, rng_key) -> sample` draws
    `sample_batch_size` items. The mixer takes any such buffer."""

    # `_draw` draws any number of items: the mixer draws each buffer's share with it.

    sample_batch_size: eqx.AbstractVar[int]

    @abc.abstractmethod
    def sample(self, state: State, rng_key: ArrayLike) -> Sample:
        """Draws `sample_batch_size` items."""

    @abc.abstractmethod
    def _draw(
        self, where: str, state: State, key: PRNGKeyArray, count: int
    ) -> tuple[Bool[Array, ""], Sample]:
        """Draws `count` items, with errors reported as coming from `where`. Called while
        tracing a compiled method.

        **Returns:** `(ok, sample)`: whether the buffer could be sampled, and the sample,
        not yet poisoned (`sample` poisons it, `_guard.poison_sample`; the mixer poisons
        the mixed sample once).
        """


class AbstractPrioritisedBuffer(AbstractReplayBuffer[State, Sample]):
    """A buffer sampled in proportion to `priority ** priority_exponent`, whose samples carry
    `indices` (handles to pass back to `set_priorities`) and `probabilities`."""

    priority_exponent: eqx.AbstractVar[float]

    @compiled_method(donates_state=True)
    def set_priorities(self, state: State, indices: ArrayLike, priorities: ArrayLike) -> State:
        """Sets the priorities of sampled items (windows, transitions or items) to
        `priorities ** priority_exponent`.

        **Arguments:**

        - `state`: the current state; donated, as in `add`.
        - `indices`: `sample.indices` (or a subset of them), integers of shape `(k,)`. A
            sharded buffer needs all of the sample's indices, in the sample's order: the
            `j`-th of its `n` equal parts goes to device `j`, and a handle that reaches a
            device other than the one that drew it is ignored, so a shuffled, cut or
            concatenated sample loses updates (see "Scaling out" in the docs).
        - `priorities`: non-negative floats of shape `(k,)`, e.g. absolute TD errors.

        An update is ignored, and the item keeps its priority, when its window has been
        overwritten or invalidated since it was sampled (its generation changed), when the
        index is out of range, or when the priority is negative or NaN. When an index
        appears more than once, the last update wins; empty `indices` change nothing.

        A positive priority's `priority ** priority_exponent` is stored inside
        `[smallest normal float32, float32 max / (2 * windows)]`, so that the total stays
        finite and the window sampleable whatever the priorities and the exponent; +inf is
        stored as the largest. Priorities are float32: JAX turns a float64 beyond float32's
        range into +inf, and one below 1.4e-45 into 0.
        """
        where = f"{type(self).__name__}.set_priorities"
        return self._set_priorities(where, state, indices, priorities)

    @abc.abstractmethod
    def _set_priorities(
        self,
        where: str,
        state: State,
        indices: ArrayLike,
        priorities: ArrayLike,
    ) -> State:
        """`set_priorities`, with errors reported as coming from `where`."""
