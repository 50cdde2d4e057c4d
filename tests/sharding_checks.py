"""Checks of sharded buffers on 8 fake CPU devices, run in a process of their own by
`test_sharding.py` (the other tests' process has 2 devices, for the pmap tests).

Run directly, it prints one JSON line: `{check name: null (passed) or the traceback}`.
"""

import json
import sys
import traceback
from typing import Any

import jax


jax.config.update("jax_num_cpu_devices", 8)

import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

import eqx_replay  # noqa: E402


N = 8
COLLECTIVES = ("all-gather", "all-reduce", "collective-permute", "all-to-all", "reduce-scatter")
EXAMPLE = {"obs": jnp.zeros(3), "step": jnp.int32(0)}


def meshes() -> dict[str, jax.sharding.Mesh]:
    return {
        "explicit": jax.make_mesh((N,), ("data",)),  # JAX 0.10's default: Explicit axes
        "auto": jax.sharding.Mesh(np.array(jax.devices()), ("data",)),
    }


def rows_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, P("data"))


def batch(rows: int, steps: int, i: int) -> dict[str, jax.Array]:
    """Step `t` of row `r` in add `i` says where it came from: `step = 1000 * (i * steps +
    t) + r`."""
    t = jnp.arange(steps)[None, :] + i * steps
    r = jnp.arange(rows)[:, None]
    step = (1000 * t + r).astype(jnp.int32)
    return {
        "obs": jnp.broadcast_to(step[..., None], (rows, steps, 3)).astype(jnp.float32),
        "step": step,
    }


def leaves_equal(a, b) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(
        x.shape == y.shape and bool(np.array_equal(np.asarray(x), np.asarray(y)))
        for x, y in zip(la, lb)
    )


def collectives(lowered) -> list[str]:
    text = lowered.compile().as_text()
    return [name for name in COLLECTIVES if name in text]


TRAJECTORY: dict[str, Any] = dict(
    add_batch_size=16,
    sample_batch_size=32,
    sample_sequence_length=4,
    period=2,
    min_length_time_axis=4,
    max_length_time_axis=20,
)


def check_trajectory_states_equal_unsharded_and_stay_sharded():
    for name, mesh in meshes().items():
        sharding = rows_sharding(mesh)
        ours = eqx_replay.make_trajectory_buffer(**TRAJECTORY, sharding=sharding)
        plain = eqx_replay.make_trajectory_buffer(**TRAJECTORY)
        state, reference = ours.init(EXAMPLE), plain.init(EXAMPLE)
        for i, steps in enumerate([3, 1, 7, 5, 9, 2, 6]):
            added = batch(16, steps, i)
            state, reference = ours.add(state, added), plain.add(reference, added)
            assert leaves_equal(state, reference), (name, i)
            spec = state.experience["obs"].sharding.spec
            assert spec[0] == "data", (name, spec)
            assert state.current_index.sharding.is_fully_replicated, name
            assert bool(ours.can_sample(state)) == bool(plain.can_sample(reference))


def check_flat_and_queue_states_equal_unsharded():
    mesh = meshes()["explicit"]
    sharding = rows_sharding(mesh)
    flat: dict[str, Any] = dict(
        max_length=160, min_length=16, sample_batch_size=32, add_batch_size=16
    )
    ours = eqx_replay.make_flat_buffer(**flat, sharding=sharding)
    plain = eqx_replay.make_flat_buffer(**flat)
    state, reference = ours.init(EXAMPLE), plain.init(EXAMPLE)
    for i in range(13):
        added = jax.tree.map(lambda x: x[:, 0], batch(16, 1, i))
        state, reference = ours.add(state, added), plain.add(reference, added)
        assert leaves_equal(state, reference), i
        assert int(ours.size(state)) == int(plain.size(reference)) == 16 * min(i + 1, 10)
    queue: dict[str, Any] = dict(
        max_length_time_axis=12, add_batch_size=16, add_sequence_length=4, sample_sequence_length=3
    )
    ours_q = eqx_replay.make_trajectory_queue(**queue, sharding=sharding)
    plain_q = eqx_replay.make_trajectory_queue(**queue)
    state, reference = ours_q.init(EXAMPLE), plain_q.init(EXAMPLE)
    for i in range(6):
        added = batch(16, 4, i)
        state, reference = ours_q.add(state, added), plain_q.add(reference, added)
        assert leaves_equal(state, reference), ("queue add", i)
        assert bool(ours_q.can_add(state)) == bool(plain_q.can_add(reference))
        assert bool(ours_q.can_sample(state)) == bool(plain_q.can_sample(reference))
        assert int(ours_q.size(state)) == int(plain_q.size(reference))
        (state, got), (reference, want) = ours_q.sample(state), plain_q.sample(reference)
        assert leaves_equal(state, reference), ("queue sample", i)
        assert leaves_equal(got, want), ("queue sample", i)
        assert got.experience["obs"].sharding.spec[0] == "data"


