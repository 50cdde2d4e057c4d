"""The programs a version of eqx_replay compiles: every compiled method of every kind, in
several configurations (episode modes, add modes, sharded over 4 CPU devices), lowered to
StableHLO, with a digest of each program's text.

A change that leaves every digest as it was leaves what runs unchanged: the same programs,
so the same speed at every size, on every backend. Run it on two versions and compare the
tables; where a digest moves, time that program with the other benchmarks. Run with

    python benchmarks/lowered_programs.py [--tiny]

It writes the table to `benchmarks/results/lowered_programs.md` (`lowered_programs_tiny.md`
with `--tiny`, which lowers the same programs; `--out DIR` writes elsewhere). The digests
depend on the JAX version, not on the machine.
"""

import hashlib
from collections.abc import Callable
from typing import Any

import _harness as h
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

import eqx_replay as er


DEVICES = 4


def example() -> Any:
    """One step (made when called: the device count is set before JAX starts)."""
    return {"obs": jnp.zeros(4), "done": jnp.zeros((), bool)}


def _end(step: Any) -> Any:
    return step["done"]


def _obs(step: Any) -> Any:
    return step["obs"]


# `obs` read as a stack of 4 scalar frames, for the buffers that store frames once.
FRAMES = er.FrameStack(_obs, 4)


def steps(*leading: int) -> Any:
    """A batch of the example with leading axes `leading`."""
    return jax.tree.map(lambda x: jnp.zeros((*leading, *x.shape), x.dtype), example())


def programs(sharding: NamedSharding | None) -> dict[str, Callable[[], Any]]:
    """Each program's lowering, by name. Rows and draws divide by `DEVICES`."""
    key = jax.random.key(0)
    kinds: dict[str, tuple[Any, Any]] = {}
    kinds["trajectory"] = (
        er.make_trajectory_buffer(8, 8, 3, 1, 3, max_length_time_axis=32, sharding=sharding),
        steps(8, 5),
    )
    kinds["prioritised"] = (
        er.make_prioritised_trajectory_buffer(
            8, 8, 3, 1, 3, max_length_time_axis=32, sharding=sharding
        ),
        steps(8, 5),
    )
    kinds["flat"] = (er.make_flat_buffer(64, 8, 8, add_batch_size=8, sharding=sharding), steps(8))
    kinds["prioritised flat"] = (
        er.make_prioritised_flat_buffer(64, 8, 8, add_batch_size=8, sharding=sharding),
        steps(8),
    )
    frames: dict[str, Any] = dict(episode_end=_end, frame_stack=FRAMES, sharding=sharding)
    kinds["trajectory, frames"] = (
        er.make_trajectory_buffer(8, 8, 3, 1, 3, max_length_time_axis=32, **frames),
        steps(8, 5),
    )
    kinds["flat, frames"] = (er.make_flat_buffer(64, 8, 8, add_batch_size=8, **frames), steps(8))
    queue = er.make_trajectory_queue(32, 8, 2, 3, sharding=sharding)
    if sharding is None:
        for boundary in ("mask", "strict"):
            kinds[f"trajectory {boundary}"] = (
                er.make_trajectory_buffer(
                    8, 8, 3, 2, 3, max_length_time_axis=32, episode_end=_end, boundary=boundary
                ),
                steps(8, 5),
            )
            kinds[f"prioritised {boundary}"] = (
                er.make_prioritised_trajectory_buffer(
                    8, 8, 3, 2, 3, max_length_time_axis=32, episode_end=_end, boundary=boundary
                ),
                steps(8, 5),
            )
        frames = dict(episode_end=_end, frame_stack=FRAMES)
        kinds["trajectory strict, frames"] = (
            er.make_trajectory_buffer(
                8, 8, 3, 2, 3, max_length_time_axis=32, boundary="strict", **frames
            ),
            steps(8, 5),
        )
        kinds["prioritised, frames"] = (
            er.make_prioritised_trajectory_buffer(8, 8, 3, 2, 3, max_length_time_axis=32, **frames),
            steps(8, 5),
        )
        kinds["prioritised flat, frames"] = (
            er.make_prioritised_flat_buffer(64, 8, 8, add_batch_size=8, **frames),
            steps(8),
        )
        checked: dict[str, Any] = dict(frames, frame_stack=er.FrameStack(_obs, 4, check=True))
        kinds["flat, frames checked"] = (
            er.make_flat_buffer(64, 8, 8, add_batch_size=8, **checked),
            steps(8),
        )
        kinds["flat, sequences"] = (er.make_flat_buffer(64, 8, 8, add_sequences=True), steps(3))
        kinds["item"] = (er.make_item_buffer(64, 8, 8, add_batches=True), steps(5))
        kinds["prioritised item"] = (
            er.make_prioritised_item_buffer(64, 8, 8, add_sequences=True),
            steps(5),
        )
    lowered: dict[str, Callable[[], Any]] = {}
    for kind, (buffer, batch) in kinds.items():
        state = buffer.init(example())
        lowered[f"{kind} add"] = lambda b=buffer, s=state, x=batch: b.add.lower(s, x)
        lowered[f"{kind} sample"] = lambda b=buffer, s=state: b.sample.lower(s, key)
        lowered[f"{kind} can_sample"] = lambda b=buffer, s=state: b.can_sample.lower(s)
        if isinstance(buffer, er.AbstractPrioritisedBuffer):
            indices, priorities = jnp.zeros(8, jnp.int32), jnp.ones(8)
            lowered[f"{kind} set_priorities"] = lambda b=buffer, s=state: b.set_priorities.lower(
                s, indices, priorities
            )
    state = queue.init(example())
    lowered["queue add"] = lambda: queue.add.lower(state, steps(8, 2))
    lowered["queue sample"] = lambda: queue.sample.lower(state)
    lowered["queue can_add"] = lambda: queue.can_add.lower(state)
    if sharding is None:
        flat = er.make_prioritised_flat_buffer(64, 8, 8, add_batch_size=8)
        mixer = er.make_mixer([flat, flat], 8, [1, 1])
        states = [flat.init(example()), flat.init(example())]
        lowered["mixer sample"] = lambda: mixer.sample.lower(states, key)
        lowered["mixer set_priorities"] = lambda: mixer.set_priorities.lower(
            states, jnp.zeros(8, jnp.int32), jnp.ones(8)
        )
    return lowered


def main() -> None:
    args = h.parser(__doc__).parse_args()
    jax.config.update("jax_num_cpu_devices", DEVICES)
    report = h.Report("lowered_programs", "The programs eqx_replay compiles", args)
    mesh = jax.make_mesh((DEVICES,), ("rows",), axis_types=(jax.sharding.AxisType.Auto,))
    rows = []
    for sharding in (None, NamedSharding(mesh, PartitionSpec("rows"))):
        where = "one device" if sharding is None else f"sharded over {DEVICES} devices"
        for name, lower in programs(sharding).items():
            text = lower().as_text()
            digest = hashlib.blake2b(text.encode(), digest_size=16).hexdigest()
            rows.append([name, where, f"{len(text.splitlines()):,}", f"`{digest}`"])
            h.log(f"{name}, {where}: {digest}")
    report.table(
        ["program", "placement", "lines", "BLAKE2b-128 of its StableHLO"],
        rows,
        align="llrl",
        section="table",
    )
    report.write(
        notes=[
            "Every compiled method lowered with `.lower(...)` (nothing runs); equal digests "
            "mean equal programs."
        ]
    )


if __name__ == "__main__":
    main()
