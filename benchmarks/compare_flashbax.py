"""Side-by-side benchmark of eqx_replay and Flashbax's trajectory buffer.

Run it from the repository root, in an environment with eqx_replay, Flashbax and matplotlib:

    python benchmarks/compare_flashbax.py           # full run: ~3 minutes, ~7 GB of RAM
    python benchmarks/compare_flashbax.py --tiny    # every size shrunk: well under a minute

The full run writes `benchmarks/results/compare_flashbax.md` (the table, the machine and the
versions) and `benchmarks/results/compare_flashbax.png` (eqx_replay / Flashbax time ratio per
row, log scale). `--tiny` writes `compare_flashbax_tiny.md` and `compare_flashbax_tiny.png`
instead, so it never overwrites the real results; CI runs it only to keep this script working
(nothing is asserted about timings). `--out DIR` writes somewhere else.

Method. Both libraries run in one process, on identical configurations and identical input
arrays. For each row every contender is first warmed up (compiled and run), then a number of
calls N is chosen per contender so that one timed block lasts about `--block` seconds. Then, in
each of `--rounds` rounds, every contender runs one timed block of N calls, in alternation
(order reversed every other round); each block ends with `jax.block_until_ready` on what it
produced (a sample block keeps only its latest output alive, as a training loop does). The
reported time is the median over rounds of (block time / N). With donation the state is always
rebound, `state = add(state, batch)`, and a donated state is never reused. Memory (f) and
first-call (g) rows run each library in a fresh subprocess.

Rows (the letters of the issue), observation `f32[64]` plus `reward: f32[]`, `done: bool[]`
unless said otherwise:

a. add of 16 rows x 1 step at 16K, 160K and 1.6M total steps (`max_size` 16_384, 163_840,
   1_638_400). eqx_replay is called as `state = buf.add(state, batch)` (its own jit and
   donation, Python overhead included); Flashbax as the seed uses it, `jax.jit(fb.add)` (no
   donation, so every call copies the buffer), and donated, `jax.jit(fb.add, donate_argnums=0)`.
b. add of 16 rows x 128 steps at 160K, against the same two Flashbax variants.
c. sample of 256 x 16 (period 1) and of 32 x 80 (period 40, R2D2-like) from a full 160K
   buffer, against `jax.jit(fb.sample)`; a second table gives bytes out / time and how far that
   is from the machine's copy bandwidth (`np.copyto` of a large array, counting read + write
   bytes, i.e. 2 x size / time: a gather as fast as a memcpy would sit at 2.0x).
d. one jitted `lax.scan` of 1,000 x (add 16 x 1 + sample 256 x 16) with the buffer state as
   carry, the state donated to the jit, for each library: time per whole scan.
e. Flashbax README's benchmark setting: 500K steps, observation `u8[32, 32, 3]`, sample batch
   256 of sequence length 1 (period 1), one step per add; with 256 rows per add
   (`max_size=500_000` gives 1,953 steps per row, 499,968 in all) and, as in the README
   itself, with 1 row per add (500,000 steps per row).
f. peak resident memory while filling a >= 2 GB buffer (Atari-like `u8[84, 84, 4]`
   observations, 16 rows) completely with adds, each library in a fresh process:
   (peak RSS - RSS after imports and JAX start-up) / buffer bytes. Flashbax uses its donated add.
g. the first call of add and of sample (tracing + compilation + run) on a fresh buffer, each
   library in a fresh process (so every cache is cold), median over several processes.
h. prioritised trajectory buffers (priority exponent 0.6) at the c-row capacity and sample
   shapes: add 16 x 1, sample, and set_priorities of one sample's indices, all donated.
"""

import argparse
import dataclasses
import math
import resource
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import _harness as h
import flashbax as fbx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import numpy as np

import eqx_replay


# --------------------------------------------------------------------------------------------
# Sizes


