"""What a compiled call costs on the CPU as the number of its kernels that are ready at once
grows: why `sample_future` (16 outputs) costs so much more than `sample` (10) at small sizes.

Each contender is a jitted function of a key returning `n` independent arrays `f32[256, 16]`
(one fused kernel each, all ready together), for `n` from 6 to 16, timed side by side in one
process. XLA's CPU runtime runs a program's kernels on the calling thread while at most
eight others wait to run; beyond, it hands half of the waiting ones to its thread pool and
waits for them (`ThunkExecutor::SplitReadyQueue`, JAX 0.10.2's XLA). Where waking a pool
thread is slow, as on a small virtual machine, the call costs that much more.

    python benchmarks/ready_kernels.py [--tiny]

It writes `benchmarks/results/ready_kernels.md` (`ready_kernels_tiny.md` with `--tiny`).
"""

import sys

import _harness as h
import jax
import jax.numpy as jnp


def outputs(n: int):
    """A compiled function of a key returning `n` independent arrays `f32[256, 16]`."""

    def fn(key: jax.Array) -> list[jax.Array]:
        bit = (jax.random.key_data(key)[-1] % 2).astype(jnp.float32)
        return [jnp.full((256, 16), i, jnp.float32) + bit for i in range(n)]

    return jax.jit(fn)


def main() -> None:
    args = h.parser(__doc__).parse_args()
    timing = h.Timing.of(args.tiny)
    report = h.Report("ready_kernels", "Kernels ready at once, on the CPU", args)
    counts = (8, 10) if args.tiny else (6, 8, 9, 10, 12, 16)
    keys = list(jax.random.split(jax.random.key(0), 64))
    runners = {n: h.SampleRunner(lambda _, key, f=outputs(n): f(key), None, keys) for n in counts}
    times = h.measure({str(n): r for n, r in runners.items()}, timing.rounds, timing.block)
    cells = [[str(n), h.fmt_time(times[str(n)])] for n in counts]
    report.table(["independent outputs f32[256, 16]", "per call"], cells, "lr", section="table")
    report.write([timing.note()])


if __name__ == "__main__":
    sys.exit(main())
