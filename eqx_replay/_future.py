"""Future steps of a transition's own episode: `FlatBuffer.sample_future`, for goals
relabelled in hindsight (HER) and the future states of contrastive RL.

A row's stored steps are numbered logically from its oldest, `0 .. n - 1`. A transition is
the pair of steps `(p, p + 1)`; it *qualifies* when step `p + 1` is in step `p`'s episode
(`episode_end` is false at `p`) and, with `frame_stack`, step `p`'s stack is complete. Its
episode's stored steps from `second` on are `p + 1 .. p + m`: up to and including the
first episode end at or after `p + 1`, or up to the newest stored step when the episode
has not ended. The future is step `p + k`, `1 <= k <= m`, drawn with probability
proportional to `discount ** (k - 1)`.

Cost. Nothing here reads the whole ring in the common case:

- the transition is drawn by rejection, exactly: `_TRIES` pairs per draw, each uniform
  over all pairs as `sample` draws one, of which the first that qualifies is kept (so it
  is uniform over those that do). Draws for which none of them does are made from the list
  of every qualifying transition, which reads every stored step's `episode_end`, in a loop
  that runs only then (as when no transition qualifies, or nearly none);
- `m` is found from the episode-end flags read as blocks from `second` on: `_NEAR` flags
  at once, then `_FAR` at a time in a loop (`_LANES` in rings of fewer than `2 * _FAR`
  steps), until every draw has found its episode's end (no loop iteration when episodes
  end within `_NEAR` steps of `second`; one for episodes of up to `_NEAR + _FAR` steps,
  as brax tasks' 1,000-step ones). A block's first end is found by comparing places as
  bytes, in two levels for the wide blocks (`_first_set`).

`benchmarks/episodes.py` measures it against `sample`.
"""

import math
from collections.abc import Callable
from typing import Any

import jax.lax as lax
import jax.numpy as jnp
import jax.tree_util as jtu
from beartype import beartype
from jaxtyping import Array, Bool, Int, jaxtyped, PRNGKeyArray, PyTree, Shaped, UInt32

from . import _ring
from ._abstract_trajectory import AbstractTrajectoryState
from ._control import run_if
from ._data import Data
from ._episodes import episode_ends
from ._guard import poison_unless
from ._random import below_flagged, scale, split, to_uniform, words
from ._windows import Drawn


# Transitions tried per draw before the draws still rejected are made from the list of
# qualifying transitions; the episode-end flags read at first, and then per round, in the
# search for the episodes' ends.
_TRIES = 3
_NEAR = 64
_FAR = 1024
# `_first_set`'s flags per part of a wide block.
_LANES = 128


@jaxtyped(typechecker=beartype)
class FutureSample(Data):
    """A batch of transitions from a flat buffer, each with a step of its own episode's
    future (`FlatBuffer.sample_future`).

    **Fields:**

    - `first`, `second`: the transition, as in `TransitionSample.experience`: the example's
      pytree with leaves `(sample_batch, ...)`; `second` is in `first`'s episode.
    - `future`: a stored step of the same episode at or after `second`, leaves
      `(sample_batch, ...)`.
    - `offset`: `(sample_batch,)` int32, the number of steps from `first` to `future`: 1
      when `future` is `second`.

    When no transition qualifies, every leaf is poison (NaN, the largest integer, True),
    `offset` included.
    """

    first: PyTree[Shaped[Array, "sample_batch ..."]]
    second: PyTree[Shaped[Array, "sample_batch ..."]]
    future: PyTree[Shaped[Array, "sample_batch ..."]]
    offset: Int[Array, " sample_batch"]


def check_discount(where: str, discount: object) -> float:
    """`discount`, a Python float in `(0, 1]`, or a clear error."""
    if isinstance(discount, bool) or not isinstance(discount, (int, float)):
        raise TypeError(
            f"`{where}`: `discount` must be a Python float in (0, 1] (static: the method is "
            f"compiled once per value); got {type(discount).__name__}"
        )
    if not (0.0 < float(discount) <= 1.0):
        raise ValueError(f"`{where}`: `discount` must be in (0, 1]; got {discount!r}")
    return float(discount)


