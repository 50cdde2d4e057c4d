"""Frames stored once (`FrameStack`): sampled stacks equal the ones the environment gave,
exactly the steps whose frames are still stored can be drawn, on a numpy model and on a
real Atari game."""

import dataclasses
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eqx_replay as er

from .reference.frames import FrameReference


FRAME = (2, 3)


def _end(step: Any) -> Any:
    return step["done"]


def _obs(step: Any) -> Any:
    return step["obs"]


def _stack_shape(size: int, axis: int, frame: tuple[int, ...] = FRAME) -> tuple[int, ...]:
    axis = axis % (len(frame) + 1)
    return frame[:axis] + (size,) + frame[axis:]


def _example(size: int, axis: int, dtype: Any = jnp.int32) -> dict[str, Any]:
    return {
        "obs": jnp.zeros(_stack_shape(size, axis), dtype),
        "done": jnp.array(False),
        "id": jnp.zeros(2, jnp.int32),
    }


def _chunk(ref: FrameReference, rng: np.random.Generator, steps: int, dtype: Any) -> dict:
    """The next `steps` steps of every row: unique frames, random episode ends, the stacks
    the environment gives, and each step's `(row, step)`."""
    first = ref.added
    frames = np.stack(
        [
            [np.full(FRAME, (50 * (r + 1) + first + i) % 256, dtype) for i in range(steps)]
            for r in range(ref.rows)
        ]
    )
    dones = rng.random((ref.rows, steps)) < 0.25
    stacks = ref.add(frames, dones)
    ids = np.stack([[[r, first + i] for i in range(steps)] for r in range(ref.rows)])
    return {"obs": stacks, "done": dones, "id": ids.astype(np.int32)}


def _check_windows(sample_obs: np.ndarray, ids: np.ndarray, ref: FrameReference) -> set:
    """Each sampled window is one the buffer may draw and its stacks are the
    environment's; returns the windows seen."""
    windows = ref.windows()
    seen = set()
    for i in range(sample_obs.shape[0]):
        row, first = int(ids[i, 0, 0]), int(ids[i, 0, 1])
        assert (row, first) in windows
        for step in range(sample_obs.shape[1]):
            assert ids[i, step, 1] == first + step
            np.testing.assert_array_equal(sample_obs[i, step], ref.stack(row, first + step))
        seen.add((row, first))
    return seen


TRAJECTORY_CASES = [
    # kind, boundary, padding, axis, period, length
    ("uniform", "ignore", "first", 0, 1, 3),
    ("uniform", "mask", "zeros", -1, 1, 3),
    ("uniform", "strict", "first", 1, 1, 3),
    ("uniform", "ignore", "zeros", 0, 2, 2),
    ("uniform", "strict", "zeros", 0, 2, 2),
    ("prioritised", "ignore", "zeros", 0, 1, 3),
    ("prioritised", "mask", "first", -1, 2, 3),
    ("prioritised", "strict", "first", 0, 1, 2),
]


@pytest.mark.parametrize("kind,boundary,padding,axis,period,length", TRAJECTORY_CASES)
def test_trajectory_buffers_match_the_reference(
    kind: str, boundary: str, padding: Any, axis: int, period: int, length: int
) -> None:
    rows, size = 2, 4
    frame_stack = er.FrameStack(_obs, size, axis=axis, padding=padding)
    settings: dict[str, Any] = dict(
        add_batch_size=rows,
        sample_batch_size=128,
        sample_sequence_length=length,
        period=period,
        min_length_time_axis=length,
        max_length_time_axis=12,
        episode_end=_end,
        boundary=boundary,
        frame_stack=frame_stack,
    )
    if kind == "prioritised":
        buffer: Any = er.make_prioritised_trajectory_buffer(**settings, priority_exponent=1.0)
    else:
        buffer = er.make_trajectory_buffer(**settings)
    physical = kind == "prioritised" or boundary == "strict"
    ref = FrameReference(
        rows,
        buffer.max_length_time_axis,
        length,
        period,
        size,
        padding,
        axis=axis,
        grid="physical" if physical else "logical",
        strict=boundary == "strict",
    )
    rng = np.random.default_rng(0)
    state = buffer.init(_example(size, axis))
    assert state.experience["obs"].shape == (rows, buffer.max_length_time_axis, *FRAME)
    for step in range(20):
        state = buffer.add(state, _chunk(ref, rng, [1, 3][step % 2], np.int32))
        windows = ref.windows()
        assert bool(buffer.can_sample(state)) == (bool(windows) and ref.added >= length)
        if not windows or ref.added < length:
            continue
        seen: set = set()
        for k in range(3):
            sample = buffer.sample(state, jax.random.key(10 * step + k))
            obs, ids = np.asarray(sample.experience["obs"]), np.asarray(sample.experience["id"])
            seen |= _check_windows(obs, ids, ref)
            if kind == "prioritised":
                probabilities = np.asarray(sample.probabilities)
                np.testing.assert_allclose(probabilities, 1 / len(windows), rtol=1e-5)
        assert seen == windows


