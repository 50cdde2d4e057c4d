"""Per-call cost of what `sample` does when `can_sample` is false.

`sample` poisons its output (NaN / largest integer / True) when the buffer cannot be sampled
yet; see `eqx_replay/_guard.py`. This times, alternating in one process, `sample` as shipped,
`sample` with no guard at all, and `sample` guarded by `eqx.error_if` instead (the
alternative we rejected), and prints a markdown table. Run with

    python benchmarks/sample_guard_cost.py [--tiny]

It writes the table to `benchmarks/results/sample_guard_cost.md` (`sample_guard_cost_tiny.md`
with `--tiny`; `--out DIR` writes elsewhere).
"""

import sys
from typing import Any

import _harness as h
import equinox as eqx
import jax
import jax.numpy as jnp

import eqx_replay
from eqx_replay._guard import poison_sample


# The trajectory buffer's compiled `sample`, and the globals of the module whose
# `poison_sample` it calls.
SAMPLE = h.compiled_method(eqx_replay.TrajectoryBuffer, "sample")
SAMPLE_GLOBALS = vars(sys.modules[SAMPLE._fn.__module__])

VARIANTS = {
    "poison (shipped)": poison_sample,
    "no guard": lambda ok, x: x,
    "eqx.error_if": lambda ok, x: eqx.error_if(x, ~ok, "cannot be sampled yet"),
}


def compile_variant(config, guard, state, key):
    """A `sample` traced with `guard` in place of the shipped poison."""
    # Forget compiled samples shared between equal buffers, so that this one is traced anew.
    SAMPLE._shared.clear()
    buffer = eqx_replay.make_trajectory_buffer(**config)
    shipped = SAMPLE_GLOBALS["poison_sample"]
    SAMPLE_GLOBALS["poison_sample"] = guard
    try:
        buffer.sample(state, key)
    finally:
        SAMPLE_GLOBALS["poison_sample"] = shipped
    return buffer.sample


def main():
    args = h.parser(__doc__).parse_args()
    calls, rounds, capacity = (20, 3, 64) if args.tiny else (1000, 15, 10240)
    report = h.Report("sample_guard_cost", "What `sample`'s guard costs", args)
    header = [
        f"sample (S x L) of {{obs: f32[64], reward: f32, done: bool}}, 16 x {capacity} steps",
        *(f"{name} (us)" for name in VARIANTS),
    ]
    example = {"obs": jnp.zeros(64), "reward": jnp.float32(0), "done": jnp.bool_(False)}
    cells = []
    for samples, length in [(4, 8), (256, 16), (32, 80)]:
        length = min(length, capacity)
        config: dict[str, Any] = dict(
            add_batch_size=16,
            sample_batch_size=samples,
            sample_sequence_length=length,
            period=1,
            min_length_time_axis=length,
            max_length_time_axis=capacity,
        )
        buffer = eqx_replay.make_trajectory_buffer(**config)
        batch = jax.tree.map(lambda x: jnp.ones((16, capacity, *x.shape), x.dtype), example)
        state = buffer.add(buffer.init(example), batch)
        key = jax.random.key(0)
        # The same key every call: each variant samples the same windows.
        runners = {
            name: h.SampleRunner(compile_variant(config, guard, state, key), state, [key] * calls)
            for name, guard in VARIANTS.items()
        }
        # In the same order every round, each block after one warm-up call.
        times = h.alternate(runners, calls, rounds, reverse=False)
        cells.append([f"{samples} x {length}", *(f"{t * 1e6:.1f}" for t in times.values())])
    report.table(header, cells, align="l" * len(header), section="table")
    report.write(
        [
            f"Timing: median over {rounds} rounds of {calls} calls per variant (same key), "
            "in the same order every round, each block after one warm-up call."
        ]
    )


if __name__ == "__main__":
    main()