def check_frame_stacks_split_with_the_rows():
    from reference.frames import FrameReference

    mesh = meshes()["explicit"]
    stack = eqx_replay.FrameStack(lambda step: step["obs"], 3, padding="zeros")
    config: dict[str, Any] = dict(TRAJECTORY, episode_end=lambda step: step["done"])
    config["frame_stack"] = stack
    example = {"obs": jnp.zeros((3, 2), jnp.int32), "done": jnp.array(False), "id": jnp.int32(0)}
    ours = eqx_replay.make_trajectory_buffer(**config, sharding=rows_sharding(mesh))
    plain = eqx_replay.make_trajectory_buffer(**config)
    weighted = eqx_replay.make_prioritised_trajectory_buffer(**config, sharding=rows_sharding(mesh))
    ref = FrameReference(16, 20, 4, 2, 3, "zeros")
    rng = np.random.default_rng(0)
    state, reference, weighted_state = (
        ours.init(example),
        plain.init(example),
        weighted.init(example),
    )
    for i, steps in enumerate([3, 1, 7, 5, 9, 2, 6]):
        first = ref.added
        frames = (1 + first + np.arange(steps))[None, :, None] + 100 * np.arange(16)[:, None, None]
        frames = np.broadcast_to(frames, (16, steps, 2)).astype(np.int32)
        done = rng.random((16, steps)) < 0.2
        stacks = ref.add(frames, done)
        ids = (1000 * np.arange(16)[:, None] + first + np.arange(steps)).astype(np.int32)
        added = {"obs": jnp.asarray(stacks), "done": jnp.asarray(done), "id": jnp.asarray(ids)}
        state, reference = ours.add(state, added), plain.add(reference, added)
        weighted_state = weighted.add(weighted_state, added)
        assert leaves_equal(state, reference), i
        assert state.frame_stack.episode_starts.sharding.spec[0] == "data"
        pairs: list[tuple[Any, Any]] = [(ours, state), (weighted, weighted_state)]
        for buffer, buffer_state in pairs:
            if not bool(buffer.can_sample(buffer_state)):
                continue
            sample = buffer.sample(buffer_state, jr.key(i)).experience
            for obs, id_ in zip(np.asarray(sample["obs"]), np.asarray(sample["id"])):
                row, g = divmod(int(id_[0]), 1000)
                assert ref.stack_complete(row, g), (i, row, g)
                for t in range(4):
                    np.testing.assert_array_equal(obs[t], ref.stack(row, g + t))
    # A checkpoint saved without `check` loads into a sharded buffer with it: the counts
    # start at zero, split with the rows as `init` would split them.
    import tempfile

    checked = eqx_replay.make_trajectory_buffer(
        **dict(
            config, frame_stack=eqx_replay.FrameStack(stack.where, 3, padding="zeros", check=True)
        ),
        sharding=rows_sharding(mesh),
    )
    with tempfile.TemporaryDirectory() as directory:
        eqx_replay.save_state(directory + "/ckpt", ours, state)
        loaded = eqx_replay.load_state(directory + "/ckpt", checked, example)
    counts = loaded.frame_stack.mismatches
    assert counts.sharding.spec[0] == "data" and not np.asarray(counts).any()
    assert counts.sharding == checked.init(example).frame_stack.mismatches.sharding