@dataclasses.dataclass(frozen=True)
class Scale:
    name: str
    rows: int  # add_batch_size of rows a-d
    obs_dim: int  # observation f32[obs_dim] of rows a-d
    add_capacities: tuple[int, ...]  # row a, total steps
    capacity: int  # rows b, c, d, g, total steps
    chunk: int  # row b, steps per add
    samples: tuple[tuple[int, int, int], ...]  # row c: (batch, length, period)
    scan_length: int  # row d
    readme_capacity: int  # row e
    readme_rows: int  # row e
    readme_sample: int  # row e
    memory_bytes: int  # row f, at least this many buffer bytes
    memory_chunk: int  # row f, steps per add
    rounds: int
    block: float  # seconds per timed block
    copy_bytes: int  # bandwidth measurement
    compile_repeats: int  # row g, processes per library


FULL = Scale(
    name="full",
    rows=16,
    obs_dim=64,
    add_capacities=(16_384, 163_840, 1_638_400),
    capacity=163_840,
    chunk=128,
    samples=((256, 16, 1), (32, 80, 40)),
    scan_length=1_000,
    readme_capacity=500_000,
    readme_rows=256,
    readme_sample=256,
    memory_bytes=2_100_000_000,
    memory_chunk=32,
    rounds=h.FULL_TIMING.rounds,
    block=h.FULL_TIMING.block,
    copy_bytes=256 * 2**20,
    compile_repeats=3,
)

TINY = Scale(
    name="tiny",
    rows=16,
    obs_dim=64,
    add_capacities=(256, 512, 1_024),
    capacity=2_048,
    chunk=8,
    samples=((32, 4, 1), (8, 16, 8)),
    scan_length=20,
    readme_capacity=1_024,
    readme_rows=16,
    readme_sample=32,
    memory_bytes=4_000_000,
    memory_chunk=4,
    rounds=h.TINY_TIMING.rounds,
    block=h.TINY_TIMING.block,
    copy_bytes=8 * 2**20,
    compile_repeats=1,
)

MEMORY_OBS = (84, 84, 4)  # row f, uint8
README_OBS = (32, 32, 3)  # row e, uint8


# --------------------------------------------------------------------------------------------
# Helpers


def example_step(obs_shape: tuple[int, ...], obs_dtype: Any) -> dict[str, jax.Array]:
    return {
        "obs": jnp.zeros(obs_shape, obs_dtype),
        "reward": jnp.zeros((), jnp.float32),
        "done": jnp.zeros((), jnp.bool_),
    }


# --------------------------------------------------------------------------------------------
# Timing


def measure(runners: dict[str, Any], scale: Scale) -> dict[str, float]:
    """Median seconds per call of each runner, timed in alternation (`_harness.measure`)."""
    return h.measure(runners, scale.rounds, scale.block)


def copy_bandwidth(nbytes: int, repeats: int = 9) -> float:
    """Memory-copy bandwidth in bytes/s, counting read + write: 2 x size / time."""
    src = np.full(nbytes // 8, 1.0)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # touch every page
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - start)
    return 2 * src.nbytes / statistics.median(times)


# --------------------------------------------------------------------------------------------
# Results


@dataclasses.dataclass
class Results:
    rows: h.Rows = dataclasses.field(default_factory=h.Rows)
    bandwidth: float = math.nan
    sample_rows: list[tuple[str, str, int, float]] = dataclasses.field(default_factory=list)
    memory: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    compile: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)

    def add(self, row: h.Row) -> None:
        self.rows.add(row)


def record_sample(results: Results, label: str, times: dict[str, float], out_bytes: int):
    results.add(h.Row(label, times["eqx"], times["fbx"]))
    for name, library in (("eqx", "eqx_replay"), ("fbx", "flashbax")):
        results.sample_rows.append((label, library, out_bytes, times[name]))


# --------------------------------------------------------------------------------------------
# Rows a-e, in this process


