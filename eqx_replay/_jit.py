"""How buffer methods are compiled.

A buffer method takes `(buffer, state, *args)`, where `buffer` is a Module whose fields are
all static configuration and every other argument is a pytree of arrays. For such a call,
`jax.jit` with `buffer` as a static argument has exactly the semantics of `eqx.filter_jit`
(array leaves traced, everything else static), but it is dispatched by JAX's C++ fast path:
`eqx.filter_jit` flattens and partitions every argument in Python on each call, which costs
~0.1 ms, more than the whole in-place `add` of a typical batch. It also lets `add` donate the
state and only the state: the batch a user passes in is never consumed.
"""

import functools as ft
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import equinox as eqx
import jax


# Equinox's `error_if` raises inside a callback; JAX logs that callback's traceback and then
# raises an opaque runtime error. We silence the log and re-raise the message alone, as
# `eqx.filter_jit` does.
_MARKER = "_EquinoxRuntimeError: "
_callback_logger = logging.getLogger("jax._src.callback")


def _not_equinox_error(record: logging.LogRecord) -> bool:
    error = record.exc_info[1] if record.exc_info else None
    return type(error).__name__ != _MARKER[:-2]


def _clean_runtime_error(error: Exception) -> Exception | None:
    text = str(error)
    if _MARKER not in text:
        return None
    message = text.split(_MARKER, 1)[1].split("\n\n\n", 1)[0].strip()
    return eqx.EquinoxRuntimeError(message)


_F = TypeVar("_F", bound=Callable[..., Any])


def buffer_method(fn: _F, name: str, *, donates_state: bool = False) -> _F:
    """Compiles `fn(buffer, state, *args)`.

    **Arguments:**

    - `fn`: the traced implementation; its jaxtyping annotations are checked while tracing.
    - `name`: the public name, e.g. `"TrajectoryBuffer.add"`, for error messages.
    - `donates_state`: whether the state's buffers are donated to the result (in-place
      update) when `buffer.donate_state` is true.
    """
    plain = jax.jit(fn, static_argnums=0)
    donating = jax.jit(fn, static_argnums=0, donate_argnums=1) if donates_state else plain

    @ft.wraps(fn)
    def call(buffer: Any, state: Any, *args: Any) -> Any:
        compiled = donating if buffer.donate_state else plain
        _callback_logger.addFilter(_not_equinox_error)
        try:
            return compiled(buffer, state, *args)
        except (jax.errors.JaxRuntimeError, ValueError) as error:
            clean = _clean_runtime_error(error)
            if clean is None:
                raise
            raise clean from None
        except TypeError as error:
            # JAX rejects a leaf that is not an array (a string, say) before tracing; its
            # message names the argument path but not the method.
            if not str(error).startswith("Error interpreting argument"):
                raise
            raise TypeError(f"`{name}`: {error}") from None
        finally:
            _callback_logger.removeFilter(_not_equinox_error)

    return call  # pyright: ignore[reportReturnType] # same signature as `fn`
