"""`TrajectoryBuffer.sample_episodes`: windows from the first step of an episode, drawn
uniformly among the stored ones, masked exactly to the episode, against a numpy model."""

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


ROWS, CAPACITY, LENGTH = 3, 20, 6
EXAMPLE = {"row": np.int32(0), "g": np.int32(0), "done": np.bool_(False)}


def _end(step: Any) -> Any:
    return step["done"]


def _buffer(**changes: Any) -> Any:
    settings: dict[str, Any] = dict(
        add_batch_size=ROWS,
        sample_batch_size=64,
        sample_sequence_length=LENGTH,
        period=1,
        min_length_time_axis=LENGTH,
        max_length_time_axis=CAPACITY,
        episode_end=_end,
    )
    return er.make_trajectory_buffer(**{**settings, **changes})


def _check(sample: Any, ref: EpisodeReference) -> list[tuple[int, int]]:
    """Each window is an episode's start with its exact mask; returns the starts."""
    rows = np.asarray(sample.experience["row"])
    g = np.asarray(sample.experience["g"])
    mask = np.asarray(sample.mask)
    starts = set(ref.episode_starts())
    drawn = []
    for i in range(rows.shape[0]):
        r, first = int(rows[i, 0]), int(g[i, 0])
        assert (r, first) in starts
        np.testing.assert_array_equal(mask[i], ref.episode_mask(r, first, mask.shape[1]))
        in_mask = mask[i]
        np.testing.assert_array_equal(g[i][in_mask], first + np.arange(in_mask.sum()))
        drawn.append((r, first))
    return drawn


@pytest.mark.parametrize("boundary", ["ignore", "mask", "strict"])
def test_episodes_are_drawn_uniformly_with_exact_masks(boundary: str) -> None:
    buffer = _buffer(boundary=boundary)
    ref = EpisodeReference(ROWS, CAPACITY)
    rng = np.random.default_rng(0)
    state = buffer.init(EXAMPLE)
    many = jax.jit(jax.vmap(buffer.sample_episodes, in_axes=(None, 0)))
    for steps, p_end in [(5, 0.3), (9, 0.15), (12, 0.3), (7, 0.0), (4, 0.5)]:
        state = buffer.add(state, _chunk(ref, rng, steps, p_end))
        samples = many(state, jax.random.split(jax.random.key(ref.added), 40))
        flat = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), samples)
        drawn = _check(flat, ref)
        counts = Counter(drawn)
        starts = ref.episode_starts()
        assert set(counts) == set(starts)
        assert scipy.stats.chisquare([counts[s] for s in starts]).pvalue > 1e-4
    assert ref.added > CAPACITY  # the ring wrapped: its oldest steps are no starts


def test_no_start_stored_gives_poison() -> None:
    buffer = _buffer(sample_batch_size=4)
    empty = buffer.sample_episodes(buffer.init(EXAMPLE), jax.random.key(0))
    assert np.asarray(empty.mask).all()
    assert (np.asarray(empty.experience["g"]) == np.iinfo(np.int32).max).all()
    # A ring filled exactly: its state is that of a ring filled twice, so its oldest step
    # is not taken for a start, though it is the row's first here.
    full = buffer.add(
        buffer.init(EXAMPLE),
        _chunk(EpisodeReference(ROWS, CAPACITY), np.random.default_rng(0), CAPACITY, 0.0),
    )
    assert int(full.current_index) == 0 and bool(full.is_full)
    assert (np.asarray(buffer.sample_episodes(full, jax.random.key(0)).mask)).all()
    # A wrapped ring whose rows hold one long episode each: its start is gone.
    ref = EpisodeReference(ROWS, CAPACITY)
    state = buffer.add(buffer.init(EXAMPLE), _chunk(ref, np.random.default_rng(0), 15, 0.0))
    assert np.asarray(buffer.sample_episodes(state, jax.random.key(0)).mask).all()
    state = buffer.add(state, _chunk(ref, np.random.default_rng(0), 15, 0.0))
    gone = buffer.sample_episodes(state, jax.random.key(0))
    assert (np.asarray(gone.experience["row"]) == np.iinfo(np.int32).max).all()


def test_frame_stacked_episodes_are_the_environments_stacks() -> None:
    size = 3
    buffer = _buffer(frame_stack=er.FrameStack(lambda s: s["obs"], size, padding="zeros"))
    frames_ref = FrameReference(ROWS, CAPACITY, LENGTH, 1, size, "zeros")
    ref = EpisodeReference(ROWS, CAPACITY)
    rng = np.random.default_rng(3)
    state = buffer.init({**EXAMPLE, "obs": np.zeros((size,), np.int32)})
    for steps in [8, 9, 10]:
        chunk = _chunk(ref, rng, steps, 0.2)
        frames = np.asarray(chunk["g"]) + 1 + 1000 * np.arange(ROWS)[:, None]
        chunk["obs"] = jnp.asarray(frames_ref.add(frames, np.asarray(chunk["done"])))
        state = buffer.add(state, chunk)
        sample = buffer.sample_episodes(state, jax.random.key(steps))
        drawn = _check(sample, ref)
        obs, mask = np.asarray(sample.experience["obs"]), np.asarray(sample.mask)
        for i, (r, first) in enumerate(drawn):
            for t in np.flatnonzero(mask[i]):
                np.testing.assert_array_equal(obs[i, t], frames_ref.stack(r, first + int(t)))


def test_inside_scan_and_bad_input() -> None:
    buffer = _buffer(sample_batch_size=8)
    ref = EpisodeReference(ROWS, CAPACITY)
    state = buffer.add(buffer.init(EXAMPLE), _chunk(ref, np.random.default_rng(1), 10, 0.3))

    @eqx.filter_jit
    def lengths(state: Any, keys: Any) -> Any:
        def step(carry: Any, key: Any) -> tuple[Any, Any]:
            return carry, buffer.sample_episodes(state, key).mask.sum(axis=1)

        return jax.lax.scan(step, 0, keys)[1]

    got = lengths(state, jax.random.split(jax.random.key(0), 3))
    assert got.shape == (3, 8) and int(got.min()) >= 1

    plain = _buffer(episode_end=None)
    with pytest.raises(
        ValueError, match=r"`TrajectoryBuffer.sample_episodes`: needs .*`episode_end`"
    ):
        plain.sample_episodes(plain.init(EXAMPLE), jax.random.key(0))
    with pytest.raises(TypeError, match=r"`TrajectoryBuffer.sample_episodes`: `rng_key`"):
        buffer.sample_episodes(state, np.float32(0.0))


@pytest.mark.parametrize("capacity", [301, 256])
def test_large_rings_draw_every_stored_start(capacity: int) -> None:
    # Rings of several blocks of flags (and a partial last one): blocks counted as
    # they are and blocks at the row ends and write heads, counted flag by flag.
    buffer = _buffer(max_length_time_axis=capacity, sample_batch_size=512)
    ref = EpisodeReference(ROWS, capacity)
    rng = np.random.default_rng(5)
    state = buffer.init(EXAMPLE)
    many = jax.jit(jax.vmap(buffer.sample_episodes, in_axes=(None, 0)))
    for steps, p_end in [(150, 0.02), (capacity, 0.05), (97, 0.02)]:
        state = buffer.add(state, _chunk(ref, rng, steps, p_end))
        samples = many(state, jax.random.split(jax.random.key(ref.added), 16))
        flat = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), samples)
        counts = Counter(_check(flat, ref))
        starts = ref.episode_starts()
        assert set(counts) == set(starts)
        assert scipy.stats.chisquare([counts[s] for s in starts]).pvalue > 1e-4