def bench_add_rows(
    results: Results, scale: Scale, letter: str, capacity: int, steps_per_add: int
) -> None:
    """eqx_replay's add against Flashbax's, as the seed uses it and donated."""
    h.log(f"[{letter}] add {scale.rows}×{steps_per_add} at {capacity:,} steps")
    example = example_step((scale.obs_dim,), jnp.float32)
    batch, length, period = scale.samples[0]
    eqx_buf, fbx_buf = h.trajectory_buffers(
        add_batch_size=scale.rows,
        sample_batch_size=batch,
        sample_sequence_length=length,
        period=period,
        min_length_time_axis=length,
        max_size=capacity,
    )
    steps = h.random_batch(example, scale.rows, steps_per_add)
    runners = {
        "eqx": h.AddRunner(h.looked_up(eqx_buf, "add"), eqx_buf.init(example), steps),
        "fbx": h.AddRunner(jax.jit(fbx_buf.add), fbx_buf.init(example), steps),
        "fbx_donated": h.AddRunner(
            jax.jit(fbx_buf.add, donate_argnums=0), fbx_buf.init(example), steps
        ),
    }
    times = measure(runners, scale)
    del runners
    label = f"{letter}. add {scale.rows}×{steps_per_add} @ {capacity:,}"
    results.add(h.Row(f"{label} vs fbx jit", times["eqx"], times["fbx"]))
    results.add(h.Row(f"{label} vs fbx jit+donate", times["eqx"], times["fbx_donated"]))


def sample_runners(
    eqx_sample: Callable, eqx_state: Any, fbx_sample: Callable, fbx_state: Any, seed: int
) -> tuple[dict[str, h.SampleRunner], int]:
    keys = list(jr.split(jr.PRNGKey(seed), 1_000))
    out = eqx_sample(eqx_state, keys[0])
    out_bytes = h.tree_bytes(out.experience)
    fbx_out = fbx_sample(fbx_state, keys[0])
    assert h.tree_bytes(fbx_out.experience) == out_bytes
    runners = {
        "eqx": h.SampleRunner(eqx_sample, eqx_state, keys),
        "fbx": h.SampleRunner(fbx_sample, fbx_state, keys),
    }
    return runners, out_bytes


def bench_sample_and_scan(results: Results, scale: Scale) -> None:
    example = example_step((scale.obs_dim,), jnp.float32)
    time_axis = scale.capacity // scale.rows
    configs = [
        h.trajectory_buffers(
            add_batch_size=scale.rows,
            sample_batch_size=batch,
            sample_sequence_length=length,
            period=period,
            min_length_time_axis=length,
            max_size=scale.capacity,
        )
        for batch, length, period in scale.samples
    ]
    # One full state per library; every configuration stores `(rows, time_axis, ...)`, so the
    # sampling configurations share it.
    eqx_buf, fbx_buf = configs[0]
    h.log(f"[c] filling {scale.capacity:,} steps")
    eqx_state = h.fill(eqx_buf.add, eqx_buf.init(example), example, scale.rows, time_axis)
    fbx_add = jax.jit(fbx_buf.add, donate_argnums=0)
    fbx_state = h.fill(fbx_add, fbx_buf.init(example), example, scale.rows, time_axis)

    for (batch, length, period), (eqx_buf, fbx_buf) in zip(scale.samples, configs):
        h.log(f"[c] sample {batch}×{length} (period {period}) at {scale.capacity:,} steps")
        runners, out_bytes = sample_runners(
            h.looked_up(eqx_buf, "sample"),
            eqx_state,
            jax.jit(fbx_buf.sample),
            fbx_state,
            seed=batch,
        )
        times = measure(runners, scale)
        del runners
        label = f"c. sample {batch}×{length} @ {scale.capacity:,}"
        record_sample(results, label, times, out_bytes)

    # d: the fused loop, from the full states (consumed: the jit donates them).
    eqx_buf, fbx_buf = configs[0]
    batch, length, _ = scale.samples[0]
    h.log(f"[d] scan of {scale.scan_length:,} × (add {scale.rows}×1 + sample {batch}×{length})")

    def make_loop(add: Callable, sample: Callable) -> Callable:
        def loop(state, key, steps):
            def body(carry, _):
                state, key = carry
                key, sample_key = jr.split(key)
                state = add(state, steps)
                out = sample(state, sample_key).experience
                total = sum(jnp.sum(x.astype(jnp.float32)) for x in jtu.tree_leaves(out))
                return (state, key), total

            (state, key), totals = lax.scan(body, (state, key), length=scale.scan_length)
            return state, key, jnp.sum(totals)

        return jax.jit(loop, donate_argnums=0)

    steps = h.random_batch(example, scale.rows, 1, seed=2)
    runners = {
        "eqx": h.ScanRunner(
            make_loop(eqx_buf.add, eqx_buf.sample), eqx_state, jr.PRNGKey(3), steps
        ),
        "fbx": h.ScanRunner(
            make_loop(fbx_buf.add, fbx_buf.sample), fbx_state, jr.PRNGKey(3), steps
        ),
    }
    del eqx_state, fbx_state
    times = measure(runners, scale)
    del runners
    label = (
        f"d. scan {scale.scan_length:,}×(add {scale.rows}×1 + sample {batch}×{length}) "
        f"@ {scale.capacity:,}, per scan"
    )
    results.add(h.Row(label, times["eqx"], times["fbx"]))


