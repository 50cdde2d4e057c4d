"""Mixing two buffers in one batch, e.g. offline demonstrations and online experience (as in
DQfD or RLPD): 1 part demonstrations to 3 parts online. Each buffer draws only its share,
and with prioritised buffers the sample's `probabilities` are those of the mixture, so the
importance weights compare items across buffers correctly. Run with

    python examples/mixer.py
"""

import jax
import jax.numpy as jnp

import eqx_replay


def make():
    return eqx_replay.make_prioritised_flat_buffer(
        max_length=1_000, min_length=10, sample_batch_size=32, add_batch_size=4
    )


demos, online = make(), make()
example = {"obs": jnp.zeros(2), "source": jnp.int32(0)}
demo_state, online_state = demos.init(example), online.init(example)
for _ in range(20):
    demo_state = demos.add(demo_state, {"obs": jnp.ones((4, 2)), "source": jnp.zeros(4, jnp.int32)})
    online_state = online.add(
        online_state, {"obs": jnp.zeros((4, 2)), "source": jnp.ones(4, jnp.int32)}
    )

mixer = eqx_replay.make_mixer([demos, online], sample_batch_size=64, proportions=[1, 3])
print("items per buffer:", mixer.counts)
states = [demo_state, online_state]
sample = mixer.sample(states, jax.random.key(0))
print("sources in order:", sample.experience.first["source"][:20].tolist(), "...")
# Every stored demonstration pair is equally likely within its buffer, so under the mixture
# each is drawn with probability share * 1 / pairs.
pairs = 4 * 19
print("probability of a demonstration pair:", float(sample.probabilities[0]), "=", 0.25 / pairs)
states = mixer.set_priorities(
    states, sample.indices, jnp.abs(sample.experience.first["obs"][:, 0]) + 0.1
)
weights = eqx_replay.importance_weights(mixer.sample(states, jax.random.key(1)).probabilities, 1.0)
print("importance weights in (0, 1]:", bool((weights > 0).all() and (weights <= 1).all()))
