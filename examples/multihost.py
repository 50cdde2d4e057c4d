"""A replay buffer across several processes (hosts), each storing its own rows.

    python examples/multihost.py                    # launches 2 processes on 127.0.0.1
    python examples/multihost.py --processes 4      # or more
    python examples/multihost.py --checkpoint DIR   # and save, load, compare the state

Each process runs the same program: it joins the others through `jax.distributed` (on CPU
JAX's gloo collectives), sees the mesh of every process's devices, and adds the rows of its
own environments with `jax.make_array_from_process_local_data`. The buffer is sharded over
the mesh's "data" axis, so each device stores its own rows and samples its own windows:
no experience crosses devices, let alone processes. A learner would then compute its loss
on its local part of the sample and average gradients (the only collective of the step).

Here the "environment" writes, in every step, the global row number and the step number,
and each process checks that every window it sampled is `length` consecutive steps of one
of its own rows.
"""

import argparse
import os
import socket
import subprocess
import sys


DEVICES_PER_PROCESS = 2
ROWS_PER_DEVICE = 4
LENGTH = 4


def worker(process: int, processes: int, port: int, checkpoint: str | None) -> None:
    import jax

    jax.config.update("jax_num_cpu_devices", DEVICES_PER_PROCESS)
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}", num_processes=processes, process_id=process
    )
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P

    import eqx_replay

    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    sharding = NamedSharding(mesh, P("data"))
    rows = ROWS_PER_DEVICE * jax.device_count()
    local_rows = ROWS_PER_DEVICE * jax.local_device_count()
    # This process's rows, in the global numbering (its devices' parts of the "data" axis).
    first_row = process * local_rows
    mine = np.arange(first_row, first_row + local_rows)

    buffer = eqx_replay.make_trajectory_buffer(
        add_batch_size=rows,
        sample_batch_size=2 * jax.device_count(),
        sample_sequence_length=LENGTH,
        period=1,
        min_length_time_axis=LENGTH,
        max_length_time_axis=64,
        sharding=sharding,
    )
    example = {"row": jnp.int32(0), "step": jnp.int32(0)}
    state = buffer.init(example)
    key = jax.random.key(0)  # the same on every process: each device folds in its index
    checked = 0
    for step in range(40):
        # Each process makes only its own rows, one step each.
        local = {
            "row": mine[:, None].astype(np.int32),
            "step": np.full((local_rows, 1), step, np.int32),
        }
        batch = jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local)
        state = buffer.add(state, batch)
        if not bool(buffer.can_sample(state)):
            continue
        key, sample_key = jax.random.split(key)
        sample = buffer.sample(state, sample_key)
        for shard_rows, shard_steps in zip(
            sample.experience["row"].addressable_shards,
            sample.experience["step"].addressable_shards,
        ):
            windows_rows, windows_steps = np.asarray(shard_rows.data), np.asarray(shard_steps.data)
            assert np.isin(windows_rows, mine).all(), (process, windows_rows)
            assert (windows_rows == windows_rows[:, :1]).all()
            assert (np.diff(windows_steps, axis=1) == 1).all()
            checked += len(windows_rows)
    say(
        f"process {process}/{processes}: {jax.local_device_count()} of {jax.device_count()} "
        f"devices, rows {mine[0]}..{mine[-1]} of {rows}; sampled {checked} windows, "
        "every one from its own rows"
    )
    if checkpoint is not None:
        # Every process saves and loads together; each writes and reads its devices' rows.
        eqx_replay.save_state(checkpoint, buffer, state)
        loaded = eqx_replay.load_state(checkpoint, buffer, example)
        for got, want in zip(jax.tree.leaves(loaded), jax.tree.leaves(state)):
            for a, b in zip(got.addressable_shards, want.addressable_shards):
                assert a.index == b.index and np.array_equal(a.data, b.data)
        next_key = jax.random.key(1)
        for a, b in zip(
            buffer.sample(loaded, next_key).experience["step"].addressable_shards,
            buffer.sample(state, next_key).experience["step"].addressable_shards,
        ):
            assert np.array_equal(a.data, b.data)
        say(
            f"process {process}/{processes}: checkpoint saved and loaded, equal on its "
            "devices, samples the same"
        )
    jax.distributed.shutdown()


def say(line: str) -> None:
    """Prints a line in one write: the processes share one pipe, and they finish their
    collective steps at the same moment (`print` writes the text and its newline apart)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(processes: int, timeout: float, checkpoint: str | None) -> int:
    port = free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    children = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--worker",
                str(i),
                "--processes",
                str(processes),
                "--port",
                str(port),
                *(["--checkpoint", checkpoint] if checkpoint else []),
            ],
            env=env,
        )
        for i in range(processes)
    ]
    code = 0
    try:
        for child in children:
            code = code or child.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        code = 124
        print(f"multihost: timed out after {timeout} s", file=sys.stderr)
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
    return code


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=240.0)
    parser.add_argument(
        "--checkpoint", default=None, help="save the state here, load it back and compare"
    )
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        worker(args.worker, args.processes, args.port, args.checkpoint)
    else:
        checkpoint = os.path.abspath(args.checkpoint) if args.checkpoint else None
        sys.exit(launch(args.processes, args.timeout, checkpoint))


if __name__ == "__main__":
    main()
