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

It prints a markdown table and writes it to `benchmarks/results/sharding_scaling.md`
(`sharding_scaling_tiny.md` with `--tiny`; `--out DIR` writes elsewhere).
"""

import argparse

import _harness as h


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

    def best(run: h.Runner) -> float:
        """The fastest of 5 blocks of `calls` calls (already warm: no warm-up)."""
        return min(run(calls) for _ in range(5)) / calls

    adds = h.AddRunner(buffer.add, state, batch)
    add = best(adds)
    return {
        "add": add,
        "sample": best(h.SampleRunner(buffer.sample, adds.state, [key] * calls)),
        "add_hlo": len(texts["add"]),
        "sample_hlo": len(texts["sample"]),
        "collectives": any(name in text for text in texts.values() for name in COLLECTIVES),
    }


def main() -> None:
    parser = h.parser(__doc__)
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--time", type=int, default=4096)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--unsharded", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tiny:
        args.rows, args.time, args.calls = 2, 32, 5
    if args.worker is not None:
        h.emit(measure(args.worker, args.rows, args.time, args.calls, not args.unsharded))
        return
    report = h.Report("sharding_scaling", "Weak scaling of a sharded trajectory buffer", args)
    results = {}
    for devices in ("unsharded", 1, 2, 4, 8):
        h.log(f"[{devices}] devices")
        command = ["--worker", "1" if devices == "unsharded" else str(devices)]
        command += ["--rows", str(args.rows), "--time", str(args.time), "--calls", str(args.calls)]
        command += ["--unsharded"] if devices == "unsharded" else []
        results[devices] = h.run_self(*command, timeout=900)
    one = results[1]  # the sharded buffer on one device

    report.add(
        f"Weak scaling: {args.rows} rows x {args.time} steps of f32[64] per device; add of 1 "
        "step to every row; sample of 32 windows of 8 steps per device.",
        "",
        "Ratios are against the sharded buffer on 1 device; the first row is the same buffer "
        "without `sharding`.",
        "",
    )
    cells = [
        [
            str(devices),
            f"{r['add'] * 1e6:.1f} µs",
            f"{r['add'] / one['add']:.2f}",
            f"{r['sample'] * 1e6:.1f} µs",
            f"{r['sample'] / one['sample']:.2f}",
            f"{r['add_hlo']:,} / {r['sample_hlo']:,}",
            "yes" if r["collectives"] else "none",
        ]
        for devices, r in results.items()
    ]
    header = [
        "devices",
        "add",
        "vs 1",
        "sample",
        "vs 1",
        "HLO add / sample (chars)",
        "collectives",
    ]
    report.table(header, cells, align="rrrrrrl", section="table")
    report.write(
        [
            "Timing: the fastest of 5 blocks of "
            f"{args.calls} calls, per call; each mesh size in a process of its own."
        ]
    )


if __name__ == "__main__":
    main()
