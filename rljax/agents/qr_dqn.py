"""QR-DQN: distributional Q-learning by quantile regression, for discrete actions.

Dabney, Rowland, Bellemare, Munos, "Distributional Reinforcement Learning with Quantile
Regression", AAAI 2018 (Algorithm 1), on the DQN machinery of Mnih et al., "Human-level control
through deep reinforcement learning", Nature 2015: a replay buffer, a target network theta^-,
epsilon-greedy.

    Z(s, a)   = 1/N sum_i delta(theta_i(s, a)),   quantile midpoints tau_i = (2i - 1) / (2N)
    a*        = argmax_a 1/N sum_j theta_j(s', a; theta^-)              s': next state before reset
    T theta_j = r + gamma (1 - terminated) theta_j(s', a*; theta^-)
    u_ij      = T theta_j - theta_i(s, a)
    L         = sum_i mean_j |tau_i - 1{u_ij < 0}| L_kappa(u_ij) / kappa
    L_kappa(u) = u^2 / 2 if |u| <= kappa else kappa (|u| - kappa / 2);   kappa = 0: |u|

The loss is the paper's rho^kappa_tau, divided by kappa (rlax's quantile_regression_loss is
not; the two agree at the default kappa = 1). Bootstraps through truncation (time limits) but
not through termination.
"""

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

LEARNS_FROM = "env"  # what it learns from, as declared in rljax/agents/__init__.py
GOAL_CONDITIONED = False
WRAPS_ENV = False
RECURRENT = False
PAPER = 'Dabney et al., "Distributional Reinforcement Learning with Quantile Regression", AAAI 2018'

# Agents vmap env.reset and env.step over this axis; wrappers may pool statistics over it.
ENV_AXIS = "env"


def _field(default, *, static=False, bounds=None, choices=None, doc):
    """A config field. Static fields are shapes and switches (changing one recompiles); the
    rest are traced, so a sweep can vmap over them. bounds/choices let a runner validate; doc,
    the field's meaning in one line, is required so that no field goes unexplained."""
    metadata = {"bounds": bounds, "choices": choices, "doc": doc}
    return struct.field(pytree_node=not static, default=default, metadata=metadata)


@struct.dataclass
class Config:
    num_envs: int = _field(
        4, static=True, bounds="[1, inf)", doc="environments stepped in parallel"
    )
    num_steps: int = _field(
        64, static=True, bounds="[1, inf)", doc="env steps per environment per iteration"
    )
    updates_per_iteration: int = _field(
        64, static=True, bounds="[1, inf)", doc="gradient steps per iteration"
    )
    batch_size: int = _field(
        64, static=True, bounds="[1, inf)", doc="transitions per gradient step"
    )
    buffer_size: int = _field(
        50_000, static=True, bounds="[1, inf)", doc="replay buffer capacity in transitions"
    )
    total_timesteps: int = _field(
        100_000, static=True, bounds="[1, inf)", doc="env steps summed over envs (the budget)"
    )
    hidden_sizes: tuple = _field(
        (128, 128), static=True, doc="hidden-layer widths of the Q-network"
    )
    num_quantiles: int = _field(200, static=True, bounds="[1, inf)", doc="quantiles N per action")
    kappa: float = _field(
        1.0, bounds="[0, inf)", doc="Huber threshold kappa (0: the plain quantile loss)"
    )
    lr: float = _field(1e-3, bounds="(0, inf)", doc="Adam learning rate")
    adam_eps: float = _field(
        0.01 / 32, bounds="(0, inf)", doc="Adam epsilon (the paper's 0.01 / batch of 32)"
    )
    max_grad_norm: float = _field(
        10.0, bounds="(0, inf)", doc="global norm that gradients are clipped to"
    )
    gamma: float = _field(0.99, bounds="[0, 1]", doc="discount factor gamma")
    learning_starts: int = _field(
        1_000, bounds="[0, inf)", doc="transitions in the buffer before learning starts"
    )
    target_update_interval: int = _field(
        100, bounds="[1, inf)", doc="gradient steps between target network updates"
    )
    tau: float = _field(
        1.0, bounds="(0, 1]", doc="target update rate (1: the papers' hard copy; < 1: Polyak)"
    )
    start_e: float = _field(1.0, bounds="[0, 1]", doc="epsilon of epsilon-greedy at the start")
    end_e: float = _field(
        0.01, bounds="[0, 1]", doc="final epsilon, also act's when not deterministic"
    )
    exploration_fraction: float = _field(
        0.2, bounds="(0, 1]", doc="fraction of total_timesteps over which epsilon decays"
    )

    @property
    def steps_per_update(self) -> int:
        return self.num_envs * self.num_steps

    @property
    def num_updates(self) -> int:
        return self.total_timesteps // self.steps_per_update


