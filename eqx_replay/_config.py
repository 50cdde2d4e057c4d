"""Validation of buffer configurations: errors name the argument, warnings match Flashbax's.

Index arithmetic runs in int32 (JAX's default integer), so configurations whose indices
would overflow it are refused here, before anything is allocated:

- a ring's arithmetic (write head, window starts, windows that wrap) reaches twice the time
  axis;
- the bookkeeping of windows as items (prioritised buffers, `boundary="strict"`) reaches
  four times the time axis and twice the number of items;
- a prioritised buffer's handles (`sample.indices`) hold the item and its window number
  modulo `(2**31 - 1) // items`, which must leave at least `MIN_GENERATIONS` window numbers
  for stale updates to be told apart.
"""

import dataclasses
import math
import numbers
import operator
import os
import sys
import warnings
from collections.abc import Callable
from typing import Any, cast, get_args, Literal

import equinox as eqx
import jax
import jax.tree_util as jtu
from jaxtyping import PyTree


INT32_MAX = 2**31 - 1
FLOAT32_MAX = 3.4028234663852886e38
MIN_GENERATIONS = 16

# Frames in these files are the library's (or the libraries it calls through), not the
# user's: a warning is attributed to the first frame outside them.
_INTERNAL = tuple(
    os.path.dirname(path) + os.sep for path in (__file__, eqx.__file__) if path is not None
) + (dataclasses.__file__,)


def _warn(message: str) -> None:
    """`warnings.warn(message)`, attributed to the user's line that made the buffer."""
    frame, level = sys._getframe(0), 1
    while frame is not None and (
        frame.f_code.co_filename.startswith(_INTERNAL)
        or frame.f_code.co_filename.startswith("<@beartype")
        or "jaxtyping" + os.sep in frame.f_code.co_filename
    ):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, stacklevel=level)


def _positive_int(name: str, value: object, *, allow_zero: bool = False) -> int:
    if isinstance(value, bool):
        raise TypeError(f"`{name}` must be an int; got the bool {value!r}")
    try:
        as_int = operator.index(value)  # pyright: ignore[reportArgumentType] # checked below
    except TypeError:
        raise TypeError(f"`{name}` must be an int; got {type(value).__name__} {value!r}") from None
    lowest = 0 if allow_zero else 1
    if as_int < lowest:
        raise ValueError(f"`{name}` must be >= {lowest}; got {as_int}")
    return as_int


def _rows_of(max_size: object, rows: int) -> tuple[int, int]:
    """`max_size` checked, and the time axis it gives each of `rows` rows.

    **Returns:** `(max_size, max_size // rows)`.
    """
    size = _positive_int("max_size", max_size)
    if size < rows:
        raise ValueError(
            f"`max_size` ({size}) must be at least `add_batch_size` ({rows}), so that "
            "each row holds at least one step"
        )
    return size, size // rows


def donate_flag(donate_state: object) -> bool:
    """Validates `donate_state`."""
    if not isinstance(donate_state, bool):
        raise TypeError(f"`donate_state` must be a bool; got {donate_state!r}")
    return donate_state


