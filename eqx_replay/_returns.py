"""Returns for learners that train on sampled windows: n-step and TD(λ) targets, burn-in.

A sequence learner (n-step DQN, R2D2, TD(λ) critics) turns each window of a trajectory
sample into regression targets. The window is all it has: a return near the window's end
must stop at the end and bootstrap from the last value there, and with `boundary="mask"` a
return must also stop where the window's first episode ends, without reading the next
episode's rewards or values, which the window holds after that point. Doing both in one place,
with `sample.mask` as the buffer defines it, keeps every learner's targets the same.

Conventions, shared by `n_step_returns` and `lambda_returns`: time is the last axis, and for
step `t` of a window

- `values[..., t]` is `V(s_t)`, the value of the state step `t` starts from (for Q-learning,
    `max_a Q(s_t, a)`, or `Q(s_t, a_t)` of a target network);
- `rewards[..., t]` is `r_t`, the reward on leaving `s_t`;
- `discounts[..., t]` is `d_t = gamma * (1 - done_t)` (rlax's `discount_t`), the discount of
    what follows step `t`: 0 when step `t` ends its episode.

The return of step `t` bootstraps from the value of the state after its last reward. The last
step of a window has no later state in the window, so its return is its own value; learners
train on steps `[..., :-1]`.
"""

import functools as ft
from typing import Any

import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jax.core import Tracer
from jaxtyping import Array, ArrayLike, Bool, Float, PyTree, Shaped

from ._checks import describe as _got, shape_str


def _check_windows(where: str, rewards: Any, discounts: Any, values: Any, mask: Any) -> None:
    """`rewards`, `discounts` and `values` must be float arrays of one shape `(*batch, time)`,
    and `mask` None or a bool array of that shape."""
    named = {"rewards": rewards, "discounts": discounts, "values": values}
    for name, x in named.items():
        dtype = getattr(x, "dtype", None)
        if dtype is None or getattr(x, "shape", None) is None:
            raise TypeError(
                f"`{where}`: `{name}` must be a float array of shape (*batch, time); got {_got(x)}"
            )
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(f"`{where}`: `{name}` must be a float array; got {_got(x)}")
    shape = tuple(rewards.shape)
    if len(shape) == 0:
        raise ValueError(
            f"`{where}`: `rewards` must have a time axis, shape (*batch, time); got shape ()"
        )
    for name in ("discounts", "values"):
        if tuple(named[name].shape) != shape:
            raise ValueError(
                f"`{where}`: `{name}` has shape {shape_str(tuple(named[name].shape))}; "
                f"expected {shape_str(shape)}, the shape of `rewards`"
            )
    if mask is None:
        return
    if getattr(mask, "dtype", None) != jnp.bool_ or getattr(mask, "shape", None) is None:
        raise TypeError(
            f"`{where}`: `mask` must be a bool array, `sample.mask`, or None; got {_got(mask)}"
        )
    if tuple(mask.shape) != shape:
        raise ValueError(
            f"`{where}`: `mask` has shape {shape_str(tuple(mask.shape))}; expected "
            f"{shape_str(shape)}, the shape of `rewards`"
        )


def _first_episode(
    rewards: Array, discounts: Array, values: Array, mask: Array | None
) -> tuple[Array, Array, Array]:
    """The windows in one float dtype, zero wherever `mask` is False."""
    dtype = jnp.result_type(rewards, discounts, values)
    rewards, discounts, values = (x.astype(dtype) for x in (rewards, discounts, values))
    if mask is None:
        return rewards, discounts, values
    # `where`, not a product: the next episode's steps may hold anything, and 0 * inf is NaN.
    zero = jnp.zeros((), dtype)
    return (
        jnp.where(mask, rewards, zero),
        jnp.where(mask, discounts, zero),
        jnp.where(mask, values, zero),
    )


def _check_n(where: str, n: Any) -> None:
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)):
        raise TypeError(
            f"`{where}`: `n` must be a Python int >= 1 (it sets the number of steps, so it "
            f"cannot be traced); got {_got(n) if hasattr(n, 'dtype') else repr(n)}"
        )
    if n < 1:
        raise ValueError(f"`{where}`: `n` must be an int >= 1; got {n}")


