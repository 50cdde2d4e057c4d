"""Episode ends: where a buffer's user says episodes stop, and what a window makes of it.

A buffer built with `episode_end` (a function from experience to its boolean leaf that is
True on the last step of an episode) applies it to whatever experience it handles: one
example step in `init` (a flag of shape `()`), a batch in `add` (`(add_batch, t)`), sampled
windows in `sample` (`(sample_batch, sample_time)`). Every application is checked while JAX
traces the call, so a function that fails or returns the wrong thing is reported, naming
`episode_end`, before anything is written.

`Episodes` holds a buffer's two settings, `episode_end` and `boundary`, and the operations
on them.
"""

import functools as ft
from collections.abc import Callable
from typing import Any, cast, get_args, Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, Bool, PyTree, Shaped

from ._checks import shape_str


Boundary = Literal["ignore", "mask", "strict"]
BOUNDARIES: tuple[Boundary, ...] = get_args(Boundary)


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


class Episodes(eqx.Module):
    """A buffer's episode settings (static), validated: `episode_end`, a function from a
    step of experience to its boolean episode-end leaf (or None), and `boundary`, what
    sampling makes of episode ends (see `TrajectoryBuffer`)."""

    episode_end: Callable[[PyTree], Any] | None = eqx.field(static=True)
    boundary: Boundary = eqx.field(static=True)

    def __init__(self, episode_end: object, boundary: object):
        """`boundary="mask"` (and `"strict"`) need `episode_end`; with `"ignore"` an
        `episode_end` is allowed and unused."""
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
            _check_hashable(episode_end)
        if boundary != "ignore" and episode_end is None:
            raise ValueError(
                f"`boundary={boundary!r}` needs `episode_end`, a function from a step of "
                "experience to its boolean episode-end leaf, e.g. "
                "`episode_end=lambda step: step['done']`"
            )
        self.episode_end = episode_end
        self.boundary = cast(Boundary, boundary)

    @property
    def strict(self) -> bool:
        """Whether only windows inside one episode may be drawn."""
        return self.boundary == "strict"

    def check(self, where: str, experience: PyTree, leading: tuple[int, ...], what: str) -> None:
        """Checks, for a buffer that looks at episode ends, that `episode_end` gives one
        flag per step of `experience` (see `episode_ends`); nothing for one that does
        not."""
        if self.boundary == "ignore" or self.episode_end is None:
            return
        jax.eval_shape(
            ft.partial(episode_ends, where, self.episode_end, leading=leading, what=what),
            experience,
        )

    def mask(
        self, where: str, windows: PyTree[Shaped[Array, "samples length ..."]]
    ) -> Bool[Array, "samples length"] | None:
        """The `mask` of a sample of `windows`: with `boundary="mask"`, True at each
        window's first step and at every later step up to and including the window's
        first episode end, False after it; otherwise None."""
        if self.boundary != "mask" or self.episode_end is None:
            return None
        leading = tuple(jtu.tree_leaves(windows)[0].shape[:2])
        ends = episode_ends(where, self.episode_end, windows, leading, "the sampled windows")
        ends_before = jnp.cumsum(ends, axis=1, dtype=jnp.int32) - ends
        return ends_before == 0

    def stored(
        self, where: str, storage: PyTree[Shaped[Array, "rows capacity ..."]]
    ) -> Bool[Array, "rows capacity"] | None:
        """With `boundary="strict"`, the episode-end flag of every stored step
        (`episode_end` applied to the storage, whose leaves are `(rows, capacity, ...)`);
        otherwise None."""
        if not self.strict or self.episode_end is None:
            return None
        leading = tuple(jtu.tree_leaves(storage)[0].shape[:2])
        return episode_ends(where, self.episode_end, storage, leading, "the stored steps")


def _check_hashable(episode_end: Callable[[PyTree], Any]) -> None:
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


def need_episode_end(
    where: str, episode_end: Callable[[PyTree], Any] | None, why: str
) -> Callable[[PyTree], Any]:
    """`episode_end`, or a clear error naming `where` for a buffer built without it (`why`:
    what the call needs it for)."""
    if episode_end is None:
        raise ValueError(
            f"`{where}`: needs a buffer built with `episode_end` (a function from a step to "
            f"its boolean episode-end leaf, e.g. `episode_end=lambda step: step['done']`): "
            f"{why}"
        )
    return episode_end