def trajectory_config(
    *,
    add_batch_size: object,
    sample_batch_size: object,
    sample_sequence_length: object,
    period: object,
    min_length_time_axis: object,
    max_size: object | None,
    max_length_time_axis: object | None,
) -> tuple[int, int, int, int, int, int]:
    """Validates a trajectory buffer's configuration.

    **Returns:** `(add_batch_size, sample_batch_size, sample_sequence_length, period,
    min_length_time_axis, max_length_time_axis)` as ints, with the time axis resolved from
    `max_size` when that was given and `min_length_time_axis` raised to
    `sample_sequence_length` when it was smaller.
    """
    rows = _positive_int("add_batch_size", add_batch_size)
    samples = _positive_int("sample_batch_size", sample_batch_size)
    length = _positive_int("sample_sequence_length", sample_sequence_length)
    period_ = _positive_int("period", period)
    min_length = _positive_int("min_length_time_axis", min_length_time_axis, allow_zero=True)
    if (max_size is None) == (max_length_time_axis is None):
        raise ValueError(
            "give exactly one of `max_size` (steps in the whole buffer) and "
            "`max_length_time_axis` (steps per row); got "
            + ("both" if max_size is not None else "neither")
        )
    if max_size is not None:
        size, capacity = _rows_of(max_size, rows)
        if size % rows:
            _warn(
                f"`max_size` ({size}) is not a multiple of `add_batch_size` ({rows}); the "
                f"buffer holds {capacity} steps per row, {capacity * rows} in all"
            )
    else:
        capacity = _positive_int("max_length_time_axis", max_length_time_axis)
    check_time_axis(capacity, INT32_MAX // 2, "a ring's index arithmetic reaches 2 x the time axis")
    if length > capacity:
        raise ValueError(
            f"`sample_sequence_length` ({length}) must be <= the time axis "
            f"({capacity} steps per row)"
        )
    if min_length > capacity:
        raise ValueError(
            f"`min_length_time_axis` ({min_length}) must be <= the time axis "
            f"({capacity} steps per row)"
        )
    if min_length < length:
        _warn(
            f"`min_length_time_axis` ({min_length}) is less than `sample_sequence_length` "
            f"({length}); raising it to {length}, since no window exists before then"
        )
        min_length = length
    if period_ > length:
        _warn(
            f"`period` ({period_}) is greater than `sample_sequence_length` ({length}): "
            f"{period_ - length} of every {period_} steps are never sampled"
        )
    return rows, samples, length, period_, min_length, capacity


def prioritised_config(
    *, priority_exponent: object, **trajectory: object
) -> tuple[tuple[int, int, int, int, int, int], float]:
    """Validates a prioritised trajectory buffer's configuration.

    Items are windows starting at physical multiples of `period`, so the time axis is rounded
    down to a multiple of `period` (with a warning), and every constraint is checked again
    after rounding.

    **Returns:** `trajectory_config`'s tuple, with the rounded time axis, and the exponent.
    """
    rows, samples, length, period, min_length, capacity = trajectory_config(**trajectory)  # pyright: ignore[reportArgumentType] # keywords checked there
    if isinstance(priority_exponent, bool) or not isinstance(priority_exponent, numbers.Real):
        raise TypeError(
            "`priority_exponent` must be a float; got "
            f"{type(priority_exponent).__name__} {priority_exponent!r}"
        )
    exponent = float(priority_exponent)
    if not (0 <= exponent <= FLOAT32_MAX):
        raise ValueError(f"`priority_exponent` must be finite in float32 and >= 0; got {exponent}")
    rounded = grid_capacity(capacity, period, length, min_length)
    check_items(rows, rounded, period, handles=True)
    return (rows, samples, length, period, min_length, rounded), exponent


def check_time_axis(capacity: int, limit: int, why: str) -> None:
    """Refuses a time axis over `limit` steps per row, saying `why`."""
    if capacity > limit:
        raise ValueError(
            f"the time axis (`max_length_time_axis`, or `max_size // add_batch_size`) is "
            f"{capacity} steps per row; at most {limit} are allowed, since {why} in int32"
        )


def check_items(rows: int, capacity: int, period: int, *, handles: bool) -> None:
    """Refuses a buffer of windows as items whose bookkeeping would overflow int32 (see the
    module docstring); `handles` for a buffer whose samples carry handles."""
    check_time_axis(
        capacity, INT32_MAX // 4, "the bookkeeping of windows reaches 4 x the time axis"
    )
    items = rows * (capacity // period)
    limit = INT32_MAX // MIN_GENERATIONS if handles else INT32_MAX // 2
    if items > limit:
        why = (
            f"a sample's `indices` hold the window and at least {MIN_GENERATIONS} window "
            "numbers for stale updates to be detected"
            if handles
            else "their bookkeeping reaches 2 x the number of windows"
        )
        raise ValueError(
            f"the buffer has {items} windows (`add_batch_size` {rows} x the time axis "
            f"{capacity} / `period` {period}); at most {limit} are allowed, since {why}, "
            "in int32"
        )


def grid_capacity(capacity: int, period: int, length: int, min_length: int) -> int:
    """The time axis rounded down to a multiple of `period` (with a warning), for buffers
    whose items are windows starting at physical multiples of `period`; every constraint is
    checked again after rounding."""
    rounded = capacity - capacity % period
    if rounded != capacity:
        _warn(
            f"the time axis ({capacity} steps per row) is not a multiple of `period` "
            f"({period}); rounding it down to {rounded}"
        )
        if rounded == 0:
            raise ValueError(
                f"the time axis ({capacity} steps per row) is shorter than `period` ({period})"
            )
        if length > rounded:
            raise ValueError(
                f"`sample_sequence_length` ({length}) must be <= the time axis rounded down "
                f"to a multiple of `period` ({rounded} steps per row)"
            )
        if min_length > rounded:
            raise ValueError(
                f"`min_length_time_axis` ({min_length}) must be <= the time axis rounded down "
                f"to a multiple of `period` ({rounded} steps per row)"
            )
    return rounded


Boundary = Literal["ignore", "mask", "strict"]
BOUNDARIES: tuple[Boundary, ...] = get_args(Boundary)


def episode_config(
    *, episode_end: object, boundary: object
) -> tuple[Callable[[PyTree], Any] | None, Boundary]:
    """Validates how a buffer treats episode boundaries.

    `boundary="mask"` (and `"strict"`) need `episode_end`; with `"ignore"` an `episode_end`
    is allowed and unused.

    **Returns:** `(episode_end, boundary)`.
    """
    allowed = ", ".join(repr(b) for b in BOUNDARIES)
    if not isinstance(boundary, str):
        raise TypeError(f"`boundary` must be one of {allowed}; got {boundary!r}")
    if boundary not in BOUNDARIES:
        raise ValueError(f"`boundary` must be one of {allowed}; got {boundary!r}")
    if episode_end is not None and not callable(episode_end):
        raise TypeError(
            "`episode_end` must be a function from a step of experience to its boolean "
            "episode-end leaf, e.g. `lambda step: step['done']`; got "
            f"{type(episode_end).__name__} {episode_end!r}"
        )
    if episode_end is not None:
        check_hashable(episode_end)
    if boundary != "ignore" and episode_end is None:
        raise ValueError(
            f"`boundary={boundary!r}` needs `episode_end`, a function from a step of "
            "experience to its boolean episode-end leaf, e.g. "
            "`episode_end=lambda step: step['done']`"
        )
    return episode_end, cast(Boundary, boundary)


def check_hashable(episode_end: Callable[[PyTree], Any]) -> None:
    """`episode_end` is a static field of the buffer, which JAX hashes to find its compiled
    code: it must be hashable."""
    try:
        hash(episode_end)
    except TypeError as error:
        arrays = [
            jtu.keystr(path)
            for path, leaf in jtu.tree_flatten_with_path(episode_end)[0]
            if isinstance(leaf, jax.Array)
        ]
        what = (
            f"{type(episode_end).__name__}(...) with array leaves {', '.join(arrays)}"
            if arrays
            else f"an unhashable {type(episode_end).__name__} ({error})"
        )
        raise TypeError(
            "`episode_end` is a static field of the buffer, so it must be hashable; got "
            f"{what}. Close over the arrays in a function instead, e.g. "
            "`episode_end=lambda step: my_end(step)`, or make them static fields."
        ) from None


def flat_config(
    *,
    max_length: object,
    min_length: object,
    sample_batch_size: object,
    add_sequences: object,
    add_batch_size: object | None,
) -> dict[str, Any]:
    """Validates a flat buffer's configuration, as Flashbax does but with errors that name
    the argument.

    **Returns:** the keywords of its trajectory buffer: `add_batch_size` rows (1 for
    `None`) of `max_length // add_batch_size` steps, windows of 2 steps with period 1,
    `min_length // add_batch_size + 1` steps per row (at least 2) before sampling.
    """
    length = _positive_int("max_length", max_length)
    minimum = _positive_int("min_length", min_length, allow_zero=True)
    samples = _positive_int("sample_batch_size", sample_batch_size)
    check_flag("add_sequences", add_sequences)
    rows = 1 if add_batch_size is None else _positive_int("add_batch_size", add_batch_size)
    capacity = length // rows
    if samples > length:
        raise ValueError(f"`sample_batch_size` ({samples}) must be <= `max_length` ({length})")
    if capacity < 2:
        raise ValueError(
            f"`max_length` ({length}) must hold at least 2 steps per row, a pair: "
            f"`max_length // add_batch_size` is {length} // {rows} = {capacity}"
        )
    min_time = minimum // rows + 1
    if min_time > capacity:
        raise ValueError(
            f"`min_length` ({minimum}) needs `min_length // add_batch_size + 1` = {min_time} "
            f"steps per row, more than the {capacity} that `max_length` ({length}) gives "
            f"each of the {rows} rows"
        )
    return dict(
        add_batch_size=rows,
        sample_batch_size=samples,
        sample_sequence_length=2,
        period=1,
        min_length_time_axis=max(min_time, 2),
        max_length_time_axis=capacity,
    )


def item_config(
    *,
    max_length: object,
    min_length: object,
    sample_batch_size: object,
    add_sequences: object,
    add_batches: object,
) -> dict[str, Any]:
    """Validates an item buffer's configuration, as Flashbax does but with errors that name
    the argument.

    **Returns:** the keywords of its trajectory buffer: one row of `max_length` steps,
    windows of one step, `min_length` steps (at least 1) before sampling.
    """
    length = _positive_int("max_length", max_length)
    minimum = _positive_int("min_length", min_length, allow_zero=True)
    samples = _positive_int("sample_batch_size", sample_batch_size)
    check_flag("add_sequences", add_sequences)
    check_flag("add_batches", add_batches)
    if samples > length:
        raise ValueError(f"`sample_batch_size` ({samples}) must be <= `max_length` ({length})")
    if minimum > length:
        raise ValueError(f"`min_length` ({minimum}) must be <= `max_length` ({length})")
    return dict(
        add_batch_size=1,
        sample_batch_size=samples,
        sample_sequence_length=1,
        period=1,
        min_length_time_axis=max(minimum, 1),
        max_length_time_axis=length,
    )


def check_flag(name: str, value: object) -> bool:
    """Validates a bool argument."""
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be a bool; got {type(value).__name__} {value!r}")
    return value


def unit_exponent(priority_exponent: object) -> float:
    """Validates the priority exponent of the prioritised flat and item buffers, which
    Flashbax requires to lie in `[0, 1]`."""
    if isinstance(priority_exponent, bool) or not isinstance(priority_exponent, numbers.Real):
        raise TypeError(
            "`priority_exponent` must be a float; got "
            f"{type(priority_exponent).__name__} {priority_exponent!r}"
        )
    exponent = float(priority_exponent)
    if not 0 <= exponent <= 1:
        raise ValueError(f"`priority_exponent` must be in [0, 1]; got {exponent}")
    return exponent


def queue_config(
    *,
    max_length_time_axis: object,
    add_batch_size: object,
    add_sequence_length: object,
    sample_sequence_length: object,
    max_size: object | None,
) -> tuple[int, int, int, int]:
    """Validates a trajectory queue's configuration.

    **Returns:** `(max_length_time_axis, add_batch_size, add_sequence_length,
    sample_sequence_length)`, the time axis from `max_size` when that was given (with
    Flashbax's warning).
    """
    rows = _positive_int("add_batch_size", add_batch_size)
    if max_size is not None:
        size, capacity = _rows_of(max_size, rows)
        _warn(
            f"`max_size` ({size}) sets `max_length_time_axis` to `max_size // "
            f"add_batch_size` = {capacity}, in place of the `max_length_time_axis` given"
        )
    else:
        capacity = _positive_int("max_length_time_axis", max_length_time_axis)
    check_time_axis(capacity, INT32_MAX // 2, "a ring's index arithmetic reaches 2 x the time axis")
    for name, value in (
        ("add_sequence_length", add_sequence_length),
        ("sample_sequence_length", sample_sequence_length),
    ):
        if _positive_int(name, value) > capacity:
            raise ValueError(
                f"`{name}` ({value}) must be <= the queue's time axis ({capacity} steps per row)"
            )
    return capacity, rows, int(add_sequence_length), int(sample_sequence_length)  # pyright: ignore[reportArgumentType] # checked above


def mixer_config(
    *, buffers: object, sample_batch_size: object, proportions: object
) -> tuple[tuple[Any, ...], int, tuple[float, ...], tuple[int, ...]]:
    """Validates a mixer's configuration.

    **Returns:** `(buffers, sample_batch_size, proportions, counts)`: the items drawn from
    each buffer, from the normalised proportions rounded down, with what rounding leaves
    over added to the first buffer's (Flashbax's rule).
    """
    from ._base import AbstractReplayBuffer

    if not isinstance(buffers, (list, tuple)) or not buffers:
        raise TypeError(f"`buffers` must be a non-empty list or tuple of buffers; got {buffers!r}")
    for i, buffer in enumerate(buffers):
        if not isinstance(buffer, AbstractReplayBuffer):
            raise TypeError(
                f"`buffers[{i}]` is a {type(buffer).__name__}; a mixer samples buffers that "
                "take a key (a trajectory queue cannot be mixed)"
            )
        if type(buffer) is not type(buffers[0]):
            raise TypeError(
                f"`buffers` must be of one kind: buffers[0] is a {type(buffers[0]).__name__}, "
                f"buffers[{i}] a {type(buffer).__name__}"
            )
        if getattr(buffer, "sharding", None) is not None:
            raise ValueError(
                f"`buffers[{i}]` is sharded, which a mixer does not support: sample the "
                "sharded buffers one by one and concatenate the samples"
            )
    samples = _positive_int("sample_batch_size", sample_batch_size)
    if not isinstance(proportions, (list, tuple)) or len(proportions) != len(buffers):
        raise ValueError(
            f"`proportions` must be a list or tuple of {len(buffers)} numbers, one per "
            f"buffer; got {proportions!r}"
        )
    shares = []
    for i, share in enumerate(proportions):
        if isinstance(share, bool) or not isinstance(share, numbers.Real):
            raise TypeError(f"`proportions[{i}]` must be a number; got {share!r}")
        if not (math.isfinite(share) and float(share) >= 0):
            raise ValueError(f"`proportions[{i}]` must be finite and >= 0; got {share}")
        shares.append(share)
    total = sum(shares)
    if total <= 0:
        raise ValueError(f"`proportions` must not all be zero; got {proportions!r}")
    # Flashbax's arithmetic, operation for operation, so that the counts agree.
    counts = [int(share / total * samples) for share in shares]
    counts[0] += samples - sum(counts)
    return tuple(buffers), samples, tuple(float(p) for p in shares), tuple(counts)
