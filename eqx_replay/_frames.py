"""Frames stored once: observations that stack the last `size` frames, stored as their
newest frame only and rebuilt when sampled.

An environment wrapped to stack frames (gymnasium's `FrameStackObservation`, SB3's
`VecFrameStack`, Dopamine) gives at step `t` the frames of steps `t - size + 1` to `t`;
within an episode, stack `t`'s older frames are stack `t - 1`'s newer ones, and before an
episode's first step stands padding: that first frame repeated (`padding="first"`) or
zeros (`padding="zeros"`). So a buffer can keep only each step's newest frame, and a flag
per step that says whether the step starts an episode (step `t + 1` starts one when
`episode_end(step t)` is true; a row's first step ever starts one), and rebuild any
stack from them:

```
stored frames (one row)   f0  f1  f2  f3  f4  f5  f6       (f3 starts an episode)
episode starts             S   .   .   S   .   .   .
stack of step 5, size 4   [f3, f3, f4, f5]  padding="first"   (step 2 is before f3's
                          [ 0, f3, f4, f5]  padding="zeros"    episode: padding)
stack of step 2, size 4   [f0, f0, f1, f2]  padding="first"
```

A stored step `g` can be sampled unless its stack needs a frame from before the row's
oldest stored step: the oldest frame it needs is that of step
`max(start of g's episode, g - (size - 1))`. Before the ring wraps, the oldest stored step
is the row's first, which starts an episode, so every step can; after, only steps among the
`size - 1` oldest may not, and a window (or a pair) can be sampled exactly when its first
step can. The start flags keep what it takes to know it: an oldest stored step whose
flag is set starts an episode, though the step before it is gone.
"""

import operator
from collections.abc import Callable
from typing import Any, cast, get_args, Literal

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, Bool, Int, PyTree, Shaped

from . import _ring
from ._checks import shape_str
from ._data import Data
from ._episodes import episode_ends, Episodes
from ._sum_tree import SumTree
from ._windows import Grid, is_valid, Write


Padding = Literal["first", "zeros"]
PADDINGS: tuple[Padding, ...] = get_args(Padding)


def _int(name: str, value: object) -> int:
    """An int argument of `FrameStack` (a numpy integer too), as a Python int."""
    if isinstance(value, bool):
        raise TypeError(f"`FrameStack`: `{name}` must be an int; got {value!r}")
    try:
        return operator.index(value)  # pyright: ignore[reportArgumentType]
    except TypeError:
        raise TypeError(f"`FrameStack`: `{name}` must be an int; got {value!r}") from None


class FrameStackState(Data):
    """What a buffer built with `frame_stack` keeps beside its frames (the state's
    `frame_stack` field).

    **Fields:**

    - `episode_starts`: whether each stored step starts an episode: the row's first step
      ever, or the step after one whose `episode_end` is true. The stacks are rebuilt from
      the frames of each step's own episode.
    - `mismatches`: with `FrameStack(..., check=True)`, per row, how many added steps had
      a stack that differs from the one the buffer rebuilds for them; None without
      `check` (a leaf that would always hold zeros costs every `add` its dispatch).
      Nonzero means that the stream breaks the rule the stacks are rebuilt by (see
      `FrameStack`): a wrong `axis`, `padding` or `episode_end`, most often.
    """

    episode_starts: Bool[Array, "add_batch time"]
    mismatches: Int[Array, " add_batch"] | None


