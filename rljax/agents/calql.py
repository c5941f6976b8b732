"""Cal-QL: CQL whose pushed-down Q values are bounded below by the data's Monte-Carlo return.

Nakamoto, Zhai, Singh, Sobol Mark, Ma, Finn, Kumar, Levine, "Cal-QL: Calibrated Offline RL
Pre-Training for Efficient Online Fine-Tuning", NeurIPS 2023 (code: nakamotoo/Cal-QL, built on
JaxCQL). CQL (this file copies ``cql.py``'s networks and losses, CORL's CQL(H) with importance
sampling) with the conservative term's policy actions calibrated:

    L_Q   = sum_i [ mean((Q_i(s, a) - y)^2) + alpha_cql mean(C_i(s) - Q_i(s, a)) ]
    C_i(s) = T logsumexp_j over 3n values:
            Q_i(s, u_j) - log(0.5^|A|)                    u_j ~ U[-1, 1]^|A|
            max(Q_i(s, a_j), V_mu(s)) - log pi(a_j|s')    a_j ~ pi(.|s')
            max(Q_i(s, a_j), V_mu(s)) - log pi(a_j|s)     a_j ~ pi(.|s)
    V_mu(s_t) = sum_{k >= t} gamma^(k - t) r~_k over the rest of s_t's episode (held constant)

with r~ = reward_scale r + reward_bias, the rewards every loss sees. The bound applies to the
two policy-action sets only, not to the uniform actions nor to Q(s, a), and before the log
densities are subtracted (the authors' ``conservative_sac.py``). ``calibrated=False`` drops it:
CQL, continued online in the same way, the paper's ablation. The rest (y, L_pi, L_alpha, the
Lagrange variant) is cql.py's; see its docstring.

The return-to-go follows the authors' ``calc_return_to_go``: computed on the scaled and biased
rewards, restarting at every terminal and timeout (and after the last row), without a bootstrap
at a timeout unless ``infinite_horizon`` (their kitchen setting: the last reward repeated
forever, gamma r~_T / (1 - gamma) added after a timeout, not after a terminal). With
``sparse_reward`` (their AntMaze and Adroit setting) an episode whose raw rewards all equal
``reward_neg`` gets r~_neg / (1 - gamma) on every row. The dataset's is computed once in ``init``
(a reverse ``lax.scan`` over rows) and kept in the train state, 4 bytes a row per member (each
member's gamma and reward transform may differ).

Online, the authors insert a trajectory into the replay, its return-to-go computed, when it
ends. Here each env step's rows enter the replay at once with V_mu = -inf (no bound: plain CQL
on them) while every row of an unfinished episode accumulates r~ discounted by its distance
(kept per replay row: the partial sum, gamma^(steps since), its env, open or not); when the
env's episode ends (terminated or timed out), its rows get their exact return-to-go, as the
authors' formula gives for the finished trajectory. This costs O(replay rows) per env step.
Online everything carries on from the offline phase (optimizers, temperature, alpha_cql), as
in the authors' loop; each online iteration is one stochastic step of ``num_envs`` envs, then
``utd_ratio`` gradient steps on batches with ``offline_fraction`` dataset rows (their
``mixing_ratio`` 0.5).

Defaults are the authors' (``conservative_sac_main.py``, ``scripts/run_antmaze.sh``): alpha_cql
5 (their AntMaze value; 1 for locomotion), policy lr 1e-4, critic lr 3e-4, hidden layers of 256
(AntMaze's critic has 4), batch 256, 10 sampled actions, importance sampling, target entropy
-|A|, mixing ratio 0.5, utd 1. Where the authors' JaxCQL differs from cql.py this file keeps
cql.py (so the two share their losses): the target is min_i Qbar_i(s', a') of one sampled a',
not JaxCQL's max over 10 (``cql_max_target_backup``); the actor has no -1 log-std offset; one
hidden_sizes for the actor and the critics.
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
    'Nakamoto et al., "Cal-QL: Calibrated Offline RL Pre-Training for Efficient Online '
    'Fine-Tuning", NeurIPS 2023'
)

OBS_EPS = 1e-3
LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0
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
        256, static=True, bounds="[1, inf)", doc="transitions per gradient step"
    )
    total_updates: int = _field(
        1_000_000, static=True, bounds="[1, inf)", doc="offline gradient steps (the budget)"
    )
    hidden_sizes: tuple = _field(
        (256, 256), static=True, doc="hidden-layer widths of the actor and both critics"
    )
    normalize_obs: bool = _field(
        True, static=True, doc="normalize observations by the dataset's mean and std"
    )
    cql_n_actions: int = _field(
        10, static=True, bounds="[1, inf)", doc="actions n sampled per source in the logsumexp"
    )
    cql_importance_sample: bool = _field(
        True, static=True, doc="subtract the sampled actions' log densities"
    )
    cql_lagrange: bool = _field(
        False, static=True, doc="tune alpha' to hold the gap at cql_target_action_gap"
    )
    backup_entropy: bool = _field(
        False, static=True, doc="subtract alpha log pi(a'|s') in the critic target"
    )
    calibrated: bool = _field(
        True, static=True, doc="bound the policy actions' Q below by V_mu (False: plain CQL)"
    )
    sparse_reward: bool = _field(
        False, static=True, doc="an episode of reward_neg only gets r~_neg / (1 - gamma)"
    )
    infinite_horizon: bool = _field(
        False, static=True, doc="after a timeout, V_mu adds the last reward repeated forever"
    )
    actor_lr: float = _field(1e-4, bounds="(0, inf)", doc="Adam learning rate of the actor")
    critic_lr: float = _field(3e-4, bounds="(0, inf)", doc="Adam learning rate of the critics")
    alpha_lr: float = _field(
        1e-4, bounds="(0, inf)", doc="Adam learning rate of the temperature alpha"
    )
    gamma: float = _field(0.99, bounds="[0, 1)", doc="discount factor gamma")
    tau: float = _field(5e-3, bounds="(0, 1]", doc="Polyak rate tau of the target critics")
    cql_alpha: float = _field(
        5.0, bounds="[0, inf)", doc="weight alpha_cql of the conservative term"
    )
    cql_temperature: float = _field(1.0, bounds="(0, inf)", doc="temperature T of the logsumexp")
    cql_target_action_gap: float = _field(
        0.8, bounds="(-inf, inf)", doc="target gap of the Lagrange variant (Lagrange only)"
    )
    init_log_alpha_prime: float = _field(
        1.0, bounds="(-inf, inf)", doc="initial log alpha' (Lagrange only)"
    )
    reward_scale: float = _field(
        1.0, bounds="(-inf, inf)", doc="r~ = reward_scale r + reward_bias (AntMaze: 10)"
    )
    reward_bias: float = _field(
        0.0, bounds="(-inf, inf)", doc="r~ = reward_scale r + reward_bias (AntMaze: -5)"
    )
    reward_neg: float = _field(
        0.0, bounds="(-inf, inf)", doc="the raw failure reward of sparse_reward (AntMaze 0)"
    )
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
    log_alpha: jax.Array
    log_alpha_prime: jax.Array  # the Lagrange multiplier's log (unused without cql_lagrange)
    obs_mean: jax.Array
    obs_std: jax.Array
    action_dim: int = struct.field(pytree_node=False, default=1)


@struct.dataclass
class TrainState:
    params: Params
    target_critic: Any
    actor_opt: Any
    critic_opt: Any
    alpha_opt: Any
    alpha_prime_opt: Any
    mc_returns: jax.Array  # (dataset rows,) the dataset's return-to-go V_mu
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
class OpenEpisodes:
    """Per online replay row, the return-to-go of its episode so far; per env, whether its
    episode has had a reward other than reward_neg (sparse_reward)."""

    partial: jax.Array  # (capacity,) sum of gamma^(k - t) r~_k over the steps k seen since t
    weight: jax.Array  # (capacity,) gamma^(steps seen since t)
    open: jax.Array  # (capacity,) bool: the row's episode has not ended yet
    env: jax.Array  # (capacity,) int32: the env that wrote the row
    success: jax.Array  # (num_envs,) bool


@struct.dataclass
class OnlineState:
    """The online phase's state: TrainState's fields (so both phases share the gradient step),
    the replay of online rows with their returns-to-go, and the envs."""

    params: Params
    target_critic: Any
    actor_opt: Any
    critic_opt: Any
    alpha_opt: Any
    alpha_prime_opt: Any
    mc_returns: jax.Array
    replay: Replay  # ONLINE_KEYS and "mc_returns" (-inf while the row's episode runs)
    episodes: OpenEpisodes
    env_state: Any
    obs: jax.Array  # (num_envs, obs_dim)
    rng: jax.Array
    update_step: jax.Array  # gradient steps done so far, both phases


# --- Networks (CORL: orthogonal hidden layers, small Xavier output layers) ---


def _mlp(x, hidden_sizes):
    for size in hidden_sizes:
        x = nn.relu(nn.Dense(size, kernel_init=nn.initializers.orthogonal(np.sqrt(2)))(x))
    return x


_SMALL = nn.initializers.variance_scaling(1e-4, "fan_avg", "uniform")  # Xavier, gain 1e-2


class Actor(nn.Module):
    """Mean and log standard deviation of the Gaussian before the tanh."""

    action_dim: int
    hidden_sizes: tuple

    @nn.compact
    def __call__(self, obs):
        x = _mlp(obs, self.hidden_sizes)
        out = nn.Dense(2 * self.action_dim, kernel_init=_SMALL, name="out")(x)
        mean, log_std = jnp.split(out, 2, -1)
        return mean, jnp.clip(log_std, LOG_STD_MIN, LOG_STD_MAX)


class Critic(nn.Module):
    hidden_sizes: tuple

    @nn.compact
    def __call__(self, obs, action):
        obs = jnp.broadcast_to(obs, (*action.shape[:-1], obs.shape[-1]))
        x = _mlp(jnp.concatenate([obs, action], -1), self.hidden_sizes)
        return jnp.squeeze(nn.Dense(1, kernel_init=_SMALL)(x), -1)


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


def _networks(config: Config, action_dim: int) -> tuple[Actor, TwinCritic]:
    hidden = tuple(config.hidden_sizes)
    return Actor(action_dim, hidden), TwinCritic(hidden)


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


# --- Data ---


def sample_batch(config: Config, dataset, rng: jax.Array) -> dict:
    """Rows drawn uniformly with replacement, as the dict ``update_on_batch`` takes: the
    dataset's fields and the row numbers (``rows``), by which it finds their V_mu in the state."""
    idx = jax.random.randint(rng, (config.batch_size,), 0, dataset.rewards.shape[0])
    return {k: getattr(dataset, k)[idx] for k in BATCH_KEYS} | {"rows": idx}


