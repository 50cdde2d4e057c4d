"""Vault writes and reads, eqx_replay's against Flashbax 0.1.3's, side by side in one
process: the same buffer states written after every `--write-every` steps, the same
compression (Flashbax's default, gzip level 5), then the whole vault read back.

    python benchmarks/vault_compare.py            # 16 rows x 100k steps of a DQN-like step
    python benchmarks/vault_compare.py --tiny     # seconds

Both vaults get exactly the same states, one after the other in the same loop; every write
is timed on its own. Reads alternate between the two vaults (best of `--repeats`); both
read-backs are checked equal to what was added.

It prints the table and writes it to `benchmarks/results/vault_compare.md`
(`vault_compare_tiny.md` with `--tiny`; `--out DIR` writes elsewhere).
"""

import os
import shutil
import tempfile
import time
import warnings

import _harness as h
import jax
import jax.numpy as jnp
import numpy as np

import eqx_replay
from eqx_replay.vault import Vault


with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from flashbax.vault import Vault as FlashbaxVault


def size_on_disk(path: str) -> int:
    return sum(os.path.getsize(os.path.join(r, n)) for r, _, ns in os.walk(path) for n in ns)


def quietly(fn, *args, **kwargs):
    """Flashbax's Vault prints; keep the table readable."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args, **kwargs)


def main() -> None:
    parser = h.parser(__doc__)
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--steps", type=int, default=100_000, help="steps per row in all")
    parser.add_argument("--capacity", type=int, default=10_000, help="the buffer's time axis")
    parser.add_argument("--write-every", type=int, default=1000)
    parser.add_argument("--obs", type=int, default=16, help="float32 observation size")
    parser.add_argument("--repeats", type=int, default=3, help="reads of each vault")
    args = parser.parse_args()
    if args.tiny:
        args.rows, args.steps, args.capacity, args.write_every = 4, 600, 200, 50
    report = h.Report("vault_compare", "Vault writes and reads: eqx_replay vs Flashbax", args)
    rows, add = args.rows, args.write_every
    buffer = eqx_replay.make_trajectory_buffer(
        add_batch_size=rows,
        sample_batch_size=1,
        sample_sequence_length=1,
        period=1,
        min_length_time_axis=1,
        max_length_time_axis=args.capacity,
    )
    example = {
        "obs": jnp.zeros(args.obs, jnp.float32),
        "action": jnp.int32(0),
        "reward": jnp.float32(0),
        "done": jnp.bool_(False),
    }
    state = buffer.init(example)

    @jax.jit
    def steps(key: jax.Array, start: jax.Array) -> dict[str, jax.Array]:
        k1, k2 = jax.random.split(key)
        n = start + jnp.arange(add)
        return {
            "obs": jax.random.normal(k1, (rows, add, args.obs)),
            "action": jax.random.randint(k2, (rows, add), 0, 6),
            "reward": jnp.broadcast_to((n % 7).astype(jnp.float32), (rows, add)),
            "done": jnp.broadcast_to(n % 200 == 199, (rows, add)),
        }

    base = tempfile.mkdtemp(prefix="eqx_replay_vault_")
    cwd = os.getcwd()
    os.chdir(base)
    try:
        ours = Vault("bench", experience_structure=state.experience, vault_uid="ours")
        theirs = quietly(
            FlashbaxVault, "bench", experience_structure=state.experience, vault_uid="flashbax"
        )
        key = jax.random.key(0)
        write = {"eqx_replay": 0.0, "flashbax": 0.0}
        added = []
        for i in range(args.steps // add):
            key, k = jax.random.split(key)
            batch = steps(k, jnp.int32(i * add))
            added.append(jax.tree.map(np.asarray, batch))
            state = buffer.add(state, batch)
            jax.block_until_ready(state)
            for name, vault in [("eqx_replay", ours), ("flashbax", theirs)][:: 1 - 2 * (i % 2)]:
                start = time.perf_counter()
                quietly(vault.write, state)
                write[name] += time.perf_counter() - start
        expected = jax.tree.map(lambda *x: np.concatenate(x, 1), *added)
        # Reads alternate, `--repeats` times each; the best of each is reported.
        read = {"eqx_replay": float("inf"), "flashbax": float("inf")}
        results = {}
        readers = {
            "flashbax": lambda: quietly(FlashbaxVault, "bench", vault_uid="flashbax"),
            "eqx_replay": lambda: Vault("bench", vault_uid="ours"),
        }
        for _ in range(args.repeats):
            for name, make in readers.items():
                vault = make()
                start = time.perf_counter()
                results[name] = jax.block_until_ready(quietly(vault.read).experience)
                read[name] = min(read[name], time.perf_counter() - start)
        for name, got in results.items():
            for leaf in expected:
                assert np.array_equal(np.asarray(got[leaf]), expected[leaf]), (name, leaf)
        sizes = {
            "eqx_replay": size_on_disk(os.path.join(base, "vaults/bench/ours")),
            "flashbax": size_on_disk(os.path.join(base, "vaults/bench/flashbax")),
        }
    finally:
        os.chdir(cwd)
        shutil.rmtree(base, ignore_errors=True)
    total = sum(x.nbytes for x in jax.tree.leaves(expected))
    report.add(
        f"{rows} rows x {args.steps} steps ({total / 1e6:.1f} MB), buffer capacity "
        f"{args.capacity}, a write every {add} steps, gzip level 5",
        "",
    )
    cells = [
        [name, f"{write[name]:.2f}", f"{read[name]:.2f}", f"{sizes[name] / 1e6:.1f}"]
        for name in ("eqx_replay", "flashbax")
    ]
    cells.append(
        [
            "Flashbax / eqx_replay",
            f"{write['flashbax'] / write['eqx_replay']:.2f}x",
            f"{read['flashbax'] / read['eqx_replay']:.2f}x",
            f"{sizes['flashbax'] / sizes['eqx_replay']:.2f}x",
        ]
    )
    report.table(
        ["", "write (all) s", "read s", "on disk MB"], cells, align="llll", section="table"
    )
    report.write(
        [
            "Timing: every write timed on its own (the libraries alternate, the order "
            f"reversed every write); reads alternate, the best of {args.repeats} each."
        ]
    )


if __name__ == "__main__":
    main()
