"""R2D2-style recurrent Q-learning on CartPole-v1 with the velocities hidden, against a
memoryless baseline, with `eqx_replay.make_prioritised_trajectory_buffer`.

The agent sees only the cart's position and the pole's angle, `[x, theta]` (each divided by
its termination limit), never their velocities, so one observation cannot tell a pole
falling left from one rising back: a policy needs memory to balance it. The Q-network is an
Equinox GRU (`eqx.nn.GRUCell` between a linear encoder and an MLP head); the memoryless
baseline is the same network and algorithm with its recurrent state reset to zero before
every step, so it acts on the current observation alone.

The algorithm is R2D2's (Kapturowski et al., 2019), small:

- `num_envs` vectorised gymnax environments (which reset themselves) act epsilon-greedily,
    carrying each environment's recurrent state from step to step and resetting it to zero
    where an episode ends. Every step of every environment, with the recurrent state the
    network acted from, is added to a prioritised trajectory buffer (one row per environment)
    with `episode_end=lambda step: step["done"]` and `boundary="mask"`. The buffer keeps the
    whole run: with a smaller one, once the agent balances for 500 steps every episode, the
    failures leave the buffer and the greedy policy forgets how to avoid them.
- Learning samples windows of `sequence_length` steps starting every `period` steps, in
    proportion to priority. Each window's unroll starts from the recurrent state stored with
    its first step ("stored state", R2D2's choice; it is exact at an episode's first step,
    and otherwise as stale as the network that acted), and its first `burn_in` steps only
    refresh that state, without gradients (`eqx_replay.burn_in_split`). On the remaining
    steps, double Q: the online network picks `argmax_a Q(s_t, a)`, the target network values
    it, and `eqx_replay.n_step_returns` turns rewards, `gamma * (1 - terminated)` and those
    values into n-step targets that stop at the window's first episode end (`sample.mask`).
    The loss is the Huber TD error on the learning steps but the last (which only
    bootstraps), masked, weighted by `eqx_replay.importance_weights`.
- Each window's new priority is `eta * max_t |delta_t| + (1 - eta) * mean_t |delta_t|` over
    its masked learning steps, sent back with `buffer.set_priorities`. A window whose first
    episode ends inside the burn-in has no learning steps: it gets priority 0 and is not
    drawn again. (So the first `burn_in` steps of an episode are never learnt on: the mask
    starts at the window's first step, and a window that starts earlier holds the previous
    episode's end.)

Everything — acting, adding, sampling, learning, setting priorities — runs inside one
compiled `lax.scan` over a chunk of steps; Python only loops over chunks (with a progress
bar) and evaluates the greedy policy after each. Run it from the repository root
(`pip install -e ".[examples]"`):

    python examples/r2d2_memory.py                     # both agents, ~2-3 minutes on 2 CPU cores
    python examples/r2d2_memory.py --tiny --quiet      # seconds of training: a smoke test

It saves both learning curves to `examples/results/r2d2_memory.png` and ends with

    recurrent: mean evaluation return ... (of 500)
    memoryless baseline: mean evaluation return ... (of 500)
"""

import argparse
import dataclasses
import pathlib
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import gymnax
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.random as jr
import optax
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray, PyTree

import eqx_replay


MAX_RETURN = 500  # CartPole-v1 ends every episode after 500 steps, one reward per step


