"""What calling a compiled buffer method costs beyond its `jax.jit`, and what the annotation
checks cost when a method is first traced.

`buffer.add` is a Python function around the `jax.jit` of the method (`eqx_replay/_jit.py`):
it replaces JAX's errors about a donated state. This times, alternating in one process:

- per call: `buffer.add` / `buffer.sample` against the bare `jax.jit` they call
  (`buffer.add.__wrapped__`), with a strongly and with a weakly typed batch (which each
  compile for once);
- first call (trace and compile, a new configuration each time): with the method's
  jaxtyping + beartype checks, as shipped, and with them switched off.

Run with

    python benchmarks/dispatch_cost.py [--tiny]

It prints both tables and writes them to `benchmarks/results/dispatch_cost.md`
(`dispatch_cost_tiny.md` with `--tiny`; `--out DIR` writes elsewhere).
"""

import statistics
import time

import _harness as h
import jax
import jax.numpy as jnp

import eqx_replay
import eqx_replay._jit as jit


EXAMPLE = {"obs": jnp.zeros(64), "reward": jnp.float32(0), "done": jnp.bool_(False)}
ROWS = 16


def config(capacity, samples, length):
    return dict(
        add_batch_size=ROWS,
        sample_batch_size=samples,
        sample_sequence_length=length,
        period=1,
        min_length_time_axis=length,
        max_length_time_axis=capacity,
    )


def batch(steps, weak=False):
    if weak:  # `jnp.full` with a Python float gives a weakly typed array
        return {
            "obs": jnp.full((ROWS, steps, 64), 0.5),
            "reward": jnp.full((ROWS, steps), 1.0),
            "done": jnp.zeros((ROWS, steps), bool),
        }
    return jax.tree.map(lambda x: jnp.zeros((ROWS, steps, *x.shape), x.dtype), EXAMPLE)


def time_adds(add, state, data, calls):
    """Microseconds per `state = add(state, data)` after one warm-up call, and the state."""
    runner = h.AddRunner(add, state, data)
    return h.per_call(runner, calls) * 1e6, runner.state


def time_samples(sample, state, key, calls):
    """Microseconds per `sample(state, key)` after one warm-up call."""
    return h.per_call(h.SampleRunner(sample, state, [key] * calls), calls) * 1e6


def per_call(cls, capacity, calls, rounds):
    buffer = cls(**config(capacity, 256, 16))
    state = buffer.add(buffer.init(EXAMPLE), batch(capacity))
    strong, weak, key = batch(1), batch(1, weak=True), jax.random.key(0)
    bare_add, bare_sample = buffer.add.__wrapped__, buffer.sample.__wrapped__  # pyright: ignore[reportFunctionMemberAccess]
    times: dict[str, list[float]] = {}

    def measure(name, elapsed):
        times.setdefault(name, []).append(elapsed)

    # The shipped calls against the bare `jax.jit`, in alternating order.
    for i in range(rounds):
        adds = [
            ("add, shipped", buffer.add, strong),
            ("add, bare jax.jit", bare_add, strong),
            ("add of a weak batch, shipped", buffer.add, weak),
            ("add of a weak batch, bare jax.jit", bare_add, weak),
        ]
        samples = [
            ("sample 256x16, shipped", buffer.sample),
            ("sample 256x16, bare jax.jit", bare_sample),
        ]
        order = slice(None, None, 1 if i % 2 == 0 else -1)
        for name, add, data in adds[order]:
            elapsed, state = time_adds(add, state, data, calls)
            measure(name, elapsed)
        for name, sample in samples[order]:
            measure(name, time_samples(sample, state, key, calls // 4 + 1))
    return {name: statistics.median(values) for name, values in times.items()}


def first_call(cls, capacity, checked):
    """First-call times (ms) of `add` and `sample` on a configuration not seen before, with
    the methods' annotation checks on or off."""
    methods = [h.compiled_method(cls, name) for name in ("add", "sample")]
    saved = [method._checked for method in methods]
    if not checked:
        for method in methods:
            method._checked = method._fn
    try:
        buffer = cls(**config(capacity, 32, 8))
        state, data = buffer.init(EXAMPLE), batch(8)
        start = time.perf_counter()
        state = jax.block_until_ready(buffer.add(state, data))
        add = (time.perf_counter() - start) * 1e3
        start = time.perf_counter()
        jax.block_until_ready(buffer.sample(state, jax.random.key(0)))
        sample = (time.perf_counter() - start) * 1e3
    finally:
        for method, check in zip(methods, saved):
            method._checked = check
    return add, sample


def main():
    args = h.parser(__doc__).parse_args()
    calls, rounds, capacity, firsts = (20, 2, 64, 1) if args.tiny else (2000, 15, 16384, 7)
    assert isinstance(eqx_replay.TrajectoryBuffer.add, jit.CompiledMethod)
    kinds = {
        "trajectory": eqx_replay.TrajectoryBuffer,
        "prioritised": eqx_replay.PrioritisedTrajectoryBuffer,
    }
    report = h.Report("dispatch_cost", "What calling a compiled buffer method costs", args)
    report.add(
        f"Per call, median of {rounds} alternating rounds of {calls} calls, 16 rows x {capacity}:",
        "",
    )
    report.table(
        ["buffer", "call", "time"],
        [
            [kind, name, f"{value:.2f} us"]
            for kind, make in kinds.items()
            for name, value in per_call(make, capacity, calls, rounds).items()
        ],
        align="llr",
        section="per-call",
    )
    report.add(
        "",
        f"First call (trace + compile), median of {firsts} new configurations each:",
        "",
    )
    cells = []
    for kind, make in kinds.items():
        # Alternating, each on a time axis no other call uses.
        results: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
        for i in range(firsts):
            for checked in (True, False):
                capacity = 1000 + 10 * i + (5 if checked else 0)
                results[checked].append(first_call(make, capacity, checked))
        for checked in (True, False):
            add = statistics.median(r[0] for r in results[checked])
            sample = statistics.median(r[1] for r in results[checked])
            label = "on (shipped)" if checked else "off"
            cells.append([kind, label, f"{add:.1f} ms", f"{sample:.1f} ms"])
    report.table(
        ["buffer", "annotation checks", "add", "sample 32x8"],
        cells,
        align="llrr",
        section="first-call",
    )
    report.write()


if __name__ == "__main__":
    main()
