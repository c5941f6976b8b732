"""FamO2O: a universal policy over a family of balance coefficients, chosen per state online.

Wang et al., "Train Once, Get a Family: State-Adaptive Balances for Offline-to-Online
Reinforcement Learning", NeurIPS 2023 (LeapLabTHU/FamO2O@ea9cb01). A universal policy
pi_u(a | s, enc(beta)) is trained for every balance coefficient beta in [beta_min, beta_max]; a
balance model pi_b(x | s), a tanh-Gaussian over one scalar x in (-1, 1) with a state-independent
log std, picks beta = map(x) = (x + 1) / 2 (beta_max - beta_min) + beta_min per state:

    enc(beta)[2i] = sin(beta / n^(2i/d)),  enc(beta)[2i+1] = cos(beta / n^(2i/d)),  i < d/2
    beta ~ U[beta_min, beta_max] offline,  beta = stopgrad(map(x)), x ~ pi_b(.|s) online

``variant="iql"`` (the authors' jax_iql): beta is the AWR inverse temperature. Each step, in
this order (family_learner.py), with Qbar the target critics:

    L_V   = mean(|tau_e - 1(u < 0)| u^2),  u = min_i Qbar_i(s, a) - V(s)
    L_b   = mean(alpha_b log pi_b(x|s) - min_i Qbar_i(s, a~)),  x ~ pi_b(.|s),
            a~ ~ pi_u(.|s, enc(map(x))) reparameterized through x (pi_u held)
    L_ab  = alpha_b (H_b - H_target),  H_b = -mean log pi_b(x|s),  H_target = -1/2
    L_u   = -mean(min(exp(beta (min_i Qbar_i(s, a) - V(s))), 100) log pi_u(a | s, enc(beta)))
    L_Q   = sum_i mean((Q_i(s, a) - (r + gamma (1 - terminal) V(s')))^2)     (the new V)
    Qbar <- (1 - tau) Qbar + tau Q

pi_u = N(tanh(mu(s, enc(beta))), diag(exp(2 log_std))), state-independent log_std, no squash
(IQL's actor). ``variant="cql"`` (the authors' jax_cql): beta weighs Q in a CQL(H) actor, and
every gradient is taken at the same parameters (JaxCQL), with Q the current critics:

    L_u   = mean(alpha log pi_u(a~|s, enc(beta)) - beta min_i Q_i(s, a~)),
            a~ ~ pi_u(.|s, enc(beta))
    L_b   = -mean(min_i Q_i(s, a~)),  a~ as in the IQL variant     (no entropy term)
    L_a   = -mean(log alpha (log pi_u(a~|s, enc(beta)) - |A|))
    L_Q   = sum_i [mean((Q_i(s, a) - y)^2) + alpha_cql mean(C_i(s) - Q_i(s, a))],
            y = r + gamma (1 - terminal) min_i Qbar_i(s', a'),  a' ~ pi_u(.|s', enc(beta)),
            C_i(s) = T logsumexp over Q_i at uniform actions and at pi_u(.|s, enc(beta)) and
            pi_u(.|s', enc(beta)) samples, each less its log density (importance sampling)

pi_u is a tanh-Gaussian whose log std is log_std_multiplier * out + log_std_offset (both
learned, from 1 and -1, JaxCQL). The balance model is trained in both phases; it sets beta
only online. Acting: beta is the balance model's mode tanh(mean); the action is pi_u's mean
(through tanh) when deterministic, a sample during online collection.

Where this file and the authors' code differ, and what it does:
* The range map. jax_cql maps the balance model's x with x (max - min) + min, so for (0.5, 1.5)
  beta reaches -0.5: a negative weight on Q (spec pitfall 1). Both variants here use jax_iql's
  (x + 1) / 2 map, which keeps beta inside [beta_min, beta_max].
* The beta range per variant, for MuJoCo-like data. The authors ship no locomotion config for
  the IQL variant (only AntMaze's (8, 14)); its learner's default (1, 5) brackets the IQL
  paper's MuJoCo inverse temperature 3 and is the default here (``awr_beta_min/max``). The CQL
  variant's locomotion config uses (0.5, 1.5) (``q_weight_min/max``): the two coefficients have
  opposite roles, so they are separate fields.
* jax_cql's balance model has a state-dependent log std; here both variants use jax_iql's
  state-independent one. In jax_cql the critic's target action a' uses the balance model's beta
  even offline; here one beta per row serves the actor, the target and the CQL samples.
* Data retention. The authors append online rows to a buffer holding the whole dataset and
  sample it uniformly (the dataset's share falls from 1 towards 1/2 over a run as long as the
  dataset); here the share is a fixed ``offline_fraction`` (default 1/2, traced, so sweeps vmap).
* Learning rates are constant (the AntMaze config switches IQL's cosine decay off) and every
  optimizer carries on across the boundary. Expectile 0.7 (IQL's MuJoCo value; the AntMaze
  config has 0.9, the learner 0.8). Rewards: ``"return_range"`` r <- 1000 r / (max - min episode
  return) as jax_iql does on MuJoCo (jax_cql leaves rewards raw: ``"none"``). Observations are
  normalized by the dataset's statistics, (s - mu) / (sigma + 1e-3) (the authors do not).

Online, each iteration steps ``num_envs`` envs once (the envs' rows go to a replay of
``min(replay_size, online_steps)`` rows), then ``utd_ratio`` gradient steps of the same losses
on mixed batches. Timeouts bootstrap, terminations do not. Actions are in [-1, 1].
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
    'Wang et al., "Train Once, Get a Family: State-Adaptive Balances for Offline-to-Online '
    'Reinforcement Learning", NeurIPS 2023'
)

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0  # the CQL variant's actor (JaxCQL)
BALANCE_LOG_STD_MIN, BALANCE_LOG_STD_MAX = -10.0, 2.0  # jax_iql's policy clip
BATCH_KEYS = ("observations", "actions", "rewards", "terminals", "next_observations")


def _field(default, *, static=False, bounds=None, choices=None, doc):
    """A config field. Static fields are shapes and switches (changing one recompiles); the
    rest are traced, so a sweep can vmap over them. bounds/choices let a runner validate; doc,
    the field's meaning in one line, is required so that no field goes unexplained."""
    metadata = {"bounds": bounds, "choices": choices, "doc": doc}
    return struct.field(pytree_node=not static, default=default, metadata=metadata)


