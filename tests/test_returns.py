"""n-step and TD(λ) returns against step-by-step loops, on random windows, on the masks of a
real `boundary="mask"` sample and under every transform; `burn_in_split`; bad inputs."""

import functools as ft
import inspect
import re

import equinox as eqx
import hypothesis.strategies as st
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
from hypothesis import given, settings

import eqx_replay
from eqx_replay._returns import burn_in_split, lambda_returns, n_step_returns

from .helpers import tree_allclose
from .reference import window_mask


# --- step-by-step references, one window (1-d arrays) at a time ---------------------------


def n_step_loop(r, d, v, n, mask):
    """Walks forward from each step of the window's first episode, adding discounted
    rewards, until `n` rewards are summed or the window's last step is reached (then it
    bootstraps from the value there) or the next step belongs to the next episode (then
    there is nothing to bootstrap from)."""
    length = len(r)
    returns = np.zeros(length)
    for t in range(length):
        if not mask[t]:
            continue
        g, scale, j = 0.0, 1.0, t
        while True:
            if j == length - 1 or j - t == n:
                g += scale * v[j]
                break
            g += scale * r[j]
            scale *= d[j]
            j += 1
            if not mask[j]:
                break
        returns[t] = g
    return returns


def lambda_loop(r, d, v, lam, mask):
    """The TD(λ) recursion, backwards over the window's first episode: from the window's
    last value, or from the terminal reward when the episode ends inside the window."""
    length = len(r)
    steps = int(np.argmin(mask)) if not mask.all() else length
    returns = np.zeros(length)
    if length == 0:
        return returns
    returns[steps - 1] = v[steps - 1] if steps == length else r[steps - 1]
    for t in range(steps - 2, -1, -1):
        following = (1 - lam[t]) * v[t + 1] + lam[t] * returns[t + 1]
        returns[t] = r[t] + d[t] * following
    return returns


def monte_carlo_loop(r, d, v, mask):
    """The discounted sum of a whole window's rewards, bootstrapped from its last value."""
    assert mask.all()
    length = len(r)
    returns = np.zeros(length)
    for t in range(length):
        g, scale = 0.0, 1.0
        for k in range(t, length - 1):
            g += scale * r[k]
            scale *= d[k]
        returns[t] = g + scale * v[length - 1]
    return returns


def per_window(loop, *arrays, mask=None, **kwargs):
    """`loop` applied to every window of `(*batch, time)` arrays."""
    shape = np.shape(arrays[0])
    mask = np.ones(shape, bool) if mask is None else np.asarray(mask)
    out = np.zeros(shape)
    for index in np.ndindex(shape[:-1]):
        windows = [np.asarray(x, np.float64)[index] for x in arrays]
        out[index] = loop(*windows, mask=mask[index], **kwargs)
    return out


def windows(rng, shape, end_probability, gamma=0.9):
    """Random rewards, discounts (0 on a terminal step), values, and the mask a
    `boundary="mask"` buffer would give with these episode ends."""
    done = rng.random(shape) < end_probability
    rewards = rng.normal(size=shape).astype(np.float32)
    discounts = (gamma * (1 - done)).astype(np.float32)
    values = rng.normal(size=shape).astype(np.float32)
    mask = np.ones(shape, bool)
    for index in np.ndindex(shape[:-1]):
        mask[index] = window_mask(done[index])
    return rewards, discounts, values, mask


def next_episode_nan(mask, *arrays):
    """The arrays with NaN on every step after the window's first episode: those steps must
    never be read."""
    return tuple(np.where(mask, x, np.nan).astype(np.float32) for x in arrays)


def assert_close(actual, expected):
    np.testing.assert_allclose(np.asarray(actual), expected, rtol=2e-5, atol=2e-5)


# --- against the loops --------------------------------------------------------------------


