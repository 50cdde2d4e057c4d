"""A vault writer for the crash-safety test: appends numbered steps to a vault forever,
printing `vault_index` after each completed write, until it is killed.

Usage: python tests/vault_writer.py DIRECTORY
"""

import os
import sys

import jax.numpy as jnp

import eqx_replay
from eqx_replay.vault import Vault


ROWS, CAPACITY = 2, 64


def main(directory: str) -> None:
    os.chdir(directory)
    buffer = eqx_replay.make_trajectory_buffer(
        add_batch_size=ROWS,
        sample_batch_size=1,
        sample_sequence_length=1,
        period=1,
        min_length_time_axis=1,
        max_length_time_axis=CAPACITY,
    )
    state = buffer.init({"step": jnp.int32(0), "obs": jnp.zeros(300, jnp.float32)})
    vault = Vault("crash", experience_structure=state.experience, vault_uid="run")
    step = vault.vault_index
    while True:
        # Step s of row r holds s * 10 + r; several adds between writes, some wrapping.
        t = 1 + step % 7
        numbers = step + jnp.arange(t)
        ids = numbers[None, :] * 10 + jnp.arange(ROWS)[:, None]
        obs = jnp.broadcast_to(ids[..., None].astype(jnp.float32), (ROWS, t, 300))
        state = buffer.add(state, {"step": ids.astype(jnp.int32), "obs": obs})
        step += t
        vault.write(state)
        print(vault.vault_index, flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