@struct.dataclass
class Config:
    variant: str = _field(
        "iql",
        static=True,
        choices=("iql", "cql"),
        doc="iql: beta is the AWR inverse temperature; cql: beta weighs Q in the actor loss",
    )
    batch_size: int = _field(
        256, static=True, bounds="[1, inf)", doc="transitions per gradient step"
    )
    total_updates: int = _field(
        1_000_000, static=True, bounds="[1, inf)", doc="gradient steps in all (the budget)"
    )
    hidden_sizes: tuple = _field(
        (256, 256), static=True, doc="hidden-layer widths of every network"
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
    sincos_d: int = _field(
        6, static=True, bounds="[2, inf)", doc="dimension d of beta's sinusoid encoding (even)"
    )
    cql_n_actions: int = _field(
        10,
        static=True,
        bounds="[1, inf)",
        doc="actions n sampled per source in the logsumexp (cql)",
    )
    cql_importance_sample: bool = _field(
        True, static=True, doc="subtract the sampled actions' log densities (cql)"
    )
    actor_lr: float = _field(3e-4, bounds="(0, inf)", doc="Adam learning rate of the actor")
    critic_lr: float = _field(3e-4, bounds="(0, inf)", doc="Adam learning rate of the critics")
    value_lr: float = _field(3e-4, bounds="(0, inf)", doc="Adam learning rate of V (iql)")
    balance_lr: float = _field(
        3e-4, bounds="(0, inf)", doc="Adam learning rate of the balance model"
    )
    temperature_lr: float = _field(
        3e-4, bounds="(0, inf)", doc="Adam rate of the temperature (iql: alpha_b; cql: alpha)"
    )
    gamma: float = _field(0.99, bounds="[0, 1]", doc="discount factor gamma")
    tau: float = _field(0.005, bounds="(0, 1]", doc="Polyak rate tau of the target critics")
    expectile: float = _field(
        0.7, bounds="(0, 1)", doc="expectile tau_e of the value loss (0.5 = mean) (iql)"
    )
    awr_beta_min: float = _field(
        1.0, bounds="[0, inf)", doc="smallest AWR inverse temperature beta (iql)"
    )
    awr_beta_max: float = _field(
        5.0, bounds="[0, inf)", doc="largest AWR inverse temperature beta (iql)"
    )
    q_weight_min: float = _field(0.5, bounds="[0, inf)", doc="smallest weight beta on Q (cql)")
    q_weight_max: float = _field(1.5, bounds="[0, inf)", doc="largest weight beta on Q (cql)")
    sincos_n: float = _field(10000.0, bounds="(0, inf)", doc="base n of beta's sinusoid encoding")
    balance_init_temperature: float = _field(
        1.0, bounds="(0, inf)", doc="initial entropy temperature alpha_b of the balance model (iql)"
    )
    balance_target_entropy: float = _field(
        -0.5, bounds="(-inf, inf)", doc="target entropy H_target of the balance model (iql)"
    )
    log_std_min: float = _field(-5.0, doc="lower clip of the actor's log std (iql)")
    log_std_max: float = _field(2.0, doc="upper clip of the actor's log std (iql)")
    cql_alpha: float = _field(
        1.0, bounds="[0, inf)", doc="weight alpha_cql of the conservative term (cql)"
    )
    cql_temperature: float = _field(
        1.0, bounds="(0, inf)", doc="temperature T of the logsumexp (cql)"
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
    actor: Any  # the universal policy pi_u(a | s, enc(beta))
    balance: Any  # the balance model pi_b(x | s)
    critic: Any  # both critics, stacked on a leading axis of 2
    value: Any  # V (iql); None in the cql variant
    log_temperature: jax.Array  # log alpha_b of the balance model (iql), log alpha of pi_u (cql)
    obs_mean: jax.Array  # normalized obs = (obs - obs_mean) / obs_std
    obs_std: jax.Array
    action_dim: int = struct.field(pytree_node=False, default=1)


@struct.dataclass
class TrainState:
    params: Params
    target_critic: Any
    actor_opt: Any
    critic_opt: Any
    value_opt: Any  # None in the cql variant
    balance_opt: Any
    temperature_opt: Any
    reward_scale: jax.Array  # r <- reward_scale * r + reward_shift, fixed at init
    reward_shift: jax.Array
    rng: jax.Array
    step: jax.Array  # gradient steps done so far, both phases


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
class OnlineState(TrainState):
    """The online phase's state: TrainState's fields (so both phases share the gradient step),
    the replay of online rows and the envs."""

    replay: Replay
    env_state: Any
    obs: jax.Array  # (num_envs, obs_dim)


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


class SquashedActor(nn.Module):
    """Mean and log std of the Gaussian before the tanh; log std = multiplier * out + offset,
    both learned from 1 and -1 (JaxCQL's TanhGaussianPolicy)."""

    action_dim: int
    hidden_sizes: tuple

    @nn.compact
    def __call__(self, obs):
        x = _mlp(obs, self.hidden_sizes)
        mean, log_std = jnp.split(nn.Dense(2 * self.action_dim)(x), 2, -1)
        multiplier = self.param("log_std_multiplier", nn.initializers.constant(1.0), ())
        offset = self.param("log_std_offset", nn.initializers.constant(-1.0), ())
        return mean, jnp.clip(multiplier * log_std + offset, LOG_STD_MIN, LOG_STD_MAX)


class Balance(nn.Module):
    """The balance model: mean (..., 1) and state-independent log std (1,) of the Gaussian whose
    tanh is x in (-1, 1)."""

    hidden_sizes: tuple

    @nn.compact
    def __call__(self, obs):
        mean = nn.Dense(1)(_mlp(obs, self.hidden_sizes))
        log_std = self.param("log_std", nn.initializers.zeros, (1,))
        return mean, jnp.clip(log_std, BALANCE_LOG_STD_MIN, BALANCE_LOG_STD_MAX)


class Critic(nn.Module):
    hidden_sizes: tuple

    @nn.compact
    def __call__(self, obs, action):
        obs = jnp.broadcast_to(obs, (*action.shape[:-1], obs.shape[-1]))
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


def _networks(config: Config, action_dim: int):
    """(universal actor, twin critic, value) of the variant."""
    hidden = tuple(config.hidden_sizes)
    actor = (Actor if config.variant == "iql" else SquashedActor)(action_dim, hidden)
    return actor, TwinCritic(hidden), Value(hidden)


def _normalize(params: Params, obs):
    return (obs - params.obs_mean) / params.obs_std


def gaussian_log_prob(mean, log_std, action):
    """log N(action; mean, diag(exp(log_std)^2)), summed over the action dimensions."""
    z = (action - mean) * jnp.exp(-log_std)
    return (-0.5 * z**2 - log_std - 0.5 * jnp.log(2 * jnp.pi)).sum(-1)


def sample_action(mean, log_std, rng):
    """A tanh-Gaussian action on [-1, 1] and its log density there (exact tanh Jacobian)."""
    pre_tanh = mean + jnp.exp(log_std) * jax.random.normal(rng, mean.shape)
    gaussian_log_prob = -0.5 * ((pre_tanh - mean) / jnp.exp(log_std)) ** 2 - log_std
    gaussian_log_prob -= 0.5 * jnp.log(2 * jnp.pi)
    # log(1 - tanh(x)^2) = 2 (log 2 - x - softplus(-2x)), stable for large |x|
    log_det = 2 * (jnp.log(2.0) - pre_tanh - jax.nn.softplus(-2 * pre_tanh))
    return jnp.tanh(pre_tanh), (gaussian_log_prob - log_det).sum(-1)


# --- The balance coefficient ---


def sincos_encoding(beta, n, d: int):
    """enc(beta)[2i] = sin(beta / n^(2i/d)), enc(beta)[2i+1] = cos(beta / n^(2i/d)), i < d/2;
    beta (...,) -> (..., d)."""
    angle = beta[..., None] / n ** (2 * jnp.arange(d // 2) / d)
    return jnp.stack([jnp.sin(angle), jnp.cos(angle)], -1).reshape(*beta.shape, d)


def beta_range(config: Config):
    """(beta_min, beta_max) of the variant: AWR inverse temperatures or weights on Q."""
    if config.variant == "iql":
        return config.awr_beta_min, config.awr_beta_max
    return config.q_weight_min, config.q_weight_max


def to_beta(config: Config, x):
    """beta = (x + 1) / 2 (beta_max - beta_min) + beta_min for x in [-1, 1] (jax_iql's map)."""
    low, high = beta_range(config)
    return (x + 1) / 2 * (high - low) + low


def _policy_input(config: Config, obs, beta):
    """[s, enc(beta)], beta broadcast to obs's batch shape; obs already normalized."""
    beta = jnp.broadcast_to(beta, obs.shape[:-1])
    return jnp.concatenate([obs, sincos_encoding(beta, config.sincos_n, config.sincos_d)], -1)


def sample_beta(config: Config, balance_params, obs, rng):
    """beta = map(x), x ~ pi_b(.|s) reparameterized, and log pi_b(x|s); obs normalized."""
    x, log_prob = sample_action(
        *Balance(tuple(config.hidden_sizes)).apply(balance_params, obs), rng
    )
    return to_beta(config, x[..., 0]), log_prob


def balance_mode(config: Config, balance_params, obs):
    """beta at the balance model's mode, map(tanh(mean)); obs normalized."""
    mean, _ = Balance(tuple(config.hidden_sizes)).apply(balance_params, obs)
    return to_beta(config, jnp.tanh(mean[..., 0]))


def universal_sample(config: Config, actor_params, obs, beta, rng, action_dim: int):
    """a ~ pi_u(.|s, enc(beta)) reparameterized and log pi_u(a|s, enc(beta)); obs normalized."""
    actor, _, _ = _networks(config, action_dim)
    mean, log_std = actor.apply(actor_params, _policy_input(config, obs, beta))
    if config.variant == "cql":
        return sample_action(mean, log_std, rng)
    log_std = jnp.clip(log_std, config.log_std_min, config.log_std_max)
    action = mean + jnp.exp(log_std) * jax.random.normal(rng, mean.shape)
    return action, gaussian_log_prob(mean, log_std, action)


def _row_beta(config: Config, balance_params, obs, rng, online: bool):
    """The actor's beta per row: uniform on the range offline, from the balance model online."""
    if online:
        return jax.lax.stop_gradient(sample_beta(config, balance_params, obs, rng)[0])
    low, high = beta_range(config)
    return jax.random.uniform(rng, obs.shape[:-1], minval=low, maxval=high)


# --- Data ---


def sample_batch(config: Config, dataset, rng: jax.Array) -> dict:
    """Rows drawn uniformly with replacement, as the dict ``update_on_batch`` takes."""
    idx = jax.random.randint(rng, (config.batch_size,), 0, dataset.rewards.shape[0])
    return {k: getattr(dataset, k)[idx] for k in BATCH_KEYS}


def episode_returns(rewards, terminals, timeouts) -> np.ndarray:
    """Undiscounted return of each complete episode (ended by a terminal or a timeout)."""
    ends = np.flatnonzero((np.asarray(terminals) > 0) | (np.asarray(timeouts) > 0))
    return np.diff(np.cumsum(np.asarray(rewards, np.float64))[ends], prepend=0.0)


# --- Losses (observations already normalized, rewards preprocessed) ---


def balance_loss(balance_params, params: Params, critic_params, obs, temperature, rng, config):
    """L_b = mean(temperature log pi_b(x|s) - min_i Q_i(s, a~)), x ~ pi_b(.|s), a~ ~ pi_u(.|s,
    enc(map(x))) reparameterized through x with pi_u's params held (temperature 0 in the cql
    variant; critic_params the target critics in the iql variant, the critics in the cql one)."""
    beta_key, action_key = jax.random.split(rng)
    beta, log_prob = sample_beta(config, balance_params, obs, beta_key)
    actor_params = jax.lax.stop_gradient(params.actor)
    action, _ = universal_sample(config, actor_params, obs, beta, action_key, params.action_dim)
    _, critic, _ = _networks(config, params.action_dim)
    q = critic.apply(critic_params, obs, action).min(0)
    return (temperature * log_prob - q).mean(), (log_prob, beta)


def balance_temperature_loss(log_temperature, entropy, target_entropy):
    """L_ab = alpha_b (H_b - H_target), alpha_b = exp(log alpha_b) (jax_iql's Temperature)."""
    return jnp.exp(log_temperature) * (jax.lax.stop_gradient(entropy) - target_entropy)


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


def awr_actor_loss(actor_params, params: Params, target_critic, batch, beta, config: Config):
    """Advantage-weighted regression of pi_u(.|s, enc(beta)) with weights exp(beta A) clipped at
    100, beta per row (batch,)."""
    actor, critic, value = _networks(config, params.action_dim)
    q = critic.apply(target_critic, batch["observations"], batch["actions"]).min(0)
    advantage = q - value.apply(params.value, batch["observations"])
    weight = jnp.minimum(jnp.exp(beta * advantage), 100.0)
    mean, log_std = actor.apply(actor_params, _policy_input(config, batch["observations"], beta))
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


def q_weighted_actor_loss(actor_params, params: Params, obs, beta, rng, config: Config):
    """L_u = mean(alpha log pi_u(a~|s, enc(beta)) - beta min_i Q_i(s, a~)), beta per row."""
    action, log_prob = universal_sample(config, actor_params, obs, beta, rng, params.action_dim)
    _, critic, _ = _networks(config, params.action_dim)
    q = critic.apply(params.critic, obs, action).min(0)
    alpha = jnp.exp(params.log_temperature)
    return (alpha * log_prob - beta * q).mean(), log_prob


def alpha_loss(log_alpha, log_prob, target_entropy):
    return -(log_alpha * (jax.lax.stop_gradient(log_prob) + target_entropy)).mean()


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


def conservative_critic_loss(critic_params, batch, target, cql_actions, config):
    """Bellman error plus alpha_cql times the conservative gap, summed over the two critics.

    cql_actions = (uniform actions, (actions from pi_u(.|s'), their log pi), (actions from
    pi_u(.|s), their log pi)), actions (B, n, |A|), log pi (B, n).
    """
    action_dim = batch["actions"].shape[-1]
    _, critic, _ = _networks(config, action_dim)
    obs = batch["observations"]
    q = critic.apply(critic_params, obs, batch["actions"])  # (2, B)
    bellman = jnp.square(q - jax.lax.stop_gradient(target)).mean(-1)
    random_actions, (next_pi, log_pi_next), (pi, log_pi) = cql_actions
    obs_n = obs[:, None]
    q_random = critic.apply(critic_params, obs_n, random_actions)  # (2, B, n)
    q_next_pi = critic.apply(critic_params, obs_n, next_pi)  # Q at s with actions from pi(.|s')
    q_pi = critic.apply(critic_params, obs_n, pi)
    soft_max = cql_logsumexp(q_random, q_next_pi, log_pi_next, q_pi, log_pi, q, action_dim, config)
    gap = (soft_max - q).mean(-1)  # (2,)
    return (bellman + config.cql_alpha * gap).sum(), (gap, q.mean())


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
            f"FamO2O takes vector observations and actions, got shapes "
            f"{dataset.observations.shape[1:]} and {dataset.actions.shape[1:]}"
        )
    if isinstance(dataset.actions, jax.core.Tracer):
        raise ValueError(
            "FamO2O's init reads the dataset on the host (reward scaling): close over the "
            "dataset instead of passing it through jit or vmap"
        )
    largest = float(np.abs(np.asarray(dataset.actions)).max())
    if largest > 1 + 1e-4:
        raise ValueError(
            f"dataset actions reach {largest:.4g} but the actor's mean lies in [-1, 1]: "
            "rescale the dataset's actions into [-1, 1] (the D4RL convention)"
        )


def _check_shapes(config: Config) -> None:
    """The rules across static fields (they hold under jit and vmap too)."""
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
    if config.sincos_d % 2:
        raise ValueError(f"sincos_d={config.sincos_d} must be even: sin and cos pairs")


def check(config: Config) -> None:
    """The rules across Config fields; the runner calls it on each concrete config."""
    _check_shapes(config)
    low, high = beta_range(config)
    if not float(low) < float(high):
        names = (
            ("awr_beta_min", "awr_beta_max")
            if config.variant == "iql"
            else ("q_weight_min", "q_weight_max")
        )
        raise ValueError(
            f"{names[0]}={float(low)} must be below {names[1]}={float(high)} "
            f"(the beta range of variant={config.variant!r})"
        )


def init(config: Config, dataset, rng: jax.Array) -> TrainState:
    """Networks, optimizers, normalization statistics and reward scaling for ``dataset``.

    ``dataset`` (an rljax Dataset) must be concrete: close over it rather than pass it through
    jit, since the reward scale is computed from its episodes on the host.
    """
    _check_dataset(dataset)
    reward_scale, reward_shift = _reward_transform(config, dataset)
    actor_key, balance_key, critic_key, value_key, rng = jax.random.split(rng, 5)
    obs_dim, action_dim = dataset.observations.shape[-1], dataset.actions.shape[-1]
    actor, critic, value = _networks(config, action_dim)
    dummy_obs, dummy_action = jnp.zeros(obs_dim), jnp.zeros(action_dim)
    if config.normalize_obs:
        obs_mean = dataset.observations.mean(0)
        obs_std = dataset.observations.std(0) + 1e-3
    else:
        obs_mean, obs_std = jnp.zeros(obs_dim), jnp.ones(obs_dim)
    iql = config.variant == "iql"
    # iql: alpha_b starts at balance_init_temperature; cql: alpha starts at 1 (JaxCQL)
    log_temperature = jnp.log(jnp.asarray(config.balance_init_temperature if iql else 1.0))
    params = Params(
        actor=actor.init(actor_key, jnp.zeros(obs_dim + config.sincos_d)),
        balance=Balance(tuple(config.hidden_sizes)).init(balance_key, dummy_obs),
        critic=critic.init(critic_key, dummy_obs, dummy_action),
        value=value.init(value_key, dummy_obs) if iql else None,
        log_temperature=log_temperature.astype(jnp.float32),
        obs_mean=jnp.asarray(obs_mean, jnp.float32),
        obs_std=jnp.asarray(obs_std, jnp.float32),
        action_dim=action_dim,
    )
    return TrainState(
        params=params,
        target_critic=params.critic,
        actor_opt=optax.adam(config.actor_lr).init(params.actor),
        critic_opt=optax.adam(config.critic_lr).init(params.critic),
        value_opt=optax.adam(config.value_lr).init(params.value) if iql else None,
        balance_opt=optax.adam(config.balance_lr).init(params.balance),
        temperature_opt=optax.adam(config.temperature_lr).init(params.log_temperature),
        reward_scale=jnp.asarray(reward_scale, jnp.float32),
        reward_shift=jnp.asarray(reward_shift, jnp.float32),
        rng=rng,
        step=jnp.zeros((), jnp.int32),
    )


def _adam_step(lr, grads, opt_state, value):
    updates, opt_state = optax.adam(lr).update(grads, opt_state)
    return optax.apply_updates(value, updates), opt_state


def _iql_step(config: Config, state, batch: dict, online: bool):
    """V, the balance model, its temperature, the universal actor, Q, the target critics."""
    params = state.params
    obs = batch["observations"]
    rng, balance_key, beta_key = jax.random.split(state.rng, 3)

    (loss_v, v_mean), value_grads = jax.value_and_grad(value_loss, has_aux=True)(
        params.value, params, state.target_critic, batch, config
    )
    value_params, value_opt = _adam_step(
        config.value_lr, value_grads, state.value_opt, params.value
    )
    params = params.replace(value=value_params)

    temperature = jnp.exp(params.log_temperature)
    (loss_b, (log_prob_b, beta_b)), balance_grads = jax.value_and_grad(balance_loss, has_aux=True)(
        params.balance, params, state.target_critic, obs, temperature, balance_key, config
    )
    balance_params, balance_opt = _adam_step(
        config.balance_lr, balance_grads, state.balance_opt, params.balance
    )
    entropy = -log_prob_b.mean()
    loss_t, temperature_grad = jax.value_and_grad(balance_temperature_loss)(
        params.log_temperature, entropy, config.balance_target_entropy
    )
    log_temperature, temperature_opt = _adam_step(
        config.temperature_lr, temperature_grad, state.temperature_opt, params.log_temperature
    )

    # The actor's beta comes from the balance model before this step's update (jax_iql).
    beta = _row_beta(config, params.balance, obs, beta_key, online)
    (loss_u, aux), actor_grads = jax.value_and_grad(awr_actor_loss, has_aux=True)(
        params.actor, params, state.target_critic, batch, beta, config
    )
    actor_params, actor_opt = _adam_step(
        config.actor_lr, actor_grads, state.actor_opt, params.actor
    )

    (loss_q, q_mean), critic_grads = jax.value_and_grad(critic_loss, has_aux=True)(
        params.critic, params, batch, config
    )
    critic_params, critic_opt = _adam_step(
        config.critic_lr, critic_grads, state.critic_opt, params.critic
    )
    params = params.replace(
        actor=actor_params,
        balance=balance_params,
        critic=critic_params,
        log_temperature=log_temperature,
    )
    state = state.replace(
        params=params,
        target_critic=optax.incremental_update(critic_params, state.target_critic, config.tau),
        actor_opt=actor_opt,
        critic_opt=critic_opt,
        value_opt=value_opt,
        balance_opt=balance_opt,
        temperature_opt=temperature_opt,
        rng=rng,
        step=state.step + 1,
    )
    metrics = {
        "value_loss": loss_v,
        "actor_loss": loss_u,
        "critic_loss": loss_q,
        "balance_loss": loss_b,
        "temperature_loss": loss_t,
        "balance_temperature": temperature,
        "balance_entropy": entropy,
        "balance_beta_mean": beta_b.mean(),
        "beta_mean": beta.mean(),
        "v_mean": v_mean,
        "q_mean": q_mean,
        "advantage_mean": aux["advantage"],
        "awr_weight_mean": aux["weight"],
        "grad_norm": optax.tree.norm(critic_grads),
        "actor_grad_norm": optax.tree.norm(actor_grads),
    }
    return state, metrics


def _cql_step(config: Config, state, batch: dict, online: bool):
    """Every gradient at the same parameters (JaxCQL), then each optimizer steps."""
    params = state.params
    action_dim = params.action_dim
    _, critic, _ = _networks(config, action_dim)
    obs, next_obs = batch["observations"], batch["next_observations"]
    keys = jax.random.split(state.rng, 8)
    rng, beta_key, actor_key, balance_key, next_key, random_key, pi_key, next_pi_key = keys

    beta = _row_beta(config, params.balance, obs, beta_key, online)
    (loss_u, log_prob), actor_grads = jax.value_and_grad(q_weighted_actor_loss, has_aux=True)(
        params.actor, params, obs, beta, actor_key, config
    )
    loss_alpha, alpha_grad = jax.value_and_grad(alpha_loss)(
        params.log_temperature, log_prob, -float(action_dim)
    )
    (loss_b, (_, beta_b)), balance_grads = jax.value_and_grad(balance_loss, has_aux=True)(
        params.balance, params, params.critic, obs, 0.0, balance_key, config
    )

    next_action, _ = universal_sample(config, params.actor, next_obs, beta, next_key, action_dim)
    q_next = critic.apply(state.target_critic, next_obs, next_action).min(0)
    target = batch["rewards"] + config.gamma * (1.0 - batch["terminals"]) * q_next

    n = config.cql_n_actions
    shape = (obs.shape[0], n, action_dim)
    random_actions = jax.random.uniform(random_key, shape, minval=-1.0, maxval=1.0)
    repeat = lambda x: jnp.repeat(x[:, None], n, 1)  # noqa: E731
    pi_actions = universal_sample(
        config, params.actor, repeat(obs), repeat(beta), pi_key, action_dim
    )
    next_pi_actions = universal_sample(
        config, params.actor, repeat(next_obs), repeat(beta), next_pi_key, action_dim
    )
    cql_actions = (
        random_actions,
        jax.lax.stop_gradient(next_pi_actions),
        jax.lax.stop_gradient(pi_actions),
    )
    (loss_q, (gap, q_mean)), critic_grads = jax.value_and_grad(
        conservative_critic_loss, has_aux=True
    )(params.critic, batch, target, cql_actions, config)

    actor_params, actor_opt = _adam_step(
        config.actor_lr, actor_grads, state.actor_opt, params.actor
    )
    log_temperature, temperature_opt = _adam_step(
        config.temperature_lr, alpha_grad, state.temperature_opt, params.log_temperature
    )
    balance_params, balance_opt = _adam_step(
        config.balance_lr, balance_grads, state.balance_opt, params.balance
    )
    critic_params, critic_opt = _adam_step(
        config.critic_lr, critic_grads, state.critic_opt, params.critic
    )
    params = params.replace(
        actor=actor_params,
        balance=balance_params,
        critic=critic_params,
        log_temperature=log_temperature,
    )
    state = state.replace(
        params=params,
        target_critic=optax.incremental_update(critic_params, state.target_critic, config.tau),
        actor_opt=actor_opt,
        critic_opt=critic_opt,
        balance_opt=balance_opt,
        temperature_opt=temperature_opt,
        rng=rng,
        step=state.step + 1,
    )
    metrics = {
        "actor_loss": loss_u,
        "critic_loss": loss_q,
        "balance_loss": loss_b,
        "alpha_loss": loss_alpha,
        "alpha": jnp.exp(params.log_temperature),
        "entropy": -log_prob.mean(),
        "balance_beta_mean": beta_b.mean(),
        "beta_mean": beta.mean(),
        "cql_gap": gap.mean(),
        "q_mean": q_mean,
        "target_mean": target.mean(),
        "grad_norm": optax.tree.norm(critic_grads),
        "actor_grad_norm": optax.tree.norm(actor_grads),
    }
    return state, metrics


def _gradient_step(config: Config, state, batch: dict, online: bool):
    """One gradient step on a raw batch; ``state`` a TrainState or an OnlineState (the fields it
    reads and writes are common to both). Offline, the actor's beta is uniform on the range;
    online, the balance model's."""
    params = state.params
    batch = batch | {
        "observations": _normalize(params, batch["observations"]),
        "next_observations": _normalize(params, batch["next_observations"]),
        "rewards": state.reward_scale * batch["rewards"] + state.reward_shift,
    }
    step = _iql_step if config.variant == "iql" else _cql_step
    return step(config, state, batch, online)


def update_on_batch(config: Config, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    """One offline gradient step (beta uniform on the range) on a given batch."""
    return _gradient_step(config, state, batch, online=False)


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
    """beta at the balance model's mode, then pi_u(.|s, enc(beta)): its mean (through tanh) when
    deterministic, else a sample; in [-1, 1]."""
    obs = _normalize(params, obs)
    beta = balance_mode(config, params.balance, obs)
    actor, _, _ = _networks(config, params.action_dim)
    mean, log_std = actor.apply(params.actor, _policy_input(config, obs, beta))
    if config.variant == "cql":
        return jnp.tanh(mean) if deterministic else sample_action(mean, log_std, rng)[0]
    if deterministic:
        return mean
    log_std = jnp.clip(log_std, config.log_std_min, config.log_std_max)
    return jnp.clip(mean + jnp.exp(log_std) * jax.random.normal(rng, mean.shape), -1.0, 1.0)


# --- Online fine-tuning ---


def begin_online(config: Config, dataset, env, env_params, state: TrainState) -> OnlineState:
    """The offline state at the boundary, turned online: params, target critics, optimizers and
    reward transform carried over (the authors' learner goes on as it was), an empty replay of
    min(replay_size, online_steps) rows, freshly reset envs."""
    _check_shapes(config)
    rng, reset_key = jax.random.split(state.rng)
    obs, env_state = reset_envs(env, env_params, config.num_envs, reset_key)
    learner = {name: getattr(state, name) for name in TrainState.__dataclass_fields__}
    return OnlineState(
        **(learner | {"rng": rng}),
        replay=replay_init(min(config.replay_size, config.online_steps), dataset),
        env_state=env_state,
        obs=obs,
    )


def update_online(
    config: Config, dataset, env, env_params, state: OnlineState
) -> tuple[OnlineState, dict]:
    """One step of num_envs envs with the stochastic policy (beta at the balance model's mode),
    then utd_ratio gradient steps (beta from the balance model) on batches mixing
    offline_fraction dataset rows with online ones."""
    rng, collect_key, learn_key = jax.random.split(state.rng, 3)
    policy = lambda obs, key: act(config, state.params, obs, key)  # noqa: E731
    rows, env_state, obs, episodes = collect(
        env, env_params, policy, state.env_state, state.obs, collect_key, 1
    )
    replay = replay_add(state.replay, rows)
    offline = {k: getattr(dataset, k) for k in ONLINE_KEYS}

    def gradient_step(state, key):
        batch = mixed_batch(offline, replay, config.offline_fraction, config.batch_size, key)
        return _gradient_step(config, state, batch, online=True)

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

    # The offline phase on a small dataset: a noisy swing-up controller on Pendulum, torque
    # scaled to [-1, 1]. (The online phase needs rljax's env wrappers: `rljax train famo2o`.)
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

    def demo(variant):
        config = Config(variant=variant, total_updates=20_000, hidden_sizes=(64, 64))
        start = time.time()
        state, metrics = jax.block_until_ready(
            jax.jit(lambda key: train(config, dataset, key))(jax.random.PRNGKey(1))
        )
        print(f"FamO2O ({variant} variant) on {episodes} noisy swing-up episodes of Pendulum-v1: "
              f"{config.total_updates} updates in {time.time() - start:.1f}s")  # fmt: skip
        for i in np.linspace(0, config.total_updates - 1, 5).astype(int):
            losses = {
                k: float(metrics[k][i])
                for k in ("critic_loss", "actor_loss", "balance_loss", "balance_beta_mean")
            }
            print(f"  update {i + 1:>6d}  " + "  ".join(f"{k} {v:.3f}" for k, v in losses.items()))
        greedy = lambda o, _: act(config, state.params, o, None, deterministic=True)  # noqa: E731
        returns = jax.jit(jax.vmap(lambda k: rollout(k, greedy)[2].sum()))(
            jax.random.split(keys[0], 10)
        )
        print(f"  dataset return {float(rewards.sum(1).mean()):.1f}, greedy policy return "
              f"{float(returns.mean()):.1f} over 10 episodes")  # fmt: skip

    demo("iql")
    demo("cql")