@st.composite
def cases(draw):
    batch = draw(st.sampled_from([(), (3,), (2, 2)]))
    length = draw(st.integers(0, 9))
    end_probability = draw(st.sampled_from([0.0, 0.25, 0.6]))
    masked = draw(st.booleans())
    seed = draw(st.integers(0, 2**16))
    return (*batch, length), end_probability, masked, seed


@settings(max_examples=30, deadline=None, derandomize=True)
@given(case=cases(), n=st.integers(1, 12))
def test_n_step_returns_match_the_loop(case, n):
    shape, end_probability, masked, seed = case
    rewards, discounts, values, mask = windows(np.random.default_rng(seed), shape, end_probability)
    expected = per_window(
        n_step_loop, rewards, discounts, values, mask=mask if masked else None, n=n
    )
    if masked:
        rewards, discounts, values = next_episode_nan(mask, rewards, discounts, values)
    returns = n_step_returns(rewards, discounts, values, n, mask=mask if masked else None)
    assert returns.shape == shape and returns.dtype == jnp.float32
    assert_close(returns, expected)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(case=cases(), kind=st.sampled_from(["float", "window", "all", "per batch"]))
def test_lambda_returns_match_the_loop(case, kind):
    shape, end_probability, masked, seed = case
    rng = np.random.default_rng(seed)
    rewards, discounts, values, mask = windows(rng, shape, end_probability)
    lambda_ = {
        "float": float(rng.random()),
        "window": rng.random(shape[-1:]).astype(np.float32),
        "all": rng.random(shape).astype(np.float32),
        "per batch": rng.random((*shape[:-1], 1)).astype(np.float32),
    }[kind]
    lambdas = np.broadcast_to(lambda_, shape)
    expected = per_window(
        lambda_loop, rewards, discounts, values, lambdas, mask=mask if masked else None
    )
    if masked:
        rewards, discounts, values = next_episode_nan(mask, rewards, discounts, values)
    returns = lambda_returns(rewards, discounts, values, lambda_, mask=mask if masked else None)
    assert returns.shape == shape and returns.dtype == jnp.float32
    assert_close(returns, expected)


def test_an_episode_ending_inside_the_window_by_hand():
    # done on step 2: steps 3 and 4 belong to the next episode.
    rewards = jnp.array([1.0, 2.0, 3.0, 4.0, 5.0])
    discounts = 0.5 * (1 - jnp.array([0.0, 0.0, 1.0, 0.0, 0.0]))
    values = jnp.array([10.0, 20.0, 30.0, 40.0, 50.0])
    mask = jnp.array([True, True, True, False, False])
    # G_0 = 1 + .5 * 2 + .25 * V(s_2); G_1 = 2 + .5 * 3 + (.5 * 0) * V(s_3); G_2 = 3.
    two_step = n_step_returns(rewards, discounts, values, 2, mask=mask)
    np.testing.assert_allclose(np.asarray(two_step), [9.5, 3.5, 3.0, 0.0, 0.0])
    # λ = 1/2: G_1 = 2 + .5 (.5 * 30 + .5 * 3) = 10.25; G_0 = 1 + .5 (.5 * 20 + .5 * 10.25).
    td = lambda_returns(rewards, discounts, values, 0.5, mask=mask)
    np.testing.assert_allclose(np.asarray(td), [8.5625, 10.25, 3.0, 0.0, 0.0])
    # Without the mask the next episode's steps are a window's end like any other.
    np.testing.assert_allclose(
        np.asarray(n_step_returns(rewards, discounts, values, 2)), [9.5, 3.5, 3.0, 29.0, 50.0]
    )