@pytest.mark.parametrize("kind", ["uniform", "prioritised"])
def test_flat_buffers_match_the_reference(kind: str) -> None:
    rows, capacity, size = 3, 7, 4
    settings: dict[str, Any] = dict(
        max_length=rows * capacity,
        min_length=1,
        sample_batch_size=21,
        add_sequences=True,
        add_batch_size=rows,
        episode_end=_end,
        frame_stack=er.FrameStack(_obs, size, padding="zeros" if kind == "uniform" else "first"),
    )
    if kind == "prioritised":
        buffer: Any = er.make_prioritised_flat_buffer(**settings, priority_exponent=1.0)
    else:
        buffer = er.make_flat_buffer(**settings)
    ref = FrameReference(rows, capacity, 2, 1, size, buffer.frame_stack.padding)
    rng = np.random.default_rng(1)
    state = buffer.init(_example(size, 0, jnp.uint8))
    for step in range(16):
        state = buffer.add(state, _chunk(ref, rng, [1, 2][step % 2], np.uint8))
        windows = ref.windows()
        assert bool(buffer.can_sample(state)) == bool(windows)
        if not windows:
            continue
        seen: set = set()
        for k in range(8):
            pair = buffer.sample(state, jax.random.key(10 * step + k)).experience
            obs = np.stack([np.asarray(pair.first["obs"]), np.asarray(pair.second["obs"])], 1)
            ids = np.stack([np.asarray(pair.first["id"]), np.asarray(pair.second["id"])], 1)
            seen |= _check_windows(obs, ids, ref)
        assert seen == windows


@pytest.fixture(scope="module", params=["first", "zeros"])
def atari(request: Any) -> tuple[str, np.ndarray, np.ndarray]:
    """A real Breakout stream of 3 environments x 90 steps, episodes of at most 5 to 13
    steps, stacked by 4 with each padding."""
    from .helpers.atari import atari_stream  # needs the `atari` extra

    obs, done = atari_stream(rows=3, steps=90, size=4, padding=request.param)
    return request.param, obs, done


