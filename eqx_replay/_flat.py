"""The flat buffer: transitions, sampled as pairs of consecutive steps, Flashbax's
`make_flat_buffer` (and its prioritised twin) as a thin layer over the trajectory buffers.

A flat buffer of `max_length` transitions added `add_batch_size` at a time is a trajectory
buffer of `add_batch_size` rows of `max_length // add_batch_size` steps whose windows are
two steps long: a sampled window is the pair `(first, second)` of consecutive steps of one
row, and never joins the newest step to the oldest. The only work of its own is the shape
of what `add` takes, in Flashbax's four modes:

| `add_batch_size` | `add_sequences` | a batch leaf    | is stored as     |
|------------------|-----------------|-----------------|------------------|
| None             | False           | `(...)`         | `(1, 1, ...)`    |
| B                | False           | `(B, ...)`      | `(B, 1, ...)`    |
| None             | True            | `(t, ...)`      | `(1, t, ...)`    |
| B                | True            | `(B, t, ...)`   | `(B, t, ...)`    |
"""

import dataclasses
import math
from collections.abc import Callable
from typing import Any, cast, NamedTuple, TYPE_CHECKING, TypeVar

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from beartype import beartype
from jax.sharding import NamedSharding
from jaxtyping import (
    Array,
    ArrayLike,
    Float,
    Int,
    jaxtyped,
    PRNGKeyArray,
    PyTree,
    Shaped,
)

from . import _ring
from ._abstract_trajectory import AbstractTrajectoryState
from ._checks import Axis, check_key, check_leading
from ._config import check_exponent, donate_flag, flat_config, TrajectoryConfig
from ._data import AbstractSample
from ._episodes import Episodes, need_episode_end
from ._frames import check_frame_stack, FrameStack
from ._future import check_discount, draw_future, future_sample, FutureSample
from ._jit import compiled_method
from ._layered import AbstractLayeredBuffer, AbstractLayeredPrioritisedBuffer
from ._prioritised import PrioritisedTrajectoryBuffer, PrioritisedTrajectoryBufferState
from ._sharding import quietly, shard_config, sharded_sample
from ._trajectory import (
    FrameStackedTrajectoryBufferState,
    TrajectoryBuffer,
    TrajectoryBufferState,
)
from ._windows import Drawn


class ExperiencePair(NamedTuple):
    """Two consecutive steps of one row: `first` and the step after it, `second`."""

    first: PyTree[Shaped[Array, "sample_batch ..."]]
    second: PyTree[Shaped[Array, "sample_batch ..."]]


@jaxtyped(typechecker=beartype)
class TransitionSample(AbstractSample):
    """A batch of transitions drawn from a flat buffer.

    **Fields:**

    - `experience`: an `ExperiencePair` whose `first` and `second` are the example's pytree
      with leaves `(sample_batch, ...)`.
    """

    experience: ExperiencePair


@jaxtyped(typechecker=beartype)
class PrioritisedTransitionSample(AbstractSample):
    """A batch of transitions drawn from a prioritised flat buffer.

    **Fields:**

    - `experience`: as in `TransitionSample`.
    - `indices`, `probabilities`: as in `PrioritisedTrajectoryBufferSample`.
    """

    experience: ExperiencePair
    indices: Int[Array, " sample_batch"]
    probabilities: Float[Array, " sample_batch"]


# A leaf whose steps are at least this large is read as two gathers of single steps, each
# straight into its own array; a smaller one as one gather of two-step windows, each step at
# its wrapped time (no loop for the windows that wrap), then split. Measured on the flat
# buffer at 100K transitions (`benchmarks/compare_family.py`): for `u8[84, 84, 4]`
# observations splitting the windows costs two copies of the sample (1.8 ms against 1.1 ms
# for 256 pairs), for `f32[4]` one gather instead of two is the cheaper.
_SPLIT_READ_BYTES = 1024


def _pairs(buffer: Any, state: AbstractTrajectoryState, drawn: Drawn) -> ExperiencePair:
    """The two steps of each drawn window, not yet poisoned (with `frame_stack`, their
    stacks rebuilt, each step's straight into its own array)."""
    frames = buffer.frame_stack
    if frames is None:
        return _read_pairs(buffer, state.experience, drawn)
    kept = state._frame_stack
    assert kept is not None
    stored = frames.where(state.experience)
    placeholder = jnp.zeros(stored.shape[:2] + (0,), stored.dtype)
    pair = _read_pairs(buffer, eqx.tree_at(frames.where, state.experience, placeholder), drawn)
    at, pad = frames.locate(kept.episode_starts, drawn.rows, drawn.starts, 2)
    first, second = (frames.gather(stored, drawn.rows, at[:, t], pad[:, t]) for t in (0, 1))
    return ExperiencePair(
        eqx.tree_at(frames.where, pair.first, first),
        eqx.tree_at(frames.where, pair.second, second),
    )