def _transform_reward(config: Config, rewards):
    return config.reward_scale * rewards + config.reward_bias


def _failure_return(config: Config):
    """r~_neg / (1 - gamma): the return-to-go of an episode of failure rewards only."""
    return _transform_reward(config, config.reward_neg) / (1.0 - config.gamma)


def return_to_go(config: Config, rewards, terminals, timeouts):
    """V_mu of every row of a dataset of consecutive episodes (rows (N,)), computed on r~ and
    restarting after each terminal, timeout and the last row (the authors' calc_return_to_go,
    per episode)."""
    n = rewards.shape[0]
    scaled = _transform_reward(config, rewards)
    terminals = terminals > 0
    ends = terminals | (timeouts > 0) | (jnp.arange(n) == n - 1)
    if config.infinite_horizon:
        after = jnp.where(terminals, 0.0, scaled / (1.0 - config.gamma))
    else:
        after = jnp.zeros_like(scaled)

    def backward(next_value, row):
        r, end, bootstrap = row
        value = r + config.gamma * jnp.where(end, bootstrap, next_value)
        return value, value

    _, values = jax.lax.scan(backward, jnp.zeros(()), (scaled, ends, after), reverse=True)
    if config.sparse_reward:
        episode = jnp.cumsum(ends) - ends  # each row's episode number
        success = jax.ops.segment_max(rewards != config.reward_neg, episode, num_segments=n)
        values = jnp.where(success[episode], values, _failure_return(config))
    return values


