"""How buffer methods are compiled and called.

A buffer is a Module whose fields are all static configuration, and every other argument of
its methods is a pytree of arrays. For such a call, `jax.jit` of the method with the buffer
bound in has exactly the semantics of `eqx.filter_jit` (array leaves traced, everything else
static), and it is dispatched by JAX's C++ fast path. Three per-call costs are avoided on
purpose, as each is a sizeable part of an in-place `add` (~15 us):

- `eqx.filter_jit` flattens and partitions every argument in Python (~0.1 ms);
- looking up a method on a Module builds an `eqx.BoundMethod` Module (~30 us);
- a static buffer argument would be hashed and compared through `Module.__getattribute__`,
  which runs in Python, on every call (~7 us).

So `compiled_method` is a descriptor: looking up `buffer.add` returns a function that calls
the `jax.jit` of the method compiled for the buffer's configuration, made on first use and
shared by buffers with equal configurations. The first lookup on a buffer reads its fields
straight from its `__dict__` (skipping `Module.__getattribute__`); later lookups find the
answer by the buffer's `id`, guarded by a weak reference. Nothing is stored on the buffer
itself: an extra attribute would change its pytree structure and its pickling. `jax.jit`
also lets `add` donate the state and only the state: the batch is never consumed.

The function around the `jax.jit` is a Python call and a `try` (~0.2 us, measured in
`benchmarks/dispatch_cost.py`); everything else happens while JAX traces, or after an error:

- *Annotations*: the method runs under `jaxtyping.jaxtyped(typechecker=beartype)`, so its
  jaxtyping annotations hold for every user, at trace time only. When they fail, the method
  is traced once more without them, so that its own checks, whose messages name the call and
  the leaf, speak first.
- *Data, not parameters*: every argument passes through `lax.stop_gradient`. A loss that
  samples from a state it differentiates gets a zero gradient for the state, instead of
  JAX's refusal to reverse-differentiate the loops inside `sample`.
- *Weak types*: an argument with a weakly typed leaf (a Python number, or an array made
  from one such as `jnp.full(shape, 1.0)`) is compiled for once more, as by any `jax.jit`,
  and made strongly typed of its dtype inside the compiled code: later calls with it take
  JAX's fast path like any other. (Converting such arguments before each call instead, to
  share one compilation, cost a dispatch on every call: `benchmarks/compare_family.py`,
  row m.)
- *Donated states*: a state whose arrays were donated to an earlier `add` fails inside
  JAX; the error is replaced by one that says so and how to fix it.
"""

import dataclasses
import functools as ft
import inspect
import weakref
from collections.abc import Callable, Hashable
from typing import (
    Any,
    Concatenate,
    Generic,
    overload,
    ParamSpec,
    Protocol,
    TYPE_CHECKING,
    TypeVar,
)

import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.tree_util as jtu
from beartype import beartype
from jax.core import Tracer
from jaxtyping import jaxtyped, TypeCheckError


class _Buffer(Protocol):
    """What a compiled method reads of its buffer: every buffer kind and the mixer declare
    both."""

    @property
    def donate_state(self) -> bool: ...

    @property
    def sharding(self) -> jax.sharding.NamedSharding | None: ...


# Bound for type checkers only: at run time (under jaxtyping's import hook too) the method
# lookup `buffer.add` stays a dictionary read, with no protocol check.
if TYPE_CHECKING:
    _B = TypeVar("_B", bound=_Buffer)
else:
    _B = TypeVar("_B")
_P = ParamSpec("_P")
_R = TypeVar("_R")
_T = TypeVar("_T")


_MAX_SHARED = 64


def _parameters(fn: Callable) -> tuple[str, ...]:
    """A method's parameters after `self`."""
    return tuple(inspect.signature(fn).parameters)[1:]


@ft.cache
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(field.name for field in dataclasses.fields(cls))


def _strongly_typed(args: _T) -> _T:
    """Traced `args` with every weakly typed leaf made strongly typed, of its dtype (an
    explicit dtype makes a strongly typed array), so that what the method stores and
    returns is typed as the state is."""
    return jtu.tree_map(
        lambda x: jnp.asarray(x, dtype=x.dtype) if getattr(x, "weak_type", False) else x, args
    )


def _deleted(state: Any) -> bool:
    """Whether some array of `state` has been deleted (a tracer, inside the user's own
    `jit`, never has been: asking it would raise)."""
    return any(
        not isinstance(leaf, Tracer) and getattr(leaf, "is_deleted", lambda: False)()
        for leaf in jtu.tree_leaves(state)
    )