class FrameStack(eqx.Module):
    """Observations that stack the last `size` frames, stored once per frame.

    Give it to a buffer (`frame_stack=FrameStack(lambda step: step["obs"], 4)`) and the
    buffer stores only each step's newest frame, about `1 / size` of the memory of the
    stacked observations, while `init`, `add` and `sample` take and give the stacked
    observation exactly as the environment gives it. Sampled stacks are rebuilt from the
    stored frames and the episode starts (see the buffer's `episode_end`).

    **Arguments:**

    - `where`: a function picking the stacked observation (one array) out of one step,
        as in `eqx.tree_at`, e.g. `lambda step: step["obs"]`.
    - `size`: frames per stack, at least 2.
    - `axis`: the stack axis of that observation as the environment gives it: 0 for
        gymnasium's and EnvPool's `(4, 84, 84)`, -1 for `(84, 84, 4)`.
    - `padding`: what stands before an episode's first frame in its early stacks:
        `"first"`, that first frame repeated (gymnasium `FrameStackObservation`'s default
        `padding_type="reset"`), or `"zeros"` (`padding_type="zero"`, SB3's
        `VecFrameStack`, Dopamine).
    - `check`: whether `add` compares every added stack with the one the buffer will
        rebuild for it, and counts those that differ, per row, in the state
        (`state.frame_stack.mismatches`, None without `check`). It reads every added
        frame, so an add costs about what storing whole stacks costs: turn it on while
        wiring up an environment and in tests, off for speed. A checkpoint saved with one
        setting loads into a buffer with the other (the counts are dropped, or start at
        zero).

    The stream must follow the rule the stacks are rebuilt by: within an episode, stack
    `t`'s older frames are stack `t - 1`'s newer ones, and before the episode's first step
    stands `padding`. Without `check`, a stream that breaks it is stored without a word,
    and its stacks come back rebuilt by the rule.
    """

    where: Callable[[PyTree], Any] = eqx.field(static=True)
    size: int = eqx.field(static=True)
    axis: int = eqx.field(static=True)
    padding: Padding = eqx.field(static=True)
    check: bool = eqx.field(static=True)

    def __init__(
        self,
        where: Callable[[PyTree], Any],
        size: int,
        axis: int = 0,
        padding: Padding = "first",
        check: bool = False,
    ):
        if not callable(where):
            raise TypeError(
                "`FrameStack`: `where` must be a function picking the stacked observation "
                f"out of one step, e.g. `lambda step: step['obs']`; got {type(where).__name__}"
            )
        try:
            hash(where)
        except TypeError:
            raise TypeError(
                "`FrameStack`: `where` must be hashable (it is a static field of the buffer); "
                f"got an unhashable {type(where).__name__}"
            ) from None
        size, axis = _int("size", size), _int("axis", axis)
        if size < 2:
            raise ValueError(f"`FrameStack`: `size` must be >= 2 frames per stack; got {size}")
        allowed = ", ".join(repr(p) for p in PADDINGS)
        if not isinstance(padding, str) or padding not in PADDINGS:
            raise ValueError(f"`FrameStack`: `padding` must be one of {allowed}; got {padding!r}")
        if not isinstance(check, bool):
            raise TypeError(f"`FrameStack`: `check` must be a bool; got {check!r}")
        padding = cast(Padding, str(padding))
        self.where, self.size, self.axis, self.padding = where, size, axis, padding
        self.check = check

    def check_episode_end(self, where: str, episodes: Episodes, example: PyTree) -> None:
        """Checks that the buffer's `episode_end` gives one flag for a step (the episode
        starts are kept whatever the `boundary`)."""
        assert episodes.episode_end is not None
        end = episodes.episode_end
        jax.eval_shape(lambda x: episode_ends(where, end, x, (), "the example"), example)

    # -- what is stored ----------------------------------------------------------------

    def _pick(self, where: str, tree: PyTree, what: str) -> Any:
        try:
            picked = self.where(tree)
        except Exception as error:
            raise ValueError(
                f"`{where}`: `frame_stack.where` failed on {what}: {type(error).__name__}: {error}"
            ) from error
        leaves = jtu.tree_leaves(tree)
        if not any(picked is leaf for leaf in leaves):
            raise ValueError(
                f"`{where}`: `frame_stack.where` must pick one leaf (an array) of {what}; "
                f"got {type(picked).__name__}"
            )
        return picked

    def _stack_axis(self, where: str, shape: tuple[int, ...], what: str) -> int:
        """The stack axis of one stacked observation of `shape`, checked."""
        if not -len(shape) <= self.axis < len(shape):
            raise ValueError(
                f"`{where}`: `frame_stack.axis={self.axis}` is not an axis of the stacked "
                f"observation of {what}, of shape {shape_str(shape)}"
            )
        axis = self.axis % len(shape)
        if shape[axis] != self.size:
            raise ValueError(
                f"`{where}`: the stacked observation of {what} has shape {shape_str(shape)}; "
                f"expected {self.size} frames along axis {self.axis} "
                f"(`frame_stack.size={self.size}`)"
            )
        return axis

    def stored_example(self, where: str, example: PyTree) -> PyTree:
        """One step as it is stored: the stacked observation replaced by a frame (zeros:
        only its shape and dtype are used)."""
        obs = self._pick(where, example, "the example")
        shape = tuple(jnp.shape(obs))
        axis = self._stack_axis(where, shape, "the example")
        frame = jnp.zeros(shape[:axis] + shape[axis + 1 :], jnp.result_type(obs))
        return eqx.tree_at(self.where, example, frame)

    def stacked_view(self, storage: PyTree[Array]) -> PyTree:
        """The storage as the user sees it, for checking an added batch: the frames leaf
        `(rows, time, *frame)` seen as stacks `(rows, time, *stack)`."""
        frames = self.where(storage)
        rows_time, frame = frames.shape[:2], frames.shape[2:]
        axis = self.axis % (len(frame) + 1)
        stack = frame[:axis] + (self.size,) + frame[axis:]
        return eqx.tree_at(
            self.where, storage, jax.ShapeDtypeStruct(rows_time + stack, frames.dtype)
        )

    def newest(self, batch: PyTree[Array]) -> PyTree[Array]:
        """A checked batch `(rows, t, ...)` as stored: each stack's newest frame."""
        obs = self.where(batch)
        axis = 2 + self.axis % (obs.ndim - 2)
        return eqx.tree_at(self.where, batch, lax.index_in_dim(obs, self.size - 1, axis, False))

    def append(
        self,
        where: str,
        episode_end: Callable[[PyTree], Any],
        storage: PyTree[Array],
        state: FrameStackState,
        batch: PyTree[Array],
        current_index: Int[Array, ""],
        is_full: Bool[Array, ""],
    ) -> tuple[PyTree[Array], FrameStackState]:
        """Writes a checked batch `(rows, t, ...)` at `current_index`: each step's newest
        frame, whether it starts an episode, and (with `check`) how many of each row's
        stacks differ from the ones the buffer will rebuild.

        **Returns:** the storage and the `FrameStackState` after the write (the write head
        is the caller's to move).

        What the batch needs from before it (the newest stored step's end, and with
        `check` the `size - 1` stored frames before it) is read after the write, which
        leaves those steps as they were unless the batch fills the whole ring: a read of an
        array before a write into it makes XLA copy the whole array on every add
        (`benchmarks/frame_stack.py`, add rows).
        """
        steps = jtu.tree_leaves(batch)[0].shape[1]
        capacity = jtu.tree_leaves(storage)[0].shape[1]
        written, _, _ = _ring.append(storage, self.newest(batch), current_index, is_full)
        # Whether the write leaves the newest stored step (and the `size - 1` before the
        # batch, for `check`) as they were.
        previous = written if steps < capacity else storage
        starts = self._batch_starts(where, episode_end, previous, batch, current_index, is_full)
        flags = _ring.write(state.episode_starts, starts, current_index)
        if not self.check:
            return written, FrameStackState(flags, state.mismatches)
        unchanged = steps + self.size - 1 <= capacity
        mismatches = self._mismatches(
            self.where(written if unchanged else storage),
            flags if unchanged else state.episode_starts,
            current_index,
            batch,
            starts,
        )
        assert state.mismatches is not None
        return written, FrameStackState(flags, state.mismatches + mismatches)

    def _mismatches(
        self,
        frames: Shaped[Array, "rows capacity *frame"],
        episode_starts: Bool[Array, "rows capacity"],
        current_index: Int[Array, ""],
        batch: PyTree[Array],
        starts: Bool[Array, "rows steps"],
    ) -> Int[Array, " rows"]:
        """How many stacks of each row of `batch` differ from the ones rebuilt from the
        stored frames before it and the batch's newest frames."""
        rows, steps = starts.shape
        capacity, before = frames.shape[1], self.size - 1
        first = _ring.rem(current_index + (capacity - before), capacity)
        newest = self.where(self.newest(batch))
        extended = jnp.concatenate([_ring.span(frames, first, before), newest], axis=1)
        flags = jnp.concatenate([_ring.span(episode_starts, first, before), starts], axis=1)
        source, pad = self.sources(flags, steps)
        rebuilt = jax.vmap(lambda f, i: f[i])(extended, source)  # (rows, steps, size, *frame)
        if self.padding == "zeros":
            shape = pad.shape + (1,) * (frames.ndim - 2)
            rebuilt = jnp.where(pad.reshape(shape), jnp.zeros((), frames.dtype), rebuilt)
        obs = self.where(batch)
        given = jnp.moveaxis(obs, 2 + self.axis % (obs.ndim - 2), 2)
        same = rebuilt == given
        if jnp.issubdtype(given.dtype, jnp.inexact):
            same = same | (jnp.isnan(rebuilt) & jnp.isnan(given))
        differs = ~jnp.all(same.reshape(rows, steps, -1), axis=2)
        return jnp.sum(differs, axis=1, dtype=jnp.int32)

    def empty(self, rows: int, capacity: int) -> FrameStackState:
        """The state of an empty buffer's frames."""
        mismatches = jnp.zeros((rows,), jnp.int32) if self.check else None
        return FrameStackState(jnp.zeros((rows, capacity), bool), mismatches)

    def _batch_starts(
        self,
        where: str,
        episode_end: Callable[[PyTree], Any],
        storage: PyTree[Array],
        batch: PyTree[Array],
        current_index: Int[Array, ""],
        is_full: Bool[Array, ""],
    ) -> Bool[Array, "rows steps"]:
        """Whether each step of a checked batch `(rows, t, ...)` starts an episode: the
        first when the row is empty or its newest stored step ended one, the others when
        the step before ended one."""
        rows, steps = jtu.tree_leaves(batch)[0].shape[:2]
        ends = episode_ends(where, episode_end, batch, (rows, steps), "the batch")
        capacity = jtu.tree_leaves(storage)[0].shape[1]
        newest = _ring.rem(current_index + capacity - 1, capacity)
        # A slice of each leaf, not a gather (see `_ring.span`).
        previous = jtu.tree_map(lambda x: lax.dynamic_index_in_dim(x, newest, 1, False), storage)
        previous_end = episode_ends(where, episode_end, previous, (rows,), "the stored steps")
        empty = (current_index == 0) & ~is_full
        first = empty | previous_end
        return jnp.concatenate([first[:, None], ends[:, :-1]], axis=1)

    # -- what is sampled ---------------------------------------------------------------

    def sources(
        self, flags: Bool[Array, "samples extended"], length: int
    ) -> tuple[Int[Array, "samples {length} size"], Bool[Array, "samples {length} size"]]:
        """For windows of `length` steps read with the `size - 1` steps before them
        (`flags`, their episode-start flags), where each frame of each step's stack comes
        from: its position in the extended window, and whether it is padding (before the
        episode's first step; with `padding="first"` the position is then that step's)."""
        size = self.size
        positions = jnp.arange(length + size - 1, dtype=jnp.int32)
        latest = lax.cummax(jnp.where(flags, positions, -1), axis=1)
        # Frame j of step l's stack is the extended window's position l + j; the episode of
        # step l starts at latest[l + size - 1].
        own = (jnp.arange(length, dtype=jnp.int32)[:, None] + jnp.arange(size, dtype=jnp.int32))[
            None
        ]
        start = latest[:, size - 1 :, None]
        pad = own < start
        if self.padding == "first":
            return jnp.where(pad, start, own), pad
        return jnp.broadcast_to(own, pad.shape), pad

    def read(
        self,
        storage: PyTree[Shaped[Array, "rows capacity ..."]],
        starts_flags: Bool[Array, "rows capacity"],
        rows: Int[Array, " samples"],
        starts: Int[Array, " samples"],
        length: int,
        read_others: Callable[[PyTree[Array]], PyTree[Array]],
    ) -> PyTree[Array]:
        """Windows of `length` steps from physical `starts` of `rows`, their stacks rebuilt:
        `read_others` reads the other leaves (given the storage with a placeholder for the
        frames), and the stacks are read here, each frame straight from the ring."""
        frames = self.where(storage)
        placeholder = jnp.zeros(frames.shape[:2] + (0,), frames.dtype)
        windows = read_others(eqx.tree_at(self.where, storage, placeholder))
        stacks = self.gather(frames, rows, *self.locate(starts_flags, rows, starts, length))
        return eqx.tree_at(self.where, windows, stacks)

    def locate(
        self,
        starts_flags: Bool[Array, "rows capacity"],
        rows: Int[Array, " samples"],
        starts: Int[Array, " samples"],
        length: int,
    ) -> tuple[Int[Array, "samples {length} size"], Bool[Array, "samples {length} size"]]:
        """For windows of `length` steps from physical `starts` of `rows`: the physical
        time of each frame of each step's stack, and whether it is padding."""
        capacity = starts_flags.shape[1]
        size = self.size
        first = _ring.rem(starts + (capacity - (size - 1)), capacity)
        extended = length + size - 1
        times = _ring.rem(first[:, None] + jnp.arange(extended, dtype=first.dtype), capacity)
        flags = starts_flags[rows[:, None], times]
        source, pad = self.sources(flags, length)
        at = jnp.take_along_axis(times, source.reshape(len(rows), -1), axis=1)
        return at.reshape(source.shape), pad

    def gather(
        self,
        frames: Shaped[Array, "rows capacity *frame"],
        rows: Int[Array, " samples"],
        at: Int[Array, "samples *steps size"],
        pad: Bool[Array, "samples *steps size"],
    ) -> Shaped[Array, "samples ..."]:
        """The stacks whose frames are at times `at` of `rows` (see `locate`), every
        frame gathered straight into them: a window's steps `(samples, length, size)`
        together, or one step's `(samples, size)` into an array of its own (a flat
        buffer's `first` and `second`)."""
        stacks = frames[rows.reshape(rows.shape + (1,) * (at.ndim - 1)), at]
        return self._stacked(frames, stacks, pad)

    def _stacked(self, frames: Array, stacks: Array, pad: Array) -> Array:
        """Gathered frames `(..., size, *frame)` as the environment's stacks: padding
        zeroed with `padding="zeros"`, the stack axis moved where `axis` says."""
        if self.padding == "zeros":
            shape = pad.shape + (1,) * (frames.ndim - 2)
            stacks = jnp.where(pad.reshape(shape), jnp.zeros((), frames.dtype), stacks)
        axis = self.axis % (frames.ndim - 1)
        lead = pad.ndim - 1
        return jnp.moveaxis(stacks, lead, lead + axis) if axis else stacks

    # -- which steps can be sampled ------------------------------------------------------

    def oldest_flags(
        self,
        starts_flags: Bool[Array, "rows capacity"],
        current_index: Int[Array, ""],
        is_full: Bool[Array, ""],
    ) -> Bool[Array, "rows size_minus_1"]:
        """For each row and each of its `size - 1` oldest stored steps (counted from the
        oldest), whether its stack is complete: some step from the oldest up to it starts
        an episode. All True before the ring wraps (the oldest is the row's first)."""
        flags = _ring.span(starts_flags, current_index, self.size - 1)  # slices, no gather
        complete = lax.cummax(flags.astype(jnp.int32), axis=1).astype(bool)
        return complete | ~is_full

    def skipped(
        self,
        starts_flags: Bool[Array, "rows capacity"],
        current_index: Int[Array, ""],
        is_full: Bool[Array, ""],
    ) -> Int[Array, " rows"]:
        """For each row, how many of its oldest stored steps cannot be sampled (their
        stacks need a frame that is gone): at most `size - 1`."""
        complete = self.oldest_flags(starts_flags, current_index, is_full)
        return jnp.sum(~complete, axis=1, dtype=jnp.int32)