def open_episodes_init(capacity: int, num_envs: int) -> OpenEpisodes:
    zeros = jnp.zeros((capacity,))
    return OpenEpisodes(
        zeros,
        zeros,
        jnp.zeros((capacity,), bool),
        jnp.zeros((capacity,), jnp.int32),
        jnp.zeros((num_envs,), bool),
    )


def track_returns(config: Config, replay: Replay, episodes: OpenEpisodes, slots, rows, ended):
    """The rows of one env step entered at ``slots`` (one per env, in env order); every open
    row of env e adds gamma^(steps since) r~_e; the rows of the envs whose episode ``ended``
    get their return-to-go in ``replay.data["mc_returns"]`` and close."""
    num_envs = slots.shape[0]
    partial = episodes.partial.at[slots].set(0.0)
    weight = episodes.weight.at[slots].set(1.0)
    is_open = episodes.open.at[slots].set(True)
    env = episodes.env.at[slots].set(jnp.arange(num_envs, dtype=jnp.int32))
    scaled = _transform_reward(config, rows["rewards"])
    partial = jnp.where(is_open, partial + weight * scaled[env], partial)
    weight = jnp.where(is_open, weight * config.gamma, weight)
    value = partial
    if config.infinite_horizon:
        after = jnp.where(rows["terminals"] > 0, 0.0, scaled / (1.0 - config.gamma))
        value = value + weight * after[env]
    success = episodes.success | (rows["rewards"] != config.reward_neg)
    if config.sparse_reward:
        value = jnp.where(success[env], value, _failure_return(config))
    closing = is_open & ended[env]
    mc_returns = jnp.where(closing, value, replay.data["mc_returns"])
    replay = replay.replace(data={**replay.data, "mc_returns": mc_returns})
    episodes = OpenEpisodes(partial, weight, is_open & ~closing, env, success & ~ended)
    return replay, episodes


