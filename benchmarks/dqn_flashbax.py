"""The DQN of `examples/dqn_cartpole.py` trained side by side with eqx_replay's flat buffer
and with Flashbax's: environment steps per second, and the final evaluation return.

Run it from the repository root, in an environment with eqx_replay, Flashbax, gymnax and
optax (`pip install -e ".[examples,bench]"`):

    python benchmarks/dqn_flashbax.py                # the example's defaults: ~2-3 minutes
    python benchmarks/dqn_flashbax.py --seeds 0,1,2  # one set of agents per seed
    python benchmarks/dqn_flashbax.py --settings purejaxrl  # PureJaxRL's DQN hyperparameters
    python benchmarks/dqn_flashbax.py --tiny         # seconds; CI runs it to keep it working

Method. The agents are the example's `make_dqn` with the same `Config` (network,
hyperparameters, seed); only the module whose `make_flat_buffer` builds the buffer differs:
eqx_replay, Flashbax, and `no buffer`, a stand-in that stores nothing and returns fixed
pairs: it cannot learn, but the rest of its loop (environments, acting, gradient steps) is
the same, so its speed estimates what a buffer that cost nothing would give. Only an
estimate: XLA compiles each loop on its own, so the stand-in's loop can come out a few per
cent slower or faster than a real buffer's (its row against eqx_replay's in the first
table). Each runs the example's compiled chunk, one `lax.scan` of act-add-sample-learn steps
whose carry (agent and buffer state) is donated to the outer `eqx.filter_jit`, so both
libraries' buffers are updated in place the same way (Flashbax's own `add` does not donate,
but inside the scan it need not: neither compiled chunk holds a copy of the buffer's
storage). The first chunk of each (compilation,
and the steps before learning starts) is not timed; then the chunks alternate between the
agents, the order rotated every round, each timed to `jax.block_until_ready`. Env steps/s
is the timed chunks' steps over their total time. The final return is the greedy policy's
mean over the example's evaluation episodes, with the final parameters.

A second table times the buffer's work alone: one scan of the same adds (`num_envs`
transitions per step) and samples (`updates_per_train` batches every `train_every` env
steps) on a full buffer, without environments or networks, so the share of the training
step that the buffer takes can be read off.

Why both tables: the stand-in bounds what any buffer could gain in the whole loop (first
table, `ratio no buffer / flashbax`), and the second table says how much of a training step
the buffer's own work is, so a small difference between libraries in the first table can
be read against that share rather than as noise.

It prints both tables and writes them to `benchmarks/results/dqn_flashbax.md`
(`dqn_flashbax_tiny.md` with `--tiny`; `--out DIR` writes elsewhere).
"""

import dataclasses
import functools as ft
import importlib.util
import pathlib
import statistics
import sys
import time
from types import ModuleType
from typing import Any, NamedTuple

import _harness as h
import flashbax
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.random as jr

import eqx_replay


EXAMPLE = pathlib.Path(__file__).parent.parent / "examples" / "dqn_cartpole.py"
LIBRARIES: dict[str, ModuleType] = {"eqx_replay": eqx_replay, "flashbax": flashbax}
NO_BUFFER = "no buffer"


@dataclasses.dataclass(frozen=True)
class _NoBuffer:
    """A stand-in for a flat buffer that does no work: `add` stores nothing and `sample`
    returns the same pairs every time, slices at fixed places of the (never written)
    storage. It does not learn; since everything else (environments, acting, gradient
    steps) is unchanged, its speed estimates what a buffer that cost nothing would give."""

    inner: Any
    sample_batch_size: int

    def init(self, example: Any) -> Any:
        return self.inner.init(example)

    def add(self, state: Any, batch: Any) -> Any:
        del batch
        return state

    def can_sample(self, state: Any) -> jax.Array:
        del state
        return jnp.bool_(True)

    def sample(self, state: Any, key: jax.Array) -> eqx_replay.TransitionSample:
        del key

        def pairs(leaf: jax.Array, shift: int) -> jax.Array:
            steps = jnp.arange(self.sample_batch_size) % (leaf.shape[1] - 1) + shift
            return leaf[0, steps]

        first = jax.tree.map(lambda leaf: pairs(leaf, 0), state.experience)
        second = jax.tree.map(lambda leaf: pairs(leaf, 1), state.experience)
        return eqx_replay.TransitionSample(eqx_replay.ExperiencePair(first, second))


class _NoBufferModule:
    """What `make_dqn` takes as its `replay` module, making `_NoBuffer`s."""

    @staticmethod
    def make_flat_buffer(**kwargs: Any) -> _NoBuffer:
        return _NoBuffer(eqx_replay.make_flat_buffer(**kwargs), kwargs["sample_batch_size"])