def check_frame_stack(
    name: str,
    frame_stack: object,
    episodes: Episodes,
    length: int,
    period: int,
    capacity: int,
    capacity_name: str,
) -> FrameStack | None:
    """A buffer's `frame_stack`, checked against its other settings: it needs
    `episode_end`, and a row must always keep a window that can be drawn: one on the
    period grid whose first stack is complete, whatever the episodes. A window starting
    `size - 1` steps or more after the oldest stored step always is, and some grid start
    lies among any `period` consecutive steps, so `length + size - 2 + period` steps
    suffice. (On the physical grid of the strict and prioritised buffers, fewer do not, for
    some write head and a stream without episode ends; the uniform buffers' grid could do
    with up to `period - 1` fewer, but one rule for all is simpler to state.)"""
    if frame_stack is None:
        return None
    if not isinstance(frame_stack, FrameStack):
        raise TypeError(
            f"`{name}`: `frame_stack` must be an `eqx_replay.FrameStack` or None; got "
            f"{type(frame_stack).__name__}"
        )
    if episodes.episode_end is None:
        raise ValueError(
            f"`{name}`: `frame_stack` needs `episode_end`, a function from a step of "
            "experience to its boolean episode-end leaf (e.g. `episode_end=lambda step: "
            "step['done']`): stacks are rebuilt from the frames of each step's own episode"
        )
    needed = length + frame_stack.size - 2 + period
    if capacity < needed:
        raise ValueError(
            f"`{name}`: with `frame_stack` of size {frame_stack.size}, a row must always "
            f"keep a window of {length} steps whose first stack is complete (one of "
            f"{period} grid starts after the {frame_stack.size - 1} oldest steps): at least "
            f"{needed} steps per row; got {capacity_name} = {capacity}"
        )
    return frame_stack