def _donated_error(where: str) -> ValueError:
    return ValueError(
        f"`{where}`: the state's arrays have been deleted: the state was donated to an "
        "earlier call (`add` or `set_priorities`), which updates the buffer in place and "
        "consumes the state passed in. Rebind the result, `state = buffer.add(state, "
        "batch)`, and use only the newest state; or build the buffer with "
        "`donate_state=False` to keep old states valid (each `add` then copies the buffer)."
    )


def _argument(names: tuple[str, ...], path: tuple[Any, ...]) -> str:
    """A leaf of a call's positional arguments named as the caller wrote it:
    `states[1].experience['obs']`."""
    index = getattr(path[0], "idx", None) if path else None  # a `jtu.SequenceKey`'s
    if isinstance(index, int) and index < len(names):
        return names[index] + jtu.keystr(path[1:])
    return "argument" + jtu.keystr(path[1:])


def _ids(leaves: list[Any]) -> list[int]:
    return sorted({d.id for leaf in leaves for d in leaf.sharding.device_set})


def _devices_error(
    where: str,
    names: tuple[str, ...],
    args: tuple,
    error: Exception,
    mesh: jax.sharding.Mesh | None,
) -> ValueError:
    """The arguments committed to devices other than the first argument's (the state's),
    or, for a sharded buffer, a state placed on other devices than the buffer's mesh."""
    leaves = jtu.tree_flatten_with_path(args)[0]
    devices = [
        (path, leaf.sharding.device_set)
        for path, leaf in leaves
        if isinstance(leaf, jax.Array) and getattr(leaf, "committed", True)
    ]
    first = devices[0][1] if devices else None
    if mesh is not None and first is not None and first != set(mesh.devices.flat):
        state = [
            leaf
            for (path, leaf) in leaves
            if path[0] == leaves[0][0][0] and isinstance(leaf, jax.Array)
        ]
        return ValueError(
            f"`{where}`: the state is on devices {_ids(state)}, but this buffer's mesh is "
            f"on devices {sorted(d.id for d in mesh.devices.flat)}: the state was made "
            "by a buffer with another mesh. Use that buffer, or place the state on this "
            "one's mesh (`eqx_replay.load_state` of a checkpoint places it as this "
            "buffer's `init` would). JAX says: " + str(error).splitlines()[0]
        )
    elsewhere = [_argument(names, path) for path, found in devices if found != first]
    return ValueError(
        f"`{where}`: {', '.join(elsewhere) or 'an argument'} "
        f"{'are' if len(elsewhere) > 1 else 'is'} committed to other devices than the state "
        f"({len(first or ())} device(s)), so JAX cannot run the call. Put it "
        "on the state's devices: for a sharded buffer, placed with `NamedSharding(mesh, "
        "PartitionSpec(axis))` or replicated on the mesh; or leave it uncommitted (made by "
        "`jnp`, not `jax.device_put` to one device). JAX says: " + str(error).splitlines()[0]
    )


def _aliased_error(where: str, names: tuple[str, ...], args: tuple) -> ValueError:
    """Two arguments of a call that updates them in place hold one array."""
    seen: dict[int, str] = {}
    for path, leaf in jtu.tree_flatten_with_path(args)[0]:
        if isinstance(leaf, jax.Array):
            name = _argument(names, path)
            if id(leaf) in seen:
                return ValueError(
                    f"`{where}`: {seen[id(leaf)]} and {name} are one array: the call updates "
                    "its states in place, each on its own, so one state given twice (such as "
                    "`[state, state]` for a buffer mixed with itself) would come back as two "
                    "states that disagree. Give each entry a state of its own; nothing was "
                    "changed"
                )
            seen[id(leaf)] = name
    return ValueError(f"`{where}`: an array is passed twice to a call that updates it in place")


