"""Implicit Q-learning: expectile regression for V, SARSA-style Q, advantage-weighted actor.

Kostrikov, Nair, Levine, "Offline Reinforcement Learning with Implicit Q-Learning", ICLR 2022
(ikostrikov/implicit_q_learning). Each gradient step, in this order:

    L_V  = mean(|tau_e - 1(u < 0)| u^2),   u = min_i Qbar_i(s, a) - V(s)      (target critics)
    L_pi = -mean(min(exp(beta (min_i Qbar_i(s, a) - V(s))), 100) log pi(a|s))  (the new V)
    L_Q  = sum_i mean((Q_i(s, a) - (r + gamma (1 - terminal) V(s')))^2)        (the new V)
    Qbar <- (1 - tau) Qbar + tau Q

pi(.|s) = N(tanh(mu(s)), diag(exp(2 log_std))) with a state-independent log_std (a free parameter
initialised at 0, clipped to [log_std_min, log_std_max]) and no tanh squashing of the samples;
the actor's learning rate decays along a cosine to 0 over ``total_updates``; evaluation uses
the mean. Rewards are preprocessed as in the paper's code: ``"return_range"`` (MuJoCo)
r <- 1000 r / (max episode return - min episode return), ``"antmaze"`` r <- r - 1, or ``"none"``.
Observations are normalized by the dataset's statistics, ``(s - mu) / (sigma + 1e-3)`` (as CORL
does; the original normalizes only rewards). Actions are assumed in [-1, 1] (D4RL convention).

Online fine-tuning (the paper's fine-tuning experiments, the authors' ``train_finetune.py``): after
the offline phase, ``online_steps`` env steps, each iteration one stochastic step of ``num_envs``
envs (``act``, clipped to [-1, 1]) added to a replay of online rows, then ``utd_ratio`` gradient
steps of the same three losses on mixed batches. The reward preprocessing and the observation
statistics stay those fixed from the dataset at init; timeouts bootstrap (the authors' mask),
terminations do not. The authors append the online rows to a buffer that holds the whole dataset and
sample it uniformly, so the dataset's share of a batch falls from 1 towards 1/2 over a run as long
as the dataset; here the share is a fixed ``offline_fraction`` (default 1/2, a traced number that
sweeps vmap over). Their fine-tuning config has no learning-rate decay: online the actor steps a
fresh Adam at the constant ``actor_lr`` (the cosine decay above has brought it to 0 by the end of
the offline phase); the critics' and the value's Adam carry on.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

LEARNS_FROM = "dataset_then_env"  # what it learns from, as declared in rljax/agents/__init__.py
GOAL_CONDITIONED = False
WRAPS_ENV = False
RECURRENT = False
PAPER = 'Kostrikov et al., "Offline Reinforcement Learning with Implicit Q-Learning", ICLR 2022'


def _field(default, *, static=False, bounds=None, choices=None, doc):
    """A config field. Static fields are shapes and switches (changing one recompiles); the
    rest are traced, so a sweep can vmap over them. bounds/choices let a runner validate; doc,
    the field's meaning in one line, is required so that no field goes unexplained."""
    metadata = {"bounds": bounds, "choices": choices, "doc": doc}
    return struct.field(pytree_node=not static, default=default, metadata=metadata)