class Transition(NamedTuple):
    obs: jax.Array
    action: jax.Array
    reward: jax.Array
    next_obs: jax.Array  # the observation after the action, before any auto-reset
    terminated: jax.Array


@struct.dataclass
class Buffer:
    data: Any  # a pytree of (capacity, ...) arrays
    position: jax.Array  # the slot the next transition goes to
    size: jax.Array  # filled slots, up to capacity


@struct.dataclass
class Params:
    """The weights, and the facts of the action space that act() needs without an env."""

    net: Any  # the QNetwork's weights
    action_dim: int = struct.field(pytree_node=False)  # the number of actions


@struct.dataclass
class TrainState:
    params: Params
    target_params: Any  # theta^-, weights like params.net
    opt_state: Any
    buffer: Buffer
    env_state: Any
    obs: jax.Array  # (num_envs, obs_dim)
    rng: jax.Array
    update_step: jax.Array  # iterations done so far; drives the epsilon schedule
    gradient_step: jax.Array  # gradient steps taken; drives the target network updates


# --- Replay buffer ---


def buffer_init(capacity: int, example) -> Buffer:
    """An empty uniform circular buffer for pytrees shaped like ``example``."""
    data = jax.tree.map(lambda x: jnp.zeros((capacity, *x.shape), x.dtype), example)
    return Buffer(data, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))


def buffer_add(buffer: Buffer, batch) -> Buffer:
    """Writes a batch (leading axis n <= capacity) after the last write, wrapping around."""
    capacity = jax.tree.leaves(buffer.data)[0].shape[0]
    n = jax.tree.leaves(batch)[0].shape[0]
    slots = (buffer.position + jnp.arange(n)) % capacity
    data = jax.tree.map(lambda d, b: d.at[slots].set(b), buffer.data, batch)
    return Buffer(data, (buffer.position + n) % capacity, jnp.minimum(buffer.size + n, capacity))


def buffer_sample(buffer: Buffer, rng: jax.Array, batch_size: int):
    """batch_size transitions drawn uniformly, with replacement, from the filled slots."""
    slots = jax.random.randint(rng, (batch_size,), 0, jnp.maximum(buffer.size, 1))
    return jax.tree.map(lambda d: d[slots], buffer.data)


# --- Networks ---


class QNetwork(nn.Module):
    """An MLP with N quantiles per action: (..., A, N)."""

    num_actions: int
    num_quantiles: int
    hidden_sizes: tuple

    @nn.compact
    def __call__(self, obs):
        x = obs
        for size in self.hidden_sizes:
            x = nn.relu(nn.Dense(size)(x))
        quantiles = nn.Dense(self.num_actions * self.num_quantiles, name="head")(x)
        return quantiles.reshape(*quantiles.shape[:-1], self.num_actions, self.num_quantiles)


def _network(config: Config, num_actions: int) -> QNetwork:
    return QNetwork(num_actions, config.num_quantiles, tuple(config.hidden_sizes))


def _q_values(quantiles):
    """Q(s, a) = E[Z(s, a)], the mean of each action's quantiles."""
    return quantiles.mean(-1)


def _optimizer(config: Config) -> optax.GradientTransformation:
    # Hyperparameters enter as (possibly traced) values, so a sweep over them compiles once.
    return optax.chain(
        optax.clip_by_global_norm(config.max_grad_norm),
        optax.adam(config.lr, eps=config.adam_eps),
    )


def _epsilon(config: Config, env_steps):
    """DQN's schedule: linear from start_e to end_e over exploration_fraction of the run."""
    duration = config.exploration_fraction * config.total_timesteps
    progress = jnp.clip(env_steps / duration, 0.0, 1.0)
    return config.start_e + progress * (config.end_e - config.start_e)


def _epsilon_greedy(rng, q, epsilon):
    explore_key, action_key = jax.random.split(rng)
    random_action = jax.random.randint(action_key, q.shape[:-1], 0, q.shape[-1])
    explore = jax.random.uniform(explore_key, q.shape[:-1]) < epsilon
    return jnp.where(explore, random_action, jnp.argmax(q, -1))


# --- Pure functions ---