def _check_lambda(where: str, lambda_: Any, shape: tuple[int, ...]) -> None:
    """`lambda_` must be a number, or a float array that broadcasts to `shape`, in
    `[0, 1]`; a traced one is checked for its shape only."""
    is_number = isinstance(lambda_, (int, float, np.integer, np.floating)) and not isinstance(
        lambda_, (bool, np.bool_)
    )
    dtype, own = getattr(lambda_, "dtype", None), getattr(lambda_, "shape", None)
    is_array = dtype is not None and own is not None and jnp.issubdtype(dtype, jnp.floating)
    if not (is_number or is_array):
        got = _got(lambda_) if dtype is not None else f"{type(lambda_).__name__} {lambda_!r}"
        raise TypeError(
            f"`{where}`: `lambda_` must be a float in [0, 1] or a float array that broadcasts "
            f"to {shape_str(shape)}; got {got}"
        )
    if own is not None:
        own = tuple(own)
        try:
            fits = np.broadcast_shapes(own, shape) == shape
        except ValueError:
            fits = False
        if not fits:
            raise ValueError(
                f"`{where}`: `lambda_` has shape {shape_str(own)}; expected one that "
                f"broadcasts to {shape_str(shape)}, the shape of `rewards`"
            )
    if isinstance(lambda_, Tracer):
        return
    value = np.asarray(lambda_, dtype=np.float64)
    outside = ~((value >= 0) & (value <= 1))
    if outside.any():
        first = value[outside].flat[0]
        raise ValueError(f"`{where}`: `lambda_` must be in [0, 1]; got {first}")


def _shift(x: Array) -> Array:
    """`x` moved one step earlier along time, a zero entering at the end."""
    return jnp.concatenate([x[..., 1:], jnp.zeros_like(x[..., :1])], axis=-1)


def n_step_returns(
    rewards: Float[ArrayLike, "*batch time"],
    discounts: Float[ArrayLike, "*batch time"],
    values: Float[ArrayLike, "*batch time"],
    n: int,
    *,
    mask: Bool[ArrayLike, "*batch time"] | None = None,
) -> Float[Array, "*batch time"]:
    """The n-step bootstrapped return of every step of a window.

    With the module's conventions (`values[..., t]` is `V(s_t)`, `d_t = gamma * (1 - done_t)`)
    and `T` steps in the window, step `t` sums `k = min(n, T - 1 - t)` rewards and bootstraps
    from the value after the last of them:

    `G_t = r_t + d_t r_{t+1} + ... + (d_t ... d_{t+k-2}) r_{t+k-1}
    + (d_t ... d_{t+k-1}) V(s_{t+k})`.

    So a return near the end of the window is truncated there and bootstraps from the last
    value, `values[..., -1]`, and the last step's return is that value itself (`k = 0`).

    With a `mask` (`sample.mask` of a buffer with `boundary="mask"`: True up to and
    including the step where the window's first episode ends, False after it), steps where
    it is False are never read: their rewards count zero and their values are never
    bootstrapped from. A return that reaches the episode's last step `e` therefore ends with
    `(d_t ... d_{e-1}) r_e`, and its bootstrap term is zero; that is exact when the episode
    terminates (`d_e = 0`), and, when it was cut short with `d_e > 0`, leaves out
    `d_t ... d_e V(s_{e+1})`, which the window does not hold. Returns are 0 where the mask is
    False. A poisoned sample (see `TrajectoryBuffer.sample`) gives NaN returns.

    The sum runs as a `lax.scan` of `min(n, T - 1)` steps over whole windows (not a loop
    unrolled while tracing), compiled once per shape and `min(n, T - 1)` when called outside
    a `jax.jit`; it works under `jax.jit`, `jax.vmap` and `lax.scan`.

    **Arguments:**

    - `rewards`: `r_t`, float, of shape `(*batch, time)`: e.g. `sample.experience["reward"]`.
    - `discounts`: `d_t`, float, of the same shape: e.g. `gamma * (1 - done)`.
    - `values`: `V(s_t)`, float, of the same shape.
    - `n`: the most rewards a return sums, a Python int `>= 1` (static); `n = 1` gives the
        one-step TD target, `n >= T - 1` the discounted return to the window's end.
    - `mask`: None (the window is one episode, or ends in one), or a bool array of the same
        shape, `sample.mask`.

    **Returns:** the returns `G_t`, of shape `(*batch, time)`, in the dtype of the inputs.
    """
    where = "n_step_returns"
    _check_windows(where, rewards, discounts, values, mask)
    _check_n(where, n)
    time = np.shape(rewards)[-1]
    return _n_step_returns(rewards, discounts, values, mask, steps=max(min(n, time - 1), 0))