def _read_pairs(buffer: Any, experience: PyTree[Array], drawn: Drawn) -> ExperiencePair:
    """The two steps of each drawn window of `experience`, not yet poisoned."""
    leaves, structure = jtu.tree_flatten(experience)
    large = [math.prod(x.shape[2:]) * x.dtype.itemsize >= _SPLIT_READ_BYTES for x in leaves]
    small = [x for x, big in zip(leaves, large) if not big]
    big = [x for x, is_big in zip(leaves, large) if is_big]
    windows = iter(_ring.read_each_step(small, drawn.rows, drawn.starts, 2) if small else [])
    second_times = _ring.rem(drawn.starts + 1, buffer.max_length_time_axis)
    firsts = iter(_ring.read_steps(big, drawn.rows, drawn.starts) if big else [])
    seconds = iter(_ring.read_steps(big, drawn.rows, second_times) if big else [])
    first, second = [], []
    for is_big in large:
        if is_big:
            first.append(next(firsts))
            second.append(next(seconds))
        else:
            window = next(windows)
            first.append(window[:, 0])
            second.append(window[:, 1])
    return ExperiencePair(
        jtu.tree_unflatten(structure, first), jtu.tree_unflatten(structure, second)
    )


def _with_futures(
    buffer: Any, state: AbstractTrajectoryState, drawn: Drawn, offset: Int[Array, " samples"]
) -> tuple[PyTree[Array], PyTree[Array], PyTree[Array]]:
    """`first`, `second` and the step `offset` after `first` of each drawn transition, not
    yet poisoned: each step of each leaf gathered straight into its own array (on the CPU,
    4-9% less per `sample_future` of `benchmarks/episodes.py`'s transitions than `_pairs`'
    reads plus the future's, in two runs side by side)."""
    capacity = buffer.max_length_time_axis
    times = (
        drawn.starts,
        _ring.rem(drawn.starts + 1, capacity),
        _ring.rem(drawn.starts + offset, capacity),
    )
    first, second, future = (_steps(buffer, state, drawn.rows, t) for t in times)
    return first, second, future


def _steps(
    buffer: Any, state: AbstractTrajectoryState, rows: Int[Array, " n"], times: Int[Array, " n"]
) -> PyTree[Array]:
    """The steps at physical `times` of `rows` (with `frame_stack`, their stacks rebuilt),
    each leaf gathered into an array of its own."""
    frames = buffer.frame_stack
    if frames is None:
        return _ring.read_steps(state.experience, rows, times)
    kept = state._frame_stack
    assert kept is not None
    stored = frames.where(state.experience)
    placeholder = jnp.zeros(stored.shape[:2] + (0,), stored.dtype)
    steps = _ring.read_steps(eqx.tree_at(frames.where, state.experience, placeholder), rows, times)
    at, pad = frames.locate(kept.episode_starts, rows, times, 1)
    return eqx.tree_at(frames.where, steps, frames.gather(stored, rows, at[:, 0], pad[:, 0]))


_State = TypeVar("_State", bound=AbstractTrajectoryState)
_Sample = TypeVar("_Sample")
_Kind = TypeVar("_Kind", bound="AbstractFlatBuffer")