def bench_readme(results: Results, scale: Scale, rows: int, with_copying: bool) -> None:
    """Flashbax README's setting: `u8[32, 32, 3]` observations, sample batch x 1 step."""
    example = example_step(README_OBS, jnp.uint8)
    capacity = scale.readme_capacity
    eqx_buf, fbx_buf = h.trajectory_buffers(
        add_batch_size=rows,
        sample_batch_size=scale.readme_sample,
        sample_sequence_length=1,
        period=1,
        min_length_time_axis=1,
        max_size=capacity,
    )
    time_axis = capacity // rows
    stored = rows * time_axis
    h.log(f"[e] README setting, {rows} rows × {time_axis:,} steps ({stored:,} steps)")
    eqx_state = h.fill(eqx_buf.add, eqx_buf.init(example), example, rows, time_axis)
    fbx_add = jax.jit(fbx_buf.add, donate_argnums=0)
    fbx_state = h.fill(fbx_add, fbx_buf.init(example), example, rows, time_axis)
    h.log(f"    each buffer holds {h.fmt_bytes(h.tree_bytes(eqx_state.experience))}")

    steps = h.random_batch(example, rows, 1, seed=4)
    runners = {
        "eqx": h.AddRunner(h.looked_up(eqx_buf, "add"), eqx_state, steps),
        "fbx_donated": h.AddRunner(fbx_add, fbx_state, steps),
    }
    if with_copying:
        runners["fbx"] = h.AddRunner(jax.jit(fbx_buf.add), fbx_buf.init(example), steps)
    del eqx_state, fbx_state
    times = measure(runners, scale)
    label = f"e. README add {rows}×1 @ {stored:,} u8[32,32,3]"
    if with_copying:
        results.add(h.Row(f"{label} vs fbx jit", times["eqx"], times["fbx"]))
    results.add(h.Row(f"{label} vs fbx jit+donate", times["eqx"], times["fbx_donated"]))
    # Still full: adds only overwrite the oldest steps.
    eqx_state, fbx_state = runners["eqx"].state, runners["fbx_donated"].state
    del runners

    batch = scale.readme_sample
    h.log(f"[e] README setting, sample {batch}×1")
    sampling, out_bytes = sample_runners(
        h.looked_up(eqx_buf, "sample"), eqx_state, jax.jit(fbx_buf.sample), fbx_state, seed=5
    )
    times = measure(sampling, scale)
    del sampling, eqx_state, fbx_state
    label = f"e. README sample {batch}×1 @ {stored:,} ({rows} row{'s' * (rows > 1)})"
    record_sample(results, label, times, out_bytes)