@dataclasses.dataclass(frozen=True)
class Config:
    """Hyperparameters; every step count is in environment steps (all environments)."""

    total_steps: int = 320_000
    num_envs: int = 16
    num_chunks: int = 32
    buffer_size: int = 320_000
    batch_size: int = 32
    sequence_length: int = 21
    burn_in: int = 4
    period: int = 8
    n_step: int = 5
    learning_starts: int = 2_000
    train_every: int = 32
    updates_per_train: int = 2
    lr: float = 1e-3
    lr_end: float = 0.0
    max_grad_norm: float = 10.0
    gamma: float = 0.99
    hidden: int = 64
    eps_start: float = 1.0
    eps_end: float = 0.02
    eps_decay_steps: int = 40_000
    target_every: int = 200
    priority_exponent: float = 0.9
    priority_eta: float = 0.9
    importance_beta: float = 0.6
    eval_episodes: int = 64
    seed: int = 0
    memory: bool = True

    @property
    def steps_per_chunk(self) -> int:
        """Vectorised steps (each of `num_envs` environment steps) per compiled chunk."""
        return max(1, self.total_steps // (self.num_envs * self.num_chunks))

    @property
    def num_updates(self) -> int:
        """Gradient steps in the whole run."""
        return self.total_steps // self.train_every * self.updates_per_train


TINY = Config(
    total_steps=2_048,
    num_envs=4,
    num_chunks=2,
    buffer_size=2_048,
    batch_size=8,
    learning_starts=256,
    train_every=64,
    eval_episodes=4,
)


class QNetwork(eqx.Module):
    """`Q(s_t, .)` from the observation and the recurrent state: a linear encoder, a GRU
    cell and an MLP head. With `memory=False` the state is reset to zero before every step,
    so the Q-values depend on the current observation alone."""

    encoder: eqx.nn.Linear
    cell: eqx.nn.GRUCell
    head: eqx.nn.MLP
    memory: bool = eqx.field(static=True)

    def __init__(self, obs_size: int, num_actions: int, hidden: int, memory: bool, *, key):
        encoder_key, cell_key, head_key = jr.split(key, 3)
        self.encoder = eqx.nn.Linear(obs_size, hidden, key=encoder_key)
        self.cell = eqx.nn.GRUCell(hidden, hidden, key=cell_key)
        self.head = eqx.nn.MLP(hidden, num_actions, hidden, 1, key=head_key)
        self.memory = memory

    def __call__(
        self, obs: Float[Array, " obs"], state: Float[Array, " hidden"]
    ) -> tuple[Float[Array, " actions"], Float[Array, " hidden"]]:
        if not self.memory:
            state = jnp.zeros_like(state)
        state = self.cell(jax.nn.relu(self.encoder(obs)), state)
        return self.head(state), state

    def unroll(
        self, obs: Float[Array, "time obs"], state: Float[Array, " hidden"]
    ) -> tuple[Float[Array, "time actions"], Float[Array, " hidden"]]:
        """The Q-values along one window from `state`, and the state after it."""

        def step(state, obs):
            q_values, state = self(obs, state)
            return state, q_values

        state, q_values = lax.scan(step, state, obs)
        return q_values, state


BufferState = eqx_replay.PrioritisedTrajectoryBufferState


class Learner(eqx.Module):
    """The Q-network, its target network, the optimiser's state and the count of gradient
    steps taken."""

    q: QNetwork
    target: QNetwork
    opt_state: PyTree[Array]
    updates: Int[Array, ""]


class State(eqx.Module):
    """Everything that changes during training: the carry of the scan."""

    learner: Learner
    buffer_state: BufferState
    env_state: PyTree[Array]
    obs: Float[Array, "envs obs"]
    recurrent: Float[Array, "envs hidden"]
    episode_return: Float[Array, " envs"]
    last_return: Float[Array, " envs"]
    steps: Int[Array, ""]
    key: PRNGKeyArray


class Metrics(NamedTuple):
    """What a chunk reports: the mean over environments of their latest finished episode's
    return, and the mean loss of the chunk's gradient steps."""

    train_return: Float[Array, ""]
    loss: Float[Array, ""]


class R2D2(NamedTuple):
    """An agent's three compiled functions; `train_chunk` consumes (donates) its state."""

    init: Callable[[PRNGKeyArray], State]
    train_chunk: Callable[[State], tuple[State, Metrics]]
    evaluate: Callable[[QNetwork, PRNGKeyArray], Float[Array, " episodes"]]


def make_r2d2(config: Config) -> R2D2:
    """Builds the agent of `config` on CartPole-v1 with `[x, theta]` observations.

    **Arguments:**

    - `config`: the hyperparameters; `config.memory=False` gives the memoryless baseline.

    **Returns:**

    An `R2D2` of the compiled `init`, `train_chunk` and `evaluate`.
    """
    env, env_params = gymnax.make("CartPole-v1")
    num_actions = env.action_space(env_params).n
    # The observation: position and angle as fractions of the limits that end an episode.
    limits = jnp.array([env_params.x_threshold, env_params.theta_threshold_radians])
    num_envs = config.num_envs

    def observe(full_obs: Float[Array, "*envs 4"]) -> Float[Array, "*envs 2"]:
        return full_obs[..., jnp.array([0, 2])] / limits

    buffer = eqx_replay.make_prioritised_trajectory_buffer(
        add_batch_size=num_envs,
        sample_batch_size=config.batch_size,
        sample_sequence_length=config.sequence_length,
        period=config.period,
        min_length_time_axis=config.sequence_length,
        max_size=config.buffer_size,
        priority_exponent=config.priority_exponent,
        episode_end=lambda step: step["done"],
        boundary="mask",
    )
    optimiser = optax.chain(
        optax.clip_by_global_norm(config.max_grad_norm),
        optax.adam(optax.linear_schedule(config.lr, config.lr_end, config.num_updates)),
    )
    # `done` ends the episode (terminated or cut by the time limit), for the buffer's mask;
    # `terminated` alone stops the bootstrap; `recurrent` is the state the step was acted
    # from.
    example = {
        "obs": jnp.zeros(2, jnp.float32),
        "action": jnp.int32(0),
        "reward": jnp.float32(0),
        "terminated": jnp.bool_(False),
        "done": jnp.bool_(False),
        "recurrent": jnp.zeros(config.hidden, jnp.float32),
    }

    def reset(key: PRNGKeyArray, count: int) -> tuple[Array, Any]:
        obs, env_state = jax.vmap(env.reset, in_axes=(0, None))(jr.split(key, count), env_params)
        return observe(obs), env_state

    def step(key: PRNGKeyArray, env_state: Any, action: Array, count: int):
        obs, env_state, reward, terminated, truncated, _ = jax.vmap(
            env.step, in_axes=(0, 0, 0, None)
        )(jr.split(key, count), env_state, action, env_params)
        terminated = jnp.asarray(terminated, jnp.bool_)
        done = terminated | jnp.asarray(truncated, jnp.bool_)
        return observe(obs), env_state, reward.astype(jnp.float32), terminated, done

    def init(key: PRNGKeyArray) -> State:
        q_key, env_key, key = jr.split(key, 3)
        obs, env_state = reset(env_key, num_envs)
        q = QNetwork(obs.shape[-1], num_actions, config.hidden, config.memory, key=q_key)
        opt_state = optimiser.init(eqx.filter(q, eqx.is_array))
        return State(
            learner=Learner(q, q, opt_state, jnp.int32(0)),
            buffer_state=buffer.init(example),
            env_state=env_state,
            obs=obs,
            recurrent=jnp.zeros((num_envs, config.hidden)),
            episode_return=jnp.zeros(num_envs),
            last_return=jnp.zeros(num_envs),
            steps=jnp.int32(0),
            key=key,
        )

    def epsilon(steps: Int[Array, ""]) -> Float[Array, ""]:
        fraction = jnp.minimum(steps / config.eps_decay_steps, 1.0)
        return config.eps_start + fraction * (config.eps_end - config.eps_start)

    def window_q(
        q: QNetwork, obs: Float[Array, "windows time obs"], start: Float[Array, "windows hidden"]
    ) -> Float[Array, "windows learn actions"]:
        """Q-values on each window's learning steps, unrolled from the stored state `start`
        after a burn-in without gradients."""
        burn, learn = eqx_replay.burn_in_split(obs, config.burn_in)
        _, state = jax.vmap(q.unroll)(burn, start)
        q_values, _ = jax.vmap(q.unroll)(learn, lax.stop_gradient(state))
        return q_values

    def loss_fn(
        q: QNetwork,
        target: QNetwork,
        sample: eqx_replay.PrioritisedTrajectoryBufferSample,
        weights: Float[Array, " windows"],
    ) -> tuple[Float[Array, ""], Float[Array, " windows"]]:
        """The importance-weighted Huber TD loss of a sample, and each window's priority."""
        _, (learn, mask) = eqx_replay.burn_in_split(
            (sample.experience, sample.mask), config.burn_in
        )
        start = sample.experience["recurrent"][:, 0]
        online = window_q(q, sample.experience["obs"], start)
        target_q = window_q(target, sample.experience["obs"], start)
        # Double Q: the online network chooses the action, the target network values it.
        choice = jnp.argmax(online, axis=-1)
        values = jnp.take_along_axis(target_q, choice[..., None], axis=-1)[..., 0]
        discounts = config.gamma * (1.0 - learn["terminated"])
        returns = eqx_replay.n_step_returns(
            learn["reward"], discounts, lax.stop_gradient(values), config.n_step, mask=mask
        )
        taken = jnp.take_along_axis(online, learn["action"][..., None], axis=-1)[..., 0]
        # A return that reaches an episode cut by the time limit misses its bootstrap (the
        # window does not hold the state after the cut), and the agent cannot see the time:
        # leave such steps out. Summing cut flags as n-step "rewards" finds them.
        cut = (learn["done"] & ~learn["terminated"]).astype(jnp.float32)
        reaches_cut = eqx_replay.n_step_returns(
            cut, jnp.ones_like(cut), jnp.zeros_like(cut), config.n_step, mask=mask
        )
        # The last step of a window only bootstraps; steps after the first episode end are
        # not this window's.
        mask = (mask & (reaches_cut == 0))[:, :-1]
        delta = jnp.where(mask, returns[:, :-1] - taken[:, :-1], 0.0)
        errors = jnp.where(mask, optax.huber_loss(delta), 0.0)
        loss = jnp.sum(weights[:, None] * errors) / jnp.maximum(jnp.sum(mask), 1)
        magnitude = lax.stop_gradient(jnp.abs(delta))
        mean = jnp.sum(magnitude, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1)
        eta = config.priority_eta
        priorities = eta * jnp.max(magnitude, axis=1) + (1 - eta) * mean
        return loss, priorities

    def gradient_step(
        learner: Learner,
        buffer_state: BufferState,
        key: PRNGKeyArray,
    ) -> tuple[Learner, BufferState, Float[Array, ""]]:
        """One Adam step on a prioritised sample of windows, the windows' new priorities,
        and a copy of the online network to the target every `target_every` steps."""
        sample = buffer.sample(buffer_state, key)
        weights = eqx_replay.importance_weights(sample.probabilities, config.importance_beta)
        (loss, priorities), grads = eqx.filter_value_and_grad(loss_fn, has_aux=True)(
            learner.q, learner.target, sample, weights
        )
        buffer_state = buffer.set_priorities(buffer_state, sample.indices, priorities)
        params = eqx.filter(learner.q, eqx.is_array)
        updates, opt_state = optimiser.update(grads, learner.opt_state, params)
        q = eqx.apply_updates(learner.q, updates)
        count = learner.updates + 1
        copy = count % config.target_every == 0
        target = jax.tree.map(
            lambda new, old: jnp.where(copy, new, old) if eqx.is_array(new) else new,
            q,
            learner.target,
        )
        return Learner(q, target, opt_state, count), buffer_state, loss

    def learn(
        learner: Learner,
        buffer_state: BufferState,
        key: PRNGKeyArray,
    ) -> tuple[Learner, BufferState, Float[Array, ""]]:
        """`updates_per_train` gradient steps, each on its own sample."""
        arrays, static = eqx.partition(learner, eqx.is_array)

        def body(carry, key: PRNGKeyArray):
            arrays, buffer_state = carry
            learner, buffer_state, loss = gradient_step(
                eqx.combine(arrays, static), buffer_state, key
            )
            return (eqx.filter(learner, eqx.is_array), buffer_state), loss

        keys = jr.split(key, config.updates_per_train)
        (arrays, buffer_state), losses = lax.scan(body, (arrays, buffer_state), keys)
        return eqx.combine(arrays, static), buffer_state, jnp.mean(losses)

    def update(state: State) -> tuple[State, tuple[Bool[Array, ""], Float[Array, ""]]]:
        """One step of every environment, added to the buffer, and a learning phase every
        `train_every` environment steps once learning has started."""
        key, act_key, explore_key, env_key, learn_key = jr.split(state.key, 5)
        q_values, recurrent = jax.vmap(state.learner.q)(state.obs, state.recurrent)
        explore = jr.uniform(explore_key, (num_envs,)) < epsilon(state.steps)
        random_action = jr.randint(act_key, (num_envs,), 0, num_actions)
        action = jnp.where(explore, random_action, jnp.argmax(q_values, axis=-1))
        obs, env_state, reward, terminated, done = step(env_key, state.env_state, action, num_envs)
        transition = {
            "obs": state.obs,
            "action": action.astype(jnp.int32),
            "reward": reward,
            "terminated": terminated,
            "done": done,
            "recurrent": state.recurrent,
        }
        buffer_state = buffer.add(
            state.buffer_state, jax.tree.map(lambda x: x[:, None], transition)
        )
        steps = state.steps + num_envs

        learn_now = (
            buffer.can_sample(buffer_state)
            & (steps >= config.learning_starts)
            & (steps % config.train_every < num_envs)
        )
        arrays, static = eqx.partition(state.learner, eqx.is_array)

        def learnt() -> tuple[Learner, BufferState, Float[Array, ""]]:
            learner, new_buffer_state, loss = learn(state.learner, buffer_state, learn_key)
            return eqx.filter(learner, eqx.is_array), new_buffer_state, loss

        def skipped() -> tuple[Learner, BufferState, Float[Array, ""]]:
            return arrays, buffer_state, jnp.float32(0)

        arrays, buffer_state, loss = lax.cond(learn_now, learnt, skipped)
        episode_return = state.episode_return + reward
        state = State(
            learner=eqx.combine(arrays, static),
            buffer_state=buffer_state,
            env_state=env_state,
            obs=obs,
            # The next step begins a new episode where this one ended: a fresh state.
            recurrent=jnp.where(done[:, None], 0.0, recurrent),
            episode_return=jnp.where(done, 0.0, episode_return),
            last_return=jnp.where(done, episode_return, state.last_return),
            steps=steps,
            key=key,
        )
        return state, (learn_now, loss)

    @eqx.filter_jit(donate="all")
    def train_chunk(state: State) -> tuple[State, Metrics]:
        arrays, static = eqx.partition(state, eqx.is_array)

        def body(arrays: State, _: None):
            state, metrics = update(eqx.combine(arrays, static))
            return eqx.filter(state, eqx.is_array), metrics

        arrays, (learnt, losses) = lax.scan(body, arrays, None, length=config.steps_per_chunk)
        state = eqx.combine(arrays, static)
        loss = jnp.sum(losses) / jnp.maximum(jnp.sum(learnt), 1)
        return state, Metrics(jnp.mean(state.last_return), loss)

    @eqx.filter_jit
    def evaluate(q: QNetwork, key: PRNGKeyArray) -> Float[Array, " episodes"]:
        """Returns of `eval_episodes` greedy episodes run in parallel to their end."""
        count = config.eval_episodes
        reset_key, key = jr.split(key)
        obs, env_state = reset(reset_key, count)

        def act(carry, key):
            obs, recurrent, env_state, returns, running = carry
            q_values, recurrent = jax.vmap(q)(obs, recurrent)
            action = jnp.argmax(q_values, axis=-1)
            obs, env_state, reward, _, done = step(key, env_state, action, count)
            returns = returns + jnp.where(running, reward, 0.0)
            return (obs, recurrent, env_state, returns, running & ~done), None

        start = jnp.zeros((count, config.hidden))
        carry = (obs, start, env_state, jnp.zeros(count), jnp.ones(count, bool))
        (*_, returns, _), _ = lax.scan(act, carry, jr.split(key, MAX_RETURN))
        return returns

    return R2D2(eqx.filter_jit(init), train_chunk, evaluate)


class Curve(NamedTuple):
    """A training run's record: env steps after each chunk, the greedy policy's mean
    evaluation return there, and the wall time of the whole run."""

    steps: list[int]
    returns: list[float]
    seconds: float


def train(config: Config, progress: bool = True, label: str = "") -> Curve:
    """Trains one agent, evaluating the greedy policy after every chunk."""
    import tqdm

    start = time.perf_counter()
    agent = make_r2d2(config)
    key, eval_key = jr.split(jr.key(config.seed))
    state = agent.init(key)
    steps, returns = [], []
    bar = tqdm.trange(config.num_chunks, disable=not progress, unit="chunk", desc=label)
    for chunk in bar:
        state, metrics = agent.train_chunk(state)
        evaluation = float(jnp.mean(agent.evaluate(state.learner.q, jr.fold_in(eval_key, chunk))))
        steps.append(int(state.steps))
        returns.append(evaluation)
        bar.set_postfix(train_return=f"{float(metrics.train_return):.1f}", eval=evaluation)
    return Curve(steps, returns, time.perf_counter() - start)


def plot(curves: dict[str, Curve], path: pathlib.Path, title: str) -> None:
    """Saves the learning curves (evaluation return against env steps) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    for label, curve in curves.items():
        axes.plot(curve.steps, curve.returns, marker=".", label=label)
    axes.axhline(MAX_RETURN, color="grey", linestyle=":", linewidth=1)
    axes.set(xlabel="environment steps", ylabel="mean greedy evaluation return", title=title)
    axes.set_ylim(0, MAX_RETURN * 1.05)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right", bbox_to_anchor=(1.0, 0.12))
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


DEFAULT_PLOT = pathlib.Path(__file__).parent / "results" / "r2d2_memory.png"


def parse_config(argv: list[str] | None = None) -> tuple[Config, argparse.Namespace]:
    """The command line: every `Config` field but `memory` is a flag (`--total-steps`,
    `--num-envs`, ...); `--tiny` starts from a configuration that trains for seconds."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    fields = [f for f in dataclasses.fields(Config) if f.name != "memory"]
    for field in fields:
        kind = {"int": int, "float": float}.get(str(field.type), field.type)
        flag = "--" + field.name.replace("_", "-")
        parser.add_argument(flag, type=kind, default=None, help=f"default {field.default}")  # pyright: ignore[reportArgumentType]  # the field's own type
    parser.add_argument("--tiny", action="store_true", help="a seconds-long smoke test (CI)")
    parser.add_argument("--plot", type=pathlib.Path, default=DEFAULT_PLOT, help="PNG to write")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    config = TINY if args.tiny else Config()
    given = {f.name: getattr(args, f.name) for f in fields if getattr(args, f.name) is not None}
    return dataclasses.replace(config, **given), args


def main() -> None:
    config, args = parse_config()
    curves = {
        "recurrent (GRU)": train(config, not args.quiet, "recurrent"),
        "memoryless baseline (state reset every step)": train(
            dataclasses.replace(config, memory=False), not args.quiet, "memoryless"
        ),
    }
    title = f"R2D2 on CartPole-v1 without velocities (seed {config.seed})"
    plot(curves, args.plot, title)
    recurrent, baseline = curves.values()
    print(
        f"recurrent: mean evaluation return {recurrent.returns[-1]:.1f} (of {MAX_RETURN}) "
        f"after {recurrent.steps[-1]} env steps in {recurrent.seconds:.1f} s"
    )
    print(
        f"memoryless baseline: mean evaluation return {baseline.returns[-1]:.1f} "
        f"(of {MAX_RETURN}) after {baseline.steps[-1]} env steps in {baseline.seconds:.1f} s"
    )


if __name__ == "__main__":
    main()