class AbstractFlatBuffer(AbstractLayeredBuffer[_State, _Sample]):
    """What the uniform and prioritised flat buffers share: the add modes, the
    configuration of their trajectory buffer, and the view each device runs."""

    max_length: eqx.AbstractVar[int]
    min_length: eqx.AbstractVar[int]
    add_sequences: eqx.AbstractVar[bool]
    add_batch_size: eqx.AbstractVar[int | None]
    episode_end: eqx.AbstractVar[Callable[[PyTree], Any] | None]
    frame_stack: eqx.AbstractVar[FrameStack | None]

    def _trajectory_config(self) -> TrajectoryConfig:
        """The configuration of the trajectory buffer underneath, validated (`sharding`
        too)."""
        config = flat_config(
            max_length=self.max_length,
            min_length=self.min_length,
            sample_batch_size=self.sample_batch_size,
            add_sequences=self.add_sequences,
            add_batch_size=self.add_batch_size,
        )
        shard_config(
            type(self).__name__,
            self.sharding,
            add_batch_size=self.add_batch_size,
            sample_batch_size=self.sample_batch_size,
        )
        episodes = Episodes(self.episode_end, "ignore")
        check_frame_stack(
            type(self).__name__,
            self.frame_stack,
            episodes,
            2,
            1,
            config.max_length_time_axis,
            "`max_length // add_batch_size`",
        )
        return config

    def _local(self: _Kind) -> _Kind:
        shards, rows = self.buffer._shards, self.add_batch_size
        assert shards is not None and rows is not None
        n = shards.count
        return quietly(
            lambda: dataclasses.replace(
                self,
                max_length=self.max_length // n,
                min_length=self.min_length // n,
                sample_batch_size=self.sample_batch_size // n,
                add_batch_size=rows // n,
                sharding=None,
            )
        )

    def _rows(
        self, where: str, storage: PyTree[Array | jax.ShapeDtypeStruct], batch: PyTree
    ) -> PyTree[Array]:
        """Checks a batch in the flat buffer's add mode and shapes it `(rows, t, ...)`."""
        rows, sequences = self.add_batch_size, self.add_sequences
        capacity = jtu.tree_leaves(storage)[0].shape[1]
        axes = ((Axis(str(rows), rows, rows),) if rows is not None else ()) + (
            (Axis("t", 1, capacity),) if sequences else ()
        )
        check_leading(where, storage, batch, axes)
        lead = len(axes)

        def shaped(x: Array) -> Array:
            batch_rows = x.shape[0] if rows is not None else 1
            steps = x.shape[lead - 1] if sequences else 1
            return x.reshape((batch_rows, steps, *x.shape[lead:]))

        return jtu.tree_map(shaped, batch)


# The state type of a `FlatBuffer`: a `FrameStackedTrajectoryBufferState` with
# `frame_stack`, a `TrajectoryBufferState` otherwise, which type checkers take unless told
# (`FlatBuffer[FrameStackedTrajectoryBufferState]`).
if TYPE_CHECKING:
    from typing_extensions import TypeVar as _TypeVar

    State = _TypeVar(
        "State",
        TrajectoryBufferState,
        FrameStackedTrajectoryBufferState,
        default=TrajectoryBufferState,
    )
else:
    State = TypeVar("State", TrajectoryBufferState, FrameStackedTrajectoryBufferState)