def bench_prioritised(results: Results, scale: Scale) -> None:
    """Prioritised trajectory buffers: add, sample and set_priorities, both libraries donated."""
    example = example_step((scale.obs_dim,), jnp.float32)
    time_axis = scale.capacity // scale.rows
    for batch, length, period in scale.samples:
        h.log(f"[h] prioritised, sample {batch}×{length} (period {period}) at {scale.capacity:,}")
        config: dict[str, Any] = dict(
            add_batch_size=scale.rows,
            sample_batch_size=batch,
            sample_sequence_length=length,
            period=period,
            min_length_time_axis=length,
            max_size=scale.capacity,
            priority_exponent=0.6,
        )
        eqx_buf = eqx_replay.make_prioritised_trajectory_buffer(**config)
        fbx_buf = fbx.make_prioritised_trajectory_buffer(**config, device="cpu")
        fbx_add = jax.jit(fbx_buf.add, donate_argnums=0)
        eqx_state = h.fill(
            h.looked_up(eqx_buf, "add"), eqx_buf.init(example), example, scale.rows, time_axis
        )
        fbx_state = h.fill(fbx_add, fbx_buf.init(example), example, scale.rows, time_axis)
        label = f"h. prioritised {{}} @ {scale.capacity:,} (sample {batch}×{length})"
        if period == scale.samples[0][2]:
            steps = h.random_batch(example, scale.rows, 1, seed=6)
            runners = {
                "eqx": h.AddRunner(h.looked_up(eqx_buf, "add"), eqx_state, steps),
                "fbx": h.AddRunner(fbx_add, fbx_state, steps),
            }
            times = measure(runners, scale)
            results.add(h.Row(label.format(f"add {scale.rows}×1"), times["eqx"], times["fbx"]))
            eqx_state, fbx_state = runners["eqx"].state, runners["fbx"].state
            del runners
        sampling, out_bytes = sample_runners(
            h.looked_up(eqx_buf, "sample"), eqx_state, jax.jit(fbx_buf.sample), fbx_state, seed=7
        )
        times = measure(sampling, scale)
        del sampling
        results.add(h.Row(label.format(f"sample {batch}×{length}"), times["eqx"], times["fbx"]))
        # Priorities for one sample's worth of windows, as after a learning step.
        assert eqx_state is not None and fbx_state is not None
        ours = eqx_buf.sample(eqx_state, jr.PRNGKey(8))
        theirs = jax.jit(fbx_buf.sample)(fbx_state, jr.PRNGKey(8))
        priorities = jnp.asarray(np.random.default_rng(9).uniform(0.1, 2.0, batch), jnp.float32)
        fbx_set = jax.jit(fbx_buf.set_priorities, donate_argnums=0)
        runners = {
            "eqx": h.AddRunner(
                lambda s, b, buf=eqx_buf: buf.set_priorities(s, *b),
                eqx_state,
                (ours.indices, priorities),
            ),
            "fbx": h.AddRunner(
                lambda s, b: fbx_set(s, *b), fbx_state, (theirs.indices, priorities)
            ),
        }
        del eqx_state, fbx_state
        times = measure(runners, scale)
        del runners
        results.add(h.Row(label.format(f"set_priorities ×{batch}"), times["eqx"], times["fbx"]))


# --------------------------------------------------------------------------------------------
# Rows f and g, each library in a fresh process