@struct.dataclass
class Config:
    batch_size: int = _field(
        256, static=True, bounds="[1, inf)", doc="transitions per gradient step"
    )
    total_updates: int = _field(
        1_000_000, static=True, bounds="[1, inf)", doc="gradient steps in all (the budget)"
    )
    hidden_sizes: tuple = _field(
        (256, 256), static=True, doc="hidden-layer widths of the actor, critics and value"
    )
    normalize_obs: bool = _field(
        True, static=True, doc="normalize observations by the dataset's mean and std"
    )
    reward_preprocessing: str = _field(
        "return_range",
        static=True,
        choices=("return_range", "antmaze", "none"),
        doc="reward rescaling as in the paper's code",
    )
    actor_lr: float = _field(
        3e-4, bounds="(0, inf)", doc="initial learning rate of the actor, cosine-decayed to 0"
    )
    critic_lr: float = _field(3e-4, bounds="(0, inf)", doc="Adam learning rate of the critics")
    value_lr: float = _field(3e-4, bounds="(0, inf)", doc="Adam learning rate of the value V")
    gamma: float = _field(0.99, bounds="[0, 1]", doc="discount factor gamma")
    tau: float = _field(0.005, bounds="(0, 1]", doc="Polyak rate tau of the target critics")
    expectile: float = _field(
        0.7, bounds="(0, 1)", doc="expectile tau_e of the value loss (0.5 = mean)"
    )
    beta: float = _field(3.0, bounds="[0, inf)", doc="inverse temperature beta of the AWR weights")
    log_std_min: float = _field(-5.0, doc="lower clip of the actor's log std")
    log_std_max: float = _field(2.0, doc="upper clip of the actor's log std")
    online_steps: int = _field(
        0, static=True, bounds="[0, inf)", doc="env steps of the online phase (0: offline only)"
    )
    num_envs: int = _field(
        1, static=True, bounds="[1, inf)", doc="environments stepped in parallel online"
    )
    utd_ratio: int = _field(
        1, static=True, bounds="[1, inf)", doc="gradient steps per online iteration"
    )
    replay_size: int = _field(
        1_000_000, static=True, bounds="[1, inf)", doc="capacity of the replay of online rows"
    )
    offline_fraction: float = _field(
        0.5, bounds="[0, 1]", doc="share of each online batch drawn from the dataset (0: none)"
    )

    @property
    def num_updates(self) -> int:
        return self.total_updates

    @property
    def steps_per_update(self) -> int:
        return self.num_envs

    @property
    def num_online_updates(self) -> int:
        return self.online_steps // self.steps_per_update


@struct.dataclass
class Params:
    actor: Any
    critic: Any  # both critics, stacked on a leading axis of 2
    value: Any
    obs_mean: jax.Array  # normalized obs = (obs - obs_mean) / obs_std
    obs_std: jax.Array
    action_dim: int = struct.field(pytree_node=False, default=1)


@struct.dataclass
class TrainState:
    params: Params
    target_critic: Any
    actor_opt: Any
    critic_opt: Any
    value_opt: Any
    reward_scale: jax.Array  # r <- reward_scale * r + reward_shift, fixed at init
    reward_shift: jax.Array
    rng: jax.Array
    step: jax.Array  # gradient steps done so far


# --- Online fine-tuning: the replay of online rows, the mixed batch, and collection ---
# (identical in every fine-tuning agent; tests/test_inlined_copies.py holds them to iql.py's)

ENV_AXIS = "env"  # the vmapped envs' axis name (rljax's env wrappers reduce over it)
ONLINE_KEYS = ("observations", "actions", "rewards", "terminals", "next_observations")


@struct.dataclass
class Replay:
    """The online rows, a ring of ``capacity`` rows under the dataset's field names."""

    data: dict  # key -> (capacity, ...) float32
    position: jax.Array  # the row written next
    size: jax.Array  # rows filled so far


def replay_init(capacity: int, dataset) -> Replay:
    data = {
        k: jnp.zeros((capacity, *getattr(dataset, k).shape[1:]), jnp.float32) for k in ONLINE_KEYS
    }
    return Replay(data, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))


def replay_add(replay: Replay, rows: dict) -> Replay:
    """Writes n <= capacity rows, overwriting the oldest."""
    capacity = replay.data["rewards"].shape[0]
    n = rows["rewards"].shape[0]
    slots = (replay.position + jnp.arange(n)) % capacity
    data = {k: replay.data[k].at[slots].set(rows[k]) for k in replay.data}
    return Replay(data, (replay.position + n) % capacity, jnp.minimum(replay.size + n, capacity))


def mixed_batch(offline: dict, online: Replay, offline_fraction, batch_size: int, rng) -> dict:
    """``batch_size`` rows: the first ``round(offline_fraction * batch_size)`` drawn from the
    ``offline`` arrays, the rest from the filled online rows (both uniformly, with replacement),
    under the online replay's keys; ``offline_fraction`` may be traced."""
    offline_key, online_key = jax.random.split(rng)
    size = next(iter(offline.values())).shape[0]
    offline_rows = jax.random.randint(offline_key, (batch_size,), 0, size)
    online_rows = jax.random.randint(online_key, (batch_size,), 0, jnp.maximum(online.size, 1))
    from_offline = jnp.arange(batch_size) < jnp.round(offline_fraction * batch_size)

    def pick(key):
        a, b = offline[key][offline_rows], online.data[key][online_rows]
        return jnp.where(from_offline.reshape(-1, *[1] * (a.ndim - 1)), a, b)

    return {k: pick(k) for k in online.data}