def written_frames(write: Write) -> FrameStackState | None:
    """What a frame-stacked buffer keeps beside its frames after `write` (None for a
    buffer without `frame_stack`)."""
    kept = write.frame_stack
    assert kept is None or isinstance(kept, FrameStackState)
    return kept


def drop_incomplete(
    frame_stack: FrameStack | None,
    tree: SumTree,
    generation: Int[Array, " items"] | None,
    grid: Grid,
    write: Write,
) -> tuple[SumTree, Int[Array, " items"] | None]:
    """After a write, the items whose windows start among the `size - 1` oldest stored
    steps and whose first stack is no longer complete get weight zero (and, with
    `generation`, a new generation if they were valid): a window becomes unsampleable this
    way only, and stays so until it is overwritten. The others keep their weights.

    Called after `_windows.update_items`; nothing for a buffer without `frame_stack`.
    Each grid column of those steps is one run of `rows` consecutive items, updated by
    slices (no scatter), as `update_items` does."""
    kept = written_frames(write)
    if kept is None:
        return tree, generation
    assert frame_stack is not None
    starts_flags, current_index = kept.episode_starts, write.new_index
    rows, capacity, _, period = grid
    size = frame_stack.size
    complete = frame_stack.oldest_flags(starts_flags, current_index, write.new_is_full)
    first_column = _ring.div(current_index + period - 1, period)
    runs = []  # (first item, which of its `rows` items lost a frame)
    for i in range(-(-(size - 1) // period)):
        offset = (first_column + i) * period - current_index  # steps from the oldest, >= 0
        column = _ring.rem(first_column + i, capacity // period)
        ok = lax.dynamic_index_in_dim(complete, jnp.minimum(offset, size - 2), 1, False)
        drop = (offset < size - 1) & ~ok
        runs.append((column * rows, drop))
    # Each run is read and written in turn, and the weights and the generations apart,
    # neither reading the other (an invalid item's weight is zero already): a read of an
    # array that a later write changes makes XLA copy the whole array on every add
    # (`benchmarks/frame_stack.py`, prioritised add).
    for first, drop in runs:
        if generation is not None:
            old = lax.dynamic_slice_in_dim(generation, first, rows)
            new = old + (drop & is_valid(old)).astype(old.dtype)
            generation = lax.dynamic_update_slice_in_dim(generation, new, first, 0)
        value = tree.leaves(first, rows)
        tree = tree.set_leaves(first, jnp.where(drop, jnp.zeros((), value.dtype), value))
    return tree, generation
