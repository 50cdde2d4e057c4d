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

So `compiled_method` is a descriptor: looking up `buffer.add` returns the `jax.jit` of the
method compiled for the buffer's configuration, made on first use and shared by buffers with
equal configurations, to be called straight from C++. The first lookup on a buffer reads its
fields straight from its `__dict__` (skipping `Module.__getattribute__`); later lookups find
the answer by the buffer's `id`, guarded by a weak reference. Nothing is stored on the
buffer itself: an extra attribute would change its pytree structure and its pickling.
`jax.jit` also lets `add` donate the state and only the state: the batch is never consumed.
"""

import dataclasses
import functools as ft
import weakref
from collections.abc import Callable, Hashable
from typing import Concatenate, Generic, overload, ParamSpec, TypeVar

import jax


_B = TypeVar("_B")
_P = ParamSpec("_P")
_R = TypeVar("_R")


_MAX_SHARED = 64


@ft.cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(field.name for field in dataclasses.fields(cls))


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
        # Buffers with equal configurations share one compiled function. Sweeps that make
        # many configurations in one process keep only the newest `_MAX_SHARED`.
        self._shared: dict[Hashable, Callable[_P, _R]] = {}
        # id(buffer) -> (a weak reference to the buffer, its compiled function).
        self._by_id: dict[int, tuple[weakref.ref, Callable[_P, _R]]] = {}
        ft.update_wrapper(self, fn)

    def _compile(self, buffer: _B, config: Hashable) -> Callable[_P, _R]:
        donate = self._donates_state and getattr(buffer, "donate_state")
        compiled = jax.jit(ft.partial(self._fn, buffer), donate_argnums=0 if donate else ())
        if len(self._shared) >= _MAX_SHARED:
            del self._shared[next(iter(self._shared))]
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
        known = self._by_id.get(id(instance))
        if known is not None and known[0]() is instance:
            return known[1]
        return self._remember(instance)

    def _remember(self, buffer: _B) -> Callable[_P, _R]:
        # `object.__getattribute__` skips `Module.__getattribute__`, which runs in Python.
        fields = object.__getattribute__(buffer, "__dict__")
        config = (type(buffer), *[fields[name] for name in _field_names(type(buffer))])
        compiled = self._shared.get(config)
        if compiled is None:
            compiled = self._compile(buffer, config)
        key, by_id = id(buffer), self._by_id
        # The entry goes when the buffer does, before its id can be reused.
        by_id[key] = (weakref.ref(buffer, lambda _: by_id.pop(key, None)), compiled)
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
