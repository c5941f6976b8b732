"""WSRL: warm-start online SAC from an offline CQL (or Cal-QL) pretraining, keeping no data.

Zhou, Peng, Li, Levine, Kumar, "Efficient Online Reinforcement Learning Fine-Tuning Need Not
Retain Offline Data", ICLR 2025 (code: zhouzypaul/wsrl, ``finetune.py``, ``wsrl/agents/sac.py``
and ``cql.py``, ``experiments/configs/*``, ``experiments/scripts/locomotion/*``). One set of
networks serves both phases: an actor and an ensemble of N = ``num_critics`` critics (one
vmapped network), each hidden layer Dense -> LayerNorm -> ReLU.

Offline, ``total_updates`` steps of CQL (Kumar et al., NeurIPS 2020) on the ensemble, all
losses at one step's starting parameters:

    y      = r~ + gamma (1 - d) max_j min_{i in S} Qbar_i(s', a'_j),   a'_j ~ pi(.|s'), j <= n
             (max backup; without it one a'), S: critic_subsample indices drawn from N
    L_Q    = mean_{i, b} (Q_i(s, a) - y)^2 + alpha_cql mean_{i in S', b} (C_i(s) - Q_i(s, a))
    C_i(s) = T logsumexp_k (q_ik / T) over 3n values:
             Q_i(s, u_k) + |A| log 2                 u_k ~ U[-1, 1]^|A|
             max(Q_i(s, a_k), G) - log pi(a_k|s)     a_k ~ pi(.|s)
             max(Q_i(s, a_k), G) - log pi(a_k|s')    a_k ~ pi(.|s')   (Q at s)
             G = -inf for CQL; for Cal-QL (Nakamoto et al., NeurIPS 2023) the dataset's
             Monte-Carlo return-to-go, G_t = r~_t + gamma (1 - end_t) G_{t+1}, restarting at
             terminals and timeouts. Without importance sampling: the raw values and
             Q_i(s, a), T (logsumexp - log(3n + 1)).
    L_pi   = mean(alpha log pi(a~|s) - min_{i <= N} Q_i(s, a~)),   a~ reparameterized
    L_alpha = -mean(log alpha (log pi(a~|s) - |A|))
    r~ = reward_scale r + reward_bias; S and S' are drawn independently each step.

``begin_online`` carries the actor, critics, target critics, temperature and the optimizers'
state over unchanged and starts an empty replay. Each online iteration steps ``num_envs``
envs with the current (stochastic) policy; while no more than ``warmup_steps`` env steps are
collected it takes no gradient step (the frozen pretrained policy fills the replay). After
that, SAC with the ensemble and no conservative term, as the authors' ``update_high_utd``:
the ``online_batch_size`` rows are split into ``utd_ratio`` minibatches, one critic step each

    y = r~ + gamma (1 - d) min_{i in S} Qbar_i(s', a'),   L_Q = mean_{i, b} (Q_i(s, a) - y)^2,
    Qbar <- (1 - tau) Qbar + tau Q after every critic step,

then one step of L_pi and L_alpha on all the rows with the new critics. The first
round(offline_fraction m) rows of each minibatch of m are dataset rows, the rest online rows
(both drawn uniformly); WSRL's default, offline_fraction 0, retains no offline data.

Where the paper, the authors' code and this file differ:
* The authors restore the whole pretrained agent, Adam moments and step count included, into
  the online SAC (``checkpoints.restore_checkpoint(..., target=agent)``); so does this file.
* Subsampling: the authors draw S with ``jax.random.randint``, with replacement (the two
  indices coincide one time in N), once per step for the whole batch; REDQ (Chen et al., ICLR
  2021) draws distinct indices. This file follows the authors' code. The actor takes the
  minimum over all N critics (the authors' code), not REDQ's mean.
* Offline data at ratio > 0: the authors concatenate online then offline rows and reshape into
  the UTD minibatches, so the offline rows land in the last minibatches; here every minibatch
  is mixed in the configured proportion (the default ratio 0 makes them agree).
* The authors' warm-up skips updates while the online step is at most max(warmup_steps,
  batch rows); here while the env steps collected are at most warmup_steps.
* Temperature: the authors parameterize alpha by a softplus and estimate the entropy from
  actions at s'; here log alpha and a~ at s (as rljax's SAC and CQL). The tanh-Gaussian's
  standard deviation is clipped to [1e-5, 10] (``std_parameterization="exp"``).
* Left out: CQL's Lagrange (auto-tuned alpha_cql, the authors' AntMaze recipe), Cal-QL's
  r / (1 - gamma) return for all-negative sparse-reward trajectories (AntMaze), the online
  max-target backup of the authors' AntMaze config, and the action clip to +-0.99999.
Defaults are the authors' locomotion ones (CQL pretraining, alpha_cql 5, 250k offline steps,
batch 256 offline and 1024 online, UTD 4, 5000 warm-up steps, two hidden layers of 256 in
both networks, the last one initialized at scale 1e-2, learning rates 1e-4 / 3e-4 / 1e-4).
Observations are used raw, as the authors do (``normalize_obs`` offers the dataset's
statistics, fixed for both phases).
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
PAPER = (
    'Zhou et al., "Efficient Online Reinforcement Learning Fine-Tuning Need Not Retain Offline '
    'Data", ICLR 2025'
)

OBS_EPS = 1e-3
# The authors' std_parameterization="exp": sigma = clip(exp(head), 1e-5, 10).
LOG_STD_MIN, LOG_STD_MAX = float(np.log(1e-5)), float(np.log(10.0))
FINAL_HIDDEN_SCALE = 1e-2  # the authors' kernel_scale_final, on the last hidden layer
BATCH_KEYS = ("observations", "actions", "rewards", "terminals", "next_observations")


def _field(default, *, static=False, bounds=None, choices=None, doc):
    """A config field. Static fields are shapes and switches (changing one recompiles); the
    rest are traced, so a sweep can vmap over them. bounds/choices let a runner validate; doc,
    the field's meaning in one line, is required so that no field goes unexplained."""
    metadata = {"bounds": bounds, "choices": choices, "doc": doc}
    return struct.field(pytree_node=not static, default=default, metadata=metadata)