def test_real_atari_stacks_come_back_as_the_environment_gave_them(atari: Any) -> None:
    padding, obs, done = atari
    rows, steps = done.shape
    frame_stack = er.FrameStack(_obs, 4, padding=padding, check=True)
    flat = er.make_flat_buffer(
        max_length=rows * 20,
        min_length=1,
        sample_batch_size=60,
        add_sequences=True,
        add_batch_size=rows,
        episode_end=_end,
        frame_stack=frame_stack,
    )
    trajectory = er.make_prioritised_trajectory_buffer(
        add_batch_size=rows,
        sample_batch_size=60,
        sample_sequence_length=4,
        period=1,
        min_length_time_axis=4,
        max_length_time_axis=16,
        episode_end=_end,
        boundary="mask",
        frame_stack=frame_stack,
    )
    ids = np.stack([np.stack([np.full(steps, r), np.arange(steps)], 1) for r in range(rows)])
    example = {"obs": obs[0, 0], "done": done[0, 0], "id": ids[0, 0].astype(np.int32)}
    flat_state, trajectory_state = flat.init(example), trajectory.init(example)
    # Stored: one 84x84 frame per step, a quarter of the stacks.
    assert flat_state.experience["obs"].shape == (rows, 20, 84, 84)
    t, checked = 0, 0
    for chunk in [1, 3, 2, 5, 1, 4, 2] * 5:
        batch = {
            "obs": obs[:, t : t + chunk],
            "done": done[:, t : t + chunk],
            "id": ids[:, t : t + chunk].astype(np.int32),
        }
        flat_state = flat.add(flat_state, batch)
        trajectory_state = trajectory.add(trajectory_state, batch)
        t += chunk
        key = jax.random.key(t)
        if flat.can_sample(flat_state):
            pair = flat.sample(flat_state, key).experience
            for step in (pair.first, pair.second):
                row, at = np.asarray(step["id"]).T
                np.testing.assert_array_equal(np.asarray(step["obs"]), obs[row, at])
                checked += len(row)
        if trajectory.can_sample(trajectory_state):
            windows = trajectory.sample(trajectory_state, key).experience
            row, at = np.asarray(windows["id"][..., 0]), np.asarray(windows["id"][..., 1])
            np.testing.assert_array_equal(np.asarray(windows["obs"]), obs[row, at])
            checked += row.size
    assert t == steps and flat_state.is_full and checked > 10_000
    # Episodes ended all along (so padding was rebuilt many times), the ring wrapped, and
    # the stream kept the rule throughout.
    assert done.sum() >= 15
    assert np.all(np.asarray(flat_state.frame_stack.mismatches) == 0)
    assert trajectory_state.frame_stack is not None
    assert np.all(np.asarray(trajectory_state.frame_stack.mismatches) == 0)


def test_check_counts_the_stacks_that_break_the_rule(atari: Any) -> None:
    padding, obs, done = atari
    rows = done.shape[0]
    wrong = "zeros" if padding == "first" else "first"
    buffer = er.make_flat_buffer(
        max_length=rows * 30,
        min_length=1,
        sample_batch_size=4,
        add_sequences=True,
        add_batch_size=rows,
        episode_end=_end,
        frame_stack=er.FrameStack(_obs, 4, padding=wrong, check=True),
    )
    state = buffer.init({"obs": obs[0, 0], "done": done[0, 0]})
    state = buffer.add(state, {"obs": obs[:, :30], "done": done[:, :30]})
    # Every episode's first 3 stacks are padded, and the padding is the other one.
    starts = 1 + done[:, :29].sum(1)
    np.testing.assert_array_equal(np.asarray(state.frame_stack.mismatches), 3 * starts)
    # A wrong episode end: the stacks after an end that was not reported.
    buffer = dataclasses.replace(
        buffer, frame_stack=er.FrameStack(_obs, 4, padding=padding, check=True)
    )
    state = buffer.init({"obs": obs[0, 0], "done": done[0, 0]})
    hidden = {"obs": obs[:, :30], "done": np.zeros_like(done[:, :30])}
    state = buffer.add(state, hidden)
    assert np.all(np.asarray(state.frame_stack.mismatches) > 0)