@ft.partial(jax.jit, static_argnames="steps")
def _n_step_returns(
    rewards: Float[Array, "*batch time"],
    discounts: Float[Array, "*batch time"],
    values: Float[Array, "*batch time"],
    mask: Bool[Array, "*batch time"] | None,
    steps: int,
) -> Float[Array, "*batch time"]:
    """`n_step_returns` for checked arguments, with `steps = min(n, time - 1)`: `n` matters
    only through it, so a larger `n` compiles nothing new."""
    rewards, discounts, values = _first_episode(rewards, discounts, values, mask)
    time = rewards.shape[-1]
    if time == 0:
        return values
    position = jnp.arange(time)

    def add_reward(carry, k):
        total, scale, reward, discount = carry
        # Step t takes a k-th reward while t + k is before the window's last step.
        inside = position + k < time - 1
        total = total + jnp.where(inside, scale * reward, 0)
        scale = jnp.where(inside, scale * discount, scale)
        return (total, scale, _shift(reward), _shift(discount)), None

    start = (jnp.zeros_like(rewards), jnp.ones_like(rewards), rewards, discounts)
    (total, scale, _, _), _ = lax.scan(add_reward, start, jnp.arange(steps))
    # Step t bootstraps from V(s_{min(t + n, T - 1)}).
    last = jnp.broadcast_to(values[..., -1:], (*values.shape[:-1], steps))
    bootstrap = jnp.concatenate([values[..., steps:], last], axis=-1)
    returns = total + scale * bootstrap
    return returns if mask is None else jnp.where(mask, returns, 0)


def lambda_returns(
    rewards: Float[ArrayLike, "*batch time"],
    discounts: Float[ArrayLike, "*batch time"],
    values: Float[ArrayLike, "*batch time"],
    lambda_: float | Float[ArrayLike, ""] | Float[ArrayLike, "*#batch #time"],
    *,
    mask: Bool[ArrayLike, "*batch time"] | None = None,
) -> Float[Array, "*batch time"]:
    """The TD(λ) return of every step of a window.

    With the module's conventions (`values[..., t]` is `V(s_t)`, `d_t = gamma * (1 - done_t)`)
    and `T` steps in the window, from the window's end backwards:

    `G_{T-1} = V(s_{T-1})`, and `G_t = r_t + d_t ((1 - λ_t) V(s_{t+1}) + λ_t G_{t+1})`.

    `λ = 0` gives the one-step TD target `r_t + d_t V(s_{t+1})`; `λ = 1` the discounted
    return to the window's end, bootstrapped from `values[..., -1]` (both as
    `n_step_returns` with `n = 1` and `n >= T - 1`). In between, `G_t` is the mixture
    `(1 - λ) Σ_{n>=1} λ^{n-1} G^{(n)}_t` of `n_step_returns`.

    With a `mask` (`sample.mask`), steps where it is False are never read, as in
    `n_step_returns`: at the last step `e` of the window's first episode,
    `G_e = r_e + d_e (λ_e 0 + (1 - λ_e) 0) = r_e`, exact when the episode terminates there.
    Returns are 0 where the mask is False. A poisoned sample gives NaN returns.

    Computed by one reverse `lax.scan` over time, compiled once per shape when called
    outside a `jax.jit`; works under `jax.jit`, `jax.vmap` and `lax.scan`.

    **Arguments:**

    - `rewards`: `r_t`, float, of shape `(*batch, time)`: e.g. `sample.experience["reward"]`.
    - `discounts`: `d_t`, float, of the same shape: e.g. `gamma * (1 - done)`.
    - `values`: `V(s_t)`, float, of the same shape.
    - `lambda_`: `λ`, a float in `[0, 1]`, or a float array that broadcasts to
        `(*batch, time)` for a `λ_t` per step (`λ_{T-1}` is not used). A Python, NumPy or
        concrete JAX value is checked to lie in `[0, 1]`; a traced one is not.
    - `mask`: None, or a bool array of the shape of `rewards`, `sample.mask`.

    **Returns:** the returns `G_t`, of shape `(*batch, time)`, in the dtype of the inputs.
    """
    where = "lambda_returns"
    _check_windows(where, rewards, discounts, values, mask)
    _check_lambda(where, lambda_, np.shape(rewards))
    return _lambda_returns(rewards, discounts, values, mask, lambda_)