# --- Losses (observations already normalized) ---


def cql_logsumexp(q_random, q_next_pi, log_pi_next, q_pi, log_pi, q_data, action_dim, config):
    """C(s) = T logsumexp(q / T) over the sampled actions, importance weighted by their
    densities; q_* are (..., n), log_pi_* held constant, q_data is Q(s, a) (...)."""
    if config.cql_importance_sample:
        log_uniform = -action_dim * jnp.log(2.0)  # U[-1, 1]^|A| has density 0.5^|A|
        parts = [
            q_random - log_uniform,
            q_next_pi - jax.lax.stop_gradient(log_pi_next),
            q_pi - jax.lax.stop_gradient(log_pi),
        ]
    else:
        parts = [q_random, q_data[..., None], q_next_pi, q_pi]
    q = jnp.concatenate(parts, -1) / config.cql_temperature
    return config.cql_temperature * jax.nn.logsumexp(q, -1)


def calql_critic_loss(critic_params, batch, target, cql_actions, alpha_prime, config):
    """cql.py's critic_loss with the policy actions' Q values bounded below by
    ``batch["mc_returns"]`` (held constant) when ``calibrated``.

    cql_actions = (uniform actions, (actions from pi(.|s'), their log pi), (actions from
    pi(.|s), their log pi)), actions (B, n, |A|), log pi (B, n). Returns the loss and (gap per
    critic, mean Q(s, a), the share of policy-action values below the bound).
    """
    action_dim = batch["actions"].shape[-1]
    _, critic = _networks(config, action_dim)
    obs = batch["observations"]
    q = critic.apply(critic_params, obs, batch["actions"])  # (2, B)
    bellman = jnp.square(q - jax.lax.stop_gradient(target)).mean(-1)
    random_actions, (next_pi, log_pi_next), (pi, log_pi) = cql_actions
    obs_n = obs[:, None]
    q_random = critic.apply(critic_params, obs_n, random_actions)  # (2, B, n)
    q_next_pi = critic.apply(critic_params, obs_n, next_pi)  # Q at s with actions from pi(.|s')
    q_pi = critic.apply(critic_params, obs_n, pi)
    lower = jax.lax.stop_gradient(batch["mc_returns"])[:, None]  # (B, 1)
    bound_rate = jnp.mean(jnp.stack([q_next_pi, q_pi]) < lower)
    if config.calibrated:
        q_next_pi, q_pi = jnp.maximum(q_next_pi, lower), jnp.maximum(q_pi, lower)
    soft_max = cql_logsumexp(q_random, q_next_pi, log_pi_next, q_pi, log_pi, q, action_dim, config)
    gap = (soft_max - q).mean(-1)  # (2,)
    if config.cql_lagrange:
        conservative = config.cql_alpha * alpha_prime * (gap - config.cql_target_action_gap)
    else:
        conservative = config.cql_alpha * gap
    return (bellman + conservative).sum(), (gap, q.mean(), bound_rate)


