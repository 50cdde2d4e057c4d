"""Episode boundaries: configuration, trace-time checks of `episode_end`, and `"mask"`
sampling against the numpy references, for both buffers and under every transform."""

import collections
import dataclasses
import re
from typing import Any

import equinox as eqx
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings

import eqx_replay
from eqx_replay._episodes import Episodes

from .helpers import quiet, to_numpy, tree_allclose
from .reference import PrioritisedReference, TrajectoryReference, window_mask


ROW_CODE = 100_000  # a step's `step` leaf is `row * ROW_CODE + global time`
KINDS = ["trajectory", "prioritised"]
NAMES = {"trajectory": "TrajectoryBuffer", "prioritised": "PrioritisedTrajectoryBuffer"}


def done(step):
    return step["done"]


def make(kind, rows=2, capacity=12, length=4, period=1, samples=8, **kwargs) -> Any:
    """Either buffer; typed `Any` as the tests call both through the same names."""
    config: dict[str, Any] = dict(
        add_batch_size=rows,
        sample_batch_size=samples,
        sample_sequence_length=length,
        period=period,
        min_length_time_axis=length,
        max_length_time_axis=capacity,
    )
    config.update(kwargs)
    with quiet():
        if kind == "trajectory":
            return eqx_replay.make_trajectory_buffer(**config)
        return eqx_replay.make_prioritised_trajectory_buffer(**config)


def example():
    return {"step": jnp.int32(0), "obs": jnp.zeros(2, jnp.float32), "done": jnp.bool_(False)}


def make_batch(rng, rows, first, steps, end_probability=0.3):
    times = np.arange(first, first + steps)
    return {
        "step": jnp.asarray(np.arange(rows)[:, None] * ROW_CODE + times, jnp.int32),
        "obs": jnp.asarray(rng.normal(size=(rows, steps, 2)), jnp.float32),
        "done": jnp.asarray(rng.random((rows, steps)) < end_probability),
    }


def assert_same(x, y):
    """Equal trees, NaN equal to NaN (a poisoned sample is all NaN)."""
    assert jax.tree.structure(x) == jax.tree.structure(y)
    jax.tree.map(np.testing.assert_array_equal, x, y)


def ignoring(buffer):
    """The same buffer with `boundary="ignore"`: it reads the same states."""
    with quiet():
        return dataclasses.replace(buffer, boundary="ignore")


# --- "mask" against the numpy references -------------------------------------------------


# (rows, capacity, length, period). A few configurations, so that their compiled methods
# are shared between examples and hypothesis spends its time on the data: the adds (which
# decide where windows start and which wrap around the ring) and the episode ends.
CONFIGS = [
    (1, 1, 1, 1),  # one step per window: the mask is always [True]
    (2, 7, 3, 1),  # overlapping windows, wrapping around the ring
    (3, 8, 4, 2),  # a period grid
    (1, 10, 10, 1),  # one window spanning the whole ring
    (2, 9, 2, 3),  # period > length: some steps in no window
]


@st.composite
def scenarios(draw):
    rows, capacity, length, period = draw(st.sampled_from(CONFIGS))
    adds = draw(st.lists(st.integers(1, capacity), min_size=1, max_size=5))
    end_probability = draw(st.sampled_from([0.0, 0.2, 0.5, 1.0]))
    seed = draw(st.integers(0, 2**16))
    return rows, capacity, length, period, adds, end_probability, seed


def fill(buffer, rows, adds, end_probability, seed):
    """Adds random batches; returns the state and the batches in order."""
    rng = np.random.default_rng(seed)
    state, batches, total = buffer.init(example()), [], 0
    for steps in adds:
        batch = make_batch(rng, rows, total, steps, end_probability)
        state = buffer.add(state, batch)
        batches.append(batch)
        total += steps
    return state, batches