def _first_true(
    flags: Bool[Array, "rows capacity"],
    rows: Int[Array, " samples"],
    starts: Int[Array, " samples"],
    width: int,
    zero: Int[Array, ""] | int = 0,
) -> Int[Array, " samples"]:
    """For each sample, the first `i < width` with `flags` true at physical time
    `starts + i` of its row (wrapping around the ring; `width <= capacity`), or `width`
    when there is none. Read as blocks of `width` flags (at most 255, or a multiple of
    `_LANES`), which XLA gathers far faster on the CPU than single flags (see
    `_first_set`), unless the ring holds fewer than `2 * width` steps. A block that would
    wrap is read clamped to the row's end, and its part past the end is the row's first
    flags, searched once per row.

    `zero` is 0, as a value XLA cannot know inside a loop (`min(i, 0)` of the loop's
    counter): so that it does not hoist the rows' first flags out of a loop that seldom
    runs, into every call."""
    capacity = flags.shape[1]
    if 2 * width > capacity:  # a small ring: most blocks would wrap; flag by flag
        j = jnp.arange(width, dtype=jnp.int32)
        read = flags[rows[:, None], _ring.rem(starts[:, None] + j, capacity)]
        return jnp.min(jnp.where(read, j, width), axis=1)
    # The clamp moves a block that would wrap back by `shift`: its flags before `shift` are
    # not the sample's, and the sample's flags past the row's end are the row's first.
    clamped = jnp.minimum(starts, capacity - width)
    shift = starts - clamped
    before_end = _first_set(flags, rows, clamped, shift, width) - shift
    every_row = jnp.arange(flags.shape[0], dtype=jnp.int32)
    at_zero = jnp.zeros_like(every_row) + zero
    head = _first_set(flags, every_row, at_zero, jnp.zeros_like(every_row), width)
    after_end = jnp.where(shift > 0, width - shift + head[rows], width)
    return jnp.minimum(before_end, jnp.minimum(after_end, width))


def _first_set(
    flags: Bool[Array, "rows capacity"],
    rows: Int[Array, " samples"],
    starts: Int[Array, " samples"],
    lowest: Int[Array, " samples"],
    width: int,
) -> Int[Array, " samples"]:
    """For each sample, the first `i`, `lowest <= i < width`, with `flags` true at physical
    time `starts + i` of its row (`starts + width <= capacity`), or `width + lowest` when
    there is none.

    The flags' places are compared as bytes: XLA's CPU vectorises a minimum over bytes,
    not over 32-bit integers (for 256 samples reading 1,024 flags each, measured alone: 44
    us in two levels of bytes, 131-145 us for one minimum of int32 places). Up to 255 flags
    in one level; wider blocks, of `_LANES` flags per part, in two: the first part holding
    a true flag (a minimum across the parts, lane by lane, then across the lanes), then the
    flag in it, read again."""

    def block(at: Array, size: int) -> Array:
        numbers = lax.GatherDimensionNumbers(
            offset_dims=(1,), collapsed_slice_dims=(0,), start_index_map=(0, 1)
        )
        where = jnp.stack([rows, at], axis=1)
        return lax.gather(flags, where, numbers, (1, size), mode=lax.GatherScatterMode.CLIP)

    def first_byte(read: Array, places: Array, size: int) -> Array:
        # `read`'s first true flag at a place >= `lowest`, as a byte; `size` when none.
        kept = read & (places >= lowest[:, None])
        indices = jnp.arange(size, dtype=jnp.uint8)
        return jnp.min(jnp.where(kept, indices, jnp.uint8(size)), axis=1).astype(jnp.int32)

    j = jnp.arange(width, dtype=jnp.int32)
    if width <= 255:
        found = first_byte(block(starts, width), j, width)
        return jnp.where(found < width, found, width + lowest)
    parts = width // _LANES
    assert parts * _LANES == width and parts <= 255
    read = block(starts, width).reshape(-1, parts, _LANES)
    kept = read & (j.reshape(parts, _LANES) >= lowest[:, None, None])
    indices = jnp.arange(parts, dtype=jnp.uint8)[:, None]
    lanes = jnp.min(jnp.where(kept, indices, jnp.uint8(parts)), axis=1)
    part = jnp.min(lanes, axis=1).astype(jnp.int32)
    at = jnp.minimum(part, parts - 1) * _LANES
    inside = first_byte(block(starts + at, _LANES), at[:, None] + j[:_LANES], _LANES)
    return jnp.where(part < parts, at + inside, width + lowest)


