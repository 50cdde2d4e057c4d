"""Episodes as the unit: `sample_future`, `sample_episodes` and `epoch`, each against the
plain operation it stands beside, side by side in one process.

- `FlatBuffer.sample_future(state, key, discount)` against `sample(state, key)` of the same
  batch (256 transitions), on goal-conditioned transitions `{obs: f32[16], goal: f32[16],
  action: i32, reward: f32, done: bool}` in episodes of 50 steps (HER's Fetch tasks) and of
  1,000 (brax tasks, as in JaxGCRL), at 100K and 1M transitions (target <= 1.5x);
- `TrajectoryBuffer.sample_episodes(state, key)` against `sample` of the same batch (64
  windows of 50 steps) in 50-step episodes, at 100K and 1M steps (target <= 1.5x);
- `epoch(state, key)` of an item buffer of 1M items `f32[16]` (batches of 4,096) against
  one `jax.random.permutation` of 1M plus the gather of the items in that order (target
  <= 2x).

    python benchmarks/episodes.py [--tiny]

It writes `benchmarks/results/episodes.md` (`episodes_tiny.md` with `--tiny`).
"""

import sys
from typing import Any

import _harness as h
import jax
import jax.numpy as jnp
import numpy as np

import eqx_replay


ROWS = 8
DIM = 16
# Per `sample_future` row, the floor: `sample` plus one more step of every leaf, over `sample`.
FLOORS: dict[str, float] = {}


def _end(step: Any) -> Any:
    return step["done"]


def _stream(rows: int, steps: int, episode: int) -> dict[str, jax.Array]:
    """`steps` goal-conditioned steps per row, in episodes of `episode` steps."""
    rng = np.random.default_rng(0)
    t = np.arange(steps)
    return {
        "obs": jnp.asarray(rng.standard_normal((rows, steps, DIM), np.float32)),
        "goal": jnp.asarray(rng.standard_normal((rows, steps, DIM), np.float32)),
        "action": jnp.zeros((rows, steps), jnp.int32),
        "reward": jnp.zeros((rows, steps), jnp.float32),
        "done": jnp.asarray(np.broadcast_to(t % episode == episode - 1, (rows, steps))),
    }


def _example() -> dict[str, Any]:
    return jax.tree.map(lambda x: x[0, 0], _stream(1, 1, 2))


def _add(rows: list[h.Row], row: h.Row) -> None:
    rows.append(row)
    h.log(f"  {row.label}: {h.fmt_time(row.eqx)} against {h.fmt_time(row.fbx)}: {row.ratio:.2f}")