@jax.jit
def _lambda_returns(
    rewards: Float[Array, "*batch time"],
    discounts: Float[Array, "*batch time"],
    values: Float[Array, "*batch time"],
    mask: Bool[Array, "*batch time"] | None,
    lambda_: Float[Array, ""] | Float[Array, "*#batch #time"],
) -> Float[Array, "*batch time"]:
    """`lambda_returns` for checked arguments."""
    rewards, discounts, values = _first_episode(rewards, discounts, values, mask)
    if rewards.shape[-1] == 0:
        return values
    lambdas = jnp.broadcast_to(jnp.asarray(lambda_, rewards.dtype), rewards.shape)

    def step_back(following, inputs):
        reward, discount, next_value, lambda_t = inputs
        g = reward + discount * ((1 - lambda_t) * next_value + lambda_t * following)
        return g, g

    last = values[..., -1]
    inputs = (rewards[..., :-1], discounts[..., :-1], values[..., 1:], lambdas[..., :-1])
    inputs = tuple(jnp.moveaxis(x, -1, 0) for x in inputs)
    _, earlier = lax.scan(step_back, last, inputs, reverse=True)
    returns = jnp.concatenate([jnp.moveaxis(earlier, 0, -1), last[..., None]], axis=-1)
    return returns if mask is None else jnp.where(mask, returns, 0)


def burn_in_split(
    tree: PyTree[Shaped[ArrayLike, "batch time ..."]], burn_in: int
) -> tuple[PyTree[Shaped[Array, "batch burn ..."]], PyTree[Shaped[Array, "batch learn ..."]]]:
    """Splits windows into a burn-in part and a learning part along the time axis, as R2D2
    does: the burn-in steps only warm up a recurrent state, the learning steps get losses.

    **Arguments:**

    - `tree`: a pytree whose leaves all have the leading axes `(batch, time)`:
        `sample.experience`, `(sample.experience, sample.mask)`, or a `TrajectoryBufferSample`
        with a mask or none.
    - `burn_in`: the number of burn-in steps, a Python int with `0 <= burn_in < time`.

    **Returns:** `(burn, learn)`, two pytrees of the structure of `tree`, whose leaves are
    each leaf's steps `[:, :burn_in]` and `[:, burn_in:]`. A split mask keeps its meaning in
    both parts: whether a step belongs to the episode of the window's first step.
    """
    where = "burn_in_split"
    if isinstance(burn_in, (bool, np.bool_)) or not isinstance(burn_in, (int, np.integer)):
        raise TypeError(
            f"`{where}`: `burn_in` must be a Python int (it sets the parts' shapes); got "
            f"{_got(burn_in) if hasattr(burn_in, 'dtype') else repr(burn_in)}"
        )
    leaves = jtu.tree_flatten_with_path(tree)[0]
    leading = None
    for path, leaf in leaves:
        shape = getattr(leaf, "shape", None)
        if shape is None or len(shape) < 2 or (leading is not None and shape[:2] != leading):
            expected = (
                "(batch, time, ...)" if leading is None else f"({leading[0]}, {leading[1]}, ...)"
            )
            got = f"shape {shape_str(tuple(shape))}" if shape is not None else f"type {_got(leaf)}"
            raise ValueError(
                f"`{where}`: leaf {jtu.keystr(path) or '<root>'} has {got}; expected "
                f"{expected}, the leading axes of every leaf"
            )
        leading = tuple(shape[:2])
    if leading is not None and not 0 <= burn_in < leading[1]:
        raise ValueError(
            f"`{where}`: `burn_in` must satisfy 0 <= burn_in < time = {leading[1]}, leaving "
            f"at least one step to learn on; got burn_in = {burn_in}"
        )
    if leading is None and burn_in < 0:
        raise ValueError(f"`{where}`: `burn_in` must be >= 0; got {burn_in}")
    burn = jtu.tree_map(lambda x: jnp.asarray(x)[:, :burn_in], tree)
    learn = jtu.tree_map(lambda x: jnp.asarray(x)[:, burn_in:], tree)
    return burn, learn
