"""Cost of episode boundaries: `add` and `sample` with `boundary="mask"` and `"strict"`
next to `"ignore"`, at two capacities, to show that neither grows with the capacity.

Trajectory buffer, 16 rows, `{obs: f32[64], reward: f32, done: bool}`, add 16 × 1 steps,
sample 256 × 16, full buffers (episode ends with probability 0.05 per step); medians of
alternating rounds in one process. Run with

    python benchmarks/episode_modes.py [--tiny]

It writes the table to `benchmarks/results/episode_modes.md` (`episode_modes_tiny.md` with
`--tiny`; `--out DIR` writes elsewhere).
"""

import statistics

import _harness as h
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np

import eqx_replay


MODES = ("ignore", "mask", "strict")


def main():
    args = h.parser(__doc__).parse_args()
    rows = 16
    capacities, calls, rounds = (
        ([256, 2560], 5, 2) if args.tiny else ([16_384, 1_638_400], 1000, 15)
    )
    example = {"obs": jnp.zeros(64), "reward": jnp.float32(0), "done": jnp.bool_(False)}
    rng = np.random.default_rng(0)
    report = h.Report("episode_modes", "Cost of episode boundaries", args)
    cells = []
    for capacity in capacities:
        time_axis = capacity // rows
        fill = {
            "obs": jnp.asarray(rng.normal(size=(rows, time_axis, 64)), jnp.float32),
            "reward": jnp.zeros((rows, time_axis)),
            "done": jnp.asarray(rng.random((rows, time_axis)) < 0.05),
        }
        step = jax.tree.map(lambda x: x[:, :1], fill)
        buffers, adds = {}, {}
        for mode in MODES:
            buffer = eqx_replay.make_trajectory_buffer(
                add_batch_size=rows,
                sample_batch_size=256,
                sample_sequence_length=16,
                period=1,
                min_length_time_axis=16,
                max_length_time_axis=time_axis,
                episode_end=lambda s: s["done"],
                boundary=mode,
            )
            state = buffer.add(buffer.init(example), fill)
            buffers[mode], adds[mode] = buffer, h.AddRunner(buffer.add, state, step)
        times: dict[str, dict[str, list[float]]] = {m: {"add": [], "sample": []} for m in MODES}
        key = jr.PRNGKey(0)
        # Each round: every mode's adds, then its samples from the state they left; each
        # block after one warm-up call, the modes in the same order every round.
        for _ in range(rounds):
            for mode in MODES:
                times[mode]["add"].append(h.per_call(adds[mode], calls))
                sample = h.SampleRunner(buffers[mode].sample, adds[mode].state, [key] * calls)
                times[mode]["sample"].append(h.per_call(sample, calls))
        for mode in MODES:
            add_us = statistics.median(times[mode]["add"]) * 1e6
            sample_us = statistics.median(times[mode]["sample"]) * 1e6
            cells.append([f"{capacity:,}", mode, f"{add_us:.1f}", f"{sample_us:.1f}"])
    header = ["capacity (steps)", "mode", "add 16×1 (µs)", "sample 256×16 (µs)"]
    report.table(header, cells, align="rlrr", section="table")
    report.write(
        [
            f"Timing: median over {rounds} rounds of {calls} calls of each mode's add, then "
            "its sample, each block after one warm-up call."
        ]
    )


if __name__ == "__main__":
    main()