class CompiledMethod(Generic[_B, _P, _R]):
    """A buffer method run under `jax.jit`; see the module docstring. Made by
    `compiled_method`."""

    def __init__(
        self,
        fn: Callable[Concatenate[_B, _P], _R],
        *,
        donates_state: bool,
        static: tuple[str, ...] = (),
    ):
        self._fn = fn
        self._static = static
        self._checked = jaxtyped(typechecker=beartype)(fn)
        # Under jaxtyping's import hook `fn` is itself wrapped: unwrap it for the trace that
        # lets the method's own checks speak.
        self._unchecked = inspect.unwrap(fn)
        self._donates_state = donates_state
        # Buffers with equal configurations share one compiled function. Sweeps that make
        # many configurations in one process keep only the newest `_MAX_SHARED`.
        self._shared: dict[Hashable, Callable[_P, _R]] = {}
        # id(buffer) -> (a weak reference to the buffer, its compiled function).
        self._by_id: dict[int, tuple[weakref.ref, Callable[_P, _R]]] = {}
        ft.update_wrapper(self, fn)

    def _compile(self, buffer: _B, config: Hashable) -> Callable[_P, _R]:
        donate = self._donates_state and buffer.donate_state
        where = f"{type(buffer).__name__}.{self._fn.__name__}"
        checked, unchecked = self._checked, self._unchecked

        positions = [i for i, name in enumerate(_parameters(self._fn)) if name in self._static]

        def traced(*args: Any, **kwargs: Any) -> Any:
            # Static arguments (Python values) pass as they are; the others are data.
            data = [arg for i, arg in enumerate(args) if i not in positions]
            data_kw = {name: x for name, x in kwargs.items() if name not in self._static}
            data, data_kw = lax.stop_gradient(_strongly_typed((data, data_kw)))
            given = iter(data)
            args = tuple(arg if i in positions else next(given) for i, arg in enumerate(args))
            kwargs = {**kwargs, **data_kw}
            try:
                return checked(buffer, *args, **kwargs)
            except TypeCheckError:
                unchecked(buffer, *args, **kwargs)
                raise

        # JAX names arguments in its errors after the method's own parameters.
        traced.__name__, traced.__qualname__ = self._fn.__name__, where
        traced.__signature__ = inspect.signature(ft.partial(self._fn, buffer))  # pyright: ignore[reportFunctionMemberAccess] # read by `inspect.signature`
        signature = traced.__signature__
        names = tuple(signature.parameters)
        static = self._static
        jitted = jax.jit(
            traced,
            donate_argnums=0 if donate else (),
            static_argnums=tuple(positions),
            static_argnames=static,
        )
        # A donated array of several devices crashes the process when passed again (JAX
        # 0.10, CPU) instead of raising: a sharded buffer checks before calling (a few
        # microseconds per call; an unsharded one finds out from JAX's error, at no cost).
        sharding = buffer.sharding
        check_donated = donate and sharding is not None
        mesh = sharding.mesh if sharding is not None else None
        mesh = mesh if isinstance(mesh, jax.sharding.Mesh) else None

        def call(*args: Any, **kwargs: Any) -> Any:
            if check_donated and _deleted((args[:1], kwargs.get("state"))):
                raise _donated_error(where)
            try:
                return jitted(*args, **kwargs)
            except (ValueError, RuntimeError) as error:
                if _deleted((args[:1], kwargs.get("state"), kwargs.get("states"))):
                    raise _donated_error(where) from error
                if "incompatible devices" in str(error):
                    raise _devices_error(where, names, args, error, mesh) from error
                if "donate the same buffer twice" in str(error):
                    raise _aliased_error(where, names, args) from error
                if static and "Non-hashable static arguments" in str(error):
                    raise TypeError(
                        f"`{where}`: {', '.join(f'`{n}`' for n in static)} must be a Python "
                        "value, such as a float (static: the method is compiled once per "
                        "value); got something unhashable, such as an array"
                    ) from None
                raise
            except TypeError:
                # Arguments that do not fit the method: JAX says only "too many positional
                # arguments" or the like; say which call and what it takes.
                try:
                    signature.bind(*args, **kwargs)
                except TypeError as bad:
                    takes = ", ".join(names)
                    raise TypeError(f"`{where}({takes})`: {bad}") from None
                raise

        call.__name__ = call.__qualname__ = where
        call.__doc__ = self._fn.__doc__
        # The `jax.jit` itself, and its stages to inspect the compiled code (`jax.eval_shape`
        # and `jax.make_jaxpr` go through `trace`).
        call.__wrapped__ = jitted  # pyright: ignore[reportFunctionMemberAccess]
        call.lower = jitted.lower  # pyright: ignore[reportFunctionMemberAccess]
        call.trace = jitted.trace  # pyright: ignore[reportFunctionMemberAccess]
        if len(self._shared) >= _MAX_SHARED:
            del self._shared[next(iter(self._shared))]
        self._shared[config] = call
        return call

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
    *, donates_state: bool = False, static: tuple[str, ...] = ()
) -> Callable[[Callable[Concatenate[_B, _P], _R]], CompiledMethod[_B, _P, _R]]:
    """Decorates a buffer method `fn(self, state, *args)` so that it runs compiled.

    **Arguments:**

    - `donates_state`: whether the state's buffers are donated to the result (an in-place
      update) when the buffer's `donate_state` is true.
    - `static`: the names of parameters that are Python values, not arrays (compiled once
      per value).

    The method's jaxtyping annotations are checked while it is traced, never per call; its
    arguments are data (no gradient flows through them).
    """

    def decorator(fn: Callable[Concatenate[_B, _P], _R]) -> CompiledMethod[_B, _P, _R]:
        return CompiledMethod(fn, donates_state=donates_state, static=static)

    return decorator