def quantile_huber_loss(dist_src, tau_src, dist_target, kappa):
    """The quantile Huber loss of N source quantiles against N' target samples.

    sum_i mean_j |tau_i - 1{u_ij < 0}| L_kappa(u_ij) / kappa with u_ij = target_j - src_i: the
    paper's rho^kappa_tau; kappa = 0 gives the quantile regression loss |tau_i - 1{u < 0}| |u|.
    """
    u = dist_target[None, :] - dist_src[:, None]  # (N, N'): src down, target across
    abs_u = jnp.abs(u)
    quadratic = jnp.minimum(abs_u, kappa)
    # L_kappa(u) / kappa, finite at kappa = 0 (quadratic is 0 there, so the first term is too).
    huber = 0.5 * quadratic**2 / jnp.where(kappa > 0, kappa, 1.0) + abs_u - quadratic
    weight = jnp.abs(tau_src[:, None] - (u < 0))
    return (weight * huber).mean(-1).sum()


def quantile_q_loss(dist_tm1, a_tm1, r_t, discount_t, dist_t, kappa):
    """The quantile Huber loss of theta(s, a) against T theta(s', a*) for one transition.

    dist_tm1 (A, N) from the online network at s; dist_t (A, N) from the target network at s',
    which also picks a* by its mean; discount_t = gamma (1 - terminated).
    """
    num_quantiles = dist_tm1.shape[-1]
    tau = (jnp.arange(num_quantiles) + 0.5) / num_quantiles
    a_t = jnp.argmax(dist_t.mean(-1))
    target = jax.lax.stop_gradient(r_t + discount_t * dist_t[a_t])
    return quantile_huber_loss(dist_tm1[a_tm1], tau, target, kappa)


# --- The contract ---


def check(config: Config) -> None:
    """The rules across Config fields; the runner calls it on each concrete config."""
    if config.buffer_size < config.steps_per_update:
        raise ValueError(
            f"buffer_size={config.buffer_size} must hold one iteration's "
            f"num_envs * num_steps = {config.steps_per_update} transitions"
        )


def init(config: Config, env, env_params, rng: jax.Array) -> TrainState:
    obs_shape = env.observation_space(env_params).shape
    action_space = env.action_space(env_params)
    if not hasattr(action_space, "n"):
        raise ValueError(f"QR-DQN needs discrete actions, got {type(action_space).__name__}")
    if len(obs_shape) != 1:
        raise ValueError(
            f"QR-DQN's MLP takes vector observations, got shape {obs_shape}; flatten them "
            "(rljax.envs.make(name, flatten_obs=True), or gymnax's FlattenObservationWrapper)"
        )
    check(config)
    rng, net_key, env_key = jax.random.split(rng, 3)
    net = _network(config, action_space.n).init(net_key, jnp.zeros(obs_shape))
    params = Params(net, int(action_space.n))
    opt_state = _optimizer(config).init(net)
    reset = jax.vmap(env.reset, in_axes=(0, None), axis_name=ENV_AXIS)
    obs, env_state = reset(jax.random.split(env_key, config.num_envs), env_params)
    example = Transition(obs[0], jnp.int32(0), jnp.float32(0), obs[0], jnp.bool_(False))
    buffer = buffer_init(config.buffer_size, example)
    zero = jnp.zeros((), jnp.int32)
    return TrainState(params, net, opt_state, buffer, env_state, obs, rng, zero, zero)


