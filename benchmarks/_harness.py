"""What every benchmark script shares: its command line, its timing loops, the machine and
version lines, the Markdown it prints and writes, and the ratio chart.

A script is run as `python benchmarks/<name>.py`, so this file's directory is first on
`sys.path` and `import _harness` finds it. A script:

    parser = _harness.parser(__doc__)            # --tiny and --out DIR, plus its own options
    args = parser.parse_args()
    report = _harness.Report("episode_modes", "Cost of episode boundaries", args)
    report.table(["capacity", "mode", "add"], rows, align="rlr", section="table")  # printed
    report.write(notes=["Timing: ..."])          # <out>/episode_modes.md, header + tables

Full runs write `benchmarks/results/<name>.md` (and `<name>.png` where a chart helps);
`--tiny` runs write `<name>_tiny.md`, so CI's runs never overwrite the published results.

Timing. A runner is a callable `runner(n) -> seconds` that makes `n` calls and blocks on
what the last one produced (`AddRunner`, `SampleRunner`, `ScanRunner`). Contenders
are timed in one process, in alternation, round by round, and each reports the median over
rounds of (block time / calls), after warm-up: `measure` picks the calls per block from a
target block length, `alternate` takes a fixed number of calls, `per_call` times one block.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np


BENCHMARKS = Path(__file__).resolve().parent
RESULTS = BENCHMARKS / "results"


# --------------------------------------------------------------------------------------------
# Command line and output


def parser(doc: str | None = None) -> argparse.ArgumentParser:
    """An argument parser with the options every script takes: `--tiny` (every size shrunk,
    for CI) and `--out DIR` (where the results go, `benchmarks/results` by default)."""
    parser = argparse.ArgumentParser(
        description=(doc or "").split("\n\n")[0] or None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--tiny", action="store_true", help="shrink every size (for CI)")
    parser.add_argument(
        "--out",
        type=Path,
        default=RESULTS,
        help="directory for <name>.md (<name>_tiny.md with --tiny); default benchmarks/results",
    )
    return parser


def log(message: str) -> None:
    """Progress, to stderr: stdout holds the tables."""
    print(message, file=sys.stderr, flush=True)


def machine() -> str:
    """CPU model, cores, RAM, OS and JAX's devices, in one line."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.partition(":")[2].strip()
                    break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    memory = ""
    try:
        with open("/proc/meminfo") as f:
            total = int(f.readline().split()[1]) * 1024
        memory = f", {total / 2**30:.1f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    cores = f"{os.cpu_count()} cores" + (f" ({usable} usable)" if usable else "")
    devices = ", ".join(str(d) for d in jax.devices())
    return f"{model}, {cores}{memory}; {platform.system()} {platform.release()}; {devices}"


def versions() -> str:
    """Python's and the relevant packages' versions, in one line."""
    names = ("jax", "jaxlib", "equinox", "flashbax", "eqx_replay", "numpy")
    parts = [f"Python {platform.python_version()}"]
    for name in names:
        try:
            parts.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            parts.append(f"{name} ?")
    return ", ".join(parts)


def table(header: Sequence[str], rows: Iterable[Sequence[str]], align: str = "") -> list[str]:
    """A Markdown table's lines; `align` has one letter per column, `l` or `r` (default: the
    first column left, the others right)."""
    align = align or "l" + "r" * (len(header) - 1)
    assert len(align) == len(header), (align, header)
    rule = "".join("|---" if a == "l" else "|---:" for a in align) + "|"
    return [f"| {' | '.join(header)} |", rule, *(f"| {' | '.join(row)} |" for row in rows)]