def collect(env, env_params, policy, env_state, obs, rng, num_steps: int):
    """``num_steps`` steps of the vectorised envs under ``policy(obs, rng) -> action``.

    Returns the rows (``next_observations`` is the observation before any auto-reset,
    ``terminals`` marks termination only, ``timeouts`` truncation by a time limit: a replay
    keeps the keys it was built with), the envs' state and observation, and the mean return and
    length of the training episodes that finished (NaN if none).
    """
    step = jax.vmap(env.step, in_axes=(0, 0, 0, None), axis_name=ENV_AXIS)

    def one_step(carry, key):
        env_state, obs = carry
        policy_key, step_key = jax.random.split(key)
        action = policy(obs, policy_key)
        step_keys = jax.random.split(step_key, obs.shape[0])
        next_obs, env_state, reward, terminated, truncated, info = step(
            step_keys, env_state, action, env_params
        )
        row = {
            "observations": obs,
            "actions": action,
            "rewards": reward.astype(jnp.float32),
            "terminals": terminated.astype(jnp.float32),
            "timeouts": (truncated & ~terminated).astype(jnp.float32),
            "next_observations": info["final_observation"],
        }
        finished = info["returned_episode"]
        episodes = (finished, info["returned_episode_returns"], info["returned_episode_lengths"])
        return (env_state, next_obs), (row, episodes)

    keys = jax.random.split(rng, num_steps)
    (env_state, obs), (rows, (finished, returns, lengths)) = jax.lax.scan(
        one_step, (env_state, obs), keys
    )
    rows = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), rows)
    count = finished.sum()

    def mean(x):
        return jnp.where(count > 0, (x * finished).sum() / jnp.maximum(count, 1), jnp.nan)

    episodes = {"episode_train_return": mean(returns), "episode_train_length": mean(lengths)}
    return rows, env_state, obs, episodes


def reset_envs(env, env_params, num_envs: int, rng):
    """(observations, env states) of ``num_envs`` freshly reset envs."""
    reset = jax.vmap(env.reset, in_axes=(0, None), axis_name=ENV_AXIS)
    return reset(jax.random.split(rng, num_envs), env_params)


@struct.dataclass
class OnlineState:
    """The online phase's state: TrainState's fields (so both phases share the gradient step),
    the replay of online rows and the envs."""

    params: Params
    target_critic: Any
    actor_opt: Any
    critic_opt: Any
    value_opt: Any
    reward_scale: jax.Array
    reward_shift: jax.Array
    replay: Replay
    env_state: Any
    obs: jax.Array  # (num_envs, obs_dim)
    rng: jax.Array
    step: jax.Array  # online gradient steps done so far


# --- Networks ---


def _mlp(x, hidden_sizes):
    for size in hidden_sizes:
        x = nn.relu(nn.Dense(size)(x))
    return x


class Actor(nn.Module):
    """Mean (through tanh) and the state-independent log standard deviation."""

    action_dim: int
    hidden_sizes: tuple

    @nn.compact
    def __call__(self, obs):
        x = _mlp(obs, self.hidden_sizes)
        mean = jnp.tanh(nn.Dense(self.action_dim)(x))
        log_std = self.param("log_std", nn.initializers.zeros, (self.action_dim,))
        return mean, log_std


class Critic(nn.Module):
    hidden_sizes: tuple

    @nn.compact
    def __call__(self, obs, action):
        x = _mlp(jnp.concatenate([obs, action], -1), self.hidden_sizes)
        return jnp.squeeze(nn.Dense(1)(x), -1)


class TwinCritic(nn.Module):
    """Two independent critics evaluated as one vmapped network; outputs (2, ...)."""

    hidden_sizes: tuple

    @nn.compact
    def __call__(self, obs, action):
        twins = nn.vmap(
            Critic,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=None,
            axis_size=2,
        )
        return twins(self.hidden_sizes)(obs, action)


class Value(nn.Module):
    hidden_sizes: tuple

    @nn.compact
    def __call__(self, obs):
        x = _mlp(obs, self.hidden_sizes)
        return jnp.squeeze(nn.Dense(1)(x), -1)


def _networks(config: Config, action_dim: int) -> tuple[Actor, TwinCritic, Value]:
    hidden = tuple(config.hidden_sizes)
    return Actor(action_dim, hidden), TwinCritic(hidden), Value(hidden)


