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
import numbers
import operator
import os
import sys
import warnings
from typing import NamedTuple

import equinox as eqx


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


def positive_int(name: str, value: object, *, allow_zero: bool = False) -> int:
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
    size = positive_int("max_size", max_size)
    if size < rows:
        raise ValueError(
            f"`max_size` ({size}) must be at least `add_batch_size` ({rows}), so that "
            "each row holds at least one step"
        )
    return size, size // rows


def donate_flag(donate_state: object) -> bool:
    """Validates `donate_state` (its message is the one it has always had)."""
    if not isinstance(donate_state, bool):
        raise TypeError(f"`donate_state` must be a bool; got {donate_state!r}")
    return donate_state


class TrajectoryConfig(NamedTuple):
    """A trajectory buffer's configuration, validated (see `TrajectoryBuffer`)."""

    add_batch_size: int
    sample_batch_size: int
    sample_sequence_length: int
    period: int
    min_length_time_axis: int
    max_length_time_axis: int


def trajectory_config(
    *,
    add_batch_size: object,
    sample_batch_size: object,
    sample_sequence_length: object,
    period: object,
    min_length_time_axis: object,
    max_size: object | None,
    max_length_time_axis: object | None,
) -> TrajectoryConfig:
    """Validates a trajectory buffer's configuration.

    **Returns:** the configuration as ints, with the time axis resolved from `max_size`
    when that was given and `min_length_time_axis` raised to `sample_sequence_length` when
    it was smaller.
    """
    rows = positive_int("add_batch_size", add_batch_size)
    samples = positive_int("sample_batch_size", sample_batch_size)
    length = positive_int("sample_sequence_length", sample_sequence_length)
    period_ = positive_int("period", period)
    min_length = positive_int("min_length_time_axis", min_length_time_axis, allow_zero=True)
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
        capacity = positive_int("max_length_time_axis", max_length_time_axis)
    check_time_axis(capacity, INT32_MAX // 2, "a ring's index arithmetic reaches 2 x the time axis")
    check_total(rows, capacity)
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
    return TrajectoryConfig(rows, samples, length, period_, min_length, capacity)


def grid_config(config: TrajectoryConfig, *, handles: bool) -> TrajectoryConfig:
    """The configuration of a buffer that samples windows as items (a prioritised buffer, or
    `boundary="strict"`): they start at physical multiples of `period`, so the time axis is
    rounded down to one (with a warning, every constraint checked again after rounding), and
    the items' bookkeeping must fit in int32 (`check_items`); `handles` for a buffer whose
    samples carry handles (a prioritised buffer)."""
    rows, _, length, period, min_length, capacity = config
    rounded = grid_capacity(capacity, period, length, min_length)
    check_items(rows, rounded, period, handles=handles)
    return config._replace(max_length_time_axis=rounded)


def check_exponent(value: object, *, unit: bool = False) -> float:
    """Validates a priority exponent: finite in float32 and >= 0, or with `unit` (the
    prioritised flat and item buffers, as Flashbax requires) in `[0, 1]`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"`priority_exponent` must be a float; got {type(value).__name__} {value!r}"
        )
    exponent = float(value)
    if unit and not 0 <= exponent <= 1:
        raise ValueError(f"`priority_exponent` must be in [0, 1]; got {exponent}")
    if not 0 <= exponent <= FLOAT32_MAX:
        raise ValueError(f"`priority_exponent` must be finite in float32 and >= 0; got {exponent}")
    return exponent


def check_time_axis(capacity: int, limit: int, why: str) -> None:
    """Refuses a time axis over `limit` steps per row, saying `why`."""
    if capacity > limit:
        raise ValueError(
            f"the time axis (`max_length_time_axis`, or `max_size // add_batch_size`) is "
            f"{capacity} steps per row; at most {limit} are allowed, since {why} in int32"
        )


def check_total(rows: int, capacity: int) -> None:
    """Refuses a buffer whose steps in all (`size`) would overflow int32."""
    if rows * capacity > INT32_MAX:
        raise ValueError(
            f"the buffer holds {rows * capacity} steps (`add_batch_size` {rows} x the time "
            f"axis {capacity}); at most {INT32_MAX} are allowed, since `size` counts them "
            "in int32"
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


def flat_config(
    *,
    max_length: object,
    min_length: object,
    sample_batch_size: object,
    add_sequences: object,
    add_batch_size: object | None,
) -> TrajectoryConfig:
    """Validates a flat buffer's configuration, as Flashbax does but with errors that name
    the argument.

    **Returns:** its trajectory buffer's configuration: `add_batch_size` rows (1 for
    `None`) of `max_length // add_batch_size` steps, windows of 2 steps with period 1,
    `min_length // add_batch_size + 1` steps per row (at least 2) before sampling.
    """
    length = positive_int("max_length", max_length)
    minimum = positive_int("min_length", min_length, allow_zero=True)
    samples = positive_int("sample_batch_size", sample_batch_size)
    check_flag("add_sequences", add_sequences)
    rows = 1 if add_batch_size is None else positive_int("add_batch_size", add_batch_size)
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
    return TrajectoryConfig(
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
) -> TrajectoryConfig:
    """Validates an item buffer's configuration, as Flashbax does but with errors that name
    the argument.

    **Returns:** its trajectory buffer's configuration: one row of `max_length` steps,
    windows of one step, `min_length` steps (at least 1) before sampling.
    """
    length = positive_int("max_length", max_length)
    minimum = positive_int("min_length", min_length, allow_zero=True)
    samples = positive_int("sample_batch_size", sample_batch_size)
    check_flag("add_sequences", add_sequences)
    check_flag("add_batches", add_batches)
    if samples > length:
        raise ValueError(f"`sample_batch_size` ({samples}) must be <= `max_length` ({length})")
    if minimum > length:
        raise ValueError(f"`min_length` ({minimum}) must be <= `max_length` ({length})")
    return TrajectoryConfig(
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


class QueueConfig(NamedTuple):
    """A trajectory queue's configuration, validated (see `TrajectoryQueue`)."""

    max_length_time_axis: int
    add_batch_size: int
    add_sequence_length: int
    sample_sequence_length: int


def queue_config(
    *,
    max_length_time_axis: object,
    add_batch_size: object,
    add_sequence_length: object,
    sample_sequence_length: object,
    max_size: object | None,
) -> QueueConfig:
    """Validates a trajectory queue's configuration.

    **Returns:** the configuration, the time axis from `max_size` when that was given (with
    Flashbax's warning).
    """
    rows = positive_int("add_batch_size", add_batch_size)
    if max_size is not None:
        size, capacity = _rows_of(max_size, rows)
        _warn(
            f"`max_size` ({size}) sets `max_length_time_axis` to `max_size // "
            f"add_batch_size` = {capacity}, in place of the `max_length_time_axis` given"
        )
    else:
        capacity = positive_int("max_length_time_axis", max_length_time_axis)
    check_time_axis(capacity, INT32_MAX // 2, "a ring's index arithmetic reaches 2 x the time axis")
    check_total(rows, capacity)
    for name, value in (
        ("add_sequence_length", add_sequence_length),
        ("sample_sequence_length", sample_sequence_length),
    ):
        if positive_int(name, value) > capacity:
            raise ValueError(
                f"`{name}` ({value}) must be <= the queue's time axis ({capacity} steps per row)"
            )
    return QueueConfig(capacity, rows, int(add_sequence_length), int(sample_sequence_length))  # pyright: ignore[reportArgumentType] # checked above
