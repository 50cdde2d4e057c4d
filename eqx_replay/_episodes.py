"""Episode ends: where a buffer's user says episodes stop, and what a window makes of it.

A buffer built with `episode_end` (a function from experience to its boolean leaf that is
True on the last step of an episode) applies it to whatever experience it handles: one
example step in `init` (a flag of shape `()`), a batch in `add` (`(add_batch, t)`), sampled
windows in `sample` (`(sample_batch, sample_time)`). Every application is checked while JAX
traces the call, so a function that fails or returns the wrong thing is reported, naming
`episode_end`, before anything is written.
"""

import functools as ft
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, PyTree, Shaped

from ._checks import shape_str
from ._config import Boundary


def episode_ends(
    where: str,
    episode_end: Callable[[PyTree], Any],
    experience: PyTree,
    leading: tuple[int, ...],
    what: str,
) -> Bool[Array, "..."]:
    """Applies `episode_end` to `experience`, whose leaves have the leading axes `leading`.

    **Arguments:**

    - `where`: the call, for error messages.
    - `episode_end`: the buffer's `episode_end`.
    - `experience`: the example's pytree with leaves `(*leading, ...)`.
    - `leading`: the shape the flags must have.
    - `what`: what `experience` is ("the example", "the batch", ...), for error messages.

    **Returns:** the boolean flags, of shape `leading`.
    """
    try:
        ends = episode_end(experience)
    except Exception as error:
        raised = TypeError if isinstance(error, TypeError) else ValueError
        raise raised(
            f"`{where}`: `episode_end` failed on {what}: {type(error).__name__}: {error}"
        ) from error
    dtype, shape = getattr(ends, "dtype", None), getattr(ends, "shape", None)
    if dtype is None or shape is None:
        raise TypeError(
            f"`{where}`: `episode_end` returned a {type(ends).__name__} on {what}; expected "
            f"one boolean array of shape {shape_str(leading)}"
        )
    if dtype != jnp.bool_:
        raise TypeError(
            f"`{where}`: `episode_end` returned dtype {dtype} on {what}; expected bool "
            "(compare a numeric flag, e.g. `lambda step: step['done'] > 0`)"
        )
    if tuple(shape) != leading:
        raise ValueError(
            f"`{where}`: `episode_end` returned shape {shape_str(tuple(shape))} on {what}; "
            f"expected {shape_str(leading)}, one flag per step"
        )
    return jnp.asarray(ends)


def check_ends(
    where: str,
    episode_end: Callable[[PyTree], Any] | None,
    boundary: Boundary,
    experience: PyTree,
    leading: tuple[int, ...],
    what: str,
) -> None:
    """Checks, for a buffer that looks at episode ends, that `episode_end` gives one flag
    per step of `experience` (see `episode_ends`); nothing for one that does not."""
    if boundary == "ignore" or episode_end is None:
        return
    jax.eval_shape(
        ft.partial(episode_ends, where, episode_end, leading=leading, what=what), experience
    )


def sample_mask(
    where: str,
    episode_end: Callable[[PyTree], Any] | None,
    boundary: Boundary,
    windows: PyTree[Shaped[Array, "samples length ..."]],
    samples: int,
    length: int,
) -> Bool[Array, "samples length"] | None:
    """The `mask` of a sample of `windows`: with `boundary="mask"`, True at each window's
    first step and at every later step up to and including the window's first episode end,
    False after it; otherwise None."""
    if boundary != "mask" or episode_end is None:
        return None
    ends = episode_ends(where, episode_end, windows, (samples, length), "the sampled windows")
    ends_before = jnp.cumsum(ends, axis=1, dtype=jnp.int32) - ends
    return ends_before == 0


def stored_ends(
    where: str,
    episode_end: Callable[[PyTree], Any] | None,
    boundary: Boundary,
    storage: PyTree[Shaped[Array, "rows capacity ..."]],
) -> Bool[Array, "rows capacity"] | None:
    """With `boundary="strict"`, the episode-end flag of every stored step (`episode_end`
    applied to the storage, whose leaves are `(rows, capacity, ...)`); otherwise None."""
    if boundary != "strict" or episode_end is None:
        return None
    leading = tuple(jax.tree_util.tree_leaves(storage)[0].shape[:2])
    return episode_ends(where, episode_end, storage, leading, "the stored steps")