class Report:
    """One run's Markdown: each part is printed to stdout as it comes and kept; `write`
    writes them under a header (title, exact command, date, machine, versions, notes) to
    `<out>/<stem>.md`, `stem` being the script's name, `_tiny` added for `--tiny`."""

    def __init__(self, name: str, title: str, args: argparse.Namespace, partial: bool = False):
        self.name, self.title = name, title
        self.tiny: bool = args.tiny
        self.out: Path = args.out
        self.stem = name + ("_tiny" if self.tiny else "") + ("_partial" if partial else "")
        self.command = shlex.join(["python", f"benchmarks/{name}.py", *sys.argv[1:]])
        self.started = time.perf_counter()
        self.date = datetime.datetime.now(datetime.UTC)
        self.machine, self.versions = machine(), versions()
        self.body: list[str] = []
        log(f"Machine: {self.machine}\nVersions: {self.versions}")

    @property
    def path(self) -> Path:
        return self.out / f"{self.stem}.md"

    def add(self, *lines: str) -> None:
        """Prints `lines` and keeps them for the file."""
        print("\n".join(lines), flush=True)
        self.body += lines

    def table(
        self,
        header: Sequence[str],
        rows: Iterable[Sequence[str]],
        align: str = "",
        section: str | None = None,
    ) -> None:
        """Adds a Markdown table (see `table`). A `section` name marks it in the file for
        the docs to include alone: `--8<-- "benchmarks/results/<name>.md:<section>"`."""
        lines = table(header, rows, align)
        if section is None:
            self.add(*lines)
            return
        print("\n".join(lines), flush=True)
        self.body += [f"<!-- --8<-- [start:{section}] -->", *lines]
        self.body.append(f"<!-- --8<-- [end:{section}] -->")

    def markdown(self, notes: Sequence[str] = ()) -> str:
        elapsed = time.perf_counter() - self.started
        lines = [
            f"# {self.title}",
            "",
            f"Command: `{self.command}` ({self.date:%Y-%m-%d %H:%M} UTC)",
            "",
            f"- Machine: {self.machine}",
            f"- Versions: {self.versions}",
            *(f"- {note}" for note in notes),
            "",
            *self.body,
            "",
            f"Total wall time of the run: {elapsed:.0f} s.",
        ]
        return "\n".join(lines) + "\n"

    def write(self, notes: Sequence[str] = ()) -> Path:
        """Writes the file (creating `out`) and returns its path."""
        self.out.mkdir(parents=True, exist_ok=True)
        self.path.write_text(self.markdown(notes))
        log(f"Wrote {self.path}")
        return self.path


# --------------------------------------------------------------------------------------------
# Fresh processes


RESULT = "RESULT "


def emit(result: Any) -> None:
    """A worker's answer to `run_self`: one JSON line on stdout."""
    print(RESULT + json.dumps(result), flush=True)


def run_self(*args: str, env: Mapping[str, str] | None = None, timeout: float | None = None) -> Any:
    """Runs the running script again in a fresh process with `args`, and returns what that
    process `emit`ted last. Raises with the end of its stderr if it fails."""
    script = Path(sys.modules["__main__"].__file__ or "").resolve()
    done = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        env=None if env is None else {**os.environ, **env},
        timeout=timeout,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"{script.name} {shlex.join(args)} failed ({done.returncode}):\n{done.stderr[-4000:]}"
        )
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT)]
    return json.loads(lines[-1].removeprefix(RESULT))


# --------------------------------------------------------------------------------------------
# Timing


class Runner(Protocol):
    n_cap: int  # the most calls one block may make

    def __call__(self, n: int) -> float: ...


class AddRunner:
    """Runs `n` calls of `state = add(state, batch)` from its own state, rebound after every
    call (so a donated state is never reused), and blocks on the last state."""

    def __init__(self, add: Callable, state: Any, batch: Any):
        self.add, self.batch = add, batch
        self.state: Any = state
        self.n_cap = 100_000

    def __call__(self, n: int) -> float:
        state, self.state = self.state, None  # hold no reference to a donated state
        add, batch = self.add, self.batch
        start = time.perf_counter()
        for _ in range(n):
            state = add(state, batch)
        jax.block_until_ready(state)
        elapsed = time.perf_counter() - start
        self.state = state
        return elapsed


class SampleRunner:
    """Runs `sample(state, key)` for the first `n` of `keys` from a fixed state, keeping only
    the latest output alive, as a training loop does (holding hundreds of outputs would time
    the kernel's page faults for fresh memory, not the sample); blocks on the last one.
    Repeating one key samples the same windows every call (they stay in the caches)."""

    def __init__(self, sample: Callable, state: Any, keys: Sequence[jax.Array]):
        self.sample, self.state, self.keys = sample, state, list(keys)
        self.n_cap = len(self.keys)

    def __call__(self, n: int) -> float:
        sample, state, keys = self.sample, self.state, self.keys[:n]
        start = time.perf_counter()
        out = None
        for key in keys:
            out = sample(state, key)
        jax.block_until_ready(out)
        return time.perf_counter() - start