def prioritised(mesh, **changes):
    config: dict[str, Any] = dict(TRAJECTORY, **changes)
    return eqx_replay.make_prioritised_trajectory_buffer(**config, sharding=rows_sharding(mesh))


def filled(buffer: Any, adds: int = 12, steps: int = 3) -> Any:
    state = buffer.init(EXAMPLE)
    for i in range(adds):
        state = buffer.add(state, batch(buffer.add_batch_size, steps, i))
    return state


def check_no_collectives_in_add_sample_set_priorities():
    key = jr.PRNGKey(0)
    for name, mesh in meshes().items():
        sharding = rows_sharding(mesh)
        kinds = {
            "trajectory": eqx_replay.make_trajectory_buffer(**TRAJECTORY, sharding=sharding),
            "prioritised": prioritised(mesh),
            "flat": eqx_replay.make_flat_buffer(160, 16, 32, add_batch_size=16, sharding=sharding),
            "prioritised flat": eqx_replay.make_prioritised_flat_buffer(
                160, 16, 32, add_batch_size=16, sharding=sharding
            ),
        }
        for kind, buffer in kinds.items():
            state = buffer.init(EXAMPLE)
            added = batch(16, 3, 0)
            if "flat" in kind:
                added = jax.tree.map(lambda x: x[:, 0], added)
            found = {
                "add": collectives(buffer.add.lower(state, added)),
                "sample": collectives(buffer.sample.lower(state, key)),
            }
            if "prioritised" in kind:
                indices = jax.device_put(jnp.zeros(32, jnp.int32), sharding)
                priorities = jax.device_put(jnp.ones(32), sharding)
                found["set_priorities"] = collectives(
                    buffer.set_priorities.lower(state, indices, priorities)
                )
            assert not any(found.values()), (name, kind, found)
        queue = eqx_replay.make_trajectory_queue(12, 16, 4, 3, sharding=sharding)
        state = queue.init(EXAMPLE)
        assert not collectives(queue.add.lower(state, batch(16, 4, 0))), (name, "queue add")
        assert not collectives(queue.sample.lower(state)), (name, "queue sample")