def _normalize(params: Params, obs):
    return (obs - params.obs_mean) / params.obs_std


def gaussian_log_prob(mean, log_std, action):
    """log N(action; mean, diag(exp(log_std)^2)), summed over the action dimensions."""
    z = (action - mean) * jnp.exp(-log_std)
    return (-0.5 * z**2 - log_std - 0.5 * jnp.log(2 * jnp.pi)).sum(-1)


# --- Data ---

BATCH_KEYS = ("observations", "actions", "rewards", "terminals", "next_observations")


def sample_batch(config: Config, dataset, rng: jax.Array) -> dict:
    """Rows drawn uniformly with replacement, as the dict ``update_on_batch`` takes."""
    idx = jax.random.randint(rng, (config.batch_size,), 0, dataset.rewards.shape[0])
    return {k: getattr(dataset, k)[idx] for k in BATCH_KEYS}


def episode_returns(rewards, terminals, timeouts) -> np.ndarray:
    """Undiscounted return of each complete episode (ended by a terminal or a timeout)."""
    ends = np.flatnonzero((np.asarray(terminals) > 0) | (np.asarray(timeouts) > 0))
    return np.diff(np.cumsum(np.asarray(rewards, np.float64))[ends], prepend=0.0)


# --- Losses ---


def expectile_loss(diff, expectile):
    """Asymmetric squared error: weight expectile where diff >= 0, 1 - expectile below."""
    weight = jnp.where(diff < 0, 1 - expectile, expectile)
    return (weight * diff**2).mean()


def value_loss(value_params, params: Params, target_critic, batch, config: Config):
    """Expectile regression of V(s) on the smaller *target* critic; batch normalized."""
    _, critic, value = _networks(config, params.action_dim)
    q = critic.apply(target_critic, batch["observations"], batch["actions"]).min(0)
    v = value.apply(value_params, batch["observations"])
    return expectile_loss(q - v, config.expectile), v.mean()


def actor_loss(actor_params, params: Params, target_critic, batch, config: Config):
    """Advantage-weighted regression with weights exp(beta A) clipped at 100."""
    actor, critic, value = _networks(config, params.action_dim)
    q = critic.apply(target_critic, batch["observations"], batch["actions"]).min(0)
    advantage = q - value.apply(params.value, batch["observations"])
    weight = jnp.minimum(jnp.exp(config.beta * advantage), 100.0)
    mean, log_std = actor.apply(actor_params, batch["observations"])
    log_std = jnp.clip(log_std, config.log_std_min, config.log_std_max)
    log_prob = gaussian_log_prob(mean, log_std, batch["actions"])
    return -(weight * log_prob).mean(), {"advantage": advantage.mean(), "weight": weight.mean()}


def critic_loss(critic_params, params: Params, batch, config: Config):
    """Both critics regress on r + gamma (1 - terminal) V(s'); rewards already preprocessed."""
    _, critic, value = _networks(config, params.action_dim)
    v_next = value.apply(params.value, batch["next_observations"])
    target = batch["rewards"] + config.gamma * (1.0 - batch["terminals"]) * v_next
    q = critic.apply(critic_params, batch["observations"], batch["actions"])
    return jnp.square(q - target).mean(-1).sum(), q.mean()


# --- The contract ---


def _reward_transform(config: Config, dataset) -> tuple[float, float]:
    if config.reward_preprocessing == "antmaze":
        return 1.0, -1.0
    if config.reward_preprocessing == "none":
        return 1.0, 0.0
    returns = episode_returns(dataset.rewards, dataset.terminals, dataset.timeouts)
    spread = returns.max() - returns.min() if len(returns) else 0.0
    if spread <= 0:
        raise ValueError(
            f"reward_preprocessing='return_range' needs episodes with different returns, got "
            f"{len(returns)} complete episode(s) with a return range of {spread}: mark episode "
            "ends in terminals/timeouts, or choose reward_preprocessing='none'"
        )
    return 1000.0 / spread, 0.0