@struct.dataclass
class Config:
    batch_size: int = _field(
        256, static=True, bounds="[1, inf)", doc="transitions per offline gradient step"
    )
    total_updates: int = _field(
        250_000, static=True, bounds="[1, inf)", doc="offline gradient steps (the offline budget)"
    )
    hidden_sizes: tuple = _field(
        (256, 256), static=True, doc="hidden-layer widths of the actor and of every critic"
    )
    layer_norm: bool = _field(
        True, static=True, doc="LayerNorm after every hidden layer of the actor and critics"
    )
    num_critics: int = _field(10, static=True, bounds="[1, inf)", doc="critics N in the ensemble")
    critic_subsample: int = _field(
        2, static=True, bounds="[1, inf)", doc="critics drawn for the target's minimum (<= N)"
    )
    normalize_obs: bool = _field(
        False, static=True, doc="normalize observations by the dataset's mean and std"
    )
    pretrain: str = _field(
        "cql", static=True, choices=("cql", "calql"), doc="offline phase: CQL, or Cal-QL's bound"
    )
    cql_n_actions: int = _field(
        10, static=True, bounds="[1, inf)", doc="actions n sampled per source in the logsumexp"
    )
    cql_importance_sample: bool = _field(
        True, static=True, doc="subtract the sampled actions' log densities"
    )
    cql_max_target_backup: bool = _field(
        True, static=True, doc="offline target: the max over n next actions of the min Q"
    )
    online_steps: int = _field(
        0, static=True, bounds="[0, inf)", doc="env steps of the online phase (0: offline only)"
    )
    num_envs: int = _field(1, static=True, bounds="[1, inf)", doc="envs stepped in parallel online")
    utd_ratio: int = _field(
        4, static=True, bounds="[1, inf)", doc="critic steps per online update (one actor step)"
    )
    online_batch_size: int = _field(
        1024, static=True, bounds="[1, inf)", doc="rows per online update, split over utd_ratio"
    )
    replay_size: int = _field(
        1_000_000, static=True, bounds="[1, inf)", doc="capacity of the online replay in rows"
    )
    warmup_steps: int = _field(
        5000, static=True, bounds="[0, inf)", doc="online env steps before the first gradient step"
    )
    actor_lr: float = _field(1e-4, bounds="(0, inf)", doc="Adam learning rate of the actor")
    critic_lr: float = _field(3e-4, bounds="(0, inf)", doc="Adam learning rate of the critics")
    alpha_lr: float = _field(
        1e-4, bounds="(0, inf)", doc="Adam learning rate of the temperature alpha"
    )
    gamma: float = _field(0.99, bounds="[0, 1]", doc="discount factor gamma")
    tau: float = _field(5e-3, bounds="(0, 1]", doc="Polyak rate tau of the target critics")
    init_alpha: float = _field(1.0, bounds="(0, inf)", doc="initial temperature alpha")
    cql_alpha: float = _field(
        5.0, bounds="[0, inf)", doc="weight alpha_cql of the conservative term (offline only)"
    )
    cql_temperature: float = _field(1.0, bounds="(0, inf)", doc="temperature T of the logsumexp")
    reward_scale: float = _field(
        1.0, bounds="(-inf, inf)", doc="reward scale k: both phases learn from k r + b"
    )
    reward_bias: float = _field(0.0, bounds="(-inf, inf)", doc="reward bias b (AntMaze: -5)")
    offline_fraction: float = _field(
        0.0, bounds="[0, 1]", doc="share of each online batch drawn from the dataset (0: none)"
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
    critic: Any  # the N critics, stacked on a leading axis
    log_alpha: jax.Array
    obs_mean: jax.Array
    obs_std: jax.Array
    action_dim: int = struct.field(pytree_node=False, default=1)


@struct.dataclass
class TrainState:
    """The offline phase's state."""

    params: Params
    target_critic: Any
    actor_opt: Any
    critic_opt: Any
    alpha_opt: Any
    mc_returns: Any  # (rows,) the dataset's return-to-go under Cal-QL; None under CQL
    rng: jax.Array
    update_step: jax.Array  # gradient steps done so far


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
    """The online phase's state: the offline one's networks and optimizers, the replay, the
    envs."""

    params: Params
    target_critic: Any
    actor_opt: Any
    critic_opt: Any
    alpha_opt: Any
    replay: Replay
    env_state: Any
    obs: jax.Array  # (num_envs, obs_dim)
    rng: jax.Array
    update_step: jax.Array  # gradient steps done so far, both phases
    online_step: jax.Array  # env steps collected so far, over all envs


# --- Networks (the authors' MLP: orthogonal kernels, the last hidden layer's at 1e-2) ---


def _trunk(x, hidden_sizes, layer_norm):
    """Dense -> (LayerNorm) -> ReLU for every hidden layer."""
    for i, size in enumerate(hidden_sizes):
        scale = FINAL_HIDDEN_SCALE if i == len(hidden_sizes) - 1 else np.sqrt(2)
        x = nn.Dense(size, kernel_init=nn.initializers.orthogonal(scale))(x)
        if layer_norm:
            x = nn.LayerNorm()(x)
        x = nn.relu(x)
    return x


class Actor(nn.Module):
    """Mean and log standard deviation of the Gaussian before the tanh."""

    action_dim: int
    hidden_sizes: tuple
    layer_norm: bool

    @nn.compact
    def __call__(self, obs):
        x = _trunk(obs, self.hidden_sizes, self.layer_norm)
        head = nn.initializers.orthogonal(np.sqrt(2))
        mean = nn.Dense(self.action_dim, kernel_init=head)(x)
        log_std = nn.Dense(self.action_dim, kernel_init=head)(x)
        return mean, jnp.clip(log_std, LOG_STD_MIN, LOG_STD_MAX)


class Critic(nn.Module):
    hidden_sizes: tuple
    layer_norm: bool

    @nn.compact
    def __call__(self, obs, action):
        obs = jnp.broadcast_to(obs, (*action.shape[:-1], obs.shape[-1]))
        x = _trunk(jnp.concatenate([obs, action], -1), self.hidden_sizes, self.layer_norm)
        head = nn.initializers.orthogonal(np.sqrt(2))
        return jnp.squeeze(nn.Dense(1, kernel_init=head)(x), -1)


class EnsembleCritic(nn.Module):
    """``num_critics`` independent critics evaluated as one vmapped network; outputs (N, ...)."""

    num_critics: int
    hidden_sizes: tuple
    layer_norm: bool

    @nn.compact
    def __call__(self, obs, action):
        members = nn.vmap(
            Critic,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=None,
            axis_size=self.num_critics,
        )
        return members(self.hidden_sizes, self.layer_norm)(obs, action)


def _networks(config: Config, action_dim: int) -> tuple[Actor, EnsembleCritic]:
    hidden = tuple(config.hidden_sizes)
    actor = Actor(action_dim, hidden, config.layer_norm)
    return actor, EnsembleCritic(config.num_critics, hidden, config.layer_norm)


def members(config: Config, critic_params, indices):
    """The critics ``indices`` of the ensemble as an ensemble of their own: (its module, its
    weights, gathered so that gradients reach the full ensemble's)."""
    module = EnsembleCritic(indices.shape[0], tuple(config.hidden_sizes), config.layer_norm)
    return module, jax.tree.map(lambda w: w[indices], critic_params)


def normalize(params: Params, obs):
    return (obs - params.obs_mean) / (params.obs_std + OBS_EPS)


def sample_action(mean, log_std, rng):
    """A tanh-Gaussian action on [-1, 1] and its log density there (exact tanh Jacobian)."""
    pre_tanh = mean + jnp.exp(log_std) * jax.random.normal(rng, mean.shape)
    gaussian_log_prob = -0.5 * ((pre_tanh - mean) / jnp.exp(log_std)) ** 2 - log_std
    gaussian_log_prob -= 0.5 * jnp.log(2 * jnp.pi)
    # log(1 - tanh(x)^2) = 2 (log 2 - x - softplus(-2x)), stable for large |x|
    log_det = 2 * (jnp.log(2.0) - pre_tanh - jax.nn.softplus(-2 * pre_tanh))
    return jnp.tanh(pre_tanh), (gaussian_log_prob - log_det).sum(-1)


def _policy_samples(config: Config, params: Params, obs, n: int, rng):
    """n actions per row of ``obs`` (B, obs_dim) from pi and their log densities: (B, n, |A|),
    (B, n)."""
    actor, _ = _networks(config, params.action_dim)
    repeated = jnp.repeat(obs[:, None], n, 1)
    return sample_action(*actor.apply(params.actor, repeated), rng)


# --- Data ---


def sample_batch(config: Config, dataset, rng: jax.Array) -> dict:
    """Rows drawn uniformly with replacement, as the dict ``update_on_batch`` takes: the
    dataset's fields and the row numbers ``rows`` (Cal-QL reads their return-to-go by them)."""
    idx = jax.random.randint(rng, (config.batch_size,), 0, dataset.rewards.shape[0])
    return {k: getattr(dataset, k)[idx] for k in BATCH_KEYS} | {"rows": idx}


def return_to_go(rewards, ends, gamma):
    """G_t = r_t + gamma (1 - end_t) G_{t+1}, a reverse scan over the rows; the trace restarts
    after every row with end_t = 1 (a terminal or a timeout) and after the last row."""

    def step(next_return, row):
        reward, end = row
        value = reward + gamma * (1.0 - end) * next_return
        return value, value

    return jax.lax.scan(step, jnp.zeros(()), (rewards, ends), reverse=True)[1]


def online_batches(config: Config, dataset, replay: Replay, rng) -> dict:
    """The rows of one online update: ``utd_ratio`` minibatches of ``online_batch_size //
    utd_ratio`` rows (leading axes (utd_ratio, rows)), each ``mixed_batch``'s mix of dataset
    and online rows."""
    offline = {k: getattr(dataset, k) for k in ONLINE_KEYS}
    rows = config.online_batch_size // config.utd_ratio
    keys = jax.random.split(rng, config.utd_ratio)
    draw = lambda key: mixed_batch(offline, replay, config.offline_fraction, rows, key)  # noqa: E731
    return jax.vmap(draw)(keys)


# --- Losses (observations already normalized, rewards already scaled) ---


def subsample(config: Config, rng):
    """``critic_subsample`` critic indices, drawn with replacement (the authors' randint)."""
    return jax.random.randint(rng, (config.critic_subsample,), 0, config.num_critics)


def ensemble_target(q_next, rewards, terminals, indices, gamma):
    """y = r + gamma (1 - d) max_j min_{i in indices} Qbar_i(s', a'_j); q_next is (N, B, n)
    (n = 1: one next action, no max)."""
    return rewards + gamma * (1.0 - terminals) * q_next[indices].min(0).max(-1)


def td_loss(critic_params, batch, target, config: Config):
    """mean over the N critics and the rows of (Q_i(s, a) - y)^2; returns (loss, Q)."""
    _, critic = _networks(config, batch["actions"].shape[-1])
    q = critic.apply(critic_params, batch["observations"], batch["actions"])  # (N, B)
    return jnp.square(q - jax.lax.stop_gradient(target)).mean(), q


def conservative_gap(q_random, q_pi, log_pi, q_next_pi, log_pi_next, q_data, bound, dim, config):
    """C(s) - Q(s, a) per critic and row, (S, B).

    q_random, q_pi, q_next_pi (S, B, n): values at s of n uniform actions on [-1, 1]^dim, of
    actions from pi(.|s) and of actions from pi(.|s'); log_pi, log_pi_next (B, n): the policy
    actions' log densities (held constant); q_data (S, B): Q(s, a); bound (B,): the Cal-QL
    lower bound G on the policy actions' values, or None (CQL).
    """
    if bound is not None:
        bound = jax.lax.stop_gradient(bound)
        q_pi = jnp.maximum(q_pi, bound[:, None])
        q_next_pi = jnp.maximum(q_next_pi, bound[:, None])
    temperature = config.cql_temperature
    if config.cql_importance_sample:
        log_uniform = -dim * jnp.log(2.0)  # U[-1, 1]^dim has density 0.5^dim
        parts = [
            q_random - log_uniform,
            q_pi - jax.lax.stop_gradient(log_pi),
            q_next_pi - jax.lax.stop_gradient(log_pi_next),
        ]
        q, log_count = jnp.concatenate(parts, -1), 0.0
    else:  # the authors' log-mean-exp over the 3n samples and Q(s, a)
        q = jnp.concatenate([q_random, q_pi, q_next_pi, q_data[..., None]], -1)
        log_count = jnp.log(q.shape[-1])
    soft_max = temperature * (jax.nn.logsumexp(q / temperature, -1) - log_count)
    return soft_max - q_data


def cql_critic_loss(critic_params, batch, target, cql_actions, indices, config: Config):
    """L_Q offline: the TD error of all N critics plus alpha_cql times the gap of the critics
    ``indices``. cql_actions = (uniform actions, (actions from pi(.|s), log pi), (actions from
    pi(.|s'), log pi)), actions (B, n, |A|), log pi (B, n). batch["mc_returns"], under Cal-QL,
    bounds the policy actions' values. Returns (loss, (TD loss, gap (S, B), Q, bound rate))."""
    dim = batch["actions"].shape[-1]
    td, q = td_loss(critic_params, batch, target, config)
    chosen, chosen_params = members(config, critic_params, indices)
    obs = batch["observations"][:, None]
    random_actions, (pi, log_pi), (next_pi, log_pi_next) = cql_actions
    q_random = chosen.apply(chosen_params, obs, random_actions)  # (S, B, n)
    q_pi = chosen.apply(chosen_params, obs, pi)
    q_next_pi = chosen.apply(chosen_params, obs, next_pi)  # Q at s, actions from pi(.|s')
    q_data = q[indices]
    bound = batch.get("mc_returns") if config.pretrain == "calql" else None
    gap = conservative_gap(
        q_random, q_pi, log_pi, q_next_pi, log_pi_next, q_data, bound, dim, config
    )
    if bound is None:
        bound_rate = jnp.zeros(())
    else:  # the share of policy-action values that the bound raised
        below = jnp.concatenate([q_pi, q_next_pi], -1) < bound[:, None]
        bound_rate = below.mean()
    return td + config.cql_alpha * gap.mean(), (td, gap, q, bound_rate)


def actor_loss(actor_params, params: Params, obs, rng, config):
    actor, critic = _networks(config, params.action_dim)
    mean, log_std = actor.apply(actor_params, obs)
    action, log_prob = sample_action(mean, log_std, rng)
    q = critic.apply(params.critic, obs, action).min(0)
    alpha = jnp.exp(params.log_alpha)
    return (alpha * log_prob - q).mean(), log_prob


def alpha_loss(log_alpha, log_prob, target_entropy):
    return -(log_alpha * (jax.lax.stop_gradient(log_prob) + target_entropy)).mean()


def _adam_step(lr, grads, opt_state, value):
    updates, opt_state = optax.adam(lr).update(grads, opt_state)
    return optax.apply_updates(value, updates), opt_state


def _scaled(config: Config, batch: dict, params: Params) -> dict:
    """The batch as the losses see it: normalized observations, rewards k r + b."""
    return {
        **batch,
        "observations": normalize(params, batch["observations"]),
        "next_observations": normalize(params, batch["next_observations"]),
        "rewards": config.reward_scale * batch["rewards"] + config.reward_bias,
    }


def _actor_and_alpha_step(config: Config, state, obs, rng):
    """One step of L_pi and L_alpha at ``state``'s parameters: (actor, log alpha, their
    optimizer states, metrics)."""
    params = state.params
    (loss_pi, log_prob), actor_grads = jax.value_and_grad(actor_loss, has_aux=True)(
        params.actor, params, obs, rng, config
    )
    loss_alpha, alpha_grad = jax.value_and_grad(alpha_loss)(
        params.log_alpha, log_prob, -float(params.action_dim)
    )
    actor, actor_opt = _adam_step(config.actor_lr, actor_grads, state.actor_opt, params.actor)
    log_alpha, alpha_opt = _adam_step(
        config.alpha_lr, alpha_grad, state.alpha_opt, params.log_alpha
    )
    metrics = {
        "actor_loss": loss_pi,
        "alpha_loss": loss_alpha,
        "alpha": jnp.exp(params.log_alpha),
        "entropy": -log_prob.mean(),
        "actor_grad_norm": optax.tree.norm(actor_grads),
    }
    return actor, log_alpha, actor_opt, alpha_opt, metrics


# --- The contract ---


def check(config: Config) -> None:
    """The rules across Config fields; the runner calls it on each concrete config."""
    if config.online_steps % config.num_envs:
        raise ValueError(
            f"online_steps={config.online_steps} must be a multiple of num_envs="
            f"{config.num_envs} (each online update steps every env once)"
        )
    if config.critic_subsample > config.num_critics:
        raise ValueError(
            f"critic_subsample={config.critic_subsample} must be in [1, num_critics="
            f"{config.num_critics}]"
        )
    if config.online_batch_size % config.utd_ratio:
        raise ValueError(
            f"online_batch_size={config.online_batch_size} must be a multiple of utd_ratio="
            f"{config.utd_ratio} (it splits into one minibatch per critic step)"
        )
    if config.online_steps and config.replay_size < config.num_envs:
        raise ValueError(
            f"replay_size={config.replay_size} must be in [num_envs={config.num_envs}, inf): "
            "the replay takes one step of every env at a time"
        )


def init(config: Config, dataset, rng: jax.Array) -> TrainState:
    obs, actions = np.asarray(dataset.observations), np.asarray(dataset.actions)
    if obs.ndim != 2 or actions.ndim != 2:
        raise ValueError(
            f"WSRL takes vector observations and actions, got observations {obs.shape} and "
            f"actions {actions.shape}"
        )
    if np.abs(actions).max() > 1 + 1e-4:
        raise ValueError(
            f"WSRL's tanh actor needs dataset actions in [-1, 1], found |a| up to "
            f"{np.abs(actions).max():.4g}: rescale them (D4RL convention)"
        )
    if config.normalize_obs:
        mean, std = obs.mean(0), obs.std(0)
    else:
        mean, std = np.zeros(obs.shape[1]), np.full(obs.shape[1], 1 - OBS_EPS)
    if config.pretrain == "calql":
        rewards = config.reward_scale * jnp.asarray(dataset.rewards) + config.reward_bias
        ends = jnp.maximum(jnp.asarray(dataset.terminals), jnp.asarray(dataset.timeouts))
        mc_returns = return_to_go(rewards, ends.astype(jnp.float32), config.gamma)
    else:
        mc_returns = None  # nothing, rather than an empty array: checkpoints cannot hold those
    actor, critic = _networks(config, actions.shape[1])
    rng, actor_key, critic_key = jax.random.split(rng, 3)
    dummy_obs, dummy_action = jnp.zeros(obs.shape[1]), jnp.zeros(actions.shape[1])
    params = Params(
        actor=actor.init(actor_key, dummy_obs),
        critic=critic.init(critic_key, dummy_obs, dummy_action),
        log_alpha=jnp.log(jnp.asarray(config.init_alpha, jnp.float32)),
        obs_mean=jnp.asarray(mean, jnp.float32),
        obs_std=jnp.asarray(std, jnp.float32),
        action_dim=actions.shape[1],
    )
    return TrainState(
        params=params,
        target_critic=params.critic,
        actor_opt=optax.adam(config.actor_lr).init(params.actor),
        critic_opt=optax.adam(config.critic_lr).init(params.critic),
        alpha_opt=optax.adam(config.alpha_lr).init(params.log_alpha),
        mc_returns=mc_returns,
        rng=rng,
        update_step=jnp.zeros((), jnp.int32),
    )


def update_on_batch(config: Config, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    """One offline gradient step (CQL or Cal-QL) of the actor, the temperature and the critics,
    all at the step's starting parameters. Cal-QL's bound is ``batch["mc_returns"]``, or, where
    the batch has none, the state's return-to-go of its dataset rows ``batch["rows"]``."""
    if config.pretrain == "calql" and "mc_returns" not in batch:
        batch = batch | {"mc_returns": state.mc_returns[batch["rows"]]}
    params = state.params
    _, critic = _networks(config, params.action_dim)
    batch = _scaled(config, batch, params)
    obs, next_obs = batch["observations"], batch["next_observations"]
    keys = jax.random.split(state.rng, 8)
    rng, actor_key, next_key, target_key, gap_key, random_key, pi_key, next_pi_key = keys

    actor, log_alpha, actor_opt, alpha_opt, metrics = _actor_and_alpha_step(
        config, state, obs, actor_key
    )

    n = config.cql_n_actions
    next_actions, _ = _policy_samples(
        config, params, next_obs, n if config.cql_max_target_backup else 1, next_key
    )
    q_next = critic.apply(state.target_critic, next_obs[:, None], next_actions)  # (N, B, n)
    indices = subsample(config, target_key)
    target = ensemble_target(q_next, batch["rewards"], batch["terminals"], indices, config.gamma)

    shape = (obs.shape[0], n, params.action_dim)
    cql_actions = (
        jax.random.uniform(random_key, shape, minval=-1.0, maxval=1.0),
        jax.lax.stop_gradient(_policy_samples(config, params, obs, n, pi_key)),
        jax.lax.stop_gradient(_policy_samples(config, params, next_obs, n, next_pi_key)),
    )
    (loss_q, (td, gap, q, bound_rate)), critic_grads = jax.value_and_grad(
        cql_critic_loss, has_aux=True
    )(params.critic, batch, target, cql_actions, subsample(config, gap_key), config)
    critic_params, critic_opt = _adam_step(
        config.critic_lr, critic_grads, state.critic_opt, params.critic
    )

    state = state.replace(
        params=params.replace(actor=actor, critic=critic_params, log_alpha=log_alpha),
        target_critic=optax.incremental_update(critic_params, state.target_critic, config.tau),
        actor_opt=actor_opt,
        critic_opt=critic_opt,
        alpha_opt=alpha_opt,
        rng=rng,
        update_step=state.update_step + 1,
    )
    metrics |= {
        "critic_loss": loss_q,
        "td_loss": td,
        "cql_gap": gap.mean(),
        "q_mean": q.mean(),
        "q_std": q.std(0).mean(),  # the ensemble's spread
        "target_mean": target.mean(),
        "grad_norm": optax.tree.norm(critic_grads),
    }
    if config.pretrain == "calql":
        metrics["calql_bound_rate"] = bound_rate
    return state, metrics


def update(config: Config, dataset, state: TrainState) -> tuple[TrainState, dict]:
    """One offline gradient step on a batch sampled inside jit."""
    rng, batch_key = jax.random.split(state.rng)
    return update_on_batch(config, state.replace(rng=rng), sample_batch(config, dataset, batch_key))


def train(config: Config, dataset, rng: jax.Array, num_updates: int | None = None):
    """init, then num_updates (default: total_updates) offline updates: the offline phase."""
    num_updates = config.num_updates if num_updates is None else num_updates
    state = init(config, dataset, rng)
    return jax.lax.scan(lambda state, _: update(config, dataset, state), state, None, num_updates)


def act(config: Config, params: Params, obs: jax.Array, rng: jax.Array, deterministic=False):
    actor, _ = _networks(config, params.action_dim)
    mean, log_std = actor.apply(params.actor, normalize(params, obs))
    if deterministic:
        return jnp.tanh(mean)
    return sample_action(mean, log_std, rng)[0]


def begin_online(config: Config, dataset, env, env_params, state: TrainState) -> OnlineState:
    """The boundary: the pretrained networks, temperature and optimizer states carried over
    unchanged, an empty replay of min(replay_size, online_steps) rows, freshly reset envs."""
    rng, reset_key = jax.random.split(state.rng)
    obs, env_state = reset_envs(env, env_params, config.num_envs, reset_key)
    return OnlineState(
        params=state.params,
        target_critic=state.target_critic,
        actor_opt=state.actor_opt,
        critic_opt=state.critic_opt,
        alpha_opt=state.alpha_opt,
        replay=replay_init(min(config.replay_size, config.online_steps), dataset),
        env_state=env_state,
        obs=obs,
        rng=rng,
        update_step=state.update_step,
        online_step=jnp.zeros((), jnp.int32),
    )


def learn_online(config: Config, dataset, state: OnlineState, rng) -> tuple[OnlineState, dict]:
    """The gradient steps of one online update (after the warm-up): ``utd_ratio`` critic steps
    on minibatches of ``online_batches``, each followed by the Polyak update, then one actor and
    temperature step on all their rows with the new critics."""
    params = state.params
    _, critic = _networks(config, params.action_dim)
    batch_key, rng = jax.random.split(rng)
    batches = _scaled(config, online_batches(config, dataset, state.replay, batch_key), params)

    def critic_step(carry, inputs):
        critic_params, critic_opt, target_critic = carry
        batch, key = inputs
        next_key, target_key = jax.random.split(key)
        next_obs = batch["next_observations"]
        next_actions, _ = _policy_samples(config, params, next_obs, 1, next_key)
        q_next = critic.apply(target_critic, next_obs[:, None], next_actions)  # (N, B, 1)
        indices = subsample(config, target_key)
        target = ensemble_target(
            q_next, batch["rewards"], batch["terminals"], indices, config.gamma
        )
        (loss, q), grads = jax.value_and_grad(td_loss, has_aux=True)(
            critic_params, batch, target, config
        )
        critic_params, critic_opt = _adam_step(config.critic_lr, grads, critic_opt, critic_params)
        target_critic = optax.incremental_update(critic_params, target_critic, config.tau)
        metrics = {
            "critic_loss": loss,
            "q_mean": q.mean(),
            "q_std": q.std(0).mean(),
            "target_mean": target.mean(),
            "grad_norm": optax.tree.norm(grads),
        }
        return (critic_params, critic_opt, target_critic), metrics

    critic_key, actor_key = jax.random.split(rng)
    carry = (params.critic, state.critic_opt, state.target_critic)
    keys = jax.random.split(critic_key, config.utd_ratio)
    (critic_params, critic_opt, target_critic), critic_metrics = jax.lax.scan(
        critic_step, carry, (batches, keys)
    )
    state = state.replace(
        params=params.replace(critic=critic_params),
        critic_opt=critic_opt,
        target_critic=target_critic,
    )
    obs = batches["observations"].reshape(-1, batches["observations"].shape[-1])
    actor, log_alpha, actor_opt, alpha_opt, metrics = _actor_and_alpha_step(
        config, state, obs, actor_key
    )
    state = state.replace(
        params=state.params.replace(actor=actor, log_alpha=log_alpha),
        actor_opt=actor_opt,
        alpha_opt=alpha_opt,
        update_step=state.update_step + config.utd_ratio,
    )
    return state, metrics | jax.tree.map(jnp.mean, critic_metrics)


def update_online(config: Config, dataset, env, env_params, state: OnlineState):
    """One online update: a step of every env with the current policy into the replay, then
    ``learn_online`` unless the warm-up is still on (no more than ``warmup_steps`` env steps
    collected), when the losses read 0 and ``warmup`` 1."""
    rng, collect_key, learn_key = jax.random.split(state.rng, 3)
    policy = lambda obs, key: act(config, state.params, obs, key)  # noqa: E731
    rows, env_state, obs, episodes = collect(
        env, env_params, policy, state.env_state, state.obs, collect_key, 1
    )
    state = state.replace(
        replay=replay_add(state.replay, rows),
        env_state=env_state,
        obs=obs,
        rng=rng,
        online_step=state.online_step + config.num_envs,
    )
    learn = lambda state: learn_online(config, dataset, state, learn_key)  # noqa: E731

    def wait(state):
        shapes = jax.eval_shape(learn, state)[1]
        return state, jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)

    warming_up = state.online_step <= config.warmup_steps
    state, metrics = jax.lax.cond(warming_up, wait, learn, state)
    return state, metrics | episodes | {"warmup": warming_up.astype(jnp.float32)}


def fine_tune(config: Config, dataset, env, env_params, state: TrainState):
    """begin_online, then num_online_updates online updates: the online phase."""
    state = begin_online(config, dataset, env, env_params, state)
    step = lambda state, _: update_online(config, dataset, env, env_params, state)  # noqa: E731
    return jax.lax.scan(step, state, None, config.num_online_updates)


if __name__ == "__main__":
    import time

    import gymnax

    base, env_params = gymnax.make("Pendulum-v1")
    max_torque = 2.0

    class UnitPendulum:
        """Pendulum-v1 as ``rljax.envs.make("Pendulum-v1", unit_actions=True)`` steps it:
        actions in [-1, 1], auto-reset, the pre-reset observation and the episode statistics
        in ``info`` (a time limit truncates; nothing terminates)."""

        def reset(self, key, params):
            obs, state = base.reset(key, params)
            return obs, (state, jnp.zeros(()), jnp.zeros((), jnp.int32))

        def step(self, key, state, action, params):
            env_state, total, length = state
            step_key, reset_key = jax.random.split(key)
            obs, env_state, reward, terminated, _ = base.step_env(  # no auto-reset
                step_key, env_state, action * max_torque, params
            )
            total, length = total + reward, length + 1
            truncated = length >= params.max_steps_in_episode  # gymnax's done has no time limit
            done = terminated | truncated
            reset_obs, reset_state = base.reset(reset_key, params)
            info = {
                "final_observation": obs,
                "returned_episode": done,
                "returned_episode_returns": total,
                "returned_episode_lengths": length,
            }
            pick = lambda a, b: jax.tree.map(lambda x, y: jnp.where(done, x, y), a, b)  # noqa: E731
            state = pick(
                (reset_state, jnp.zeros(()), jnp.zeros((), jnp.int32)), (env_state, total, length)
            )
            return pick(reset_obs, obs), state, reward, terminated, truncated, info

    env = UnitPendulum()

    def rollouts(rng, num_episodes=20, noise=0.3):
        """A noisy energy-pumping controller on Pendulum; actions scaled to [-1, 1]."""

        def episode(key):
            key, reset_key = jax.random.split(key)
            obs, env_state = base.reset(reset_key, env_params)

            def step(carry, _):
                obs, env_state, key = carry
                key, noise_key, step_key = jax.random.split(key, 3)
                cos, sin, vel = obs
                # Upright: PD; elsewhere: push along the velocity to pump energy.
                upright = jnp.clip(-(10 * jnp.arctan2(sin, cos) + 2 * vel) / max_torque, -1, 1)
                action = jnp.where(cos > 0.8, upright, jnp.sign(vel + 1e-3))
                action = jnp.clip(action + noise * jax.random.normal(noise_key), -1, 1)[None]
                next_obs, env_state, reward, _, _ = base.step_env(
                    step_key, env_state, action * max_torque, env_params
                )
                return (next_obs, env_state, key), (obs, action, reward, next_obs)

            _, out = jax.lax.scan(
                step, (obs, env_state, key), None, env_params.max_steps_in_episode
            )
            return out

        obs, actions, rewards, next_obs = jax.vmap(episode)(jax.random.split(rng, num_episodes))
        flat = lambda x: np.asarray(x).reshape(-1, *x.shape[2:])  # noqa: E731
        timeouts = np.zeros(rewards.shape, np.float32)
        timeouts[:, -1] = 1  # Pendulum only ends at its time limit
        return flat(obs), flat(actions), flat(rewards), flat(next_obs), flat(timeouts)

    @struct.dataclass
    class Data:  # the six fields of rljax.data.Dataset
        observations: jax.Array
        actions: jax.Array
        rewards: jax.Array
        terminals: jax.Array
        timeouts: jax.Array
        next_observations: jax.Array

    obs, actions, rewards, next_obs, timeouts = rollouts(jax.random.PRNGKey(0), noise=1.0)
    columns = (obs, actions, rewards, np.zeros_like(rewards), timeouts, next_obs)
    dataset = Data(*(jnp.asarray(x) for x in columns))
    print(f"dataset: {len(rewards)} transitions, mean episode return {rewards.sum() / 20:.1f}")

    def evaluate(params, rng, num_episodes=10):
        def episode(key):
            obs, env_state = base.reset(key, env_params)

            def step(carry, key):
                obs, env_state, total = carry
                action = act(config, params, obs, key, deterministic=True)
                obs, env_state, reward, _, _ = base.step_env(
                    key, env_state, action * max_torque, env_params
                )
                return (obs, env_state, total + reward), None

            keys = jax.random.split(key, env_params.max_steps_in_episode)
            return jax.lax.scan(step, (obs, env_state, 0.0), keys)[0][2]

        return jax.vmap(episode)(jax.random.split(rng, num_episodes)).mean()

    # Small networks and budgets (tests/test_o2o_wsrl.py's learning check): minutes on a CPU.
    config = Config(
        total_updates=1_500, batch_size=128, hidden_sizes=(64, 64), cql_n_actions=4,
        online_steps=2_500, warmup_steps=500, online_batch_size=256, replay_size=2_500,
    )  # fmt: skip
    start = time.time()
    state, _ = jax.block_until_ready(
        jax.jit(lambda key: train(config, dataset, key))(jax.random.PRNGKey(1))
    )
    offline = float(evaluate(state.params, jax.random.PRNGKey(2)))
    print(f"offline: {config.total_updates} CQL updates in {time.time() - start:.1f}s")
    start = time.time()
    online, metrics = jax.block_until_ready(
        jax.jit(lambda state: fine_tune(config, dataset, env, env_params, state))(state)
    )
    print(f"online: {config.online_steps} env steps in {time.time() - start:.1f}s")
    returns = np.asarray(metrics["episode_train_return"])
    finished = returns[np.isfinite(returns)]
    print(f"  training episodes' returns: {np.array2string(finished[::5], precision=0)}")
    after = float(evaluate(online.params, jax.random.PRNGKey(2)))
    print(f"greedy return: offline {offline:.1f}, after online {after:.1f}")