class FlatBuffer(AbstractFlatBuffer[State, TransitionSample]):
    """A buffer of transitions sampled uniformly as pairs of consecutive steps, Flashbax's
    flat buffer as an Equinox Module (see the module docstring for the add modes).

    The state is a `TrajectoryBufferState`, element for element Flashbax's (with
    `frame_stack`, a `FrameStackedTrajectoryBufferState`).
    """

    max_length: int = eqx.field(static=True)
    min_length: int = eqx.field(static=True)
    sample_batch_size: int = eqx.field(static=True)
    add_sequences: bool = eqx.field(static=True)
    add_batch_size: int | None = eqx.field(static=True)
    donate_state: bool = eqx.field(static=True)
    sharding: NamedSharding | None = eqx.field(static=True)
    episode_end: Callable[[PyTree], Any] | None = eqx.field(static=True)
    frame_stack: FrameStack | None = eqx.field(static=True)
    buffer: TrajectoryBuffer[State] = eqx.field(static=True, init=False)

    def __init__(
        self,
        max_length: int,
        min_length: int,
        sample_batch_size: int,
        add_sequences: bool = False,
        add_batch_size: int | None = None,
        donate_state: bool = True,
        sharding: NamedSharding | None = None,
        episode_end: Callable[[PyTree], Any] | None = None,
        frame_stack: FrameStack | None = None,
    ):
        """**Arguments:**

        - `max_length`: transitions held: `add_batch_size` rows (1 when it is `None`) of
            `max_length // add_batch_size` steps.
        - `min_length`: transitions needed before `can_sample` is true, rounded as
            Flashbax does: each row needs `min_length // add_batch_size + 1` steps (and at
            least 2, one pair).
        - `sample_batch_size`: transitions per `sample`; at most `max_length`.
        - `add_sequences`: whether an added batch has a time axis (see the module
            docstring).
        - `add_batch_size`: rows per add, or `None` for batches with no row axis.
        - `donate_state`: as in `TrajectoryBuffer`.
        - `sharding`: as in `TrajectoryBuffer`: the rows (`add_batch_size`, which must
            then be given) are split over the devices of the mesh axis it names.
        - `episode_end`: as in `TrajectoryBuffer`: a function from a step of experience
            to its boolean episode-end leaf; step `t + 1` starts an episode when it is
            true for step `t`. Needed with `frame_stack`.
        - `frame_stack`: as in `TrajectoryBuffer`: an `eqx_replay.FrameStack`, to store
            the stacked observation as its newest frame only (see "Frames stored once"
            in the docs). A pair is drawn only when its `first` step's stack is still
            complete.
        """
        self.max_length, self.min_length = max_length, min_length
        self.sample_batch_size = sample_batch_size
        self.add_sequences, self.add_batch_size = add_sequences, add_batch_size
        self.donate_state = donate_flag(donate_state)
        self.sharding = sharding
        self.episode_end, self.frame_stack = episode_end, frame_stack
        config = self._trajectory_config()
        self.buffer = TrajectoryBuffer(
            **config._asdict(),
            donate_state=self.donate_state,
            sharding=sharding,
            episode_end=episode_end,
            frame_stack=frame_stack,
        )

    def _sample_of(self, where: str, state: State, drawn: Drawn) -> TransitionSample:
        """The pairs `(first, second)` of consecutive steps drawn (uniformly over all
        stored pairs, with replacement, by `sample`)."""
        return TransitionSample(_pairs(self.buffer, state, drawn))

    # `rng_key` is annotated loosely so that a wrong key gets `check_key`'s message.
    @compiled_method(static=("discount",))
    def sample_future(
        self, state: State, rng_key: ArrayLike, discount: float | int
    ) -> FutureSample:
        """Draws `sample_batch_size` transitions, each with a step of its own episode's
        future: for goals relabelled in hindsight (HER's "future" strategy) or the future
        states of contrastive RL. Needs `episode_end`.

        The transition `(first, second)` is drawn as `sample` draws it (uniformly, with
        replacement), among the transitions whose `second` is in `first`'s episode
        (`episode_end(first)` is false). Its episode's stored steps from `second` on are
        `second` up to the episode's end, or up to the newest stored step while the
        episode runs on; `future` is the `k`-th step from `first` among them (`offset =
        k`, `k >= 1`: `k = 1` is `second`), with probability proportional to
        `discount ** (k - 1)`. So `discount=1.0` is uniform over them (HER), and
        `discount < 1` a geometric truncated at the episode's end (contrastive RL). An
        unfinished episode's newest transitions have few future steps stored (the newest
        has only `second`): recent episodes' goals lean near.

        Not gated by `can_sample`: the whole sample is poison (`offset` the largest int32)
        only when no transition qualifies. Sharded, each device draws its share of the
        sample among its own rows' transitions (uniformly there), as it does for `sample`;
        a device where none qualifies poisons its share.

        **Arguments:**

        - `state`: the current state; it is not consumed.
        - `rng_key`: a key from `jax.random.key` or `jax.random.PRNGKey`.
        - `discount`: a Python float in `(0, 1]` (or the int 1); the method is compiled
            once per value.

        **Returns:** a `FutureSample`.
        """
        where = f"{type(self).__name__}.sample_future"
        discount = check_discount(where, discount)
        need_episode_end(where, self.episode_end, "a future step is of the transition's episode")
        self._check_state(where, state)
        check_key(where, rng_key)
        key = cast(PRNGKeyArray, rng_key)
        shards = self.buffer._shards
        if shards is not None:
            return sharded_sample(
                shards,
                self._local(),
                where,
                state,
                key,
                lambda _, sample: sample,
                lambda local_state, local_key, count: self._local()._future(
                    where, local_state, local_key, count, discount
                ),
            )
        return self._future(where, state, key, self.sample_batch_size, discount)

    def _future(
        self, where: str, state: State, key: PRNGKeyArray, count: int, discount: float
    ) -> FutureSample:
        """`sample_future` on one device, after its checks."""
        assert self.episode_end is not None
        skipped = None
        if self.frame_stack is not None:
            kept = state._frame_stack
            assert kept is not None
            skipped = self.frame_stack.skipped(
                kept.episode_starts, state.current_index, state.is_full
            )
        ok, drawn, offset = draw_future(
            where, self.episode_end, state, key, count, discount, skipped
        )
        first, second, future = _with_futures(self.buffer, state, drawn, offset)
        return future_sample(ok, first, second, future, offset)