def _check_dataset(dataset) -> None:
    if dataset.observations.ndim != 2 or dataset.actions.ndim != 2:
        raise ValueError(
            f"IQL takes vector observations and actions, got shapes "
            f"{dataset.observations.shape[1:]} and {dataset.actions.shape[1:]}"
        )
    if isinstance(dataset.actions, jax.core.Tracer):
        raise ValueError(
            "IQL's init reads the dataset on the host (reward scaling): close over the "
            "dataset instead of passing it through jit or vmap"
        )
    largest = float(np.abs(np.asarray(dataset.actions)).max())
    if largest > 1 + 1e-4:
        raise ValueError(
            f"dataset actions reach {largest:.4g} but the actor's mean lies in [-1, 1]: "
            "rescale the dataset's actions into [-1, 1] (the D4RL convention)"
        )


def check(config: Config) -> None:
    """The rules across Config fields; the runner calls it on each concrete config."""
    if config.online_steps % config.num_envs:
        raise ValueError(
            f"online_steps={config.online_steps} must be a multiple of num_envs="
            f"{config.num_envs}: each online iteration steps every env once"
        )
    if config.replay_size < config.num_envs:
        raise ValueError(
            f"replay_size={config.replay_size} must hold one online iteration's rows "
            f"(num_envs={config.num_envs})"
        )


def init(config: Config, dataset, rng: jax.Array) -> TrainState:
    """Networks, optimizers, normalization statistics and reward scaling for ``dataset``.

    ``dataset`` (an rljax Dataset) must be concrete: close over it rather than pass it through
    jit, since the reward scale is computed from its episodes on the host.
    """
    _check_dataset(dataset)
    reward_scale, reward_shift = _reward_transform(config, dataset)
    actor_key, critic_key, value_key, rng = jax.random.split(rng, 4)
    obs_dim, action_dim = dataset.observations.shape[-1], dataset.actions.shape[-1]
    actor, critic, value = _networks(config, action_dim)
    dummy_obs, dummy_action = jnp.zeros(obs_dim), jnp.zeros(action_dim)
    if config.normalize_obs:
        obs_mean = dataset.observations.mean(0)
        obs_std = dataset.observations.std(0) + 1e-3
    else:
        obs_mean, obs_std = jnp.zeros(obs_dim), jnp.ones(obs_dim)
    params = Params(
        actor=actor.init(actor_key, dummy_obs),
        critic=critic.init(critic_key, dummy_obs, dummy_action),
        value=value.init(value_key, dummy_obs),
        obs_mean=obs_mean,
        obs_std=obs_std,
        action_dim=action_dim,
    )
    return TrainState(
        params=params,
        target_critic=params.critic,
        actor_opt=optax.adam(config.actor_lr).init(params.actor),
        critic_opt=optax.adam(config.critic_lr).init(params.critic),
        value_opt=optax.adam(config.value_lr).init(params.value),
        reward_scale=jnp.asarray(reward_scale, jnp.float32),
        reward_shift=jnp.asarray(reward_shift, jnp.float32),
        rng=rng,
        step=jnp.zeros((), jnp.int32),
    )


def actor_learning_rate(config: Config, step):
    """Cosine decay from actor_lr to 0 over total_updates (optax.cosine_decay_schedule)."""
    progress = jnp.minimum(step, config.total_updates) / config.total_updates
    return config.actor_lr * 0.5 * (1 + jnp.cos(jnp.pi * progress))