@pytest.mark.parametrize("masked", [False, True])
def test_lambda_zero_is_the_one_step_td_target(masked):
    rewards, discounts, values, mask = windows(np.random.default_rng(0), (4, 7), 0.3)
    mask = mask if masked else None
    returns = lambda_returns(rewards, discounts, values, 0.0, mask=mask)
    one_step = np.append(rewards[:, :-1] + discounts[:, :-1] * values[:, 1:], values[:, -1:], 1)
    if mask is not None:
        # The value after an episode's last step is never read: its target is its reward.
        after = np.append(mask[:, 1:], np.zeros((4, 1), bool), 1)
        ends = mask & ~after & (np.arange(7) < 6)
        one_step = np.where(mask, np.where(ends, rewards, one_step), 0)
        assert ends.any() and (~mask).any()
    assert_close(returns, one_step)
    assert_close(n_step_returns(rewards, discounts, values, 1, mask=mask), one_step)


@pytest.mark.parametrize("n", [6, 7, 100])
def test_lambda_one_and_long_n_are_monte_carlo_with_bootstrap(n):
    rewards, discounts, values, _ = windows(np.random.default_rng(1), (4, 7), 0.3)
    expected = per_window(monte_carlo_loop, rewards, discounts, values)
    assert (discounts == 0).any()
    assert_close(lambda_returns(rewards, discounts, values, 1.0), expected)
    assert_close(n_step_returns(rewards, discounts, values, n), expected)


@pytest.mark.parametrize("lambda_", [0.0, 0.3, 0.9, 1.0])
@pytest.mark.parametrize("masked", [False, True])
def test_lambda_returns_mix_the_n_step_returns(lambda_, masked):
    # G^λ = (1 - λ) Σ_{n=1}^{T-1} λ^{n-1} G^(n) + λ^{T-1} G^(T): G^(n) stops changing once
    # n reaches the window's end, so the tail of the infinite mixture adds up to the last term.
    length = 6
    rewards, discounts, values, mask = windows(np.random.default_rng(2), (3, length), 0.3)
    mask = mask if masked else None
    n_step = [n_step_returns(rewards, discounts, values, n, mask=mask) for n in range(1, 7)]
    weights = [(1 - lambda_) * lambda_ ** (n - 1) for n in range(1, length)] + [
        lambda_ ** (length - 1)
    ]
    mixture = sum(w * np.asarray(g, np.float64) for w, g in zip(weights, n_step))
    assert_close(lambda_returns(rewards, discounts, values, lambda_, mask=mask), mixture)


# --- on a real sample ---------------------------------------------------------------------


MASKED = eqx_replay.make_trajectory_buffer(
    add_batch_size=2,
    sample_batch_size=32,
    sample_sequence_length=8,
    period=1,
    min_length_time_axis=8,
    max_length_time_axis=40,
    episode_end=lambda step: step["done"],
    boundary="mask",
)
EXAMPLE = {"reward": jnp.float32(0), "value": jnp.float32(0), "done": jnp.bool_(False)}


@ft.cache
def masked_sample():
    rng = np.random.default_rng(3)
    batch = {
        "reward": jnp.asarray(rng.normal(size=(2, 40)), jnp.float32),
        "value": jnp.asarray(rng.normal(size=(2, 40)), jnp.float32),
        "done": jnp.asarray(rng.random((2, 40)) < 0.2),
    }
    state = MASKED.add(MASKED.init(EXAMPLE), batch)
    return MASKED.sample(state, jr.key(0))


def test_a_poisoned_sample_gives_nan_returns():
    # Sampled before `can_sample`: NaN experience, mask all True, so NaN returns everywhere.
    sample = MASKED.sample(MASKED.init(EXAMPLE), jr.key(0))
    step = sample.experience
    discounts = 0.9 * (1 - step["done"].astype(jnp.float32))
    for returns in [
        n_step_returns(step["reward"], discounts, step["value"], 3, mask=sample.mask),
        lambda_returns(step["reward"], discounts, step["value"], 0.9, mask=sample.mask),
    ]:
        assert np.isnan(np.asarray(returns)).all()