def alpha_prime_loss(log_alpha_prime, gap, config):
    """The Lagrange multiplier ascends alpha' (gap - target gap), averaged over the critics."""
    alpha_prime = jnp.clip(jnp.exp(log_alpha_prime), 0.0, 1e6)
    penalty = (
        config.cql_alpha * alpha_prime * (jax.lax.stop_gradient(gap) - config.cql_target_action_gap)
    )
    return -penalty.mean()


def actor_loss(actor_params, params: Params, obs, rng, config):
    actor, critic = _networks(config, params.action_dim)
    mean, log_std = actor.apply(actor_params, obs)
    action, log_prob = sample_action(mean, log_std, rng)
    q = critic.apply(params.critic, obs, action).min(0)
    alpha = jnp.exp(params.log_alpha)
    return (alpha * log_prob - q).mean(), log_prob


def alpha_loss(log_alpha, log_prob, target_entropy):
    return -(log_alpha * (jax.lax.stop_gradient(log_prob) + target_entropy)).mean()


# --- The contract ---


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
    obs, actions = np.asarray(dataset.observations), np.asarray(dataset.actions)
    if obs.ndim != 2 or actions.ndim != 2:
        raise ValueError(
            f"Cal-QL takes vector observations and actions, got observations {obs.shape} and "
            f"actions {actions.shape}"
        )
    if np.abs(actions).max() > 1 + 1e-4:
        raise ValueError(
            f"Cal-QL's tanh actor needs dataset actions in [-1, 1], found |a| up to "
            f"{np.abs(actions).max():.4g}: rescale them (D4RL convention)"
        )
    if config.normalize_obs:
        mean, std = obs.mean(0), obs.std(0)
    else:
        mean, std = np.zeros(obs.shape[1]), np.full(obs.shape[1], 1 - OBS_EPS)
    actor, critic = _networks(config, actions.shape[1])
    rng, actor_key, critic_key = jax.random.split(rng, 3)
    dummy_obs, dummy_action = jnp.zeros(obs.shape[1]), jnp.zeros(actions.shape[1])
    params = Params(
        actor=actor.init(actor_key, dummy_obs),
        critic=critic.init(critic_key, dummy_obs, dummy_action),
        log_alpha=jnp.zeros(()),
        log_alpha_prime=jnp.asarray(config.init_log_alpha_prime, jnp.float32),
        obs_mean=jnp.asarray(mean, jnp.float32),
        obs_std=jnp.asarray(std, jnp.float32),
        action_dim=actions.shape[1],
    )
    columns = (dataset.rewards, dataset.terminals, dataset.timeouts)
    return TrainState(
        params=params,
        target_critic=params.critic,
        actor_opt=optax.adam(config.actor_lr).init(params.actor),
        critic_opt=optax.adam(config.critic_lr).init(params.critic),
        alpha_opt=optax.adam(config.alpha_lr).init(params.log_alpha),
        alpha_prime_opt=optax.adam(config.critic_lr).init(params.log_alpha_prime),
        mc_returns=return_to_go(config, *(jnp.asarray(x, jnp.float32) for x in columns)),
        rng=rng,
        update_step=jnp.zeros((), jnp.int32),
    )