def update_on_batch(config: Config, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    """One gradient step: V, then the actor, then Q, then the target critics."""
    return _gradient_step(config, state, batch, actor_learning_rate(config, state.step))


def _gradient_step(config: Config, state, batch: dict, lr):
    """update_on_batch with the actor's learning rate given; ``state`` a TrainState or an
    OnlineState (the fields it reads and writes are common to both)."""
    params = state.params
    batch = batch | {
        "observations": _normalize(params, batch["observations"]),
        "next_observations": _normalize(params, batch["next_observations"]),
        "rewards": state.reward_scale * batch["rewards"] + state.reward_shift,
    }

    (loss_v, v_mean), value_grads = jax.value_and_grad(value_loss, has_aux=True)(
        params.value, params, state.target_critic, batch, config
    )
    updates, value_opt = optax.adam(config.value_lr).update(value_grads, state.value_opt)
    params = params.replace(value=optax.apply_updates(params.value, updates))

    (loss_pi, aux), actor_grads = jax.value_and_grad(actor_loss, has_aux=True)(
        params.actor, params, state.target_critic, batch, config
    )
    updates, actor_opt = optax.adam(lr).update(actor_grads, state.actor_opt)
    params = params.replace(actor=optax.apply_updates(params.actor, updates))

    (loss_q, q_mean), critic_grads = jax.value_and_grad(critic_loss, has_aux=True)(
        params.critic, params, batch, config
    )
    updates, critic_opt = optax.adam(config.critic_lr).update(critic_grads, state.critic_opt)
    params = params.replace(critic=optax.apply_updates(params.critic, updates))

    state = state.replace(
        params=params,
        target_critic=optax.incremental_update(params.critic, state.target_critic, config.tau),
        actor_opt=actor_opt,
        critic_opt=critic_opt,
        value_opt=value_opt,
        step=state.step + 1,
    )
    metrics = {
        "value_loss": loss_v,
        "actor_loss": loss_pi,
        "critic_loss": loss_q,
        "v_mean": v_mean,
        "q_mean": q_mean,
        "advantage_mean": aux["advantage"],
        "awr_weight_mean": aux["weight"],
        "actor_lr": lr,
        "grad_norm": optax.tree.norm(critic_grads),
        "actor_grad_norm": optax.tree.norm(actor_grads),
        "value_grad_norm": optax.tree.norm(value_grads),
    }
    return state, metrics


def update(config: Config, dataset, state: TrainState) -> tuple[TrainState, dict]:
    """One gradient step on a batch sampled inside jit."""
    rng, batch_key = jax.random.split(state.rng)
    return update_on_batch(config, state.replace(rng=rng), sample_batch(config, dataset, batch_key))


def train(config: Config, dataset, rng: jax.Array, num_updates: int | None = None):
    """init, then num_updates (default: total_updates) gradient steps on uniform batches.

    The dataset is closed over, not carried in the state, so seeds vmapped over ``train`` share
    one copy of it.
    """
    num_updates = config.num_updates if num_updates is None else num_updates
    state = init(config, dataset, rng)
    return jax.lax.scan(lambda state, _: update(config, dataset, state), state, None, num_updates)


def act(config: Config, params: Params, obs: jax.Array, rng: jax.Array, deterministic=False):
    """The Gaussian's mean when deterministic, else a sample; clipped to [-1, 1]."""
    actor, _, _ = _networks(config, params.action_dim)
    mean, log_std = actor.apply(params.actor, _normalize(params, obs))
    if deterministic:
        return mean
    log_std = jnp.clip(log_std, config.log_std_min, config.log_std_max)
    return jnp.clip(mean + jnp.exp(log_std) * jax.random.normal(rng, mean.shape), -1.0, 1.0)


# --- Online fine-tuning ---


def begin_online(config: Config, dataset, env, env_params, state: TrainState) -> OnlineState:
    """The offline state at the boundary, turned online: the params, target critics, critic and
    value optimizers and reward transform carried over; a fresh actor Adam (constant rate
    online), an empty replay (``_replay_capacity``), freshly reset envs, the step counter at 0."""
    check(config)
    rng, reset_key = jax.random.split(state.rng)
    obs, env_state = reset_envs(env, env_params, config.num_envs, reset_key)
    return OnlineState(
        params=state.params,
        target_critic=state.target_critic,
        actor_opt=optax.adam(config.actor_lr).init(state.params.actor),
        critic_opt=state.critic_opt,
        value_opt=state.value_opt,
        reward_scale=state.reward_scale,
        reward_shift=state.reward_shift,
        replay=replay_init(_replay_capacity(config), dataset),
        env_state=env_state,
        obs=obs,
        rng=rng,
        step=jnp.zeros((), jnp.int32),
    )


def _replay_capacity(config: Config) -> int:
    """min(replay_size, online_steps) rows; one iteration's (num_envs) when online_steps is 0,
    so that fine_tune's scan of no iterations still traces."""
    return max(min(config.replay_size, config.online_steps), config.num_envs)


def update_online(
    config: Config, dataset, env, env_params, state: OnlineState
) -> tuple[OnlineState, dict]:
    """One step of num_envs envs with the stochastic policy, then utd_ratio gradient steps on
    batches mixing offline_fraction dataset rows with online ones."""
    rng, collect_key, learn_key = jax.random.split(state.rng, 3)
    policy = lambda obs, key: act(config, state.params, obs, key)  # noqa: E731
    rows, env_state, obs, episodes = collect(
        env, env_params, policy, state.env_state, state.obs, collect_key, 1
    )
    replay = replay_add(state.replay, rows)
    offline = {k: getattr(dataset, k) for k in ONLINE_KEYS}

    def gradient_step(state, key):
        batch = mixed_batch(offline, replay, config.offline_fraction, config.batch_size, key)
        return _gradient_step(config, state, batch, config.actor_lr)

    # The replay is read, not written, by the gradient steps: keep it out of the scan's carry.
    keys = jax.random.split(learn_key, config.utd_ratio)
    state, metrics = jax.lax.scan(gradient_step, state.replace(replay=None), keys)
    state = state.replace(replay=replay, env_state=env_state, obs=obs, rng=rng)
    return state, {**jax.tree.map(jnp.mean, metrics), **episodes}


def fine_tune(config: Config, dataset, env, env_params, state):
    """begin_online, then num_online_updates iterations of update_online."""
    state = begin_online(config, dataset, env, env_params, state)
    step = lambda state, _: update_online(config, dataset, env, env_params, state)  # noqa: E731
    return jax.lax.scan(step, state, None, config.num_online_updates)


if __name__ == "__main__":
    import time

    import gymnax

    # A small offline dataset: a noisy swing-up controller on Pendulum, torque scaled to [-1, 1].
    env, env_params = gymnax.make("Pendulum-v1")
    episodes, horizon = 50, 200

    def scripted(obs, rng):
        angle, velocity = jnp.arctan2(obs[1], obs[0]), obs[2]
        balance = jnp.clip(-(10 * angle + 2 * velocity) / 2, -1, 1)
        swing = jnp.sign(velocity + 1e-3)  # pump energy along the motion
        action = jnp.where(obs[0] > 0.8, balance, swing)
        return jnp.clip(action + 0.5 * jax.random.normal(rng, ()), -1, 1)[None]

    def rollout(rng, policy):
        reset_key, rng = jax.random.split(rng)
        obs, env_state = env.reset(reset_key, env_params)

        def step(carry, rng):
            obs, env_state = carry
            policy_key, step_key = jax.random.split(rng)
            action = policy(obs, policy_key)
            next_obs, env_state, reward, *_ = env.step(step_key, env_state, 2 * action, env_params)
            return (next_obs, env_state), (obs, action, reward, next_obs)

        return jax.lax.scan(step, (obs, env_state), jax.random.split(rng, horizon))[1]

    keys = jax.random.split(jax.random.PRNGKey(0), episodes)
    obs, actions, rewards, next_obs = jax.vmap(lambda k: rollout(k, scripted))(keys)
    timeouts = np.zeros((episodes, horizon), np.float32)
    timeouts[:, -1] = 1  # Pendulum never terminates: every episode ends in a time limit

    @struct.dataclass
    class Transitions:  # the rljax.data.Dataset fields, without importing rljax
        observations: jax.Array
        actions: jax.Array
        rewards: jax.Array
        terminals: jax.Array
        timeouts: jax.Array
        next_observations: jax.Array

    flat = lambda x: x.reshape(episodes * horizon, *x.shape[2:])  # noqa: E731
    dataset = Transitions(
        flat(obs), flat(actions), flat(rewards), jnp.zeros(episodes * horizon),
        flat(jnp.asarray(timeouts)), flat(next_obs),
    )  # fmt: skip
    config = Config(
        total_updates=20_000, hidden_sizes=(64, 64), actor_lr=1e-3, critic_lr=1e-3, value_lr=1e-3
    )
    start = time.time()
    state, metrics = jax.jit(lambda key: train(config, dataset, key))(jax.random.PRNGKey(1))
    print(f"IQL on {episodes} noisy swing-up episodes of Pendulum-v1: "
          f"{config.total_updates} updates in {time.time() - start:.1f}s")  # fmt: skip
    for i in np.linspace(0, config.total_updates - 1, 5).astype(int):
        losses = {
            k: float(metrics[k][i]) for k in ("value_loss", "critic_loss", "actor_loss", "q_mean")
        }
        print(f"  update {i + 1:>6d}  " + "  ".join(f"{k} {v:.3f}" for k, v in losses.items()))
    greedy = lambda o, _: act(config, state.params, o, None, deterministic=True)  # noqa: E731
    eval_rewards = jax.jit(jax.vmap(lambda k: rollout(k, greedy)[2]))(jax.random.split(keys[0], 10))
    print(f"  dataset return {float(rewards.sum(1).mean()):.1f}, greedy policy return "
          f"{float(eval_rewards.sum(1).mean()):.1f} over 10 episodes")  # fmt: skip