class PrioritisedFlatBuffer(
    AbstractFlatBuffer[PrioritisedTrajectoryBufferState, PrioritisedTransitionSample],
    AbstractLayeredPrioritisedBuffer[PrioritisedTransitionSample],
):
    """A flat buffer whose transitions are sampled in proportion to
    `priority ** priority_exponent`, Flashbax's prioritised flat buffer as an Equinox
    Module: a transition is the window of its two steps in a `PrioritisedTrajectoryBuffer`,
    whose state is its state."""

    max_length: int = eqx.field(static=True)
    min_length: int = eqx.field(static=True)
    sample_batch_size: int = eqx.field(static=True)
    add_sequences: bool = eqx.field(static=True)
    add_batch_size: int | None = eqx.field(static=True)
    priority_exponent: float = eqx.field(static=True)
    donate_state: bool = eqx.field(static=True)
    sharding: NamedSharding | None = eqx.field(static=True)
    episode_end: Callable[[PyTree], Any] | None = eqx.field(static=True)
    frame_stack: FrameStack | None = eqx.field(static=True)
    buffer: PrioritisedTrajectoryBuffer = eqx.field(static=True, init=False)

    def __init__(
        self,
        max_length: int,
        min_length: int,
        sample_batch_size: int,
        add_sequences: bool = False,
        add_batch_size: int | None = None,
        priority_exponent: float | int = 0.6,
        donate_state: bool = True,
        sharding: NamedSharding | None = None,
        episode_end: Callable[[PyTree], Any] | None = None,
        frame_stack: FrameStack | None = None,
    ):
        """**Arguments:** those of `FlatBuffer`, and `priority_exponent`, in `[0, 1]` as
        Flashbax requires for this kind. With `sharding`, each device keeps a sum tree of
        its own rows' transitions (see `PrioritisedTrajectoryBuffer`). `episode_end` and
        `frame_stack` as in `FlatBuffer`; a transition whose `first` stack needs a frame
        that is gone has priority zero."""
        self.max_length, self.min_length = max_length, min_length
        self.sample_batch_size = sample_batch_size
        self.add_sequences, self.add_batch_size = add_sequences, add_batch_size
        self.priority_exponent = check_exponent(priority_exponent, unit=True)
        self.donate_state = donate_flag(donate_state)
        self.sharding = sharding
        self.episode_end, self.frame_stack = episode_end, frame_stack
        self.buffer = PrioritisedTrajectoryBuffer(
            **self._trajectory_config()._asdict(),
            priority_exponent=self.priority_exponent,
            donate_state=self.donate_state,
            sharding=sharding,
            episode_end=episode_end,
            frame_stack=frame_stack,
        )

    def _sample_of(
        self, where: str, state: PrioritisedTrajectoryBufferState, drawn: Drawn
    ) -> PrioritisedTransitionSample:
        """The transitions drawn (in proportion to priority, stratified, by `sample`, as
        in `PrioritisedTrajectoryBuffer.sample`)."""
        assert drawn.indices is not None and drawn.probabilities is not None
        return PrioritisedTransitionSample(
            _pairs(self.buffer, state, drawn), drawn.indices, drawn.probabilities
        )


def make_flat_buffer(
    max_length: int,
    min_length: int,
    sample_batch_size: int,
    add_sequences: bool = False,
    add_batch_size: int | None = None,
    donate_state: bool = True,
    sharding: NamedSharding | None = None,
    episode_end: Callable[[PyTree], Any] | None = None,
    frame_stack: FrameStack | None = None,
) -> FlatBuffer:
    """Makes a `FlatBuffer`; the arguments are those of its constructor and of Flashbax's
    `make_flat_buffer`."""
    return FlatBuffer(
        max_length=max_length,
        min_length=min_length,
        sample_batch_size=sample_batch_size,
        add_sequences=add_sequences,
        add_batch_size=add_batch_size,
        donate_state=donate_state,
        sharding=sharding,
        episode_end=episode_end,
        frame_stack=frame_stack,
    )


def make_prioritised_flat_buffer(
    max_length: int,
    min_length: int,
    sample_batch_size: int,
    add_sequences: bool = False,
    add_batch_size: int | None = None,
    priority_exponent: float | int = 0.6,
    device: str = "cpu",
    donate_state: bool = True,
    sharding: NamedSharding | None = None,
    episode_end: Callable[[PyTree], Any] | None = None,
    frame_stack: FrameStack | None = None,
) -> PrioritisedFlatBuffer:
    """Makes a `PrioritisedFlatBuffer`; the arguments are those of its constructor and of
    Flashbax's `make_prioritised_flat_buffer` (`device` is accepted and ignored, as in
    `make_prioritised_trajectory_buffer`)."""
    del device
    return PrioritisedFlatBuffer(
        max_length=max_length,
        min_length=min_length,
        sample_batch_size=sample_batch_size,
        add_sequences=add_sequences,
        add_batch_size=add_batch_size,
        priority_exponent=priority_exponent,
        donate_state=donate_state,
        sharding=sharding,
        episode_end=episode_end,
        frame_stack=frame_stack,
    )
