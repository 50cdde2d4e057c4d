"""`epoch`: every item `sample` can draw, each exactly once, in a uniformly random order, as
a fixed number of batches; checked against the numpy models of each kind."""

from collections import Counter
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import eqx_replay as er

from .reference.frames import FrameReference
from .reference.prioritised import PrioritisedReference
from .reference.trajectory import TrajectoryReference


ROWS, CAPACITY, LENGTH, PERIOD, BATCH = 3, 10, 3, 2, 4
EXAMPLE = {"row": np.int32(0), "g": np.int32(0), "done": np.bool_(False)}
MAX_ITEMS = ROWS * ((CAPACITY - LENGTH) // PERIOD + 1)  # 12


def _end(step: Any) -> Any:
    return step["done"]


def _chunk(first: int, steps: int, rng: np.random.Generator, rows: int = ROWS) -> dict:
    g = np.broadcast_to(first + np.arange(steps, dtype=np.int32), (rows, steps))
    row = np.broadcast_to(np.arange(rows, dtype=np.int32)[:, None], (rows, steps))
    done = rng.random((rows, steps)) < 0.3
    return {"row": jnp.asarray(row), "g": jnp.asarray(g), "done": jnp.asarray(done)}


def _settings(**changes: Any) -> dict[str, Any]:
    return dict(
        add_batch_size=ROWS,
        sample_batch_size=BATCH,
        sample_sequence_length=LENGTH,
        period=PERIOD,
        min_length_time_axis=LENGTH,
        max_length_time_axis=CAPACITY,
        **changes,
    )


def _items(sample_rows: np.ndarray, sample_g: np.ndarray, mask: np.ndarray) -> list:
    """`(row, first g)` of every real item, checking each is one window of consecutive
    steps of one row; the padding is poison."""
    real = mask.reshape(-1)
    rows = sample_rows.reshape(real.shape[0], -1)
    g = sample_g.reshape(real.shape[0], -1)
    assert (rows[~real] == np.iinfo(np.int32).max).all()
    assert real[: real.sum()].all()  # real items first
    out = []
    for r, steps in zip(rows[real], g[real]):
        assert (r == r[0]).all() and (np.diff(steps) == 1).all()
        out.append((int(r[0]), int(steps[0])))
    return out


@pytest.mark.parametrize("boundary", ["ignore", "mask"])
def test_uniform_trajectory_epochs_hold_every_window_once(boundary: str) -> None:
    buffer = er.make_trajectory_buffer(**_settings(episode_end=_end, boundary=boundary))
    ref = TrajectoryReference(ROWS, CAPACITY, LENGTH, PERIOD, LENGTH, EXAMPLE)
    rng = np.random.default_rng(0)
    state = buffer.init(EXAMPLE)
    for steps in [2, 3, 4, 6, 3]:  # before any window, then wrapping
        chunk = _chunk(ref.total, steps, rng)
        state = buffer.add(state, chunk)
        ref.add({k: np.asarray(v) for k, v in chunk.items()})
        sample, mask = buffer.epoch(state, jax.random.key(ref.total))
        assert mask.shape == (-(-MAX_ITEMS // BATCH), BATCH)
        exp = sample.experience
        got = _items(np.asarray(exp["row"]), np.asarray(exp["g"]), np.asarray(mask))
        want = [(r, g) for r in range(ROWS) for g in ref.window_starts()]
        assert sorted(got) == sorted(want)
        if boundary == "mask":
            flat_mask = np.asarray(sample.mask).reshape(-1, LENGTH)[np.asarray(mask).reshape(-1)]
            for (r, g), m in zip(got, flat_mask):
                np.testing.assert_array_equal(m, ref.mask(r, g, _end))


@pytest.mark.parametrize("kind", ["strict", "prioritised"])
def test_windows_as_items_epochs_hold_every_allowed_window_once(kind: str) -> None:
    strict = kind == "strict"
    if strict:
        buffer: Any = er.make_trajectory_buffer(**_settings(episode_end=_end, boundary="strict"))
    else:
        buffer = er.make_prioritised_trajectory_buffer(**_settings(priority_exponent=1.0))
    ref = PrioritisedReference(ROWS, CAPACITY, LENGTH, PERIOD, 1.0, strict=strict)
    rng = np.random.default_rng(1)
    state = buffer.init(EXAMPLE)
    for steps in [4, 5, 7]:
        chunk = _chunk(ref.total, steps, rng)
        state = buffer.add(state, chunk)
        ref.add(steps, np.asarray(chunk["done"]))
        sample, mask = buffer.epoch(state, jax.random.key(steps))
        exp = sample.experience
        got = _items(np.asarray(exp["row"]), np.asarray(exp["g"]), np.asarray(mask))
        valid = ref.valid()
        assert len(got) == valid.sum() == len(set(got))
        if not strict:
            # Handles name the windows and go back to `set_priorities`, even priority zero.
            indices = np.asarray(sample.indices)[np.asarray(mask)]
            state = buffer.set_priorities(state, jnp.asarray(indices), jnp.zeros(len(indices)))
            again, mask_again = buffer.epoch(state, jax.random.key(0))
            assert int(mask_again.sum()) == len(got)
            assert (np.asarray(again.probabilities)[np.asarray(mask_again)] == 0).all()
            assert not bool(buffer.can_sample(state))


def test_prioritised_probabilities_are_those_sample_reports() -> None:
    buffer = er.make_prioritised_flat_buffer(
        max_length=12, min_length=2, sample_batch_size=12, add_batch_size=2, add_sequences=True
    )
    state = buffer.add(buffer.init(np.int32(0)), jnp.arange(10, dtype=jnp.int32).reshape(2, 5))
    drawn = buffer.sample(state, jax.random.key(0))
    state = buffer.set_priorities(state, drawn.indices[:3], jnp.array([3.0, 0.5, 7.0]))
    drawn = buffer.sample(state, jax.random.key(1))
    sample, mask = buffer.epoch(state, jax.random.key(2))
    by_index = dict(
        zip(
            np.asarray(sample.indices)[np.asarray(mask)].tolist(),
            np.asarray(sample.probabilities)[np.asarray(mask)],
        )
    )
    assert len(by_index) == 8  # 2 rows x 4 pairs
    for index, probability in zip(np.asarray(drawn.indices), np.asarray(drawn.probabilities)):
        assert by_index[int(index)] == pytest.approx(float(probability))


def test_frame_stacked_epochs_skip_windows_whose_frames_are_gone() -> None:
    size = 3
    buffer = er.make_trajectory_buffer(
        **_settings(episode_end=_end, frame_stack=er.FrameStack(lambda s: s["obs"], size))
    )
    frames_ref = FrameReference(ROWS, CAPACITY, LENGTH, PERIOD, size, "first")
    rng = np.random.default_rng(2)
    state = buffer.init({**EXAMPLE, "obs": np.zeros((size,), np.int32)})
    for steps in [5, 6, 4]:
        chunk = _chunk(frames_ref.added, steps, rng)
        chunk["done"] = jnp.asarray(rng.random((ROWS, steps)) < 0.1)
        frames = np.asarray(chunk["g"]) + 100 * np.arange(ROWS)[:, None]
        chunk["obs"] = jnp.asarray(frames_ref.add(frames, np.asarray(chunk["done"])))
        state = buffer.add(state, chunk)
        sample, mask = buffer.epoch(state, jax.random.key(steps))
        exp = sample.experience
        got = _items(np.asarray(exp["row"]), np.asarray(exp["g"]), np.asarray(mask))
        assert sorted(got) == sorted(frames_ref.windows())
        obs = np.asarray(exp["obs"]).reshape(-1, LENGTH, size)[np.asarray(mask).reshape(-1)]
        for (r, g), window in zip(got, obs):
            for t in range(LENGTH):
                np.testing.assert_array_equal(window[t], frames_ref.stack(r, g + t))


@pytest.mark.parametrize("prioritised", [False, True])
def test_flat_and_item_epochs(prioritised: bool) -> None:
    make_flat = er.make_prioritised_flat_buffer if prioritised else er.make_flat_buffer
    make_item = er.make_prioritised_item_buffer if prioritised else er.make_item_buffer
    flat: Any = make_flat(
        max_length=12, min_length=2, sample_batch_size=5, add_batch_size=2, add_sequences=True
    )
    items: Any = make_item(max_length=7, min_length=1, sample_batch_size=3, add_sequences=True)
    flat_state = flat.init(np.int32(0))
    item_state = items.init(np.int32(0))
    added = 0
    for steps in [3, 4, 5]:
        flat_state = flat.add(
            flat_state,
            jnp.arange(added, added + steps, dtype=jnp.int32)[None].repeat(2, 0)
            + jnp.array([[0], [1000]], jnp.int32),
        )
        item_state = items.add(item_state, jnp.arange(added, added + steps, dtype=jnp.int32))
        added += steps
        sample, mask = flat.epoch(flat_state, jax.random.key(added))
        assert mask.shape == (-(-2 * 5 // 5), 5)  # 2 rows x (6 - 1) transitions
        first = np.asarray(sample.experience.first)[np.asarray(mask)]
        second = np.asarray(sample.experience.second)[np.asarray(mask)]
        np.testing.assert_array_equal(second, first + 1)
        oldest = max(0, added - 6)
        want = sorted(g + r for r in (0, 1000) for g in range(oldest, added - 1))
        assert sorted(first.tolist()) == want
        sample, mask = items.epoch(item_state, jax.random.key(added))
        assert mask.shape == (3, 3)  # ceil(7 / 3)
        got = np.asarray(sample.experience)[np.asarray(mask)]
        assert sorted(got.tolist()) == list(range(max(0, added - 7), added))


def test_orders_are_uniform_and_epochs_compose() -> None:
    buffer = er.make_item_buffer(
        max_length=5, min_length=1, sample_batch_size=2, add_sequences=True
    )
    state = buffer.add(buffer.init(np.int32(0)), jnp.arange(4, dtype=jnp.int32))
    # `vmap` over keys: where each of the 4 items lands among the 6 places.
    keys = jax.random.split(jax.random.key(0), 4000)
    samples, masks = jax.vmap(lambda key: buffer.epoch(state, key))(keys)
    order = np.asarray(samples.experience).reshape(len(keys), -1)[:, :4]
    assert np.asarray(masks).reshape(len(keys), -1)[:, :4].all()
    places = Counter((int(item), place) for row in order for place, item in enumerate(row))
    assert scipy.stats.chisquare([places[(i, p)] for i in range(4) for p in range(4)]).pvalue > 1e-4
    # Whole permutations too: all 24 orders, evenly.
    permutations = Counter(tuple(row.tolist()) for row in order)
    assert len(permutations) == 24
    assert scipy.stats.chisquare(list(permutations.values())).pvalue > 1e-4

    # An epoch of training steps in `lax.scan`, inside the user's `filter_jit`.
    @eqx.filter_jit
    def total(state: Any, key: Any) -> Any:
        sample, mask = buffer.epoch(state, key)

        def step(carry: Any, batch: Any) -> tuple[Any, None]:
            items, real = batch
            return carry + jnp.sum(jnp.where(real, items, 0)), None

        return jax.lax.scan(step, jnp.int32(0), (sample.experience, mask))[0]

    assert int(total(state, jax.random.key(1))) == 0 + 1 + 2 + 3


def test_an_empty_buffer_gives_only_padding_and_bad_calls_are_refused() -> None:
    buffer = er.make_trajectory_buffer(**_settings())
    sample, mask = buffer.epoch(buffer.init(EXAMPLE), jax.random.key(0))
    assert not np.asarray(mask).any()
    assert (np.asarray(sample.experience["g"]) == np.iinfo(np.int32).max).all()
    # Before `min_length`, `sample` draws nothing, and an epoch holds nothing.
    flat: Any = er.make_flat_buffer(max_length=20, min_length=10, sample_batch_size=4)
    state = flat.init(np.int32(0))
    for i in range(4):
        state = flat.add(state, np.int32(i))
    assert not bool(flat.can_sample(state))
    assert not np.asarray(flat.epoch(state, jax.random.key(0))[1]).any()
    with pytest.raises(TypeError, match=r"`TrajectoryBuffer.epoch`: `rng_key`"):
        buffer.epoch(buffer.init(EXAMPLE), np.float32(1.0))