def test_returns_of_a_masked_sample_stop_at_the_episode_end():
    sample = masked_sample()
    mask, step = np.asarray(sample.mask), sample.experience
    done = np.asarray(step["done"])
    # Windows with an episode end before their last step, and windows without.
    assert (~mask).any() and mask.all(axis=1).any()
    discounts = 0.9 * (1 - step["done"].astype(jnp.float32))
    rewards, values = step["reward"], step["value"]
    # The mask is True up to and including the first `done`, as the loops assume.
    for row in range(len(mask)):
        assert (mask[row] == window_mask(done[row])).all()
    for n in [1, 3, 8]:
        expected = per_window(n_step_loop, rewards, discounts, values, mask=mask, n=n)
        assert_close(n_step_returns(rewards, discounts, values, n, mask=sample.mask), expected)
    lambdas = np.full(mask.shape, 0.8)
    expected = per_window(lambda_loop, rewards, discounts, values, lambdas, mask=mask)
    assert_close(lambda_returns(rewards, discounts, values, 0.8, mask=sample.mask), expected)
    # The next episode's steps are never read.
    nan_rewards, nan_discounts, nan_values = next_episode_nan(mask, rewards, discounts, values)
    assert_close(
        lambda_returns(nan_rewards, nan_discounts, nan_values, 0.8, mask=sample.mask), expected
    )


# --- transforms ---------------------------------------------------------------------------


CALLS = {
    "n_step_returns": lambda r, d, v, m: n_step_returns(r, d, v, 3, mask=m),
    "lambda_returns": lambda r, d, v, m: lambda_returns(r, d, v, 0.7, mask=m),
    "lambda_returns per step": lambda r, d, v, m: lambda_returns(r, d, v, 0.5 + 0.4 * m, mask=m),
}


@pytest.mark.parametrize("name", CALLS)
@pytest.mark.parametrize("transform", ["jit", "vmap", "scan", "pmap"])
def test_returns_under_transforms(name, transform):
    call = CALLS[name]
    # Leading axis 2 for `pmap` over conftest.py's two fake CPU devices.
    r, d, v, m = windows(np.random.default_rng(4), (2, 3, 6), 0.3)
    args = (jnp.asarray(r), jnp.asarray(d), jnp.asarray(v), jnp.asarray(m))
    expected = call(*args)
    if transform == "jit":
        traced = jax.jit(eqx.debug.assert_max_traces(call, max_traces=1))
        traced(*args)
        returns = traced(*args)
    elif transform == "vmap":
        returns = jax.vmap(call, in_axes=1, out_axes=1)(*args)
    elif transform == "scan":
        returns = lax.scan(lambda carry, x: (carry, call(*x)), None, args)[1]
    else:
        returns = jax.pmap(call)(*args)
    np.testing.assert_allclose(np.asarray(returns), np.asarray(expected), rtol=1e-6)


def test_a_traced_lambda_is_not_range_checked():
    rewards, discounts, values, _ = windows(np.random.default_rng(5), (2, 5), 0.3)
    returns = jax.jit(lambda_returns)(rewards, discounts, values, jnp.float32(0.25))
    assert_close(returns, lambda_returns(rewards, discounts, values, 0.25))


# --- burn_in_split ------------------------------------------------------------------------


@pytest.mark.parametrize("burn_in", [0, 7])
def test_burn_in_split_splits_every_leaf_along_time(burn_in):
    tree = {"obs": jnp.arange(4 * 8 * 2).reshape(4, 8, 2), "reward": jnp.ones((4, 8))}
    burn, learn = burn_in_split(tree, burn_in)
    assert burn["obs"].shape == (4, burn_in, 2) and learn["obs"].shape == (4, 8 - burn_in, 2)
    assert burn["reward"].shape == (4, burn_in) and learn["reward"].shape == (4, 8 - burn_in)
    joined = jax.tree.map(lambda x, y: jnp.concatenate([x, y], axis=1), burn, learn)
    assert tree_allclose(joined, tree)