class ScanRunner:
    """Runs `n` calls of `state, key, total = loop(state, key, batch)` (a whole training-style
    scan whose donated carry is the state)."""

    def __init__(self, loop: Callable, state: Any, key: jax.Array, batch: Any):
        self.loop, self.key, self.batch = loop, key, batch
        self.state: Any = state
        self.n_cap = 100

    def __call__(self, n: int) -> float:
        state, self.state = self.state, None
        key, batch = self.key, self.batch
        start = time.perf_counter()
        for _ in range(n):
            state, key, total = self.loop(state, key, batch)
        jax.block_until_ready((state, key, total))  # pyright: ignore[reportPossiblyUnbound]
        elapsed = time.perf_counter() - start
        self.state, self.key = state, key
        return elapsed


def per_call(runner: Runner, calls: int, warmup: int = 1) -> float:
    """Seconds per call of one block of `calls` calls, after `warmup` calls (not timed)."""
    if warmup:
        runner(warmup)
    return runner(calls) / calls


def alternate(
    runners: Mapping[str, Runner],
    calls: int | Mapping[str, int],
    rounds: int,
    warmup: int = 1,
    reverse: bool = True,
) -> dict[str, float]:
    """Median seconds per call of each runner over `rounds` rounds; each round times one
    block of `calls` calls per runner (after `warmup` untimed calls), in the runners' order,
    reversed every other round if `reverse`."""
    counts = calls if isinstance(calls, Mapping) else dict.fromkeys(runners, calls)
    times: dict[str, list[float]] = {name: [] for name in runners}
    names = list(runners)
    for i in range(rounds):
        for name in names if i % 2 == 0 or not reverse else names[::-1]:
            times[name].append(per_call(runners[name], counts[name], warmup))
    return {name: statistics.median(values) for name, values in times.items()}


@dataclasses.dataclass(frozen=True)
class Timing:
    """Rounds, and seconds per timed block, of `measure`."""

    rounds: int
    block: float

    @staticmethod
    def of(tiny: bool) -> Timing:
        return TINY_TIMING if tiny else FULL_TIMING

    def note(self) -> str:
        """The results file's line on how rows were timed."""
        return (
            f"Timing: median over {self.rounds} rounds of per-call time; each round times one "
            f"block of N calls (~{self.block * 1e3:g} ms) per contender, in alternation, after "
            "warm-up."
        )


# The comparisons with Flashbax (compare_flashbax.py, compare_family.py) time every row so.
FULL_TIMING = Timing(rounds=15, block=0.3)
TINY_TIMING = Timing(rounds=2, block=0.002)  # checks that the script runs, nothing more


def calls_per_block(run: Runner, block: float) -> int:
    """Warms `run` up (compilation and the first call), then the number of calls (at most
    `run.n_cap`) that one block of about `block` seconds makes."""
    run(1)
    n = 1
    while True:
        elapsed = max(run(n), 1e-9)
        if elapsed >= block / 10 or n >= run.n_cap:
            break
        n = min(n * 10, run.n_cap)
    return max(1, min(run.n_cap, round(block * n / elapsed)))


def measure(runners: Mapping[str, Runner], rounds: int, block: float) -> dict[str, float]:
    """Median seconds per call of each runner: after warm-up, `rounds` rounds of one block
    of about `block` seconds per runner, alternating (order reversed every other round)."""
    calls = {name: calls_per_block(r, block) for name, r in runners.items()}
    return alternate(runners, calls, rounds, warmup=0)


# --------------------------------------------------------------------------------------------
# Data


FILL_CHUNK_BYTES = 64 * 2**20  # largest batch used to fill a buffer


def tree_bytes(tree: Any) -> int:
    return sum(leaf.nbytes for leaf in jtu.tree_leaves(tree))


def random_batch(example: Any, rows: int, steps: int, seed: int = 0) -> Any:
    """A batch `(rows, steps, ...)` of random data in the example's dtypes, on device."""
    rng = np.random.default_rng(seed)

    def leaf(x: jax.Array) -> jax.Array:
        shape = (rows, steps) + x.shape
        if x.dtype == jnp.bool_:
            value = rng.random(shape) < 0.1
        elif jnp.issubdtype(x.dtype, jnp.integer):
            value = rng.integers(0, 256, shape).astype(x.dtype)
        else:
            value = rng.standard_normal(shape).astype(x.dtype)
        return jnp.asarray(value)

    return jax.block_until_ready(jtu.tree_map(leaf, example))