def test_an_oldest_step_that_starts_an_episode_stays_sampleable() -> None:
    # One row of 5 steps; the step overwritten last ended an episode, so the oldest stored
    # step starts one and every stored step's stack is complete.
    buffer = er.make_flat_buffer(
        max_length=5,
        min_length=1,
        sample_batch_size=5,
        add_sequences=True,
        add_batch_size=1,
        episode_end=_end,
        frame_stack=er.FrameStack(_obs, 3),
    )
    ref = FrameReference(1, 5, 2, 1, 3, "first")

    def firsts(state: Any) -> set[int]:
        keys = jax.random.split(jax.random.key(0), 20)
        pairs = jax.vmap(buffer.sample, in_axes=(None, 0))(state, keys).experience
        return set(np.asarray(pairs.first["id"][..., 1]).ravel().tolist())

    state = buffer.init(_example(3, 0, jnp.uint8))
    frames = np.arange(1, 8, dtype=np.uint8).reshape(1, 7, 1, 1) * np.ones(FRAME, np.uint8)
    dones = np.array([[False, True, False, False, False, False, False]])
    stacks = ref.add(frames, dones)
    ids = np.stack([np.zeros(7), np.arange(7)], 1)[None].astype(np.int32)
    for part in (slice(0, 4), slice(4, 7)):
        state = buffer.add(
            state, {"obs": stacks[:, part], "done": dones[:, part], "id": ids[:, part]}
        )
    # Steps 2..6 are stored, step 2 starts an episode: all 4 pairs can be drawn.
    assert ref.windows() == {(0, 2), (0, 3), (0, 4), (0, 5)}
    assert firsts(state) == {2, 3, 4, 5}
    # Without that end, the two oldest steps' stacks need frames that are gone.
    ref = FrameReference(1, 5, 2, 1, 3, "first")
    stacks = ref.add(frames, np.zeros_like(dones))
    state = buffer.init(_example(3, 0, jnp.uint8))
    for part in (slice(0, 4), slice(4, 7)):
        state = buffer.add(
            state,
            {"obs": stacks[:, part], "done": np.zeros_like(dones[:, part]), "id": ids[:, part]},
        )
    assert ref.windows() == {(0, 4), (0, 5)}
    assert firsts(state) == {4, 5}


def test_stale_priorities_do_not_revive_a_window_whose_frames_are_gone() -> None:
    buffer = er.make_prioritised_flat_buffer(
        max_length=6,
        min_length=1,
        sample_batch_size=6,
        add_sequences=True,
        add_batch_size=1,
        priority_exponent=1.0,
        episode_end=_end,
        frame_stack=er.FrameStack(_obs, 3),
    )
    ref = FrameReference(1, 6, 2, 1, 3, "first")
    rng = np.random.default_rng(0)
    state = buffer.init(_example(3, 0, jnp.uint8))
    chunk = _chunk(ref, rng, 6, np.uint8)
    chunk["done"][:] = False
    state = buffer.add(state, chunk)
    keys = jax.random.split(jax.random.key(0), 8)
    sample = jax.vmap(buffer.sample, in_axes=(None, 0))(state, keys)
    handles = np.asarray(sample.indices).ravel()
    firsts = np.asarray(sample.experience.first["id"][..., 1]).ravel()
    # Two more steps: steps 2 and 3 become the oldest stacks, whose frames are gone.
    more = _chunk(ref, rng, 2, np.uint8)
    more["done"][:] = False
    state = buffer.add(state, more)
    state = buffer.set_priorities(state, handles, np.full(handles.shape, 100.0, np.float32))
    after = jax.vmap(buffer.sample, in_axes=(None, 0))(state, keys)
    firsts_after = np.asarray(after.experience.first["id"][..., 1]).ravel()
    assert set(firsts_after.tolist()) <= {4, 5, 6}
    assert {2, 3} & set(firsts.tolist())  # the stale handles did name those windows


