"""`save_state` / `load_state` of a large trajectory state against the disk's own
sequential bandwidth, measured in the same run on the same directory, and the peak extra
memory of a save.

    python benchmarks/checkpoint_throughput.py               # a ~2 GB state
    python benchmarks/checkpoint_throughput.py --size-mb 8   # quick

The disk: the state's bytes written with `numpy.ndarray.tofile` and `fsync`ed, then read
back with `numpy.fromfile`. Both reads start cold: the file's pages are dropped from the
page cache (`posix_fadvise(DONTNEED)`) first, for the plain file and for the checkpoint's
files alike. Memory: the process's resident size, sampled every millisecond during the save,
minus its size before.

It prints the table and writes it to `benchmarks/results/checkpoint_throughput.md`
(`checkpoint_throughput_tiny.md` with `--tiny`; `--out DIR` writes elsewhere).
"""

import os
import shutil
import tempfile
import threading
import time

import _harness as h
import jax
import jax.numpy as jnp
import numpy as np

import eqx_replay


ROWS = 64
OBS = 1024  # float32 per step: 4 KiB


def resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """The largest resident size seen while the block runs, sampled every millisecond."""

    def __enter__(self) -> "PeakMemory":
        self.before = resident_bytes()
        self.peak = self.before
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, resident_bytes())
            time.sleep(0.001)

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, resident_bytes())


def drop_cache(path: str) -> None:
    """Drops the page cache of a file, or of every file under a directory."""
    paths = (
        [path]
        if os.path.isfile(path)
        else [os.path.join(root, name) for root, _, names in os.walk(path) for name in names]
    )
    for file in paths:
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def disk_bandwidth(directory: str, data: np.ndarray) -> tuple[float, float]:
    """Seconds to write `data` to a file and fsync it, and to read it back cold."""
    path = os.path.join(directory, "plain.bin")
    start = time.perf_counter()
    with open(path, "wb") as f:
        data.tofile(f)
        f.flush()
        os.fsync(f.fileno())
    write = time.perf_counter() - start
    drop_cache(path)
    start = time.perf_counter()
    back = np.fromfile(path, dtype=data.dtype)
    read = time.perf_counter() - start
    assert back.size == data.size
    os.remove(path)
    return write, read


def main() -> None:
    parser = h.parser(__doc__)
    parser.add_argument("--size-mb", type=float, default=2048)
    parser.add_argument("--directory", default=None, help="where to write (default: a temp dir)")
    args = parser.parse_args()
    if args.tiny:
        args.size_mb = 4  # a 4 MB state
    report = h.Report("checkpoint_throughput", "Checkpoint throughput", args)
    steps = max(2, int(args.size_mb * 2**20 / (ROWS * OBS * 4)))
    buffer = eqx_replay.make_trajectory_buffer(
        add_batch_size=ROWS,
        sample_batch_size=32,
        sample_sequence_length=2,
        period=1,
        min_length_time_axis=2,
        max_length_time_axis=steps,
    )
    example = {"obs": jnp.zeros(OBS, jnp.float32), "action": jnp.int32(0)}
    state = buffer.init(example)
    # Incompressible data: the disk, not a compressor, is what is measured.
    chunk = max(1, steps // 8)
    key = jax.random.key(0)
    for start in range(0, steps, chunk):
        t = min(chunk, steps - start)
        key, k = jax.random.split(key)
        state = buffer.add(
            state,
            {
                "obs": jax.random.normal(k, (ROWS, t, OBS)),
                "action": jnp.full((ROWS, t), start, jnp.int32),
            },
        )
    state = buffer.add(
        state,
        jax.tree.map(
            lambda x: x[:, :1],
            {"obs": jnp.ones((ROWS, 1, OBS)), "action": jnp.zeros((ROWS, 1), jnp.int32)},
        ),
    )  # mid-wrap
    jax.block_until_ready(state)
    nbytes = sum(x.nbytes for x in jax.tree.leaves(state))
    base = args.directory or tempfile.mkdtemp(prefix="eqx_replay_ckpt_")
    os.makedirs(base, exist_ok=True)
    try:
        plain = np.asarray(state.experience["obs"]).reshape(-1)
        disk_write, disk_read = disk_bandwidth(base, plain)
        disk_write *= nbytes / plain.nbytes
        disk_read *= nbytes / plain.nbytes
        target = os.path.join(base, "checkpoint")
        with PeakMemory() as memory:
            start = time.perf_counter()
            eqx_replay.save_state(target, buffer, state)
            save = time.perf_counter() - start
        drop_cache(target)
        start = time.perf_counter()
        loaded = eqx_replay.load_state(target, buffer, example)
        jax.block_until_ready(loaded)
        load = time.perf_counter() - start
        assert bool(eqx_replay_equal(loaded, state))
        on_disk = sum(
            os.path.getsize(os.path.join(r, n)) for r, _, ns in os.walk(target) for n in ns
        )
    finally:
        if args.directory is None:
            shutil.rmtree(base, ignore_errors=True)
    gb = nbytes / 1e9
    report.add(
        f"state: {gb:.3f} GB ({ROWS} rows x {steps} steps x {OBS * 4} B), "
        f"on disk {on_disk / 1e9:.3f} GB",
        "",
    )
    cells = [
        ["disk: write + fsync", f"{disk_write:.2f}", f"{gb / disk_write:.2f}", ""],
        ["`save_state`", f"{save:.2f}", f"{gb / save:.2f}", f"{disk_write / save:.0%}"],
        ["disk: read (cold)", f"{disk_read:.2f}", f"{gb / disk_read:.2f}", ""],
        ["`load_state` (cold)", f"{load:.2f}", f"{gb / load:.2f}", f"{disk_read / load:.0%}"],
    ]
    report.table(
        ["", "seconds", "GB/s", "share of the disk's"], cells, align="llll", section="table"
    )
    extra = (memory.peak - memory.before) / nbytes
    report.add(
        "",
        f"peak extra memory during save: {(memory.peak - memory.before) / 1e9:.3f} GB = "
        f"{extra:.2f}x the state",
    )
    report.write()


def eqx_replay_equal(a: object, b: object) -> bool:
    return all(bool(jnp.array_equal(x, y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


if __name__ == "__main__":
    main()
