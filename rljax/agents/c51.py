"""C51: categorical distributional Q-learning, for discrete actions.

Bellemare, Dabney, Munos, "A Distributional Perspective on Reinforcement Learning", ICML 2017
(Algorithm 1), on the DQN machinery of Mnih et al., "Human-level control through deep
reinforcement learning", Nature 2015: a replay buffer, a target network theta^-, epsilon-greedy.

    Z(s, a)  = sum_i p_i(s, a) delta(z_i),   z_i = v_min + i dz,   dz = (v_max - v_min) / (K - 1)
    a*       = argmax_a sum_i z_i p_i(s', a; theta^-)                  s': next state before reset
    Tz_j     = clip(r + gamma (1 - terminated) z_j, v_min, v_max)
    (Phi)_i  = sum_j clip(1 - |Tz_j - z_i| / dz, 0, 1) p_j(s', a*; theta^-)
    L        = -sum_i (Phi)_i log p_i(s, a; theta),  averaged over a minibatch from the buffer

Phi is Algorithm 1's split of each atom's mass between its two neighbours on the support,
written with distances, so an atom that lands exactly on z_i (floor(b) = ceil(b), where the
paper's indexing form loses the mass) keeps it. Bootstraps through truncation (time limits) but
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
PAPER = 'Bellemare et al., "A Distributional Perspective on Reinforcement Learning", ICML 2017'

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
    num_atoms: int = _field(51, static=True, bounds="[2, inf)", doc="atoms K of the support z")
    # The support's ends only enter arithmetic, so a sweep may vmap over them.
    v_min: float = _field(0.0, doc="lowest atom v_min of the support z")
    v_max: float = _field(100.0, doc="highest atom v_max of the support z")
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

    def __post_init__(self):
        # Python floats are a config being built; traced or stacked copies were checked then.
        if isinstance(self.v_min, float) and isinstance(self.v_max, float):
            if not self.v_min < self.v_max:
                raise ValueError(f"v_min={self.v_min} must be less than v_max={self.v_max}")

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
    """An MLP with one categorical distribution (K logits) per action: (..., A, K)."""

    num_actions: int
    num_atoms: int
    hidden_sizes: tuple

    @nn.compact
    def __call__(self, obs):
        x = obs
        for size in self.hidden_sizes:
            x = nn.relu(nn.Dense(size)(x))
        logits = nn.Dense(self.num_actions * self.num_atoms, name="head")(x)
        return logits.reshape(*logits.shape[:-1], self.num_actions, self.num_atoms)


def _network(config: Config, num_actions: int) -> QNetwork:
    return QNetwork(num_actions, config.num_atoms, tuple(config.hidden_sizes))


def _support(config: Config) -> jax.Array:
    return jnp.linspace(config.v_min, config.v_max, config.num_atoms)


def _q_values(logits, support):
    """Q(s, a) = E[Z(s, a)], the mean of each action's distribution."""
    return (jax.nn.softmax(logits) * support).sum(-1)


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


def categorical_projection(z_t, p_t, z):
    """Projects the distribution sum_j p_t[j] delta(z_t[j]) onto the evenly spaced support z.

    Each atom, clipped to [z[0], z[-1]], splits its mass between its two neighbours in z in
    proportion to closeness: Phi_i = sum_j clip(1 - |z_t[j] - z[i]| / dz, 0, 1) p_t[j].
    An atom exactly on z[i] gives it all its mass (no floor = ceil loss).
    """
    dz = z[1] - z[0]
    z_t = jnp.clip(z_t, z[0], z[-1])
    weights = jnp.clip(1.0 - jnp.abs(z_t[None, :] - z[:, None]) / dz, 0.0, 1.0)  # (K, K')
    return (weights * p_t[None, :]).sum(-1)


def categorical_q_loss(logits_tm1, a_tm1, r_t, discount_t, logits_t, z):
    """Cross-entropy of p(s, a) against Phi T Z(s', a*) for one transition.

    logits_tm1 (A, K) from the online network at s; logits_t (A, K) from the target network at
    s', which also picks a* by its mean; discount_t = gamma (1 - terminated).
    """
    p_t = jax.nn.softmax(logits_t)
    a_t = jnp.argmax((p_t * z).sum(-1))
    target = categorical_projection(r_t + discount_t * z, p_t[a_t], z)
    return -(jax.lax.stop_gradient(target) * jax.nn.log_softmax(logits_tm1[a_tm1])).sum()


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
        raise ValueError(f"C51 needs discrete actions, got {type(action_space).__name__}")
    if len(obs_shape) != 1:
        raise ValueError(
            f"C51's MLP takes vector observations, got shape {obs_shape}; flatten them "
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
    support = _support(config)
    step = jax.vmap(env.step, in_axes=(0, 0, 0, None), axis_name=ENV_AXIS)

    # --- Rollout ---
    def env_step(carry, t):
        env_state, obs, rng = carry
        rng, action_key, step_key = jax.random.split(rng, 3)
        epsilon = _epsilon(config, (state.update_step * config.num_steps + t) * config.num_envs)
        q = _q_values(network.apply(state.params.net, obs), support)
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
        logits_tm1 = network.apply(params, batch.obs)
        logits_t = network.apply(target_params, batch.next_obs)
        discount_t = config.gamma * (1.0 - batch.terminated)
        losses = jax.vmap(categorical_q_loss, in_axes=(0, 0, 0, 0, 0, None))(
            logits_tm1, batch.action, batch.reward, discount_t, logits_t, support
        )
        q = jnp.take_along_axis(_q_values(logits_tm1, support), batch.action[:, None], -1)
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
    logits = _network(config, params.action_dim).apply(params.net, obs)
    q = _q_values(logits, _support(config))
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
    print(f"C51 on {env_name}: {config.total_timesteps} steps in {time.time() - start:.1f}s")
    for i in np.linspace(0, len(returns) - 1, 10).astype(int):
        step = (i + 1) * config.steps_per_update
        print(f"  step {step:>8d}  return {np.nanmean(returns[max(0, i - 9) : i + 1]):8.1f}")
