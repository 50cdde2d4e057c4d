"""`FlatBuffer.sample_future`: transitions with a step of their own episode's future, drawn
with exactly the probabilities of a numpy model, as the environment gave them."""

from collections import Counter
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import eqx_replay as er

from .reference.episodes import chunk as _chunk, EpisodeReference
from .reference.frames import FrameReference


ROWS, CAPACITY = 3, 16
EXAMPLE = {"row": np.int32(0), "g": np.int32(0), "done": np.bool_(False)}


def _end(step: Any) -> Any:
    return step["done"]


def _buffer(**changes: Any) -> er.FlatBuffer:
    settings: dict[str, Any] = dict(
        max_length=ROWS * CAPACITY,
        min_length=2,
        sample_batch_size=ROWS * CAPACITY,
        add_sequences=True,
        add_batch_size=ROWS,
        episode_end=_end,
    )
    return er.make_flat_buffer(**{**settings, **changes})


def _draws(buffer: er.FlatBuffer, state: Any, discount: float, keys: int) -> list[tuple]:
    """`(row, g, k)` of every draw of `keys` calls, each checked to be one transition of
    one row with its future `k` steps from `first`."""
    many = jax.vmap(lambda key: buffer.sample_future(state, key, discount))
    sample = many(jax.random.split(jax.random.key(keys), keys))
    first, second, future = (
        {name: np.asarray(x).reshape(-1) for name, x in part.items()}
        for part in (sample.first, sample.second, sample.future)
    )
    offset = np.asarray(sample.offset).reshape(-1)
    np.testing.assert_array_equal(second["row"], first["row"])
    np.testing.assert_array_equal(future["row"], first["row"])
    np.testing.assert_array_equal(second["g"], first["g"] + 1)
    np.testing.assert_array_equal(future["g"], first["g"] + offset)
    return list(zip(first["row"].tolist(), first["g"].tolist(), offset.tolist()))


def _check_frequencies(draws: list[tuple], expected: dict[tuple, float]) -> None:
    counts = Counter(draws)
    assert set(counts) <= set(expected), set(counts) - set(expected)
    cells = sorted(expected)
    observed = np.array([counts[c] for c in cells])
    probabilities = np.array([expected[c] for c in cells])
    assert scipy.stats.chisquare(observed, probabilities * len(draws)).pvalue > 1e-4


@pytest.mark.parametrize("discount", [1.0, 0.6])
def test_futures_are_drawn_as_the_reference_says(discount: float) -> None:
    buffer = _buffer()
    ref = EpisodeReference(ROWS, CAPACITY)
    rng = np.random.default_rng(0)
    state = buffer.init(EXAMPLE)
    # Short and long episodes, an unfinished one at the head, and a ring that wraps.
    for steps, p_end in [(7, 0.3), (6, 0.05), (9, 0.3), (4, 0.0)]:
        state = buffer.add(state, _chunk(ref, rng, steps, p_end))
        draws = _draws(buffer, state, discount, 60)
        _check_frequencies(draws, ref.future_probabilities(discount))
    assert ref.added > CAPACITY


def test_long_episodes_are_searched_to_their_end() -> None:
    # Episodes far longer than one read of episode ends (64 steps), in a wrapped ring.
    rows, capacity = 2, 300
    buffer = _buffer(max_length=rows * capacity, add_batch_size=rows, sample_batch_size=512)
    ref = EpisodeReference(rows, capacity)
    rng = np.random.default_rng(1)
    state = buffer.init(EXAMPLE)
    for _ in range(4):
        state = buffer.add(state, _chunk(ref, rng, 120, 0.004))
    draws = _draws(buffer, state, 1.0, 8)
    expected = ref.future_probabilities(1.0)
    assert set(draws) <= set(expected)
    # The largest offsets drawn reach past several reads.
    assert max(k for _, _, k in draws) > 128


@pytest.mark.parametrize(("width", "capacity"), [(64, 200), (128, 200), (128, 300), (1024, 2100)])
def test_episode_ends_are_found_in_blocks_that_wrap(width: int, capacity: int) -> None:
    # The search for an episode's end reads blocks of flags (1,024 in two levels: the part
    # holding the first end, then the end in it); a block that would run past the row's
    # end is read clamped, its rest from the row's first flags. Every start of every row,
    # against the flags read one by one.
    from eqx_replay._future import _first_true  # the search itself: wrapping is rare in samples

    rows = 3
    rng = np.random.default_rng(width + capacity)
    flags = rng.random((rows, capacity)) < [[0.0005], [0.004], [0.05]]
    flags[0] = False
    flags[0, 5] = True  # row 0: one end, just past the row's end for the last starts
    flags[1, capacity - 1] = True  # row 1: an end at the row's last place
    row, start = (x.reshape(-1) for x in np.mgrid[:rows, :capacity])
    found = jax.jit(_first_true, static_argnums=3)(
        jnp.asarray(flags), jnp.asarray(row, jnp.int32), jnp.asarray(start, jnp.int32), width
    )
    ahead = flags[row[:, None], (start[:, None] + np.arange(width)) % capacity]
    expected = np.where(ahead.any(axis=1), ahead.argmax(axis=1), width)
    np.testing.assert_array_equal(np.asarray(found), expected)