@pytest.mark.parametrize("transform", ["jit", "vmap", "scan", "pmap"])
def test_burn_in_split_under_transforms(transform):
    # Two stacked trees of windows (batch 3, time 5), for `pmap` over two fake CPU devices.
    tree = {"obs": jnp.arange(2 * 3 * 5 * 2).reshape(2, 3, 5, 2), "mask": jnp.ones((2, 3, 5), bool)}
    split = ft.partial(burn_in_split, burn_in=2)
    expected = jax.tree.map(lambda x: x.reshape(2, 3, 5, -1)[:, :, :2].reshape(-1), tree)
    if transform == "jit":
        traced = jax.jit(eqx.debug.assert_max_traces(split, max_traces=1))
        traced(jax.tree.map(lambda x: x[0], tree))
        burns = [traced(jax.tree.map(lambda x: x[i], tree))[0] for i in range(2)]
        burn = jax.tree.map(lambda *x: jnp.stack(x), *burns)
    elif transform == "vmap":
        burn = jax.vmap(split)(tree)[0]
    elif transform == "scan":
        burn = lax.scan(lambda carry, x: (carry, split(x)), None, tree)[1][0]
    else:
        burn = jax.pmap(split)(tree)[0]
    assert tree_allclose(jax.tree.map(lambda x: x.reshape(-1), burn), expected)
    assert burn["obs"].shape == (2, 3, 2, 2) and burn["mask"].shape == (2, 3, 2)


def test_burn_in_split_of_a_masked_sample():
    sample = masked_sample()
    burn, learn = burn_in_split(sample, 3)
    assert isinstance(learn, eqx_replay.TrajectoryBufferSample)
    assert learn.mask is not None and burn.mask is not None
    np.testing.assert_array_equal(np.asarray(learn.mask), np.asarray(sample.mask)[:, 3:])
    np.testing.assert_array_equal(np.asarray(burn.mask), np.asarray(sample.mask)[:, :3])
    np.testing.assert_array_equal(
        np.asarray(learn.experience["reward"]), np.asarray(sample.experience["reward"])[:, 3:]
    )


# --- bad inputs -----------------------------------------------------------------------------


# Called as a user calls them, without this test run's import hook (whose beartype checks of
# the annotations would speak first).
unchecked_n_step = inspect.unwrap(n_step_returns)
unchecked_lambda = inspect.unwrap(lambda_returns)
unchecked_split = inspect.unwrap(burn_in_split)