def load_example() -> Any:
    """`examples/dqn_cartpole.py` as a module (examples are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("dqn_cartpole", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class Result(NamedTuple):
    """One library's run: env steps per second over the timed chunks, the greedy policy's
    final mean evaluation return, and the seconds of the first chunk (with compilation)."""

    speed: float
    final_return: float
    first_chunk: float


def train_pair(dqn_cartpole: Any, config: Any, stand_in: bool = False) -> dict[str, Result]:
    """Trains one agent per library on `config`, alternating chunks; with `stand_in`, also
    one on `_NoBuffer`."""
    replays: dict[str, Any] = dict(LIBRARIES)
    if stand_in:
        replays[NO_BUFFER] = _NoBufferModule
    agents = {name: dqn_cartpole.make_dqn(config, lib) for name, lib in replays.items()}
    key, eval_key = jr.split(jr.key(config.seed))
    states, first_chunk = {}, {}
    for name, agent in agents.items():
        start = time.perf_counter()
        state, _ = agent.train_chunk(agent.init(key))
        states[name] = jax.block_until_ready(state)
        first_chunk[name] = time.perf_counter() - start
    seconds = dict.fromkeys(agents, 0.0)
    order = list(agents)
    for _ in range(config.num_chunks - 1):
        for name in order:
            start = time.perf_counter()
            states[name], _ = agents[name].train_chunk(states[name])
            jax.block_until_ready(states[name])
            seconds[name] += time.perf_counter() - start
        order = order[1:] + order[:1]
    timed_steps = (config.num_chunks - 1) * config.steps_per_chunk * config.num_envs
    results = {}
    for name in agents:
        q = states[name].learner.q
        returns = dqn_cartpole.evaluate(q, eval_key, config.eval_episodes)
        speed = timed_steps / seconds[name]
        results[name] = Result(speed, float(jnp.mean(returns)), first_chunk[name])
    return results


def buffer_only(config: Any, lib: ModuleType, rounds: int) -> float:
    """Seconds per env step of the training's buffer work alone (median of `rounds`)."""
    buffer = lib.make_flat_buffer(
        max_length=config.buffer_size,
        min_length=config.batch_size,
        sample_batch_size=config.batch_size,
        add_batch_size=config.num_envs,
    )
    example = {
        "obs": jnp.zeros(4),
        "action": jnp.int32(0),
        "reward": jnp.float32(0),
        "terminated": jnp.bool_(False),
        "truncated": jnp.bool_(False),
    }
    batch = jax.tree.map(lambda x: jnp.zeros((config.num_envs, *x.shape), x.dtype), example)
    steps_per_train = max(1, config.train_every // config.num_envs)

    def phase(carry, key):
        state, total = carry
        state = lax.fori_loop(0, steps_per_train, lambda _, s: buffer.add(s, batch), state)
        keys = jr.split(key, config.updates_per_train)

        def draw(total, key):
            # Every leaf of the sample is used, so that no gather is optimised away.
            leaves = jax.tree.leaves(buffer.sample(state, key).experience)
            return total + sum(jnp.sum(leaf.astype(jnp.float32)) for leaf in leaves), None

        total, _ = lax.scan(draw, total, keys)
        return (state, total), None

    phases = max(1, config.steps_per_chunk // steps_per_train)

    @ft.partial(jax.jit, donate_argnums=0)
    def fill(state):
        return lax.fori_loop(
            0, config.buffer_size // config.num_envs, lambda _, s: buffer.add(s, batch), state
        )

    @ft.partial(jax.jit, donate_argnums=0)
    def run(state, key):
        (state, total), _ = lax.scan(phase, (state, jnp.float32(0)), jr.split(key, phases))
        return state, total

    state = fill(buffer.init(example))
    state, total = jax.block_until_ready(run(state, jr.key(0)))
    times = []
    for round_ in range(rounds):
        start = time.perf_counter()
        state, total = jax.block_until_ready(run(state, jr.key(round_)))
        times.append(time.perf_counter() - start)
    return statistics.median(times) / (phases * steps_per_train * config.num_envs)


# PureJaxRL's DQN on CartPole-v1 (purejaxrl/dqn.py, its default config), in the example's
# terms: 10 environments, a 10,000-transition buffer, batches of 128, one gradient step every
# vectorised step after 10,000 env steps, Adam at a constant 2.5e-4 without clipping, the
# target copied every 500 env steps (50 updates), epsilon from 1 to 0.05 over 250,000 env
# steps, plain DQN (no double or dueling heads). What differs, from the example's code:
# both hidden layers are 120 wide (PureJaxRL: 120 then 84; the example's MLP has one width)
# and initialised as Equinox does (uniform by fan-in; Flax: LeCun normal, zero biases); a
# pair cut by the time limit is left out of the loss (PureJaxRL bootstraps 0 from it), so a
# `truncated` flag is stored too; learning starts at >= 10,000 env steps (PureJaxRL: >).
PUREJAXRL = {
    "total_steps": 500_000,
    "num_envs": 10,
    "buffer_size": 10_000,
    "batch_size": 128,
    "learning_starts": 10_000,
    "train_every": 10,
    "updates_per_train": 1,
    "lr": 2.5e-4,
    "lr_end": 2.5e-4,
    "max_grad_norm": float("inf"),
    "width": 120,
    "depth": 2,
    "eps_end": 0.05,
    "eps_decay_steps": 250_000,
    "target_every": 50,
    "tau": 1.0,
    "double_dqn": False,
    "dueling": False,
}
# `--tiny`: seconds of training. The example's settings also learn less often.
TINY = {
    "total_steps": 3 * 1024,
    "num_chunks": 3,
    "buffer_size": 2048,
    "batch_size": 32,
    "learning_starts": 256,
    "width": 16,
    "eval_episodes": 4,
}
TINY_EXAMPLE = {"train_every": 256, "updates_per_train": 4}


def main() -> None:
    parser = h.parser(__doc__)
    parser.add_argument("--seeds", default="0", help="comma-separated seeds, e.g. 0,1,2")
    parser.add_argument(
        "--settings",
        choices=["example", "purejaxrl"],
        default="example",
        help="the example's defaults, or PureJaxRL's DQN hyperparameters",
    )
    args = parser.parse_args()
    dqn_cartpole = load_example()
    config = dqn_cartpole.Config()
    if args.settings == "purejaxrl":
        config = dataclasses.replace(config, **PUREJAXRL)
    if args.tiny:
        config = dataclasses.replace(config, **TINY)
        if args.settings == "example":
            config = dataclasses.replace(config, **TINY_EXAMPLE)
    seeds = [int(seed) for seed in args.seeds.split(",")]
    report = h.Report("dqn_flashbax", "DQN on CartPole-v1 with eqx_replay and Flashbax", args)
    report.add(
        f"DQN on CartPole-v1 ({args.settings} settings): {config.total_steps:,} env steps, "
        f"{config.num_envs} envs, buffer {config.buffer_size:,}, batch {config.batch_size}, "
        f"{config.updates_per_train} updates every {config.train_every} env steps, "
        f"MLP {config.depth}x{config.width}; jax {jax.__version__}, "
        f"{jax.devices()[0].platform}",
        "",
    )
    speeds: dict[str, list[float]] = {name: [] for name in [*LIBRARIES, NO_BUFFER]}
    cells = []
    for seed in seeds:
        results = train_pair(dqn_cartpole, dataclasses.replace(config, seed=seed), stand_in=True)
        for name, result in results.items():
            speeds[name].append(result.speed)
            cells.append(
                [
                    str(seed),
                    name,
                    f"{result.speed:,.0f}",
                    f"{result.final_return:.1f}",
                    f"{result.first_chunk:.1f} s",
                ]
            )
    header = ["seed", "library", "env steps/s", "final eval return", "first chunk (compiles)"]
    report.table(header, cells, align="rlrrr", section="training")
    speed = {name: statistics.mean(values) for name, values in speeds.items()}
    report.add(
        "",
        f"ratio eqx_replay / flashbax, env steps/s: {speed['eqx_replay'] / speed['flashbax']:.2f}",
        f"ratio {NO_BUFFER} / flashbax, env steps/s: {speed[NO_BUFFER] / speed['flashbax']:.2f} "
        f"(`{NO_BUFFER}` stores nothing and trains on fixed batches: about what a buffer that "
        "cost nothing would give; its return means nothing)",
        "",
        "The buffer's work alone: the same adds and samples, on a full buffer.",
        "",
    )
    cells = []
    for name, lib in LIBRARIES.items():
        alone = buffer_only(config, lib, 1 if args.tiny else 7)
        cells.append([name, f"{1e6 * alone:.2f}", f"{alone * speed[name]:.0%}"])
    header = ["library", "µs per env step", "share of a training env step"]
    report.table(header, cells, section="buffer-alone")
    report.write(
        [
            "Timing: after one untimed chunk each (compilation), the agents' chunks alternate, "
            "the order rotated every round; env steps/s = timed steps / their total time. "
            "The buffer alone: median of 7 scans (1 with --tiny)."
        ]
    )


if __name__ == "__main__":
    main()