def update(config: Config, env, env_params, state: TrainState) -> tuple[TrainState, dict]:
    """One iteration: num_steps epsilon-greedy steps of num_envs envs into the buffer, then
    updates_per_iteration gradient steps once the buffer holds learning_starts transitions."""
    network = _network(config, env.action_space(env_params).n)
    step = jax.vmap(env.step, in_axes=(0, 0, 0, None), axis_name=ENV_AXIS)

    # --- Rollout ---
    def env_step(carry, t):
        env_state, obs, rng = carry
        rng, action_key, step_key = jax.random.split(rng, 3)
        epsilon = _epsilon(config, (state.update_step * config.num_steps + t) * config.num_envs)
        q = _q_values(network.apply(state.params.net, obs))
        action = _epsilon_greedy(action_key, q, epsilon)
        step_keys = jax.random.split(step_key, config.num_envs)
        next_obs, env_state, reward, terminated, truncated, info = step(
            step_keys, env_state, action, env_params
        )
        transition = Transition(obs, action, reward, info.pop("final_observation"), terminated)
        return (env_state, next_obs, rng), (transition, info, epsilon)

    (env_state, obs, rng), (traj, info, epsilon) = jax.lax.scan(
        env_step, (state.env_state, state.obs, state.rng), jnp.arange(config.num_steps)
    )
    flat = jax.tree.map(lambda x: x.reshape(config.steps_per_update, *x.shape[2:]), traj)
    buffer = buffer_add(state.buffer, flat)

    # --- Learning ---
    optimizer = _optimizer(config)
    ready = buffer.size >= config.learning_starts

    def loss_fn(params, target_params, batch):
        dist_tm1 = network.apply(params, batch.obs)
        dist_t = network.apply(target_params, batch.next_obs)
        discount_t = config.gamma * (1.0 - batch.terminated)
        losses = jax.vmap(quantile_q_loss, in_axes=(0, 0, 0, 0, 0, None))(
            dist_tm1, batch.action, batch.reward, discount_t, dist_t, config.kappa
        )
        q = jnp.take_along_axis(_q_values(dist_tm1), batch.action[:, None], -1)
        return losses.mean(), q.mean()

    def gradient_step(carry, key):
        params, target_params, opt_state, count = carry
        batch = buffer_sample(buffer, key, config.batch_size)
        (loss, q_mean), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, target_params, batch
        )
        updates, new_opt_state = optimizer.update(grads, opt_state, params)
        # Before learning_starts the step is computed and discarded: no branch, so vmapped
        # members with different learning_starts stay one program.
        params, opt_state = jax.tree.map(
            lambda new, old: jnp.where(ready, new, old),
            (optax.apply_updates(params, updates), new_opt_state),
            (params, opt_state),
        )
        count = count + ready
        sync = ready & (count % config.target_update_interval == 0)
        target_params = jax.tree.map(
            lambda t, p: jnp.where(sync, config.tau * p + (1.0 - config.tau) * t, t),
            target_params,
            params,
        )
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "q_mean": q_mean}
        return (params, target_params, opt_state, count), metrics

    rng, sample_key = jax.random.split(rng)
    (params, target_params, opt_state, gradient_step_count), losses = jax.lax.scan(
        gradient_step,
        (state.params.net, state.target_params, state.opt_state, state.gradient_step),
        jax.random.split(sample_key, config.updates_per_iteration),
    )

    state = TrainState(
        state.params.replace(net=params), target_params, opt_state, buffer, env_state, obs, rng,
        state.update_step + 1, gradient_step_count,
    )  # fmt: skip
    metrics = {**jax.tree.map(jnp.mean, losses), **_episode_metrics(info)}
    return state, {**metrics, "epsilon": epsilon.mean()}


def train(config: Config, env, env_params, rng: jax.Array, num_updates: int | None = None):
    """init, then num_updates (default: total_timesteps // steps_per_update) updates."""
    num_updates = config.num_updates if num_updates is None else num_updates
    state = init(config, env, env_params, rng)
    return jax.lax.scan(lambda s, _: update(config, env, env_params, s), state, None, num_updates)


def act(
    config: Config, params: Params, obs: jax.Array, rng: jax.Array, deterministic: bool = False
):
    """Greedy in the mean of Z when deterministic; otherwise epsilon-greedy with end_e, the
    exploration rate that training ends with (the papers evaluate with a small epsilon)."""
    q = _q_values(_network(config, params.action_dim).apply(params.net, obs))
    return jnp.argmax(q, -1) if deterministic else _epsilon_greedy(rng, q, config.end_e)


def _episode_metrics(info: dict) -> dict:
    """Mean return and length of the episodes that finished in this rollout (NaN if none)."""
    if "returned_episode" not in info:  # an env without episode statistics
        return {}
    finished = info["returned_episode"]
    count = finished.sum()

    def mean(x):
        return jnp.where(count > 0, (x * finished).sum() / jnp.maximum(count, 1), jnp.nan)

    return {
        "episode_return": mean(info["returned_episode_returns"]),
        "episode_length": mean(info["returned_episode_lengths"]),
        "episodes": count,
    }


if __name__ == "__main__":
    import sys
    import time

    import gymnax
    from gymnax.wrappers.purerl import LogWrapper

    env_name = sys.argv[1] if len(sys.argv) > 1 else "CartPole-v1"
    env, env_params = gymnax.make(env_name)
    env = LogWrapper(env)
    config = Config()
    start = time.time()
    _, metrics = jax.jit(lambda key: train(config, env, env_params, key))(jax.random.PRNGKey(30))
    returns = np.asarray(metrics["episode_return"])
    print(f"QR-DQN on {env_name}: {config.total_timesteps} steps in {time.time() - start:.1f}s")
    for i in np.linspace(0, len(returns) - 1, 10).astype(int):
        step = (i + 1) * config.steps_per_update
        print(f"  step {step:>8d}  return {np.nanmean(returns[max(0, i - 9) : i + 1]):8.1f}")