def future_rows(size: int, episode: int, timing: h.Timing, rows: list[h.Row]) -> None:
    buffer = eqx_replay.make_flat_buffer(
        max_length=size,
        min_length=2,
        sample_batch_size=256,
        add_sequences=True,
        add_batch_size=ROWS,
        episode_end=_end,
    )
    state = buffer.add(buffer.init(_example()), _stream(ROWS, size // ROWS, episode))
    keys = list(jax.random.split(jax.random.key(0), 64))

    @jax.jit
    def one_more_step(state: Any, key: jax.Array) -> Any:
        # The floor: `sample` and one more step of every leaf (what a `sample_future` whose
        # episode search and rejection cost nothing would read), at places spread by the
        # key's bits, which cost next to nothing to draw.
        rows, steps = jax.tree.leaves(state.experience)[0].shape[:2]
        spread = jax.random.key_data(key)[-1] + np.uint32(2_654_435_761) * jnp.arange(
            256, dtype=jnp.uint32
        )
        row = (spread % rows).astype(jnp.int32)
        time = ((spread >> 8) % steps).astype(jnp.int32)
        more = jax.tree.map(lambda x: x[row, time], state.experience)
        return buffer.sample(state, key), more

    runners = {
        "sample": h.SampleRunner(buffer.sample, state, keys),
        "floor": h.SampleRunner(one_more_step, state, keys),
        "future 1.0": h.SampleRunner(lambda s, k: buffer.sample_future(s, k, 1.0), state, keys),
        "future 0.99": h.SampleRunner(lambda s, k: buffer.sample_future(s, k, 0.99), state, keys),
    }
    times = h.measure(runners, timing.rounds, timing.block)
    where = f"{size:,} transitions, {episode}-step episodes"
    for name in ("future 1.0", "future 0.99"):
        discount = name.split()[1]
        label = f"sample_future({discount}) 256 @ {where}"
        _add(rows, h.Row(label, times[name], times["sample"]))
        FLOORS[label] = times["floor"] / times["sample"]


def episode_rows(size: int, timing: h.Timing, rows: list[h.Row]) -> None:
    buffer = eqx_replay.make_trajectory_buffer(
        add_batch_size=ROWS,
        sample_batch_size=64,
        sample_sequence_length=50,
        period=1,
        min_length_time_axis=50,
        max_length_time_axis=size // ROWS,
        episode_end=_end,
        boundary="mask",
    )
    state = buffer.add(buffer.init(_example()), _stream(ROWS, size // ROWS, 50))
    keys = list(jax.random.split(jax.random.key(0), 64))
    runners = {
        "sample": h.SampleRunner(buffer.sample, state, keys),
        "episodes": h.SampleRunner(buffer.sample_episodes, state, keys),
    }
    times = h.measure(runners, timing.rounds, timing.block)
    label = f"sample_episodes 64×50 @ {size:,} steps, 50-step episodes"
    _add(rows, h.Row(label, times["episodes"], times["sample"]))


def epoch_row(size: int, batch: int, timing: h.Timing, rows: list[h.Row]) -> None:
    buffer = eqx_replay.make_item_buffer(
        max_length=size, min_length=1, sample_batch_size=batch, add_sequences=True
    )
    items = jnp.asarray(np.random.default_rng(0).standard_normal((size, DIM), np.float32))
    state = buffer.add(buffer.init(items[0]), items)
    stored = state.experience

    @jax.jit
    def permuted(stored: jax.Array, key: jax.Array) -> jax.Array:
        return stored[0, jax.random.permutation(key, size)]

    keys = list(jax.random.split(jax.random.key(0), 8))
    runners = {
        "epoch": h.SampleRunner(buffer.epoch, state, keys),
        "permutation": h.SampleRunner(permuted, stored, keys),
    }
    times = h.measure(runners, timing.rounds, timing.block)
    label = f"epoch of {size:,} items f32[{DIM}], batches of {batch:,}"
    _add(rows, h.Row(label, times["epoch"], times["permutation"]))


def main() -> None:
    args = h.parser(__doc__).parse_args()
    timing = h.Timing.of(args.tiny)
    sizes = (4_096,) if args.tiny else (100_000, 1_000_000)
    report = h.Report("episodes", "Episodes as the unit", args)
    rows: list[h.Row] = []
    for size in sizes:
        for episode in (50,) if args.tiny else (50, 1000):
            future_rows(size, episode, timing, rows)
    for size in sizes:
        episode_rows(size, timing, rows)
    epoch_row(8_192 if args.tiny else 1_000_000, 512 if args.tiny else 4_096, timing, rows)
    cells = [
        [
            row.label,
            h.fmt_time(row.eqx),
            h.fmt_time(row.fbx),
            h.fmt_ratio(row.ratio),
            h.fmt_ratio(FLOORS[row.label]) if row.label in FLOORS else "",
        ]
        for row in rows
    ]
    header = ["row", "eqx_replay", "beside it", "ratio", "floor"]
    report.table(header, cells, align="lrrrr", section="table")
    report.write(
        [
            timing.note(),
            "Beside it: `sample` of the same batch (for `sample_future` and "
            "`sample_episodes`); one `jax.random.permutation` of all items plus their "
            "gather (for `epoch`).",
            "Targets: sample_future and sample_episodes <= 1.5x, epoch <= 2x.",
            "Floor (sample_future rows): `sample` plus one more step of every leaf, gathered "
            "at a random place in the same compiled call, over `sample`: what `sample_future` "
            "would cost if finding a transition's episode and its future cost nothing.",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