def fill_chunk(rows: int, time_axis: int, per_step: int) -> int:
    """The largest divisor of `time_axis` whose batch fits in `FILL_CHUNK_BYTES`."""
    best = 1
    for steps in range(1, time_axis + 1):
        if rows * steps * per_step > FILL_CHUNK_BYTES:
            break
        if time_axis % steps == 0:
            best = steps
    return best


def fill(add: Callable, state: Any, example: Any, rows: int, time_axis: int) -> Any:
    """Fills every step of a fresh state with adds (`add` may donate: the state is rebound)."""
    steps = fill_chunk(rows, time_axis, tree_bytes(example))
    batch = random_batch(example, rows, steps, seed=1)
    for _ in range(time_axis // steps):
        state = add(state, batch)
    state = jax.block_until_ready(state)
    assert bool(state.is_full), "the buffer should be full"
    return state


def looked_up(buffer: Any, method: str) -> Callable:
    """`buffer.method(...)` with the attribute looked up on every call, as users write it, so
    that the timing includes that per-call overhead."""
    return lambda *args: getattr(buffer, method)(*args)


def trajectory_buffers(**kwargs: Any) -> tuple[Any, Any]:
    """eqx_replay's and Flashbax's trajectory buffers of the same configuration."""
    import flashbax

    import eqx_replay

    return eqx_replay.make_trajectory_buffer(**kwargs), flashbax.make_trajectory_buffer(**kwargs)


def compiled_method(cls: type, name: str) -> Any:
    """The `eqx_replay._jit.CompiledMethod` behind `cls.name`, from whichever class of its
    MRO defines it (benchmarks that switch a method's checks or guard off reach it so)."""
    for owner in cls.__mro__:
        if name in vars(owner):
            return vars(owner)[name]
    raise AttributeError(f"{cls.__name__} has no {name}")


# --------------------------------------------------------------------------------------------
# eqx_replay against Flashbax: rows, their table and their chart


def fmt_time(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def fmt_ratio(ratio: float) -> str:
    return f"{ratio:.2f}" if ratio >= 0.1 else f"{ratio:.2g}"


def fmt_bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


@dataclasses.dataclass
class Row:
    """One row of a comparison: eqx_replay's and Flashbax's value."""

    label: str
    eqx: float
    fbx: float
    kind: str = "time"  # "time": seconds; "factor": a dimensionless factor

    @property
    def ratio(self) -> float:
        return self.eqx / self.fbx

    def cell(self, value: float) -> str:
        return fmt_time(value) if self.kind == "time" else f"{value:.3f}×"


class Rows(list[Row]):
    """Rows, each logged as it is added."""

    def add(self, row: Row) -> None:
        self.append(row)
        log(
            f"  {row.label}: eqx_replay {row.cell(row.eqx)}, flashbax {row.cell(row.fbx)}, "
            f"ratio {row.ratio:.3f}"
        )


RATIO_HEADER = ("row", "eqx_replay", "flashbax", "ratio (eqx/fbx)")


def ratio_cells(rows: Iterable[Row]) -> list[list[str]]:
    """The cells of the ratio table, under `RATIO_HEADER`."""
    return [[row.label, row.cell(row.eqx), row.cell(row.fbx), fmt_ratio(row.ratio)] for row in rows]


def plot(rows: Sequence[Row], path: Path, title: str) -> None:
    """A bar per row of eqx_replay / Flashbax, log scale, the first row on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = rows[::-1]
    ratios = [row.ratio for row in rows]
    fig, ax = plt.subplots(figsize=(11, 0.38 * len(rows) + 1.6))
    colors = ["tab:green" if r <= 1 else "tab:red" for r in ratios]
    ax.barh(range(len(rows)), [r - 1 for r in ratios], left=1, color=colors)
    ax.set_xscale("log")
    ax.axvline(1.0, color="black", linewidth=1, linestyle="--")
    ax.set_yticks(range(len(rows)), [row.label for row in rows], fontsize=8)
    for i, ratio in enumerate(ratios):
        side = "left" if ratio >= 1 else "right"
        ax.text(ratio, i, f" {fmt_ratio(ratio)} ", va="center", ha=side, fontsize=7)
    low, high = min(ratios + [1.0]), max(ratios + [1.0])
    ax.set_xlim(low / 3, high * 3)
    ax.set_xlabel("eqx_replay / Flashbax (log scale; < 1: eqx_replay faster / smaller)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