def test_nothing_qualifies_gives_poison() -> None:
    buffer = _buffer()
    state = buffer.init(EXAMPLE)
    empty = buffer.sample_future(state, jax.random.key(0), 1.0)
    assert (np.asarray(empty.offset) == np.iinfo(np.int32).max).all()
    assert (np.asarray(empty.future["g"]) == np.iinfo(np.int32).max).all()
    assert np.asarray(empty.first["done"]).all()
    # Every stored step ends an episode: no transition stays inside one.
    ref = EpisodeReference(ROWS, CAPACITY)
    state = buffer.add(state, _chunk(ref, np.random.default_rng(0), 5, 1.0))
    ended = buffer.sample_future(state, jax.random.key(0), 0.5)
    assert (np.asarray(ended.offset) == np.iinfo(np.int32).max).all()
    # One qualifying transition among many that do not: always found.
    dones = np.ones((ROWS, 5), bool)
    dones[1, 2] = False
    state = buffer.add(state, {**_chunk(ref, np.random.default_rng(0), 5, 1.0), "done": dones})
    one = buffer.sample_future(state, jax.random.key(1), 1.0)
    assert set(np.asarray(one.first["g"]).tolist()) == {7}
    assert set(np.asarray(one.first["row"]).tolist()) == {1}
    assert set(np.asarray(one.offset).tolist()) == {1}


def test_inside_jit_and_scan_and_bad_input() -> None:
    buffer = _buffer()
    ref = EpisodeReference(ROWS, CAPACITY)
    state = buffer.add(buffer.init(EXAMPLE), _chunk(ref, np.random.default_rng(2), 10, 0.2))

    @eqx.filter_jit
    def offsets(state: Any, keys: Any) -> Any:
        def step(carry: Any, key: Any) -> tuple[Any, Any]:
            return carry, buffer.sample_future(state, key, discount=0.9).offset

        return jax.lax.scan(step, 0, keys)[1]

    got = offsets(state, jax.random.split(jax.random.key(0), 3))
    assert got.shape == (3, ROWS * CAPACITY) and int(got.min()) >= 1

    with pytest.raises(ValueError, match=r"`FlatBuffer.sample_future`.*\(0, 1\]"):
        buffer.sample_future(state, jax.random.key(0), 0.0)
    with pytest.raises(ValueError, match=r"`FlatBuffer.sample_future`.*\(0, 1\]"):
        buffer.sample_future(state, jax.random.key(0), 1.5)
    with pytest.raises(TypeError, match=r"`FlatBuffer.sample_future`.*`discount`"):
        buffer.sample_future(state, jax.random.key(0), jnp.float32(0.5))  # type: ignore[arg-type]
    plain = _buffer(episode_end=None)
    with pytest.raises(ValueError, match=r"`FlatBuffer.sample_future`: needs .*`episode_end`"):
        plain.sample_future(plain.init(EXAMPLE), jax.random.key(0), 1.0)
    with pytest.raises(TypeError, match=r"`FlatBuffer.sample_future`: `rng_key`"):
        buffer.sample_future(state, np.float32(3.0), 1.0)


def test_frame_stacked_futures_are_the_environments_stacks() -> None:
    rows, capacity, size = 2, 12, 3
    buffer = _buffer(
        max_length=rows * capacity,
        add_batch_size=rows,
        sample_batch_size=rows * capacity,
        frame_stack=er.FrameStack(lambda step: step["obs"], size, padding="zeros"),
    )
    frames_ref = FrameReference(rows, capacity, 2, 1, size, "zeros")
    ref = EpisodeReference(rows, capacity)
    rng = np.random.default_rng(3)
    example = {**EXAMPLE, "obs": np.zeros((size, 2), np.int32)}
    state = buffer.init(example)
    for steps in [5, 7, 6, 4]:
        chunk = _chunk(ref, rng, steps, 0.25)
        frames = (1 + np.asarray(chunk["g"]))[..., None] * np.array([1, -1], np.int32)
        frames = frames + 1000 * np.arange(rows, dtype=np.int32)[:, None, None]
        chunk["obs"] = jnp.asarray(frames_ref.add(frames, np.asarray(chunk["done"])))
        state = buffer.add(state, chunk)
        sample = buffer.sample_future(state, jax.random.key(steps), 1.0)
        skipped = {
            r: sum(not frames_ref.stack_complete(r, g) for g in ref.stored()) for r in range(rows)
        }
        expected = ref.future_probabilities(1.0, skipped)
        offset = np.asarray(sample.offset)
        for i in range(rows * capacity):
            r, g = int(sample.first["row"][i]), int(sample.first["g"][i])
            assert (r, g, int(offset[i])) in expected
            for part, step in ((sample.first, g), (sample.second, g + 1)):
                np.testing.assert_array_equal(part["obs"][i], frames_ref.stack(r, step))
            np.testing.assert_array_equal(
                sample.future["obs"][i], frames_ref.stack(r, g + int(offset[i]))
            )
