"""Weak scaling of a sharded trajectory buffer on 1, 2, 4 and 8 fake CPU devices.

    python benchmarks/sharding_scaling.py           # full sizes: about a minute
    python benchmarks/sharding_scaling.py --tiny    # every size shrunk, for CI

Every device holds the same rows (`--rows` per device, `--time` steps each, `f32[64]`
observations), so the work per device stays fixed as devices are added: ideally each call
costs the same on every mesh. Fake CPU devices share this machine's cores, so the figure
also holds what partitioning costs beyond the work itself: the launch of one program per
device and its synchronisation. Each mesh size runs in a process of its own
(`jax_num_cpu_devices` is fixed when JAX starts); the table also gives the size of the
compiled HLO text of `add` and `sample`, and whether it holds any collective.

It prints a markdown table (`--out FILE` also writes it).
"""

import argparse
import json
import subprocess
import sys
import time


COLLECTIVES = ("all-gather", "all-reduce", "collective-permute", "all-to-all", "reduce-scatter")


def measure(
    devices: int, rows: int, time_axis: int, calls: int, sharded: bool = True
) -> dict[str, float | int | bool]:
    import jax

    jax.config.update("jax_num_cpu_devices", devices)
    import jax.numpy as jnp
    import jax.random as jr
    from jax.sharding import NamedSharding, PartitionSpec as P

    import eqx_replay

    mesh = jax.make_mesh((devices,), ("data",))
    buffer = eqx_replay.make_trajectory_buffer(
        add_batch_size=rows * devices,
        sample_batch_size=32 * devices,
        sample_sequence_length=8,
        period=1,
        min_length_time_axis=8,
        max_length_time_axis=time_axis,
        sharding=NamedSharding(mesh, P("data")) if sharded else None,
    )
    example = {"obs": jnp.zeros(64), "reward": jnp.float32(0)}
    state = buffer.init(example)
    batch = {"obs": jnp.ones((rows * devices, 1, 64)), "reward": jnp.ones((rows * devices, 1))}
    if sharded:
        batch = jax.device_put(batch, NamedSharding(mesh, P("data")))
    for _ in range(time_axis + 3):  # full, so that sampling reads the whole ring
        state = buffer.add(state, batch)
    key = jr.PRNGKey(0)
    sample = buffer.sample(state, key)
    jax.block_until_ready((state, sample))
    texts = {
        "add": buffer.add.lower(state, batch).compile().as_text(),
        "sample": buffer.sample.lower(state, key).compile().as_text(),
    }

    def best(run) -> float:
        times = []
        for _ in range(5):
            start = time.perf_counter()
            run()
            times.append((time.perf_counter() - start) / calls)
        return min(times)

    def adds() -> None:
        nonlocal state
        for _ in range(calls):
            state = buffer.add(state, batch)
        jax.block_until_ready(state)

    def samples() -> None:
        out = None
        for _ in range(calls):
            out = buffer.sample(state, key)
        jax.block_until_ready(out)

    return {
        "add": best(adds),
        "sample": best(samples),
        "add_hlo": len(texts["add"]),
        "sample_hlo": len(texts["sample"]),
        "collectives": any(name in text for text in texts.values() for name in COLLECTIVES),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--time", type=int, default=4096)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--out", default=None)
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--unsharded", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tiny:
        args.rows, args.time, args.calls = 2, 32, 5
    if args.worker is not None:
        result = measure(args.worker, args.rows, args.time, args.calls, not args.unsharded)
        print(json.dumps(result))
        return
    results = {}
    for devices in ("unsharded", 1, 2, 4, 8):
        command = [
            sys.executable,
            __file__,
            "--worker",
            "1" if devices == "unsharded" else str(devices),
        ]
        command += ["--rows", str(args.rows), "--time", str(args.time), "--calls", str(args.calls)]
        command += ["--unsharded"] if devices == "unsharded" else []
        done = subprocess.run(command, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            sys.exit(f"{devices} devices failed:\n{done.stderr}")
        results[devices] = json.loads(done.stdout.strip().splitlines()[-1])
    one = results[1]  # the sharded buffer on one device

    lines = [
        f"Weak scaling: {args.rows} rows x {args.time} steps of f32[64] per device; add of 1 "
        "step to every row; sample of 32 windows of 8 steps per device.",
        "",
        "Ratios are against the sharded buffer on 1 device; the first row is the same buffer "
        "without `sharding`.",
        "",
        "| devices | add | vs 1 | sample | vs 1 | HLO add / sample (chars) | collectives |",
        "|---:|---:|---:|---:|---:|---:|---|",
    ]
    for devices, r in results.items():
        lines.append(
            f"| {devices} | {r['add'] * 1e6:.1f} µs | {r['add'] / one['add']:.2f} | "
            f"{r['sample'] * 1e6:.1f} µs | {r['sample'] / one['sample']:.2f} | "
            f"{r['add_hlo']:,} / {r['sample_hlo']:,} | {'yes' if r['collectives'] else 'none'} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