def update_on_batch(config: Config, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    """One gradient step of the actor, the temperature, the critics (and alpha') on a batch of
    raw rewards and either their V_mu (``mc_returns``) or, dataset rows, their row numbers
    (``rows``); ``state`` a TrainState or an OnlineState (the fields it reads and writes are
    common to both)."""
    if "mc_returns" not in batch:
        batch = batch | {"mc_returns": state.mc_returns[batch["rows"]]}
    params = state.params
    action_dim = params.action_dim
    actor, critic = _networks(config, action_dim)
    obs = normalize(params, batch["observations"])
    next_obs = normalize(params, batch["next_observations"])
    rewards = _transform_reward(config, batch["rewards"])
    batch = {**batch, "observations": obs, "next_observations": next_obs, "rewards": rewards}
    rng, actor_key, next_key, random_key, pi_key, next_pi_key = jax.random.split(state.rng, 6)

    (loss_pi, log_prob), actor_grads = jax.value_and_grad(actor_loss, has_aux=True)(
        params.actor, params, obs, actor_key, config
    )
    loss_alpha, alpha_grad = jax.value_and_grad(alpha_loss)(
        params.log_alpha, log_prob, -float(action_dim)
    )
    alpha = jnp.exp(params.log_alpha)

    next_action, next_log_prob = sample_action(*actor.apply(params.actor, next_obs), next_key)
    q_next = critic.apply(state.target_critic, next_obs, next_action).min(0)
    if config.backup_entropy:
        q_next = q_next - alpha * next_log_prob
    target = batch["rewards"] + config.gamma * (1.0 - batch["terminals"]) * q_next

    n = config.cql_n_actions
    shape = (obs.shape[0], n, action_dim)
    random_actions = jax.random.uniform(random_key, shape, minval=-1.0, maxval=1.0)
    repeat = lambda x: jnp.repeat(x[:, None], n, 1)  # noqa: E731
    pi_actions = sample_action(*actor.apply(params.actor, repeat(obs)), pi_key)
    next_pi_actions = sample_action(*actor.apply(params.actor, repeat(next_obs)), next_pi_key)
    cql_actions = (
        random_actions,
        jax.lax.stop_gradient(next_pi_actions),
        jax.lax.stop_gradient(pi_actions),
    )
    alpha_prime = jnp.clip(jnp.exp(params.log_alpha_prime), 0.0, 1e6)
    (loss_q, (gap, q_mean, bound_rate)), critic_grads = jax.value_and_grad(
        calql_critic_loss, has_aux=True
    )(params.critic, batch, target, cql_actions, alpha_prime, config)

    def step(optimizer, grads, opt_state, value):
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(value, updates), opt_state

    actor_params, actor_opt = step(
        optax.adam(config.actor_lr), actor_grads, state.actor_opt, params.actor
    )
    log_alpha, alpha_opt = step(
        optax.adam(config.alpha_lr), alpha_grad, state.alpha_opt, params.log_alpha
    )
    critic_params, critic_opt = step(
        optax.adam(config.critic_lr), critic_grads, state.critic_opt, params.critic
    )
    metrics = {}
    log_alpha_prime, alpha_prime_opt = params.log_alpha_prime, state.alpha_prime_opt
    if config.cql_lagrange:
        loss_prime, prime_grad = jax.value_and_grad(alpha_prime_loss)(
            params.log_alpha_prime, gap, config
        )
        log_alpha_prime, alpha_prime_opt = step(
            optax.adam(config.critic_lr), prime_grad, alpha_prime_opt, log_alpha_prime
        )
        metrics = {"alpha_prime_loss": loss_prime, "alpha_prime": alpha_prime}
    params = params.replace(
        actor=actor_params,
        critic=critic_params,
        log_alpha=log_alpha,
        log_alpha_prime=log_alpha_prime,
    )
    state = state.replace(
        params=params,
        target_critic=optax.incremental_update(critic_params, state.target_critic, config.tau),
        actor_opt=actor_opt,
        critic_opt=critic_opt,
        alpha_opt=alpha_opt,
        alpha_prime_opt=alpha_prime_opt,
        rng=rng,
        update_step=state.update_step + 1,
    )
    metrics |= {
        "critic_loss": loss_q,
        "actor_loss": loss_pi,
        "alpha_loss": loss_alpha,
        "alpha": alpha,
        "entropy": -log_prob.mean(),
        "cql_gap": gap.mean(),
        "bound_rate": bound_rate,
        "q_mean": q_mean,
        "target_mean": target.mean(),
        "grad_norm": optax.tree.norm(critic_grads),
        "actor_grad_norm": optax.tree.norm(actor_grads),
    }
    return state, metrics


def update(config: Config, dataset, state: TrainState) -> tuple[TrainState, dict]:
    """One gradient step on a batch sampled inside jit."""
    rng, batch_key = jax.random.split(state.rng)
    return update_on_batch(config, state.replace(rng=rng), sample_batch(config, dataset, batch_key))


def train(config: Config, dataset, rng: jax.Array, num_updates: int | None = None):
    """init, then num_updates (default: total_updates) updates on uniform batches."""
    num_updates = config.num_updates if num_updates is None else num_updates
    state = init(config, dataset, rng)
    return jax.lax.scan(lambda state, _: update(config, dataset, state), state, None, num_updates)


def act(config: Config, params: Params, obs: jax.Array, rng: jax.Array, deterministic=False):
    actor, _ = _networks(config, params.action_dim)
    mean, log_std = actor.apply(params.actor, normalize(params, obs))
    if deterministic:
        return jnp.tanh(mean)
    return sample_action(mean, log_std, rng)[0]


# --- Online fine-tuning ---


def begin_online(config: Config, dataset, env, env_params, state: TrainState) -> OnlineState:
    """The offline state at the boundary, turned online: everything carried over (params,
    targets, optimizers, the dataset's V_mu, as the authors' loop goes on), an empty replay of
    min(replay_size, online_steps) rows, freshly reset envs."""
    check(config)
    capacity = min(config.replay_size, config.online_steps)
    rng, reset_key = jax.random.split(state.rng)
    obs, env_state = reset_envs(env, env_params, config.num_envs, reset_key)
    replay = replay_init(capacity, dataset)
    replay = replay.replace(data={**replay.data, "mc_returns": jnp.full((capacity,), -jnp.inf)})
    return OnlineState(
        params=state.params,
        target_critic=state.target_critic,
        actor_opt=state.actor_opt,
        critic_opt=state.critic_opt,
        alpha_opt=state.alpha_opt,
        alpha_prime_opt=state.alpha_prime_opt,
        mc_returns=state.mc_returns,
        replay=replay,
        episodes=open_episodes_init(capacity, config.num_envs),
        env_state=env_state,
        obs=obs,
        rng=rng,
        update_step=state.update_step,
    )


def update_online(
    config: Config, dataset, env, env_params, state: OnlineState
) -> tuple[OnlineState, dict]:
    """One step of num_envs envs with the stochastic policy, the returns-to-go of the episodes
    that ended, then utd_ratio gradient steps on batches mixing offline_fraction dataset rows
    with online ones."""
    rng, collect_key, learn_key = jax.random.split(state.rng, 3)
    policy = lambda obs, key: act(config, state.params, obs, key)  # noqa: E731
    rows, env_state, obs, episodes = collect(
        env, env_params, policy, state.env_state, state.obs, collect_key, 1
    )
    capacity = state.replay.data["rewards"].shape[0]
    slots = (state.replay.position + jnp.arange(config.num_envs)) % capacity  # replay_add's
    rows = rows | {"mc_returns": jnp.full((config.num_envs,), -jnp.inf)}
    replay = replay_add(state.replay, rows)
    ended = (rows["terminals"] > 0) | (rows["timeouts"] > 0)
    replay, open_episodes = track_returns(config, replay, state.episodes, slots, rows, ended)
    offline = {k: getattr(dataset, k) for k in ONLINE_KEYS} | {"mc_returns": state.mc_returns}

    def gradient_step(state, key):
        batch = mixed_batch(offline, replay, config.offline_fraction, config.batch_size, key)
        return update_on_batch(config, state, batch)

    # The replay is read, not written, by the gradient steps: keep it out of the scan's carry.
    keys = jax.random.split(learn_key, config.utd_ratio)
    carry = state.replace(replay=None, episodes=None, env_state=None)
    state, metrics = jax.lax.scan(gradient_step, carry, keys)
    state = state.replace(
        replay=replay, episodes=open_episodes, env_state=env_state, obs=obs, rng=rng
    )
    return state, {**jax.tree.map(jnp.mean, metrics), **episodes}


def fine_tune(config: Config, dataset, env, env_params, state):
    """begin_online, then num_online_updates iterations of update_online."""
    state = begin_online(config, dataset, env, env_params, state)
    step = lambda state, _: update_online(config, dataset, env, env_params, state)  # noqa: E731
    return jax.lax.scan(step, state, None, config.num_online_updates)


if __name__ == "__main__":
    import time

    import gymnax
    from gymnax.wrappers.purerl import GymnaxWrapper, LogWrapper

    class UnitTorque(GymnaxWrapper):
        """Pendulum's torque in [-2, 2] from actions in [-1, 1] (the datasets' convention)."""

        def step(self, key, state, action, params=None):
            return self._env.step(key, state, 2.0 * jnp.clip(action, -1, 1), params)

    base, env_params = gymnax.make("Pendulum-v1")
    env = UnitTorque(LogWrapper(base))

    def rollouts(rng, num_episodes=20, noise=0.3):
        """A noisy energy-pumping controller on Pendulum; actions in [-1, 1]."""

        def episode(key):
            key, reset_key = jax.random.split(key)
            obs, env_state = base.reset(reset_key, env_params)

            def step(carry, _):
                obs, env_state, key = carry
                key, noise_key, step_key = jax.random.split(key, 3)
                cos, sin, vel = obs
                upright = jnp.clip(-(10 * jnp.arctan2(sin, cos) + 2 * vel) / 2.0, -1, 1)
                action = jnp.where(cos > 0.8, upright, jnp.sign(vel + 1e-3))
                action = jnp.clip(action + noise * jax.random.normal(noise_key), -1, 1)[None]
                next_obs, env_state, reward, done, _ = base.step_env(
                    step_key, env_state, 2.0 * action, env_params
                )
                return (next_obs, env_state, key), (obs, action, reward, next_obs, done)

            _, out = jax.lax.scan(
                step, (obs, env_state, key), None, env_params.max_steps_in_episode
            )
            return out

        out = jax.vmap(episode)(jax.random.split(rng, num_episodes))
        return [jnp.asarray(x, jnp.float32).reshape(-1, *x.shape[2:]) for x in out]

    @struct.dataclass
    class Data:  # the six fields of rljax.data.Dataset
        observations: jax.Array
        actions: jax.Array
        rewards: jax.Array
        terminals: jax.Array
        timeouts: jax.Array
        next_observations: jax.Array

    obs, actions, rewards, next_obs, timeouts = rollouts(jax.random.PRNGKey(0))
    dataset = Data(obs, actions, rewards, jnp.zeros_like(rewards), timeouts, next_obs)
    print(f"dataset: {len(rewards)} transitions, mean episode return {rewards.sum() / 20:.1f}")

    def evaluate(params, rng, num_episodes=10):
        def episode(key):
            obs, env_state = base.reset(key, env_params)

            def step(carry, key):
                obs, env_state, total = carry
                action = act(config, params, obs, key, deterministic=True)
                obs, env_state, reward, _, _ = base.step_env(
                    key, env_state, 2.0 * action, env_params
                )
                return (obs, env_state, total + reward), None

            keys = jax.random.split(key, env_params.max_steps_in_episode)
            return jax.lax.scan(step, (obs, env_state, 0.0), keys)[0][2]

        return jax.vmap(episode)(jax.random.split(rng, num_episodes)).mean()

    config = Config(
        total_updates=10_000, hidden_sizes=(64, 64), actor_lr=3e-4, alpha_lr=3e-4,
        cql_alpha=1.0, online_steps=5_000, batch_size=128,
    )  # fmt: skip
    start = time.time()
    state, _ = jax.jit(lambda key: train(config, dataset, key))(jax.random.PRNGKey(1))
    print(f"offline: {config.total_updates} updates in {time.time() - start:.1f}s, greedy return "
          f"{float(evaluate(state.params, jax.random.PRNGKey(2))):.1f}")  # fmt: skip
    start = time.time()
    state, metrics = jax.jit(lambda s: fine_tune(config, dataset, env, env_params, s))(state)
    print(f"online: {config.online_steps} env steps in {time.time() - start:.1f}s, greedy return "
          f"{float(evaluate(state.params, jax.random.PRNGKey(2))):.1f}, last training episodes "
          f"{float(np.nanmean(metrics['episode_train_return'][-1000:])):.1f}")  # fmt: skip