def draw_future(
    where: str,
    episode_end: Callable[[PyTree], Any],
    state: AbstractTrajectoryState,
    key: PRNGKeyArray,
    count: int,
    discount: float,
    skipped: Int[Array, " rows"] | None,
) -> tuple[Bool[Array, ""], Drawn, Int[Array, " samples"]]:
    """Where `count` qualifying transitions and their futures are.

    **Arguments:** the flat buffer's `episode_end` and state; `skipped`, per row, how many
    of its oldest steps cannot be a transition's `first` (their stacks are incomplete), or
    None.

    **Returns:** `(ok, drawn, offset)`: whether some transition qualifies; the rows and the
    physical times of the transitions' `first` steps; and each future's offset from
    `first`.
    """
    storage, current_index, is_full = state.experience, state.current_index, state.is_full
    rows, capacity = jtu.tree_leaves(storage)[0].shape[:2]
    ends = episode_ends(where, episode_end, storage, (rows, capacity), "the stored steps")
    oldest = _ring.oldest(current_index, is_full)
    stored = _ring.stored(current_index, is_full, capacity)
    pairs = jnp.maximum(stored - 1, 0)
    lowest = jnp.zeros((rows,), jnp.int32) if skipped is None else skipped
    keys = split(key, 2)

    # Rejection: `_TRIES` transitions per draw, uniform over all pairs; the first that
    # qualifies is uniform over those that do. One index over every row's pairs per try
    # (`rows * capacity` fits in int32, see `_config.check_total`): half the random bits of
    # a row and a pair drawn apart. The offsets' words are drawn with the tries'.
    # Drawn and tried inside a loop (of one iteration, which XLA cannot know), whose output
    # XLA does not fuse into its uses: fused, each use would hash the words again. Its carry
    # is one array (rows, pairs, whether accepted, and the offsets' words): one buffer for
    # the program to fill before the loop, not five.
    def tries(_: Array) -> Array:
        high, low = words(keys[0], (_TRIES + 1, count))
        joint = scale(high[:_TRIES], low[:_TRIES], (rows * pairs).astype(jnp.uint32)).astype(
            jnp.int32
        )
        p_try, row_try = jnp.divmod(joint, rows)
        time_try = _ring.rem(oldest + p_try, capacity)
        good = (p_try >= lowest[row_try]) & (p_try < pairs) & ~ends[row_try, time_try]
        pick = jnp.argmax(good, axis=0)[None]
        row = jnp.take_along_axis(row_try, pick, axis=0)[0]
        p = jnp.take_along_axis(p_try, pick, axis=0)[0]
        offset_words = lax.bitcast_convert_type(jnp.stack([high[_TRIES], low[_TRIES]]), jnp.int32)
        return jnp.concatenate(
            [jnp.stack([row, p, jnp.any(good, axis=0).astype(jnp.int32)]), offset_words]
        )

    drawn = run_if(stored >= 0, tries, jnp.zeros((5, count), jnp.int32))
    row, p, accepted = drawn[0], drawn[1], drawn[2] > 0
    high, low = lax.bitcast_convert_type(drawn[3:], jnp.uint32)

    # The draws still rejected, made from every qualifying transition.
    def exactly(carry: tuple) -> tuple:
        row, p, _ = carry
        logical = _ring.rem(jnp.arange(capacity, dtype=jnp.int32) - oldest + capacity, capacity)
        good = (logical >= lowest[:, None]) & (logical < pairs) & ~ends
        item_row, time, total = below_flagged(keys[1], good, count)
        item_p = _ring.rem(time - oldest + capacity, capacity)
        return (
            jnp.where(accepted, row, item_row),
            jnp.where(accepted, p, item_p),
            total > 0,
        )

    row, p, ok = run_if(~jnp.all(accepted), exactly, (row, p, jnp.array(True)))

    # m: the episode's stored steps from `second` on: the first `_NEAR` flags read at
    # once, and, for the draws whose episode runs on past them, `_FAR` at a time.
    def search(first: Array, width: int, m: Array) -> Array:
        ahead = p + 1 + first  # logical
        zero = jnp.minimum(first, 0)
        first_end = _first_true(ends, row, _ring.rem(oldest + ahead, capacity), width, zero)
        first_last = jnp.minimum(first_end, jnp.maximum(stored - 1 - ahead, 0))
        return jnp.where((m == 0) & (first_last < width), first + first_last + 1, m)

    # A ring too small for `_FAR`-flag blocks (see `_first_true`) reads `_LANES` at a time.
    near = min(_NEAR, capacity)
    far = _FAR if 2 * _FAR <= capacity else min(_LANES, capacity)
    m = search(jnp.int32(0), near, jnp.zeros((count,), jnp.int32))
    _, m = lax.while_loop(
        lambda c: (c[0] < capacity) & jnp.any(c[1] == 0),
        lambda c: (c[0] + far, search(c[0], far, c[1])),
        (jnp.int32(near), m),
    )
    m = jnp.maximum(m, 1)
    offset = _offsets(high, low, m, discount)
    first_times = _ring.rem(oldest + p, capacity)
    return ok, Drawn(row, first_times, ok), offset


def _offsets(
    high: UInt32[Array, " samples"],
    low: UInt32[Array, " samples"],
    m: Int[Array, " samples"],
    discount: float,
) -> Array:
    """`k` in `1 .. m` with probability proportional to `discount ** (k - 1)`, from two
    random words per sample: uniform exactly (`scale`) for `discount=1`; otherwise by the
    inverse of its distribution function at a float32 uniform, exact to float32's
    resolution (each probability within about `m * 2**-23` of its value: episodes of up to
    some thousands of steps)."""
    if discount == 1.0:
        return scale(high, low, m.astype(jnp.uint32)).astype(jnp.int32) + 1
    u = to_uniform(high)
    log_d = math.log(discount)
    tail = -jnp.expm1(m.astype(jnp.float32) * log_d)  # 1 - discount ** m
    k = jnp.ceil(jnp.log1p(-u * tail) / log_d).astype(jnp.int32)
    return jnp.clip(k, 1, m)


def future_sample(
    ok: Bool[Array, ""],
    first: PyTree[Array],
    second: PyTree[Array],
    future: PyTree[Array],
    offset: Int[Array, " samples"],
) -> FutureSample:
    """The sample, poisoned unless `ok`."""
    first, second, future, offset = poison_unless(ok, (first, second, future, offset))
    return FutureSample(first, second, future, offset)
