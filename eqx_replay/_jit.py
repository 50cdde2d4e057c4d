"""How buffer methods are compiled.

A buffer is a Module whose fields are all static configuration, and every other argument of
its methods is a pytree of arrays. For such a call, `jax.jit` of the method with the buffer
bound in has exactly the semantics of `eqx.filter_jit` (array leaves traced, everything else
static), and it is dispatched by JAX's C++ fast path. Three per-call costs are avoided on
purpose, as each is a sizeable part of an in-place `add` (~15 us):

- `eqx.filter_jit` flattens and partitions every argument in Python (~0.1 ms);
- looking up a method on a Module builds an `eqx.BoundMethod` Module (~30 us);
- a static buffer argument would be hashed and compared through `Module.__getattribute__`,
  which runs in Python, on every call (~7 us).

So `compiled_method` is a descriptor: the first lookup on a buffer compiles (or reuses, for
an equal configuration) a `jax.jit` of the method with the buffer bound in, stores it on the
buffer, and every later `buffer.add` returns it, to be called straight from C++. `jax.jit`
also lets `add` donate the state and only the state: the batch is never consumed.
"""

import dataclasses
import functools as ft
from collections.abc import Callable, Hashable
from typing import Concatenate, Generic, overload, ParamSpec, TypeVar

import jax


_B = TypeVar("_B")
_P = ParamSpec("_P")
_R = TypeVar("_R")


class CompiledMethod(Generic[_B, _P, _R]):
    """A buffer method run under `jax.jit`; see the module docstring. Made by
    `compiled_method`."""

    def __init__(
        self,
        fn: Callable[Concatenate[_B, _P], _R],
        *,
        donates_state: bool,
    ):
        self._fn = fn
        self._donates_state = donates_state
        self._attribute = f"_compiled_{fn.__name__}"
        # Buffers with equal configurations share one compiled function.
        self._shared: dict[Hashable, Callable[_P, _R]] = {}
        ft.update_wrapper(self, fn)

    def _compile(self, buffer: _B) -> Callable[_P, _R]:
        fields = dataclasses.fields(buffer)  # pyright: ignore[reportArgumentType] # a Module
        config = (type(buffer), *(getattr(buffer, f.name) for f in fields))
        compiled = self._shared.get(config)
        if compiled is None:
            donate = self._donates_state and getattr(buffer, "donate_state")
            compiled = jax.jit(ft.partial(self._fn, buffer), donate_argnums=0 if donate else ())
            self._shared[config] = compiled
        return compiled

    @overload
    def __get__(
        self, instance: None, owner: type | None = None
    ) -> Callable[Concatenate[_B, _P], _R]: ...

    @overload
    def __get__(self, instance: _B, owner: type | None = None) -> Callable[_P, _R]: ...

    def __get__(self, instance: _B | None, owner: type | None = None) -> Callable[..., _R]:
        if instance is None:
            return self
        # `object.__getattribute__` skips `Module.__getattribute__`, which runs in Python.
        cache = object.__getattribute__(instance, "__dict__")
        try:
            return cache[self._attribute]
        except KeyError:
            compiled = cache[self._attribute] = self._compile(instance)
            return compiled

    def __call__(self, buffer: _B, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        return self.__get__(buffer)(*args, **kwargs)


def compiled_method(
    *, donates_state: bool = False
) -> Callable[[Callable[Concatenate[_B, _P], _R]], CompiledMethod[_B, _P, _R]]:
    """Decorates a buffer method `fn(self, state, *args)` so that it runs compiled.

    **Arguments:**

    - `donates_state`: whether the state's buffers are donated to the result (an in-place
      update) when the buffer's `donate_state` is true.

    The method's jaxtyping annotations are checked while it is traced, never per call.
    """

    def decorator(fn: Callable[Concatenate[_B, _P], _R]) -> CompiledMethod[_B, _P, _R]:
        return CompiledMethod(fn, donates_state=donates_state)

    return decorator