X = jnp.zeros((4, 8))
BAD = [
    (
        ft.partial(unchecked_n_step, X, jnp.zeros((4, 7)), X, 3),
        ValueError,
        "`n_step_returns`: `discounts` has shape (4, 7); expected (4, 8), the shape of `rewards`",
    ),
    (
        ft.partial(unchecked_lambda, X, X, jnp.zeros((8,)), 0.5),
        ValueError,
        "`lambda_returns`: `values` has shape (8,); expected (4, 8), the shape of `rewards`",
    ),
    (
        ft.partial(unchecked_n_step, X, X, X, 3, mask=jnp.ones((4, 9), bool)),
        ValueError,
        "`n_step_returns`: `mask` has shape (4, 9); expected (4, 8), the shape of `rewards`",
    ),
    (
        ft.partial(unchecked_n_step, X, X, X, 3, mask=jnp.ones((4, 8))),
        TypeError,
        "`n_step_returns`: `mask` must be a bool array, `sample.mask`, or None; got float32[4, 8]",
    ),
    (
        ft.partial(unchecked_n_step, jnp.zeros(()), jnp.zeros(()), jnp.zeros(()), 3),
        ValueError,
        "`n_step_returns`: `rewards` must have a time axis, shape (*batch, time); got shape ()",
    ),
    (
        ft.partial(unchecked_n_step, jnp.zeros((4, 8), jnp.int32), X, X, 3),
        TypeError,
        "`n_step_returns`: `rewards` must be a float array; got int32[4, 8]",
    ),
    (
        ft.partial(unchecked_lambda, X, [0.9] * 8, X, 0.5),
        TypeError,
        "`lambda_returns`: `discounts` must be a float array of shape (*batch, time); got list",
    ),
    (
        ft.partial(unchecked_n_step, X, X, X, 0),
        ValueError,
        "`n_step_returns`: `n` must be an int >= 1; got 0",
    ),
    (
        ft.partial(unchecked_n_step, X, X, X, 2.0),
        TypeError,
        "`n_step_returns`: `n` must be a Python int >= 1 (it sets the number of steps, so it "
        "cannot be traced); got 2.0",
    ),
    (
        ft.partial(unchecked_lambda, X, X, X, 1.5),
        ValueError,
        "`lambda_returns`: `lambda_` must be in [0, 1]; got 1.5",
    ),
    (
        ft.partial(unchecked_lambda, X, X, X, -0.1),
        ValueError,
        "`lambda_returns`: `lambda_` must be in [0, 1]; got -0.1",
    ),
    (
        ft.partial(unchecked_lambda, X, X, X, float("nan")),
        ValueError,
        "`lambda_returns`: `lambda_` must be in [0, 1]; got nan",
    ),
    (
        ft.partial(unchecked_lambda, X, X, X, np.array([0.5, 1.2] * 4)),
        ValueError,
        "`lambda_returns`: `lambda_` must be in [0, 1]; got 1.2",
    ),
    (
        ft.partial(unchecked_lambda, X, X, X, jnp.full((3,), 0.5)),
        ValueError,
        "`lambda_returns`: `lambda_` has shape (3,); expected one that broadcasts to (4, 8), "
        "the shape of `rewards`",
    ),
    (
        ft.partial(unchecked_lambda, X, X, X, "0.5"),
        TypeError,
        "`lambda_returns`: `lambda_` must be a float in [0, 1] or a float array that "
        "broadcasts to (4, 8); got str '0.5'",
    ),
    (
        ft.partial(unchecked_split, {"obs": jnp.zeros((4, 8, 2))}, 8),
        ValueError,
        "`burn_in_split`: `burn_in` must satisfy 0 <= burn_in < time = 8, leaving at least "
        "one step to learn on; got burn_in = 8",
    ),
    (
        ft.partial(unchecked_split, {"obs": jnp.zeros((4, 8, 2))}, -1),
        ValueError,
        "`burn_in_split`: `burn_in` must satisfy 0 <= burn_in < time = 8",
    ),
    (
        ft.partial(unchecked_split, {"obs": jnp.zeros((4, 8)), "step_id": jnp.zeros(4)}, 2),
        ValueError,
        "`burn_in_split`: leaf ['step_id'] has shape (4,); expected (4, 8, ...), the leading axes "
        "of every leaf",
    ),
    (
        ft.partial(unchecked_split, {"obs": jnp.zeros((4, 8)), "h": jnp.zeros((4, 16))}, 2),
        ValueError,
        "`burn_in_split`: leaf ['obs'] has shape (4, 8); expected (4, 16, ...)",
    ),
    (
        ft.partial(unchecked_split, {"obs": jnp.zeros((4, 8))}, 2.0),
        TypeError,
        "`burn_in_split`: `burn_in` must be a Python int (it sets the parts' shapes); got 2.0",
    ),
]


@pytest.mark.parametrize("call,error,message", BAD)
def test_bad_inputs_are_refused_with_a_clear_message(call, error, message):
    with pytest.raises(error, match=re.escape(message)):
        call()


def test_bad_inputs_are_refused_while_tracing():
    rewards = jnp.zeros((4, 8))
    with pytest.raises(ValueError, match=re.escape("`discounts` has shape (4, 7)")):
        jax.jit(unchecked_n_step, static_argnums=3)(rewards, jnp.zeros((4, 7)), rewards, 2)
    with pytest.raises(ValueError, match=re.escape("`n` must be an int >= 1; got 0")):
        jax.jit(unchecked_n_step, static_argnums=3)(rewards, rewards, rewards, 0)
