"""A checkpoint saver for the crash-safety test, killed at many moments of its saves.

For each line `FIRST PLAN` on its stdin, it forks a child that saves the states numbered
FIRST, FIRST + 1, ... to DIRECTORY with `overwrite=True`, printing `child PID` first and each
number once its save has returned, until it is killed: by the test at a moment of its
choosing (PLAN `wait`), or by itself with SIGKILL right after its COUNT-th call of `os.NAME`
(PLAN `NAME COUNT`, NAME one of rename, unlink, rmdir, fsync), which lands between the
steps of a save. The fork spares each kill point the seconds that starting Python and
importing JAX take: this process has imported everything but not started JAX's backend (a
child starts its own). After each child it prints `ended STATUS` (its `os.waitpid` status).

Usage: python tests/checkpoint_saver.py DIRECTORY
"""

import os
import signal
import sys
import traceback
from typing import Any

import jax.numpy as jnp
import numpy as np

import eqx_replay


# A 4 MiB `obs` leaf: a save lasts long enough (tens of ms) for a kill to land inside it.
ROWS, TIME, OBS = 4, 64, 4096
# NumPy's arrays: JAX's would start its backend in this process, before its forks.
EXAMPLE = {"obs": np.zeros(OBS, np.float32), "act": np.int32(0)}


def buffer() -> Any:
    return eqx_replay.make_trajectory_buffer(
        add_batch_size=ROWS,
        sample_batch_size=2,
        sample_sequence_length=2,
        period=1,
        min_length_time_axis=2,
        max_length_time_axis=TIME,
    )


def arrays(number: int) -> dict[str, Any]:
    """State `number`'s leaves, as NumPy arrays: every number's differ in every leaf."""
    steps = np.arange(ROWS * TIME, dtype=np.int32).reshape(ROWS, TIME) + number * 10_000
    obs = steps[..., None] + np.arange(OBS, dtype=np.float32) / OBS
    return {
        "obs": obs.astype(np.float32),
        "act": steps,
        "current_index": np.int32(number % TIME),
        "is_full": np.bool_(number % 2),
    }


def state(number: int) -> eqx_replay.TrajectoryBufferState:
    leaves = arrays(number)
    return eqx_replay.TrajectoryBufferState(
        experience={"obs": jnp.asarray(leaves["obs"]), "act": jnp.asarray(leaves["act"])},
        current_index=jnp.asarray(leaves["current_index"]),
        is_full=jnp.asarray(leaves["is_full"]),
    )


def die_after(name: str, count: int) -> None:
    """Makes the `count`-th call of `os.<name>` (by Orbax, `shutil.rmtree` or eqx_replay)
    the last thing this process does."""
    function = getattr(os, name)
    calls = 0

    def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        result = function(*args, **kwargs)
        calls += 1
        if calls == count:
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    setattr(os, name, counted)


def save_forever(directory: str, first: int, plan: list[str]) -> None:
    print(f"child {os.getpid()}", flush=True)
    the_buffer = buffer()
    if plan[0] != "wait":
        die_after(plan[0], int(plan[1]))
    number = first
    while True:
        eqx_replay.save_state(directory, the_buffer, state(number), overwrite=True)
        print(number, flush=True)
        number += 1


def main(directory: str) -> None:
    for line in sys.stdin:
        first, *plan = line.split()
        pid = os.fork()
        if pid == 0:
            try:
                save_forever(directory, int(first), plan)
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(1)
        _, status = os.waitpid(pid, 0)
        print(f"ended {status}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