@settings(max_examples=75, deadline=None, derandomize=True)
@given(scenarios())
def test_trajectory_mask_matches_reference(scenario):
    rows, capacity, length, period, adds, end_probability, seed = scenario
    buffer = make(
        "trajectory",
        rows,
        capacity,
        length,
        period,
        64,
        min_length_time_axis=0,
        episode_end=done,
        boundary="mask",
    )
    state, batches = fill(buffer, rows, adds, end_probability, seed)
    ref = TrajectoryReference(rows, capacity, length, period, 0, example())
    for batch in batches:
        ref.add(batch)
    assert bool(buffer.can_sample(state)) == ref.can_sample()
    for key in jr.split(jr.key(seed), 2):
        sample = buffer.sample(state, key)
        assert_same(sample.experience, ignoring(buffer).sample(state, key).experience)
        assert sample.mask is not None and sample.mask.shape == (64, length)
        if not ref.can_sample():
            assert bool(jnp.all(sample.mask))  # poisoned like the experience
            continue
        rows_, starts = np.divmod(np.asarray(sample.experience["step"][:, 0]), ROW_CODE)
        expected = [ref.mask(r, s, done) for r, s in zip(rows_, starts)]
        np.testing.assert_array_equal(sample.mask, np.stack(expected))


@settings(max_examples=75, deadline=None, derandomize=True)
@given(scenarios())
def test_prioritised_mask_matches_reference(scenario):
    rows, capacity, length, period, adds, end_probability, seed = scenario
    buffer = make(
        "prioritised", rows, capacity, length, period, 64, episode_end=done, boundary="mask"
    )
    state, batches = fill(buffer, rows, adds, end_probability, seed)
    ref = PrioritisedReference(rows, capacity, length, period, 0.6)
    for steps in adds:
        ref.add(steps)
    ends = np.concatenate([np.asarray(batch["done"]) for batch in batches], axis=1)
    for key in jr.split(jr.key(seed), 2):
        sample = buffer.sample(state, key)
        plain = ignoring(buffer).sample(state, key)
        assert_same(dataclasses.replace(sample, mask=None), plain)
        assert sample.mask is not None and sample.mask.shape == (64, length)
        if not buffer.can_sample(state):
            assert bool(jnp.all(sample.mask))
            continue
        windows = [ref.window(item) for item in np.asarray(sample.indices) % ref.num_items]
        expected = [ref.mask(row, start, ends) for row, start in windows]
        np.testing.assert_array_equal(sample.mask, np.stack(expected))


def test_the_readme_picture():
    # One row, 10 steps, episode ends after steps 2 and 7; windows of 5 steps, period 1.
    buffer = make(
        "trajectory", rows=1, capacity=10, length=5, samples=256, episode_end=done, boundary="mask"
    )
    ends = np.zeros((1, 10), bool)
    ends[0, [2, 7]] = True
    batch = make_batch(np.random.default_rng(0), 1, 0, 10)
    state = buffer.add(buffer.init(example()), {**batch, "done": jnp.asarray(ends)})
    sample = buffer.sample(state, jr.key(0))
    assert sample.mask is not None
    masks = {
        int(first): m.astype(int).tolist()
        for first, m in zip(sample.experience["step"][:, 0], sample.mask)
    }
    assert masks == {
        0: [1, 1, 1, 0, 0],
        1: [1, 1, 0, 0, 0],
        2: [1, 0, 0, 0, 0],
        3: [1, 1, 1, 1, 1],
        4: [1, 1, 1, 1, 0],
        5: [1, 1, 1, 0, 0],
    }


def test_window_mask_reference():
    # The reference itself, on a case worked by hand.
    np.testing.assert_array_equal(window_mask([0, 1, 0, 1, 0]), [1, 1, 0, 0, 0])
    np.testing.assert_array_equal(window_mask([1, 1, 1]), [1, 0, 0])
    np.testing.assert_array_equal(window_mask([0, 0, 1]), [1, 1, 1])


@pytest.mark.parametrize("kind", KINDS)
def test_ignore_has_no_mask_and_never_calls_episode_end(kind):
    def fails(step):
        raise AssertionError("`episode_end` must not be called with boundary='ignore'")

    buffer = make(kind, episode_end=fails)
    state = buffer.add(buffer.init(example()), make_batch(np.random.default_rng(0), 2, 0, 6))
    assert buffer.sample(state, jr.key(0)).mask is None