def test_frame_stacked_states_save_load_and_compose(tmp_path: Any) -> None:
    buffer: Any = er.make_trajectory_buffer(
        add_batch_size=2,
        sample_batch_size=16,
        sample_sequence_length=2,
        period=1,
        min_length_time_axis=2,
        max_length_time_axis=8,
        episode_end=_end,
        frame_stack=er.FrameStack(_obs, 3, axis=-1, padding="zeros"),
    )
    ref = FrameReference(2, 8, 2, 1, 3, "zeros", axis=-1)
    rng = np.random.default_rng(0)
    example = _example(3, -1)
    chunks = [_chunk(ref, rng, 3, np.int32) for _ in range(5)]

    # Inside `lax.scan` and the user's own `filter_jit`.
    @eqx.filter_jit
    def fill(state: Any, batches: Any) -> Any:
        def step(state: Any, batch: Any) -> tuple[Any, None]:
            return buffer.add(state, batch), None

        return jax.lax.scan(step, state, batches)[0]

    batches = jax.tree.map(lambda *xs: jnp.stack(xs), *chunks)
    state = fill(buffer.init(example), batches)
    assert isinstance(state, er.FrameStackedTrajectoryBufferState)
    sample = buffer.sample(state, jax.random.key(3))
    _check_windows(np.asarray(sample.experience["obs"]), np.asarray(sample.experience["id"]), ref)

    # `vmap` over independent states.
    states = jax.vmap(lambda _: buffer.init(example))(jnp.arange(2))
    states = jax.vmap(buffer.add, in_axes=(0, None))(states, chunks[0])
    samples = jax.vmap(buffer.sample)(states, jax.random.split(jax.random.key(0), 2))
    assert samples.experience["obs"].shape == (2, 16, 2, *FRAME, 3)

    # Saved and loaded exactly, frames and episode starts.
    er.save_state(tmp_path / "ckpt", buffer, state)
    loaded = er.load_state(tmp_path / "ckpt", buffer, example)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), loaded, state))
    again = buffer.sample(loaded, jax.random.key(3))
    np.testing.assert_array_equal(again.experience["obs"], sample.experience["obs"])
    # Without `check` the state keeps no counts; a checkpoint loads into a buffer with
    # `check`, which counts from zero, and back.
    assert state.frame_stack.mismatches is None
    checked = dataclasses.replace(
        buffer, frame_stack=er.FrameStack(_obs, 3, axis=-1, padding="zeros", check=True)
    )
    counting = er.load_state(tmp_path / "ckpt", checked, example)
    np.testing.assert_array_equal(counting.frame_stack.mismatches, [0, 0])
    np.testing.assert_array_equal(
        counting.frame_stack.episode_starts, state.frame_stack.episode_starts
    )
    bad = jax.tree.map(jnp.asarray, _chunk(ref, rng, 3, np.int32))
    bad["obs"] = bad["obs"].at[1, 2].add(1)  # row 1's last stack breaks the rule
    counting = checked.add(counting, bad)
    np.testing.assert_array_equal(counting.frame_stack.mismatches, [0, 1])
    er.save_state(tmp_path / "counted", checked, counting)
    plain = er.load_state(tmp_path / "counted", buffer, example)
    assert plain.frame_stack.mismatches is None
    assert plain.current_index == counting.current_index
    # A checkpoint from before `check` was recorded (the counts always kept) loads too.
    import json

    metadata = tmp_path / "counted" / "eqx_replay" / "metadata"
    description = json.loads(metadata.read_text())
    del description["configuration"]["frame_stack"]["check"]
    metadata.write_text(json.dumps(description))
    assert er.load_state(tmp_path / "counted", buffer, example).frame_stack.mismatches is None
    again = er.load_state(tmp_path / "counted", checked, example)
    np.testing.assert_array_equal(again.frame_stack.mismatches, [0, 1])
    # A buffer with other stacks refuses the checkpoint.
    other = dataclasses.replace(buffer, frame_stack=er.FrameStack(_obs, 3, axis=-1))
    with pytest.raises(ValueError, match="frame_stack"):
        er.load_state(tmp_path / "ckpt", other, example)


