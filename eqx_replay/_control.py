"""Control flow that updates its operand in place, and the choice of it by platform.

XLA on CPU copies the operand of a `lax.cond` into each branch's buffer, so a `cond` over a
buffer's storage (or over a sample) costs a copy of it on every call, taken branch or not.
A `lax.while_loop` updates its carry in place; the helpers here are built on it.

On an accelerator the trade is the other way round: each test of a loop's predicate reads it
back to the host, a device-to-host synchronisation per iteration, while masked writes and
selects cost little. `by_platform` picks a loop for the CPU and a branch-free form
elsewhere, when the program is lowered: no branch is left in the compiled program.
"""

from collections.abc import Callable
from typing import TypeVar

import jax.lax as lax
import jax.numpy as jnp
from jaxtyping import Array, Bool


_T = TypeVar("_T")


def run_if(pred: Bool[Array, ""], body: Callable[[_T], _T], x: _T) -> _T:
    """`body(x)` if `pred` else `x`: a while loop of at most one iteration."""
    return lax.while_loop(lambda c: c[0], lambda c: (jnp.array(False), body(c[1])), (pred, x))[1]


def for_each_true(flags: Bool[Array, " n"], body: Callable[[Array, _T], _T], x: _T) -> _T:
    """Applies `body(i, x)` for each `i` with `flags[i]` true, in increasing order: as many
    loop iterations as there are true flags, none when there are none."""
    positions = jnp.arange(flags.shape[0])

    def step(carry: tuple[Array, _T]) -> tuple[Array, _T]:
        pending, x = carry
        i = jnp.argmax(pending)
        return pending & (positions != i), body(i, x)

    return lax.while_loop(lambda c: jnp.any(c[0]), step, (flags, x))[1]


def by_platform(cpu: Callable[..., _T], other: Callable[..., _T], *args: object) -> _T:
    """`cpu(*args)` in a program compiled for the CPU, `other(*args)` in one compiled for
    an accelerator (chosen when lowering, `lax.platform_dependent`)."""
    return lax.platform_dependent(*args, cpu=cpu, default=other)