@pytest.mark.parametrize("kind", KINDS)
def test_a_computed_flag(kind):
    # `episode_end` may compute the flag, here from a float discount.
    buffer = make(kind, length=3, episode_end=lambda s: s["discount"] == 0, boundary="mask")
    state = buffer.init({"discount": jnp.float32(1)})
    discount = jnp.ones((2, 12)).at[:, 4].set(0.0)
    state = buffer.add(state, {"discount": discount})
    sample = buffer.sample(state, jr.key(0))
    assert sample.mask is not None
    for window, mask in zip(np.asarray(sample.experience["discount"]), np.asarray(sample.mask)):
        np.testing.assert_array_equal(mask, window_mask(window == 0))
    assert not bool(jnp.all(sample.mask))


# --- configuration ----------------------------------------------------------------------

CONFIG_ERRORS = [
    (dict(boundary="masked"), ValueError, "boundary", "`boundary` must be one of 'ignore', "),
    (dict(boundary=None), TypeError, "boundary", "'ignore', 'mask', 'strict'; got None"),
    (
        dict(boundary="mask"),
        ValueError,
        None,
        "`boundary='mask'` needs `episode_end`, a function from a step of experience",
    ),
    (
        dict(episode_end="done", boundary="mask"),
        TypeError,
        "episode_end",
        "`episode_end` must be a function from a step of experience to its boolean "
        "episode-end leaf, e.g. `lambda step: step['done']`; got str 'done'",
    ),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("overrides,error,parameter,message", CONFIG_ERRORS)
def test_config_errors_name_the_argument(kind, overrides, error, parameter, message):
    for build in ("make", "module"):
        with pytest.raises((error, TypeError)) as info:
            if build == "make":
                make(kind, **overrides)
            else:
                cls = getattr(eqx_replay, NAMES[kind])
                cls(1, 1, 1, 1, 1, max_length_time_axis=4, **overrides)
        if "Type-check error" in str(info.value):
            # Under jaxtyping's import hook beartype checks the annotation first (a Literal
            # of the allowed values, a Callable), naming the parameter.
            assert f"parameter '{parameter}'" in str(info.value)
        else:
            assert isinstance(info.value, error) and message in str(info.value)
    # Without the hook the buffer's own check answers: its exact message.
    with pytest.raises(error, match=re.escape(message)):
        Episodes(**{"episode_end": None, "boundary": "ignore", **overrides})


def test_episode_end_with_ignore_is_allowed():
    for end in (done, None):
        episodes = Episodes(episode_end=end, boundary="ignore")
        assert (episodes.episode_end, episodes.boundary) == (end, "ignore")
    buffer = make("trajectory", episode_end=done)
    assert buffer.episode_end is done and buffer.boundary == "ignore"
    assert dataclasses.replace(buffer, boundary="mask").boundary == "mask"


# --- trace-time checks of `episode_end` ---------------------------------------------------

INIT_ERRORS = [
    (lambda s: s["dne"], ValueError, "`episode_end` failed on the example: KeyError: 'dne'"),
    (
        lambda s: s["obs"][0],
        TypeError,
        "`episode_end` returned dtype float32 on the example; expected bool",
    ),
    (
        lambda s: jnp.stack([s["done"]] * 2),
        ValueError,
        "`episode_end` returned shape (2,) on the example; expected (), one flag per step",
    ),
    (
        lambda s: (s["done"],),
        TypeError,
        "`episode_end` returned a tuple on the example; expected one boolean array of shape ()",
    ),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("episode_end,error,message", INIT_ERRORS)
def test_init_checks_episode_end(kind, episode_end, error, message):
    buffer = make(kind, episode_end=episode_end, boundary="mask")
    with pytest.raises(error, match=re.escape(f"`{NAMES[kind]}.init`: {message}")) as info:
        buffer.init(example())
    if "failed" in message:
        assert isinstance(info.value.__cause__, KeyError)


ADD_ERRORS = [
    (lambda s: s["dne"], ValueError, "`episode_end` failed on the batch: KeyError: 'dne'"),
    (
        lambda s: s["step"] > 0 if s["step"].ndim == 0 else s["step"],
        TypeError,
        "`episode_end` returned dtype int32 on the batch; expected bool",
    ),
    (
        lambda s: jnp.any(s["done"]),  # fine for one step, not for a batch
        ValueError,
        "`episode_end` returned shape () on the batch; expected (2, 6), one flag per step",
    ),
    (
        lambda s: s["done"][:, 0] if s["done"].ndim else s["done"],
        ValueError,
        "`episode_end` returned shape (2,) on the batch; expected (2, 6)",
    ),
    (
        lambda s: s["done"].reshape(()),  # fine for one step; reshape fails for a batch
        TypeError,
        "`episode_end` failed on the batch: TypeError: ",
    ),
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("episode_end,error,message", ADD_ERRORS)
def test_add_checks_episode_end_and_keeps_the_state(kind, episode_end, error, message):
    buffer = make(kind, episode_end=episode_end, boundary="mask")
    rng = np.random.default_rng(0)
    # A state from the same buffer ignoring boundaries, for the functions `init` rejects.
    state = ignoring(buffer).add(ignoring(buffer).init(example()), make_batch(rng, 2, 0, 6))
    before = to_numpy(state)
    with pytest.raises(error, match=re.escape(f"`{NAMES[kind]}.add`: {message}")) as info:
        buffer.add(state, make_batch(rng, 2, 6, 6))
    assert info.value.__cause__ is not None or "failed" not in message
    assert not any(leaf.is_deleted() for leaf in jax.tree.leaves(state))
    assert tree_allclose(to_numpy(state), before)
    fixed = dataclasses.replace(buffer, episode_end=done)
    state = fixed.add(state, make_batch(rng, 2, 6, 6))
    assert int(state.current_index) == 0 and bool(state.is_full)


@pytest.mark.parametrize("kind", KINDS)
def test_add_compiles_to_the_same_program_as_ignore(kind):
    # "mask" costs `add` nothing: it stores nothing more and computes nothing more.
    buffer = make(kind, episode_end=lambda s: s["obs"][..., 0] > 0, boundary="mask")
    state = buffer.init(example())
    batch = make_batch(np.random.default_rng(0), 2, 0, 3)
    programs = [b.add.lower(state, batch).as_text() for b in (buffer, ignoring(buffer))]
    assert programs[0].replace("mask", "ignore") == programs[1]


@pytest.mark.parametrize("kind", KINDS)
def test_add_in_mask_mode_donates(kind):
    buffer = make(kind, episode_end=done, boundary="mask")
    state = buffer.init(example())
    new = buffer.add(state, make_batch(np.random.default_rng(0), 2, 0, 6))
    assert all(leaf.is_deleted() for leaf in jax.tree.leaves(state))
    assert int(new.current_index) == 6


# --- transforms -----------------------------------------------------------------------------


def stacked_batches(count, rows, steps, seed=0):
    rng = np.random.default_rng(seed)
    parts = [make_batch(rng, rows, i * steps, steps, 0.3) for i in range(count)]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *parts)


def nth(tree, i):
    return jax.tree.map(lambda x: x[i], tree)


def sequential(buffer, data, count):
    state = buffer.init(example())
    for i in range(count):
        state = buffer.add(state, nth(data, i))
    return state


@pytest.mark.parametrize("kind", KINDS)
def test_jit(kind):
    buffer = make(kind, episode_end=done, boundary="mask")
    data = stacked_batches(3, 2, 5)
    expected = sequential(buffer, data, 3)
    state = buffer.init(example())
    for i in range(3):
        state = jax.jit(buffer.add)(state, nth(data, i))
    assert tree_allclose(to_numpy(state), to_numpy(expected))
    key = jr.key(1)
    sample = jax.jit(buffer.sample)(state, key)
    assert sample.mask is not None and sample.mask.dtype == jnp.bool_
    assert tree_allclose(sample, buffer.sample(expected, key))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("transform", [jax.vmap, jax.pmap])
def test_vmap_and_pmap(kind, transform):
    assert jax.local_device_count() == 2  # pmap runs over conftest.py's fake CPU devices
    buffer = make(kind, episode_end=done, boundary="mask")
    n = 2
    data = [stacked_batches(n, 2, 5, seed=k) for k in range(3)]
    states = transform(buffer.init)(jax.tree.map(lambda x: jnp.stack([x] * n), example()))
    for d in data:
        states = transform(buffer.add)(states, d)
    keys = jr.split(jr.key(0), n)
    samples = transform(buffer.sample)(states, keys)
    assert samples.mask is not None and samples.mask.shape == (n, 8, 4)
    for i in range(n):
        state = buffer.init(example())
        for d in data:
            state = buffer.add(state, nth(d, i))
        assert tree_allclose(to_numpy(nth(samples, i)), to_numpy(buffer.sample(state, keys[i])))


@pytest.mark.parametrize("kind", KINDS)
def test_scan_add_and_sample(kind):
    buffer = make(kind, episode_end=done, boundary="mask")
    data = stacked_batches(6, 2, 2)
    keys = jr.split(jr.key(0), 6)

    @jax.jit
    def run(state, data, keys):
        def body(state, inputs):
            batch, key = inputs
            state = buffer.add(state, batch)
            return state, buffer.sample(state, key).mask

        return jax.lax.scan(body, state, (data, keys))

    state, masks = run(buffer.init(example()), data, keys)
    assert masks.shape == (6, 8, 4)
    expected = buffer.init(example())
    for i in range(6):
        expected = buffer.add(expected, nth(data, i))
        assert tree_allclose(
            np.asarray(masks[i]), np.asarray(buffer.sample(expected, keys[i]).mask)
        )
    assert tree_allclose(to_numpy(state), to_numpy(expected))


@pytest.mark.parametrize("kind", KINDS)
def test_no_retracing(kind):
    # A capacity no other test uses; `episode_end` runs only while JAX traces: once on the
    # example, once for `add`, once for `sample`.
    episode_end = eqx.debug.assert_max_traces(done, max_traces=3)
    buffer = make(kind, capacity=26, episode_end=episode_end, boundary="mask")
    state = buffer.init(example())
    data = stacked_batches(12, 2, 3)
    for i in range(12):
        state = buffer.add(state, nth(data, i))
        if buffer.can_sample(state):
            buffer.sample(state, jr.key(i))
    assert eqx.debug.get_num_traces(episode_end) == 3
    # A different time length is a different shape: exactly one new trace, which the
    # buffer reports as `episode_end` failing on the batch.
    with pytest.raises(ValueError, match="failed on the batch: RuntimeError") as info:
        buffer.add(state, nth(stacked_batches(1, 2, 2), 0))
    assert "can only be traced 3 times" in str(info.value.__cause__)


class Agent(eqx.Module):
    value: eqx.nn.Linear
    buffer_state: Any


@pytest.mark.parametrize("kind", KINDS)
def test_inside_an_equinox_agent(kind):
    buffer = make(kind, episode_end=done, boundary="mask")
    agent = Agent(eqx.nn.Linear(2, "scalar", key=jr.key(0)), buffer.init(example()))

    def loss(value, sample):
        # A masked loss: steps after the window's first episode end count for nothing.
        predictions = jax.vmap(jax.vmap(value))(sample.experience["obs"])
        return jnp.sum(jnp.where(sample.mask, predictions**2, 0.0)) / jnp.sum(sample.mask)

    @eqx.filter_jit
    def train_step(agent, batch, key):
        state = buffer.add(agent.buffer_state, batch)
        sample = buffer.sample(state, key)
        grads = eqx.filter_grad(loss)(agent.value, sample)
        value = jax.tree.map(lambda w, g: w - 0.1 * g, agent.value, grads)
        return Agent(value, state), sample.mask, grads

    data = stacked_batches(3, 2, 4)
    for i in range(3):
        agent, mask, grads = train_step(agent, nth(data, i), jr.key(i))
    assert mask.shape == (8, 4) and bool(mask[:, 0].all())
    assert bool(jnp.isfinite(grads.weight).all()) and float(jnp.abs(grads.weight).sum()) > 0
    assert int(agent.buffer_state.current_index) == 0 and bool(agent.buffer_state.is_full)


# --- "strict" against the numpy reference ------------------------------------------------


def strict_reference(rows, capacity, length, period, batches):
    ref = PrioritisedReference(rows, capacity, length, period, 0.6, strict=True)
    for batch in batches:
        ref.add(batch["done"].shape[1], batch["done"])
    return ref


def check_strict_sample(ref, sample, capacity, length, period):
    """Every sampled window is stored, contiguous, on the physical period grid and has no
    episode end before its last step."""
    rows_, starts = np.divmod(np.asarray(sample.experience["step"]), ROW_CODE)
    assert (rows_ == rows_[:, :1]).all()
    assert (starts == starts[:, :1] + np.arange(length)).all()  # consecutive global steps
    for row, start in zip(rows_[:, 0], starts[:, 0]):
        assert start >= ref.total - capacity and start + length <= ref.total
        assert (start % capacity) % period == 0
        assert not ref.ends[row, start : start + length - 1].any()


@settings(max_examples=40, deadline=None, derandomize=True)
@given(scenarios())
def test_strict_matches_reference(scenario):
    rows, capacity, length, period, adds, end_probability, seed = scenario
    for kind in KINDS:
        buffer = make(
            kind,
            rows,
            capacity,
            length,
            period,
            64,
            min_length_time_axis=0,
            episode_end=done,
            boundary="strict",
        )
        state, batches = fill(buffer, rows, adds, end_probability, seed)
        ref = strict_reference(rows, capacity, length, period, batches)
        allowed = ref.valid()
        if kind == "trajectory":
            weights = np.asarray(state.windows.get(jnp.arange(ref.num_items)))
            np.testing.assert_array_equal(weights, allowed.astype(np.float32))
        else:
            np.testing.assert_array_equal(np.asarray(state.valid), allowed)
            np.testing.assert_array_equal(np.asarray(state.generation), ref.generation)
            priorities = np.asarray(state.priorities.get(jnp.arange(ref.num_items)))
            np.testing.assert_allclose(priorities, ref.priority, rtol=1e-6)
        assert bool(buffer.can_sample(state)) == bool(allowed.any())
        sample = buffer.sample(state, jr.key(seed))
        if allowed.any():
            check_strict_sample(ref, sample, capacity, length, period)
        else:
            assert np.isnan(np.asarray(sample.experience["obs"])).all()  # poisoned


@pytest.mark.parametrize("kind", KINDS)
def test_strict_is_uniform_over_allowed_windows(kind):
    rows, capacity, length = 3, 40, 4
    buffer = make(kind, rows, capacity, length, 1, 2000, episode_end=done, boundary="strict")
    state, batches = fill(buffer, rows, [capacity, 7], 0.2, seed=3)
    ref = strict_reference(rows, capacity, length, 1, batches)
    allowed = np.flatnonzero(ref.valid())
    counts = collections.Counter()
    for key in jr.split(jr.key(0), 10):
        sample = buffer.sample(state, key)
        check_strict_sample(ref, sample, capacity, length, 1)
        rows_, starts = np.divmod(np.asarray(sample.experience["step"][:, 0]), ROW_CODE)
        counts.update(ref.item(r, s % capacity) for r, s in zip(rows_, starts))
    assert set(counts) == set(allowed.tolist())
    observed = np.array([counts[i] for i in allowed])
    assert scipy.stats.chisquare(observed).pvalue > 1e-6


def test_strict_rounds_the_time_axis_and_warns():
    with pytest.warns(UserWarning, match="rounding it down to 9"):
        buffer = eqx_replay.make_trajectory_buffer(
            2, 4, 3, 3, 3, max_length_time_axis=10, episode_end=done, boundary="strict"
        )
    assert buffer.max_length_time_axis == 9


@pytest.mark.parametrize("kind", KINDS)
def test_strict_under_jit_vmap_scan_and_donation(kind):
    buffer = make(kind, 2, 12, 4, 1, 8, episode_end=done, boundary="strict")
    data = stacked_batches(3, 2, 5)
    expected = sequential(buffer, data, 3)
    state = buffer.init(example())
    add = jax.jit(buffer.add, donate_argnums=0)
    for i in range(3):
        old = state
        state = add(state, nth(data, i))
        assert jax.tree.leaves(old)[0].is_deleted()
    assert_same(state, expected)

    def body(state, batch):
        return buffer.add(state, batch), None

    scanned, _ = jax.lax.scan(body, buffer.init(example()), jax.tree.map(lambda x: x[:3], data))
    assert_same(scanned, expected)
    states = jax.vmap(lambda _: buffer.init(example()))(jnp.arange(2))
    both = jax.tree.map(lambda x: jnp.stack([x, x]), nth(data, 0))
    states = jax.vmap(buffer.add)(states, both)
    samples = jax.vmap(buffer.sample)(states, jr.split(jr.key(0), 2))
    one = buffer.add(buffer.init(example()), nth(data, 0))
    assert_same(nth(states, 1), one)
    assert_same(nth(samples, 0), buffer.sample(one, jr.split(jr.key(0), 2)[0]))