def test_bad_settings_and_inputs_are_refused_by_name(tmp_path: Any) -> None:
    with pytest.raises(ValueError, match=r"`FrameStack`: `size` must be >= 2"):
        er.FrameStack(_obs, 1)
    for name, value, error, message in [
        ("padding", "reset", ValueError, "`padding` must be one of 'first', 'zeros'"),
        ("where", "obs", TypeError, "`where` must be a function"),
        ("check", 1, TypeError, "`check` must be a bool"),
    ]:
        settings: dict[str, Any] = {"where": _obs, "size": 4, name: value}
        with pytest.raises((error, TypeError)) as info:
            er.FrameStack(**settings)
        text = str(info.value)
        if "Type-check error" in text:  # this run's import hook checks the annotation first
            assert f"parameter '{name}'" in text
        else:
            assert isinstance(info.value, error) and message in text
    stack = er.FrameStack(_obs, 4)
    with pytest.raises(ValueError, match=r"`FlatBuffer`: `frame_stack` needs `episode_end`"):
        er.make_flat_buffer(10, 1, 2, frame_stack=stack)
    with pytest.raises(
        ValueError, match=r"at least 7 steps per row; got `max_length_time_axis` = 6"
    ):
        er.make_trajectory_buffer(
            1, 2, 4, 1, 4, max_length_time_axis=6, episode_end=_end, frame_stack=stack
        )
    buffer = er.make_flat_buffer(20, 1, 2, episode_end=_end, frame_stack=stack)
    with pytest.raises(
        ValueError,
        match=r"`FlatBuffer.init`: the stacked observation .*"
        r"expected 4 frames along axis 0",
    ):
        buffer.init({"obs": jnp.zeros((84, 84, 4), jnp.uint8), "done": jnp.array(False)})
    state = buffer.init({"obs": jnp.zeros((4, 5, 5), jnp.uint8), "done": jnp.array(False)})
    with pytest.raises(
        ValueError,
        match=r"`FlatBuffer.add`: leaf \['obs'\] has shape "
        r"\(5, 5\); expected \(4, 5, 5\)",
    ):
        buffer.add(state, {"obs": jnp.zeros((5, 5), jnp.uint8), "done": jnp.array(False)})
    # The state is intact after a refused add.
    state = buffer.add(state, {"obs": jnp.ones((4, 5, 5), jnp.uint8), "done": jnp.array(True)})
    assert int(state.current_index) == 1
    from eqx_replay.vault import Vault  # needs the `io` extra

    with pytest.raises(ValueError, match=r"frame-stacked buffer's"):
        vault = Vault("v", experience_structure=state.experience, rel_dir=str(tmp_path))
        vault.write(state)


@pytest.mark.parametrize(
    "kind,period,length,capacity,refused",
    [("uniform", 2, 2, 6, 5), ("prioritised", 3, 3, 9, 6)],
)
def test_the_smallest_ring_allowed_always_keeps_a_window(
    kind: str, period: int, length: int, capacity: int, refused: int
) -> None:
    # With no episode ends the oldest `size - 1` steps never have complete stacks; the
    # smallest ring allowed (`length + size - 2 + period`, rounded to the period grid
    # when prioritised) still has a window to draw after every add.
    settings: dict[str, Any] = dict(
        add_batch_size=1,
        sample_batch_size=16,
        sample_sequence_length=length,
        period=period,
        min_length_time_axis=length,
        max_length_time_axis=capacity,
        episode_end=_end,
        frame_stack=er.FrameStack(_obs, 4),
    )
    if kind == "prioritised":
        buffer: Any = er.make_prioritised_trajectory_buffer(**settings)
    else:
        buffer = er.make_trajectory_buffer(**settings)
    grid = "physical" if kind == "prioritised" else "logical"
    ref = FrameReference(1, capacity, length, period, 4, "first", grid=grid)
    rng = np.random.default_rng(0)
    state = buffer.init(_example(4, 0))
    for step in range(4 * capacity):
        chunk = _chunk(ref, rng, 1, np.int32)
        chunk["done"][:] = False
        ref.dones[0][-1] = False
        state = buffer.add(state, chunk)
        if ref.added < length:
            continue
        assert ref.windows() and bool(buffer.can_sample(state)), step
        sample = buffer.sample(state, jax.random.key(step)).experience
        _check_windows(np.asarray(sample["obs"]), np.asarray(sample["id"]), ref)
    # One grid start fewer: with some write heads no window's first stack is complete.
    smaller = dict(settings, max_length_time_axis=refused)
    with pytest.raises(ValueError, match=r"must always keep a window"):
        if kind == "prioritised":
            er.make_prioritised_trajectory_buffer(**smaller)
        else:
            er.make_trajectory_buffer(**smaller)