def check_each_device_samples_only_its_rows():
    for name, mesh in meshes().items():
        sharding = rows_sharding(mesh)
        buffers: list[Any] = [
            eqx_replay.make_trajectory_buffer(**TRAJECTORY, sharding=sharding),
            prioritised(mesh),
        ]
        for buffer in buffers:
            state = filled(buffer)
            sample = buffer.sample(state, jr.PRNGKey(3))
            steps = sample.experience["step"]
            assert steps.sharding.spec[0] == "data"
            for shard in steps.addressable_shards:
                device = mesh.devices.tolist().index(shard.device)
                rows = np.asarray(shard.data) % 1000
                assert set(rows.ravel()) <= set(range(2 * device, 2 * device + 2)), (
                    name,
                    device,
                    rows,
                )
            # Windows are consecutive steps of one row, never across the write head.
            values = np.asarray(steps)
            assert (np.diff(values // 1000, axis=1) == 1).all() and (
                np.diff(values % 1000, axis=1) == 0
            ).all()


def check_sample_episodes_draws_each_device_s_own_episodes():
    mesh = meshes()["explicit"]
    config: dict[str, Any] = dict(
        TRAJECTORY, episode_end=lambda step: step["step"] // 1000 % 4 == 3, boundary="mask"
    )
    ours = eqx_replay.make_trajectory_buffer(**config, sharding=rows_sharding(mesh))
    sample = ours.sample_episodes(filled(ours), jr.key(0))
    steps = sample.experience["step"]
    assert steps.sharding.spec[0] == "data"
    for shard in steps.addressable_shards:
        device = mesh.devices.tolist().index(shard.device)
        assert set((np.asarray(shard.data) % 1000).ravel()) <= {2 * device, 2 * device + 1}
    first = np.asarray(steps)[:, 0] // 1000
    assert (first % 4 == 0).all()  # every window starts an episode
    assert np.asarray(sample.mask).all()  # 4-step episodes, all stored, in 4-step windows
    np.testing.assert_array_equal(np.diff(np.asarray(steps) // 1000, axis=1), 1)


def check_epoch_is_refused_clearly():
    buffer = eqx_replay.make_trajectory_buffer(
        **TRAJECTORY, sharding=rows_sharding(meshes()["explicit"])
    )
    try:
        buffer.epoch(filled(buffer), jr.key(0))
    except TypeError as error:
        assert "`TrajectoryBuffer.epoch`: a sharded buffer has no `epoch`" in str(error), error
    else:
        raise AssertionError("a sharded epoch was not refused")


def check_sample_future_draws_each_device_s_own_episodes():
    mesh = meshes()["explicit"]
    rows, steps = 16, 12
    config: dict[str, Any] = dict(
        max_length=rows * 16,
        min_length=2,
        sample_batch_size=32,
        add_sequences=True,
        add_batch_size=rows,
        episode_end=lambda step: step["step"] // 1000 % 4 == 3,  # every 4th step ends one
    )
    ours = eqx_replay.make_flat_buffer(**config, sharding=rows_sharding(mesh))
    plain = eqx_replay.make_flat_buffer(**config)
    state, reference = ours.init(EXAMPLE), plain.init(EXAMPLE)
    for i in range(2):
        state, reference = (
            ours.add(state, batch(rows, steps, i)),
            plain.add(reference, batch(rows, steps, i)),
        )
    sample = ours.sample_future(state, jr.key(0), 1.0)
    first, future = sample.first["step"], sample.future["step"]
    placed = sample.offset.sharding
    assert isinstance(placed, NamedSharding) and placed.spec[0] == "data"
    assert first.sharding.spec[0] == "data"
    for shard in first.addressable_shards:
        device = mesh.devices.tolist().index(shard.device)
        assert set((np.asarray(shard.data) % 1000).tolist()) <= {2 * device, 2 * device + 1}
    first, future, offset = np.asarray(first), np.asarray(future), np.asarray(sample.offset)
    np.testing.assert_array_equal(future, first + 1000 * offset)
    t_first, t_future = first // 1000, future // 1000
    assert (t_first % 4 != 3).all() and (t_future // 4 == t_first // 4).all()
    np.testing.assert_array_equal(np.asarray(sample.second["step"]), first + 1000)


def chi_square_p(observed: np.ndarray, expected: np.ndarray) -> float:
    from math import erfc, sqrt

    statistic = float(((observed - expected) ** 2 / expected).sum())
    dof = len(observed) - 1
    # Wilson-Hilferty normal approximation of the chi-square tail.
    z = ((statistic / dof) ** (1 / 3) - (1 - 2 / (9 * dof))) / sqrt(2 / (9 * dof))
    return 0.5 * erfc(z / sqrt(2))


def check_uniform_over_all_windows():
    mesh = meshes()["explicit"]
    buffer = eqx_replay.make_trajectory_buffer(**TRAJECTORY, sharding=rows_sharding(mesh))
    state = filled(buffer, adds=9)  # 27 steps on a ring of 20: full, head at 7
    draw = jax.jit(
        lambda keys: jax.vmap(lambda k: buffer.sample(state, k).experience["step"][:, 0])(keys)
    )
    first = np.asarray(draw(jr.split(jr.PRNGKey(5), 400))).ravel()
    windows, counts = np.unique(first, return_counts=True)
    # 16 rows x 9 starts (period 2 over the 20 stored steps, length 4): every one drawn.
    assert len(windows) == 16 * 9, len(windows)
    expected = np.full(len(counts), first.size / len(counts))
    assert chi_square_p(counts, expected) > 1e-3, counts


def check_prioritised_frequencies_match_reported_probabilities():
    mesh = meshes()["explicit"]
    buffer = prioritised(mesh)
    state = filled(buffer)
    sample = buffer.sample(state, jr.PRNGKey(1))
    # Unequal priorities, differently spread on every device.
    state = buffer.set_priorities(state, sample.indices, jnp.arange(1.0, 33.0) ** 2)
    keys = jr.split(jr.PRNGKey(2), 300)
    counts: dict[int, int] = {}
    reported: dict[int, float] = {}
    total = 0
    for key in keys:
        got = buffer.sample(state, key)
        for index, probability in zip(np.asarray(got.indices), np.asarray(got.probabilities)):
            counts[int(index)] = counts.get(int(index), 0) + 1
            previous = reported.setdefault(int(index), float(probability))
            assert abs(previous - probability) <= 1e-6 * previous
            total += 1
    # Each draw of the sample lands on item i with the reported probability (its device's
    # share times its probability within the device): frequencies over all draws match.
    probabilities = np.array([reported[i] for i in counts])
    observed = np.array([counts[i] for i in counts])
    assert abs(probabilities.sum() - 1) < 0.05, probabilities.sum()
    assert chi_square_p(observed, probabilities * total / probabilities.sum()) > 1e-3


def check_set_priorities_routes_handles_and_ignores_foreign_ones():
    mesh = meshes()["explicit"]
    buffer = prioritised(mesh)
    state = filled(buffer)
    sample = buffer.sample(state, jr.PRNGKey(7))
    before = np.asarray(state.priorities.nodes)
    # Swapping the halves sends every handle to a device that did not draw it: ignored.
    indices = np.asarray(sample.indices)
    swapped = np.concatenate([indices[16:], indices[:16]])
    state = buffer.set_priorities(state, swapped, np.full(32, 5.0, np.float32))
    assert np.array_equal(np.asarray(state.priorities.nodes), before)
    # In the sample's order (here through NumPy, unplaced), each reaches its device.
    state = buffer.set_priorities(state, np.asarray(sample.indices), np.full(32, 5.0, np.float32))
    assert np.allclose(np.asarray(state.max_priority), 5.0**0.6)
    # And in place: the sample's own (sharded) indices.
    state = buffer.set_priorities(state, sample.indices, jnp.full(32, 7.0))
    assert np.allclose(np.asarray(state.max_priority), 7.0**0.6)


def check_bad_configurations_are_refused_with_clear_errors():
    mesh = meshes()["explicit"]
    sharding = rows_sharding(mesh)
    cases: list[tuple[dict[str, Any], Any, type[Exception], str]] = [
        (
            dict(TRAJECTORY, add_batch_size=12),
            sharding,
            ValueError,
            "`add_batch_size` must divide evenly over the 8 devices",
        ),
        (
            dict(TRAJECTORY, sample_batch_size=20),
            sharding,
            ValueError,
            "`sample_batch_size` must divide evenly",
        ),
        (TRAJECTORY, NamedSharding(mesh, P()), ValueError, "spec must name the mesh axis"),
        (
            TRAJECTORY,
            NamedSharding(mesh, P(None, "data")),
            ValueError,
            "spec must name the mesh axis",
        ),
        (TRAJECTORY, "data", TypeError, "`sharding` must be a `jax.sharding.NamedSharding`"),
    ]
    for config, given, error, message in cases:
        try:
            eqx_replay.make_trajectory_buffer(**config, sharding=given)
        except error as caught:
            assert message in str(caught), (message, str(caught))
        else:
            raise AssertionError(f"no error for {config}, {given}")
    for make, kwargs, message in [
        (
            eqx_replay.make_trajectory_buffer,
            dict(TRAJECTORY, boundary="strict", episode_end=lambda s: s["step"] < 0),
            "`boundary='strict'` cannot be combined",
        ),
        (
            eqx_replay.make_flat_buffer,
            dict(max_length=160, min_length=16, sample_batch_size=32),
            "`add_batch_size` must be an int divisible",
        ),
    ]:
        try:
            make(**kwargs, sharding=sharding)
        except ValueError as caught:
            assert message in str(caught), (message, str(caught))
        else:
            raise AssertionError(f"no error for {make.__name__}")
    flat = eqx_replay.make_flat_buffer(160, 16, 32, add_batch_size=16, sharding=sharding)
    try:
        eqx_replay.make_mixer([flat, flat], 32, [1, 1])
    except ValueError as caught:
        assert "`buffers[0]` is sharded, which a mixer does not support" in str(caught)
    else:
        raise AssertionError("no error for a mixer of sharded buffers")


def check_a_batch_placed_otherwise_is_resharded_or_refused_clearly():
    for name, mesh in meshes().items():
        buffer = eqx_replay.make_trajectory_buffer(**TRAJECTORY, sharding=rows_sharding(mesh))
        state = buffer.init(EXAMPLE)
        uncommitted = batch(16, 3, 0)
        replicated = jax.device_put(batch(16, 3, 1), NamedSharding(mesh, P()))
        state = buffer.add(state, uncommitted)
        state = buffer.add(state, replicated)
        assert state.experience["obs"].sharding.spec[0] == "data", name
        assert int(state.current_index) == 6
        on_one_device = jax.device_put(batch(16, 3, 2), jax.devices()[3])
        try:
            buffer.add(state, on_one_device)
        except ValueError as caught:
            message = "`TrajectoryBuffer.add`: batch['obs'], batch['step'] are committed to other"
            assert message in str(caught), str(caught)
        else:
            raise AssertionError("no error for a batch committed to one device")
        assert int(state.current_index) == 6  # the state was not consumed


def check_misuse_gets_the_library_s_errors_not_jax_s():
    mesh = meshes()["explicit"]
    buffer = eqx_replay.make_trajectory_buffer(**TRAJECTORY, sharding=rows_sharding(mesh))
    plain = eqx_replay.make_trajectory_buffer(**TRAJECTORY)
    state = buffer.init(EXAMPLE)
    newer = buffer.add(state, batch(16, 2, 0))
    cases = {
        # A donated state of several devices, passed again: JAX would crash the process.
        "`TrajectoryBuffer.add`: the state's arrays have been deleted": lambda: buffer.add(
            state, batch(16, 2, 1)
        ),
        # Inside the user's own `jit`: the library's message, not a concretization error.
        "`TrajectoryBuffer.add`: leaf ['obs'] has shape (8, 2, 3)": lambda: jax.jit(
            lambda s: buffer.add(s, batch(8, 2, 1))
        )(newer),
        # A sharded state or batch given to an unsharded buffer (Explicit mesh).
        "`TrajectoryBuffer.sample`: the state's experience leaf ['obs'] is split": lambda: (
            plain.sample(newer, jr.PRNGKey(0))
        ),
        "`TrajectoryBuffer.add`: the batch's leaf ['obs'] is split": lambda: plain.add(
            plain.init(EXAMPLE), jax.device_put(batch(16, 2, 1), rows_sharding(mesh))
        ),
        "`TrajectoryBuffer.sample`: rng_key is committed to other devices": lambda: buffer.sample(
            newer, jax.device_put(jr.PRNGKey(0), jax.devices()[5])
        ),
    }
    # A state of a buffer on another mesh: the state is named, not the arguments.
    half = jax.make_mesh((N // 2,), ("data",), devices=jax.devices()[N // 2 :])
    other = eqx_replay.make_trajectory_buffer(**TRAJECTORY, sharding=rows_sharding(half))
    elsewhere = "the state is on devices [0, 1, 2, 3, 4, 5, 6, 7], but this buffer's mesh is on"
    cases[f"`TrajectoryBuffer.add`: {elsewhere} devices [4, 5, 6, 7]"] = lambda: other.add(
        newer, batch(16, 2, 1)
    )
    cases[f"`TrajectoryBuffer.sample`: {elsewhere} devices [4, 5, 6, 7]"] = lambda: other.sample(
        newer, jr.PRNGKey(0)
    )
    for message, call in cases.items():
        try:
            call()
        except ValueError as caught:
            assert message in str(caught), (message, str(caught))
        else:
            raise AssertionError(f"no error: {message}")
    assert int(buffer.add(newer, batch(16, 2, 1)).current_index) == 4  # newer was intact


def check_add_updates_each_device_rows_in_place():
    mesh = meshes()["explicit"]
    for buffer in [
        eqx_replay.make_trajectory_buffer(**TRAJECTORY, sharding=rows_sharding(mesh)),
        prioritised(mesh),
    ]:
        state = buffer.init(EXAMPLE)
        added = batch(16, 1, 0)
        text = buffer.add.lower(state, added).compile().as_text()
        assert "input_output_alias" in text
        # No copy of a device's rows (2 rows x 20 steps of f32[3] here).
        assert not [line for line in text.splitlines() if " copy(" in line and "[2,20,3]" in line]
        before = state.experience["obs"]
        state = buffer.add(state, added)
        assert before.is_deleted()  # donated: updated in place


def check_sharded_states_save_and_load_exactly_and_placed():
    """`save_state`/`load_state` of sharded states: leaf for leaf, placed as `init` places
    them (on another mesh with as many devices too), continuing identically; a checkpoint
    of another device count is named."""
    import tempfile

    key = jr.PRNGKey(4)
    for name, mesh in meshes().items():
        buffers = [
            eqx_replay.make_trajectory_buffer(**TRAJECTORY, sharding=rows_sharding(mesh)),
            prioritised(mesh),
            eqx_replay.make_prioritised_flat_buffer(
                max_length=160,
                min_length=16,
                sample_batch_size=32,
                add_sequences=True,
                add_batch_size=16,
                sharding=rows_sharding(mesh),
            ),
        ]
        for buffer in buffers:
            state = filled(buffer, adds=7)
            with tempfile.TemporaryDirectory() as directory:
                eqx_replay.save_state(directory + "/c", buffer, state)
                loaded = eqx_replay.load_state(directory + "/c", buffer, EXAMPLE)
                assert leaves_equal(loaded, state), (name, type(buffer).__name__)
                for got, want in zip(jax.tree.leaves(loaded), jax.tree.leaves(state)):
                    assert got.sharding.is_equivalent_to(want.sharding, got.ndim), name
                # The same devices in reverse order: placed as that buffer's `init` places.
                other = jax.sharding.Mesh(np.array(jax.devices()[::-1]), ("data",))
                moved = type(buffer)(
                    **{**buffer_arguments(buffer), "sharding": rows_sharding(other)}
                )
                loaded_moved = eqx_replay.load_state(directory + "/c", moved, EXAMPLE)
                assert leaves_equal(loaded_moved, state), name
                reference = jax.tree.leaves(moved.init(EXAMPLE))[0].sharding
                assert jax.tree.leaves(loaded_moved)[0].sharding == reference
                a = buffer.sample(buffer.add(state, batch(16, 3, 99)), key)
                b = buffer.sample(buffer.add(loaded, batch(16, 3, 99)), key)
                assert leaves_equal(a, b), name
                half = jax.make_mesh((N // 2,), ("data",), devices=jax.devices()[: N // 2])
                fewer = type(buffer)(
                    **{**buffer_arguments(buffer), "sharding": rows_sharding(half)}
                )
                try:
                    eqx_replay.load_state(directory + "/c", fewer, EXAMPLE)
                except ValueError as error:
                    assert "sharding: saved 'sharded over 8 devices', buffer 'sharded over 4" in (
                        str(error)
                    ), error
                else:
                    raise AssertionError("loaded a checkpoint of 8 devices onto 4")


def buffer_arguments(buffer: Any) -> dict[str, Any]:
    import dataclasses

    return {f.name: getattr(buffer, f.name) for f in dataclasses.fields(buffer) if f.init}


CHECKS = {name: fn for name, fn in globals().items() if name.startswith("check_")}


def main() -> None:
    names = sys.argv[1:] or list(CHECKS)
    results: dict[str, str | None] = {}
    for name in names:
        try:
            CHECKS[name]()
            results[name] = None
        except Exception:
            results[name] = traceback.format_exc()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
