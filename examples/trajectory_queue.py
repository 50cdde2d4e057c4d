"""A trajectory queue for an on-policy or asynchronous pipeline: actors add rollouts, the
learner takes them first in, first out, each exactly once. An add that would overwrite
unread steps writes nothing and is counted in `state.refused_adds`, so check `can_add`
(here, the actors skip a turn when the learner is behind). Run with

    python examples/trajectory_queue.py
"""

import jax.numpy as jnp

import eqx_replay


actors, rollout = 4, 8
queue = eqx_replay.make_trajectory_queue(
    max_length_time_axis=32,
    add_batch_size=actors,
    add_sequence_length=rollout,
    sample_sequence_length=16,
)
state = queue.init({"obs": jnp.zeros(3), "step": jnp.int32(0)})

produced, consumed = 0, []
for tick in range(12):
    if queue.can_add(state):
        steps = produced + jnp.arange(rollout)
        batch = {
            "obs": jnp.zeros((actors, rollout, 3)),
            "step": jnp.broadcast_to(steps, (actors, rollout)),
        }
        state = queue.add(state, batch)
        produced += rollout
    if tick % 3 == 2 and queue.can_sample(state):  # a slower learner
        state, sample = queue.sample(state)
        consumed.extend(sample.experience["step"][0].tolist())

print("steps produced:", produced, "consumed:", len(consumed))
print("consumed in order, each once:", consumed == list(range(len(consumed))))
print("refused adds:", int(state.refused_adds))