def proc_status() -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of this process, in bytes."""
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0]) * 1024
    return fields


def reset_peak_rss() -> bool:
    """Resets VmHWM to the current RSS (Linux >= 4.0); false where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def library_fns(lib: str, **kwargs: Any) -> tuple[Callable, Callable, Callable]:
    """`init`, `add`, `sample` as a user calls them: eqx_replay's methods; Flashbax's
    `init`, donated `jax.jit(add)` and `jax.jit(sample)`."""
    if lib == "eqx":
        buf = eqx_replay.make_trajectory_buffer(**kwargs)
        return buf.init, buf.add, buf.sample
    buf = fbx.make_trajectory_buffer(**kwargs)
    return buf.init, jax.jit(buf.add, donate_argnums=0), jax.jit(buf.sample)


def worker_memory(lib: str, scale: Scale) -> dict[str, Any]:
    jax.block_until_ready(jnp.zeros(()) + 1)  # start JAX
    rows, chunk = 16, scale.memory_chunk
    example = example_step(MEMORY_OBS, jnp.uint8)
    time_axis = math.ceil(scale.memory_bytes / (rows * h.tree_bytes(example) * chunk)) * chunk
    init, add, _ = library_fns(
        lib,
        add_batch_size=rows,
        sample_batch_size=32,
        sample_sequence_length=1,
        period=1,
        min_length_time_axis=1,
        max_length_time_axis=time_axis,
    )
    steps = h.random_batch(example, rows, chunk)  # part of the baseline
    baseline = proc_status()["VmRSS"]
    reset = reset_peak_rss()
    state = jax.block_until_ready(init(example))
    after_init = proc_status()["VmHWM"]
    for _ in range(time_axis // chunk):
        state = add(state, steps)
    state = jax.block_until_ready(state)
    assert bool(state.is_full)
    status = proc_status()
    return {
        "buffer_bytes": h.tree_bytes(state.experience),
        "baseline": baseline,
        "peak_init": after_init,
        "peak": status["VmHWM"],
        "final": status["VmRSS"],
        "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "peak_was_reset": reset,
        "time_axis": time_axis,
    }


def worker_compile(lib: str, scale: Scale) -> dict[str, Any]:
    jax.block_until_ready(jnp.zeros(()) + 1)  # start JAX
    example = example_step((scale.obs_dim,), jnp.float32)
    batch, length, period = scale.samples[0]
    init, add, sample = library_fns(
        lib,
        add_batch_size=scale.rows,
        sample_batch_size=batch,
        sample_sequence_length=length,
        period=period,
        min_length_time_axis=length,
        max_size=scale.capacity,
    )
    steps = h.random_batch(example, scale.rows, 1)
    key = jax.block_until_ready(jr.PRNGKey(0))
    timings = {}

    start = time.perf_counter()
    state = jax.block_until_ready(init(example))
    timings["init"] = time.perf_counter() - start

    start = time.perf_counter()
    state = jax.block_until_ready(add(state, steps))
    timings["add_first"] = time.perf_counter() - start
    for _ in range(length):
        state = add(state, steps)
    state = jax.block_until_ready(state)
    start = time.perf_counter()
    state = jax.block_until_ready(add(state, steps))
    timings["add_warm"] = time.perf_counter() - start

    start = time.perf_counter()
    jax.block_until_ready(sample(state, key))
    timings["sample_first"] = time.perf_counter() - start
    start = time.perf_counter()
    jax.block_until_ready(sample(state, key))
    timings["sample_warm"] = time.perf_counter() - start
    return timings


def run_worker(task: str, lib: str, scale: Scale) -> dict[str, Any]:
    """This script's `--worker task lib` in a fresh process, with every cache cold."""
    tiny = ["--tiny"] if scale.name == "tiny" else []
    return h.run_self("--worker", task, lib, *tiny, env={"JAX_ENABLE_COMPILATION_CACHE": "false"})


def bench_subprocesses(results: Results, scale: Scale) -> None:
    h.log(f"[f] peak memory filling a ≥ {h.fmt_bytes(scale.memory_bytes)} buffer, fresh processes")
    for lib in ("eqx", "fbx"):
        results.memory[lib] = run_worker("memory", lib, scale)
    factor = {
        lib: (m["peak"] - m["baseline"]) / m["buffer_bytes"] for lib, m in results.memory.items()
    }
    size = h.fmt_bytes(results.memory["eqx"]["buffer_bytes"])
    label = f"f. peak RSS filling {size}: (peak − baseline) / buffer"
    results.add(h.Row(label, factor["eqx"], factor["fbx"], kind="factor"))

    h.log(f"[g] first calls, {scale.compile_repeats} fresh process(es) per library")
    runs: dict[str, list[dict[str, float]]] = {"eqx": [], "fbx": []}
    for _ in range(scale.compile_repeats):
        for lib in ("eqx", "fbx"):
            runs[lib].append(run_worker("compile", lib, scale))
    for lib, timings in runs.items():
        results.compile[lib] = {
            name: statistics.median(t[name] for t in timings) for name in timings[0]
        }
    eqx_c, fbx_c = results.compile["eqx"], results.compile["fbx"]
    batch, length, _ = scale.samples[0]
    where = f"@ {scale.capacity:,}, first call"
    results.add(h.Row(f"g. add {scale.rows}×1 {where}", eqx_c["add_first"], fbx_c["add_first"]))
    results.add(
        h.Row(f"g. sample {batch}×{length} {where}", eqx_c["sample_first"], fbx_c["sample_first"])
    )


# --------------------------------------------------------------------------------------------
# Report


def notes(scale: Scale) -> list[str]:
    """The header's notes: how rows are timed, and how each library is called."""
    return [
        h.Timing(scale.rounds, scale.block).note() + " Ratio = eqx_replay / Flashbax: below 1 "
        "means eqx_replay is faster (or, for f, uses less memory).",
        "Flashbax: `jit` = `jax.jit(fb.add)` as the seed uses it (copies the buffer every "
        "call); `jit+donate` = `jax.jit(fb.add, donate_argnums=0)`; sample = "
        "`jax.jit(fb.sample)`. eqx_replay: `state = buf.add(state, batch)`, `buf.sample` "
        "(their own jit; add donates the state).",
    ]


def report_tables(report: h.Report, results: Results, scale: Scale) -> None:
    """The ratio table (the `table` section of the file), then the bandwidth, memory (f)
    and first-call (g) tables."""
    report.table(h.RATIO_HEADER, h.ratio_cells(results.rows), section="table")

    bandwidth = results.bandwidth
    report.add(
        "",
        "## Sampling against memory bandwidth",
        "",
        f"Copy bandwidth (`np.copyto` of {h.fmt_bytes(scale.copy_bytes)}, one thread, "
        f"read + write bytes, median of 9): **{bandwidth / 1e9:.2f} GB/s**. Achieved = bytes "
        "out / time; a gather as fast as a memcpy would sit at 2.0× (it reads and writes "
        "every byte out).",
        "",
    )
    cells = []
    for label, library, out_bytes, seconds in results.sample_rows:
        achieved = out_bytes / seconds
        cells.append(
            [
                label,
                library,
                h.fmt_bytes(out_bytes),
                h.fmt_time(seconds),
                f"{achieved / 1e9:.2f} GB/s",
                f"{bandwidth / achieved:.1f}×",
            ]
        )
    header = ["row", "library", "bytes out", "time", "achieved", "bandwidth / achieved"]
    report.table(header, cells, align="llrrrr")

    if not results.memory:  # a partial run (`--only`) without rows f and g
        return
    report.add(
        "",
        "## Peak memory while filling (row f)",
        "",
        "Each library in a fresh process: 16 rows of `u8[84, 84, 4]` observations (+ reward, "
        "done), filled completely by adds of "
        f"{scale.memory_chunk} steps; Flashbax with its donated add. Baseline = RSS after "
        "imports, JAX start-up and making the batch; peak = VmHWM (reset at the baseline "
        "where the kernel allows).",
        "",
    )
    cells = []
    for lib, library in (("eqx", "eqx_replay"), ("fbx", "flashbax")):
        m = results.memory[lib]
        size, base = m["buffer_bytes"], m["baseline"]
        cells.append(
            [
                library,
                h.fmt_bytes(size),
                h.fmt_bytes(base),
                h.fmt_bytes(m["peak_init"]),
                h.fmt_bytes(m["peak"]),
                f"{(m['peak_init'] - base) / size:.3f}×",
                f"{(m['peak'] - base) / size:.3f}×",
            ]
        )
    header = [
        "library",
        "buffer",
        "baseline RSS",
        "peak after init",
        "peak after fill",
        "(init peak − baseline) / buffer",
        "(peak − baseline) / buffer",
    ]
    report.table(header, cells)

    batch, length, _ = scale.samples[0]
    report.add(
        "",
        "## First calls (row g)",
        "",
        f"Fresh process per run, median of {scale.compile_repeats}; buffer of "
        f"{scale.capacity:,} steps ({scale.rows} rows, `f32[{scale.obs_dim}]` observations), "
        f"add {scale.rows}×1, sample {batch}×{length}. First = tracing + compilation + run; "
        "warm = the next call.",
        "",
    )
    names = ("init", "add_first", "add_warm", "sample_first", "sample_warm")
    cells = [
        [library, *(h.fmt_time(results.compile[lib][name]) for name in names)]
        for lib, library in (("eqx", "eqx_replay"), ("fbx", "flashbax"))
    ]
    header = ["library", "init", "first add", "warm add", "first sample", "warm sample"]
    report.table(header, cells)


# --------------------------------------------------------------------------------------------
# Main


def main() -> None:
    parser = h.parser(__doc__)
    parser.add_argument("--rounds", type=int, help="timed rounds per row")
    parser.add_argument("--block", type=float, help="seconds per timed block")
    parser.add_argument(
        "--only", default="abcdefgh", help="the row letters to run, e.g. `--only ch`"
    )
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()

    warnings.simplefilter("ignore")  # Flashbax warns about `max_size` on every buffer
    scale = TINY if args.tiny else FULL
    if args.rounds is not None:
        scale = dataclasses.replace(scale, rounds=args.rounds)
    if args.block is not None:
        scale = dataclasses.replace(scale, block=args.block)

    if args.worker:
        task, lib = args.worker
        worker = {"memory": worker_memory, "compile": worker_compile}[task]
        h.emit(worker(lib, scale))
        return

    only = set(args.only)
    title = "eqx_replay vs Flashbax: trajectory buffer"
    report = h.Report("compare_flashbax", title, args, partial=only != set("abcdefgh"))
    h.log(f"Scale: {scale.name}")
    results = Results()
    if only & set("fg"):
        bench_subprocesses(results, scale)  # first, while this process holds no big buffers
    h.log("[c] copy bandwidth")
    results.bandwidth = copy_bandwidth(scale.copy_bytes)
    h.log(f"    {results.bandwidth / 1e9:.2f} GB/s (read + write)")
    if "a" in only:
        for capacity in scale.add_capacities:
            bench_add_rows(results, scale, "a", capacity, steps_per_add=1)
    if "b" in only:
        bench_add_rows(results, scale, "b", scale.capacity, steps_per_add=scale.chunk)
    if only & set("cd"):
        bench_sample_and_scan(results, scale)
    if "e" in only:
        bench_readme(results, scale, rows=scale.readme_rows, with_copying=True)
        bench_readme(results, scale, rows=1, with_copying=False)
    if "h" in only:
        bench_prioritised(results, scale)

    results.rows.sort(key=lambda row: row.label[0])  # by the letters, a to h
    report_tables(report, results, scale)
    path = report.write(notes(scale))
    h.plot(results.rows, path.with_suffix(".png"), f"eqx_replay / Flashbax — {report.machine}")
    h.log(f"Wrote {path.with_suffix('.png')}")


if __name__ == "__main__":
    main()
