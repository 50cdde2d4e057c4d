"""The trajectory buffer: batches of trajectories stored along a circular time axis, sampled
as windows of consecutive steps on a period grid."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
from jaxtyping import Array, ArrayLike, Bool, Int, PyTree, Shaped

from . import _ring
from ._checks import check_batch, check_example, check_key
from ._config import trajectory_config
from ._jit import buffer_method


class TrajectoryBufferState(eqx.Module):
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


class TrajectoryBufferSample(eqx.Module):
    """A batch of windows drawn from a trajectory buffer.

    **Fields:**

    - `experience`: the example's pytree, each leaf `(sample_batch, sample_time, ...)`.
    """

    experience: PyTree[Shaped[Array, "sample_batch sample_time ..."]]


class TrajectoryBuffer(eqx.Module):
    """A replay buffer of trajectories, Flashbax's `TrajectoryBuffer` as an Equinox Module.

    Each of the `add_batch_size` rows is one stream of consecutive steps, stored on a ring of
    `max_length_time_axis` steps. `sample` draws `sample_batch_size` windows of
    `sample_sequence_length` consecutive steps, each from a uniformly chosen row and a
    uniformly chosen start on the period grid counted from the oldest stored step. A window
    never crosses the write head, so it never stitches new data to old.

    `add` and `sample` are compiled; repeated calls with the same shapes reuse the compiled
    code. `add` donates the state's buffers to its result, so the buffer is updated in place
    and the state passed in can no longer be used; build the buffer with
    `donate_state=False` to keep old states valid (every `add` then copies the buffer).
    """

    add_batch_size: int = eqx.field(static=True)
    sample_batch_size: int = eqx.field(static=True)
    sample_sequence_length: int = eqx.field(static=True)
    period: int = eqx.field(static=True)
    min_length_time_axis: int = eqx.field(static=True)
    max_length_time_axis: int = eqx.field(static=True)
    donate_state: bool = eqx.field(static=True)

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
        if not isinstance(donate_state, bool):
            raise TypeError(f"`donate_state` must be a bool; got {donate_state!r}")
        self.donate_state = donate_state

    def init(self, experience: PyTree) -> TrajectoryBufferState:
        """Creates an empty state.

        **Arguments:**

        - `experience`: one step of experience, e.g. `{"obs": obs, "reward": reward}`; only
            the structure, shapes and dtypes of its leaves are used.

        **Returns:** a `TrajectoryBufferState` whose leaves are zeros of shape
        `(add_batch_size, max_length_time_axis, *leaf.shape)` and the leaf's dtype.
        """
        check_example("TrajectoryBuffer.init", experience)
        shape = (self.add_batch_size, self.max_length_time_axis)

        def storage(leaf: ArrayLike) -> Array:
            dtype = jax.dtypes.canonicalize_dtype(jnp.result_type(leaf))
            return jnp.zeros(shape + jnp.shape(leaf), dtype)

        return TrajectoryBufferState(
            experience=jtu.tree_map(storage, experience),
            current_index=jnp.array(0, jnp.int32),
            is_full=jnp.array(False),
        )

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
        return _add(self, state, batch)

    def can_sample(self, state: TrajectoryBufferState) -> Bool[Array, ""]:
        """Whether `state` holds `min_length_time_axis` steps per row (or has wrapped)."""
        return _can_sample(self, state)

    # `rng_key` is annotated loosely so that a wrong key gets `check_key`'s message, also
    # under jaxtyping's import hook.
    def sample(self, state: TrajectoryBufferState, rng_key: ArrayLike) -> TrajectoryBufferSample:
        """Draws `sample_batch_size` windows, uniformly and with replacement.

        The row and the window start are drawn independently. Starts lie on the period grid
        counted from the oldest stored step, and a window never runs past the newest one.
        Sampling a state for which `can_sample` is false raises an error (see the README)
        instead of returning zeros.

        **Arguments:**

        - `state`: the current state; it is not consumed.
        - `rng_key`: a key from `jax.random.key` or `jax.random.PRNGKey`.

        **Returns:** a `TrajectoryBufferSample` with leaves
        `(sample_batch_size, sample_sequence_length, ...)`.
        """
        return _sample(self, state, rng_key)


def _check_state(where: str, buffer: TrajectoryBuffer, state: TrajectoryBufferState):
    if not isinstance(state, TrajectoryBufferState):
        raise TypeError(
            f"`{where}`: `state` must be a TrajectoryBufferState; got {type(state).__name__}"
        )
    expected = (buffer.add_batch_size, buffer.max_length_time_axis)
    for path, leaf in jtu.tree_flatten_with_path(state.experience)[0]:
        if tuple(leaf.shape[:2]) != expected:
            raise ValueError(
                f"`{where}`: state leaf {jtu.keystr(path)} has shape {tuple(leaf.shape)}; "
                f"this buffer stores {expected + ('...',)}: was the state made by another "
                "buffer's `init`?"
            )


def _can_sample_traced(buffer: TrajectoryBuffer, state: TrajectoryBufferState) -> Bool[Array, ""]:
    return state.is_full | (state.current_index >= buffer.min_length_time_axis)


def _add_traced(
    buffer: TrajectoryBuffer, state: TrajectoryBufferState, batch: PyTree
) -> TrajectoryBufferState:
    where = "TrajectoryBuffer.add"
    _check_state(where, buffer, state)
    steps = check_batch(where, state.experience, batch, buffer.max_length_time_axis)
    experience = jtu.tree_map(
        lambda store, new: _ring.write(store, new, state.current_index),
        state.experience,
        batch,
    )
    current_index, is_full = _ring.advance(
        state.current_index, state.is_full, steps, buffer.max_length_time_axis
    )
    return TrajectoryBufferState(experience, current_index, is_full)


def _sample_traced(
    buffer: TrajectoryBuffer, state: TrajectoryBufferState, rng_key: ArrayLike
) -> TrajectoryBufferSample:
    where = "TrajectoryBuffer.sample"
    _check_state(where, buffer, state)
    check_key(where, rng_key)
    capacity, period = buffer.max_length_time_axis, buffer.period
    count = _ring.num_windows(
        state.current_index,
        state.is_full,
        capacity,
        buffer.sample_sequence_length,
        period,
    )
    # Same draws as Flashbax for the same key: window first, then row.
    rng_key, window_key = jr.split(rng_key)
    row_key = jr.split(rng_key)[1]
    shape = (buffer.sample_batch_size,)
    window = jr.randint(window_key, shape, 0, count)
    rows = jr.randint(row_key, shape, 0, buffer.add_batch_size)
    # The guard sits on the few window indices, not on the gathered windows, so passing the
    # data through it costs nothing; everything sampled depends on it.
    window = eqx.error_if(
        window,
        ~_can_sample_traced(buffer, state),
        "`TrajectoryBuffer.sample`: the buffer cannot be sampled yet (`can_sample` is "
        "false): fewer than `min_length_time_axis` steps per row have been added",
    )
    starts = _ring.window_start(window, state.current_index, state.is_full, capacity, period)
    experience = jtu.tree_map(
        lambda store: _ring.read(store, rows, starts, buffer.sample_sequence_length),
        state.experience,
    )
    return TrajectoryBufferSample(experience)


_add = buffer_method(_add_traced, "TrajectoryBuffer.add", donates_state=True)
_can_sample = buffer_method(_can_sample_traced, "TrajectoryBuffer.can_sample")
_sample = buffer_method(_sample_traced, "TrajectoryBuffer.sample")


def make_trajectory_buffer(
    add_batch_size: int,
    sample_batch_size: int,
    sample_sequence_length: int,
    period: int,
    min_length_time_axis: int,
    max_size: int | None = None,
    max_length_time_axis: int | None = None,
    donate_state: bool = True,
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
    )
