"""Soft actor-critic with twin critics and an automatically tuned entropy temperature.

Haarnoja, Zhou, Abbeel, Levine, "Soft Actor-Critic: Off-Policy Maximum Entropy Deep
Reinforcement Learning with a Stochastic Actor", ICML 2018; Haarnoja et al., "Soft Actor-Critic
Algorithms and Applications", arXiv 1812.05905 (2018), for the twin critics and the temperature.

    a' ~ pi(.|s'),  y = k r + gamma (1 - terminated) (min_i Qbar_i(s', a') - alpha log pi(a'|s'))
    L_Q     = 1/2 sum_i mean((Q_i(s, a) - y)^2)
    L_pi    = mean(alpha log pi(a~|s) - min_i Q_i(s, a~)),   a~ reparameterized from pi(.|s)
    L_alpha = -mean(log alpha (log pi(a~|s) + H)),          H = -dim(A)
    Qbar   <- (1 - tau) Qbar + tau Q

pi is a Gaussian squashed by tanh onto the action box; k is ``reward_scale``. Each iteration
steps ``num_envs`` environments ``num_steps`` times (uniform random actions until
``learning_starts`` steps), stores the transitions in a replay buffer that lives in the train
state, then takes ``utd_ratio`` gradient steps per environment step. Time limits are bootstrapped
through: only ``terminated`` cuts the target.

``critic_weighting`` weighs the samples b of L_Q (default ``"uniform"``: the mean above, as ever):

    L_Q = 1/2 sum_i sum_b w_b (Q_i(s_b, a_b) - y_b)^2,   the w_b summing to 1 over the batch

``"biv"``: batch inverse-variance weights (BIV; Mai et al., "Sample Efficient Deep Reinforcement
Learning via Uncertainty Estimation", ICLR 2022, as in IV-RL's code),

    w_b = (1 / (sigma_b^2 + xi)) / sum_c 1 / (sigma_c^2 + xi)

with xi = 0 if the effective batch size 1 / sum_b w_b^2 is at least m = min(B - 1,
biv_minimal_size), else the xi that brings it to m (a bisection on log xi inside jit; IV-RL runs
Nelder-Mead). sigma_b^2 is the variance of the target over the ensemble that SAC has, its two
target critics: gamma^2 (1 - terminated) Var_i Qbar_i(s', a'). IV-RL's ensembles are larger; two
members make a rough estimate. The weights do not change if every sigma_b^2 is scaled alike.

``"ggd"``: GGD (Kim et al., "Generalized Gaussian Temporal Difference Error for Uncertainty-aware
Reinforcement Learning", arXiv 2408.02295). Each critic gets a beta-head on its last features
(their gradient stopped, so it never moves Q) that models the TD error delta = y - Q(s, a) as a
zero-mean generalized Gaussian of scale alpha = 1, trained by its negative log-likelihood

    NLL = |delta|^beta - log beta + log 2 + log Gamma(1/beta),   Var = Gamma(3/beta) / Gamma(1/beta)

(added to L_Q; it trains the heads alone), and BIV adds this aleatoric variance, averaged over
the two critics, to the ensemble's:
sigma_b^2 = gamma^2 (1 - terminated) Var_i Qbar_i(s', a') + Var(beta(s, a)). UNVERIFIED: the
beta-head, alpha = 1 and this sum are our reading of GGD (its code was not found); its
refinements of BIV (bias reduction, kurtosis) and its risk-averse weight are not built.
"""

from typing import Any

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
PAPER = (
    'Haarnoja et al., "Soft Actor-Critic: Off-Policy Maximum Entropy Deep Reinforcement '
    'Learning with a Stochastic Actor", ICML 2018'
)

# Agents vmap env.reset and env.step over this axis; wrappers may pool statistics over it.
ENV_AXIS = "env"
LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0
# The range of GGD's shape beta: 0.5 (tails heavier than a Laplace's) to 8 (near a uniform's).
BETA_MIN, BETA_MAX = 0.5, 8.0


def _field(default, *, static=False, bounds=None, choices=None, doc):
    """A config field. Static fields are shapes and switches (changing one recompiles); the
    rest are traced, so a sweep can vmap over them. bounds/choices let a runner validate; doc,
    the field's meaning in one line, is required so that no field goes unexplained."""
    metadata = {"bounds": bounds, "choices": choices, "doc": doc}
    return struct.field(pytree_node=not static, default=default, metadata=metadata)


@struct.dataclass
class Config:
    num_envs: int = _field(
        1, static=True, bounds="[1, inf)", doc="environments stepped in parallel"
    )
    num_steps: int = _field(
        1, static=True, bounds="[1, inf)", doc="env steps per environment per iteration"
    )
    utd_ratio: float = _field(
        1.0, static=True, bounds="(0, inf)", doc="gradient steps per env step"
    )
    batch_size: int = _field(
        256, static=True, bounds="[1, inf)", doc="transitions per gradient step"
    )
    buffer_size: int = _field(
        1_000_000, static=True, bounds="[1, inf)", doc="replay buffer capacity in transitions"
    )
    learning_starts: int = _field(
        5_000, static=True, bounds="[0, inf)", doc="random-action env steps before learning starts"
    )
    total_timesteps: int = _field(
        1_000_000, static=True, bounds="[1, inf)", doc="env steps summed over envs (the budget)"
    )
    hidden_sizes: tuple = _field(
        (256, 256), static=True, doc="hidden-layer widths of the actor and both critics"
    )
    activation: str = _field(
        "relu", static=True, choices=("relu", "gelu", "tanh"), doc="activation of the hidden layers"
    )
    critic_weighting: str = _field(
        "uniform",
        static=True,
        choices=("uniform", "biv", "ggd"),
        doc="weights of the critic loss's samples: uniform, batch inverse variance, BIV + GGD",
    )
    actor_lr: float = _field(3e-4, bounds="(0, inf)", doc="Adam learning rate of the actor")
    critic_lr: float = _field(3e-4, bounds="(0, inf)", doc="Adam learning rate of the critics")
    alpha_lr: float = _field(
        3e-4, bounds="(0, inf)", doc="Adam learning rate of the temperature alpha"
    )
    gamma: float = _field(0.99, bounds="[0, 1]", doc="discount factor gamma")
    tau: float = _field(0.005, bounds="(0, 1]", doc="Polyak rate tau of the target critics")
    reward_scale: float = _field(1.0, bounds="(0, inf)", doc="reward scale k in the critic target")
    init_alpha: float = _field(1.0, bounds="(0, inf)", doc="initial temperature alpha")
    biv_minimal_size: float = _field(
        32, bounds="[1, inf)", doc="BIV's smallest effective batch size m (at most batch_size - 1)"
    )

    @property
    def steps_per_update(self) -> int:
        return self.num_envs * self.num_steps

    @property
    def num_updates(self) -> int:
        return self.total_timesteps // self.steps_per_update

    @property
    def gradient_steps(self) -> int:
        return round(self.utd_ratio * self.steps_per_update)


@struct.dataclass
class Params:
    actor: Any
    critic: Any  # both critics, stacked on a leading axis of 2
    log_alpha: jax.Array
    action_low: jax.Array  # the action box, so act() can map tanh outputs onto it
    action_high: jax.Array
    action_dim: int = struct.field(pytree_node=False)  # the action box's dimension


@struct.dataclass
class Buffer:
    data: Any  # a pytree of (capacity, ...) arrays
    position: jax.Array  # the slot written next
    size: jax.Array  # slots filled so far


@struct.dataclass
class TrainState:
    params: Params
    target_critic: Any
    actor_opt: Any
    critic_opt: Any
    alpha_opt: Any
    buffer: Buffer
    env_state: Any
    obs: jax.Array  # (num_envs, obs_dim)
    rng: jax.Array
    update_step: jax.Array  # iterations done so far


# --- Replay buffer ---


def buffer_init(capacity: int, example) -> Buffer:
    data = jax.tree.map(lambda x: jnp.zeros((capacity, *x.shape), x.dtype), example)
    return Buffer(data, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))


def buffer_add(buffer: Buffer, items) -> Buffer:
    """Writes a batch of items (leading axis n <= capacity), overwriting the oldest."""
    capacity = jax.tree.leaves(buffer.data)[0].shape[0]
    n = jax.tree.leaves(items)[0].shape[0]
    slots = (buffer.position + jnp.arange(n)) % capacity
    data = jax.tree.map(lambda d, x: d.at[slots].set(x), buffer.data, items)
    return Buffer(data, (buffer.position + n) % capacity, jnp.minimum(buffer.size + n, capacity))


def buffer_sample(buffer: Buffer, rng: jax.Array, batch_size: int):
    """Uniform over the filled slots, with replacement."""
    slots = jax.random.randint(rng, (batch_size,), 0, buffer.size)
    return jax.tree.map(lambda d: d[slots], buffer.data)


# --- Networks ---


def _mlp(x, hidden_sizes, activation):
    activation = {"relu": nn.relu, "gelu": nn.gelu, "tanh": nn.tanh}[activation]
    for size in hidden_sizes:
        x = activation(nn.Dense(size)(x))
    return x


class Actor(nn.Module):
    """Mean and log standard deviation of the Gaussian before the tanh."""

    action_dim: int
    hidden_sizes: tuple
    activation: str

    @nn.compact
    def __call__(self, obs):
        x = _mlp(obs, self.hidden_sizes, self.activation)
        mean = nn.Dense(self.action_dim)(x)
        log_std = jnp.clip(nn.Dense(self.action_dim)(x), LOG_STD_MIN, LOG_STD_MAX)
        return mean, log_std


class Critic(nn.Module):
    """Q(s, a); with ``beta_head`` also GGD's shape beta(s, a), read from the last features with
    their gradient stopped. A critic without the head ignores its weights."""

    hidden_sizes: tuple
    activation: str
    beta_head: bool = False

    @nn.compact
    def __call__(self, obs, action):
        x = _mlp(jnp.concatenate([obs, action], -1), self.hidden_sizes, self.activation)
        q = jnp.squeeze(nn.Dense(1)(x), -1)
        if not self.beta_head:
            return q
        raw = jnp.squeeze(nn.Dense(1, name="beta_head")(jax.lax.stop_gradient(x)), -1)
        return q, BETA_MIN + (BETA_MAX - BETA_MIN) * nn.sigmoid(raw)


class TwinCritic(nn.Module):
    """Two independent critics evaluated as one vmapped network; outputs (2, ...)."""

    hidden_sizes: tuple
    activation: str
    beta_head: bool = False

    @nn.compact
    def __call__(self, obs, action):
        twins = nn.vmap(
            Critic,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=None,
            axis_size=2,
        )
        return twins(self.hidden_sizes, self.activation, self.beta_head)(obs, action)


def _networks(config: Config, action_dim: int) -> tuple[Actor, TwinCritic]:
    hidden = tuple(config.hidden_sizes)
    return Actor(action_dim, hidden, config.activation), TwinCritic(hidden, config.activation)


def sample_action(mean, log_std, low, high, rng):
    """A tanh-Gaussian action on the box [low, high] and its log density there."""
    noise = jax.random.normal(rng, mean.shape)
    squashed = jnp.tanh(mean + jnp.exp(log_std) * noise)
    half_range = (high - low) / 2
    gaussian_log_prob = -0.5 * noise**2 - log_std - 0.5 * jnp.log(2 * jnp.pi)
    log_det = jnp.log(half_range * (1 - squashed**2) + 1e-6)
    return low + half_range * (squashed + 1), (gaussian_log_prob - log_det).sum(-1)


# --- Losses ---


def ggd_nll(delta, beta):
    """Negative log density at delta of the zero-mean generalized Gaussian of scale 1, shape beta:
    |delta|^beta - log beta + log 2 + log Gamma(1/beta). beta = 2 is the Gaussian of variance
    1/2, beta = 1 the Laplace of scale 1."""
    magnitude = jnp.abs(delta)
    positive = magnitude > 0
    # |0|^beta = 0, with a zero (not NaN) gradient in beta.
    power = jnp.where(positive, jnp.exp(beta * jnp.log(jnp.where(positive, magnitude, 1.0))), 0.0)
    return power - jnp.log(beta) + jnp.log(2.0) + jax.scipy.special.gammaln(1.0 / beta)


def ggd_variance(beta):
    """The variance Gamma(3/beta) / Gamma(1/beta) of the generalized Gaussian of scale 1."""
    gammaln = jax.scipy.special.gammaln
    return jnp.exp(gammaln(3.0 / beta) - gammaln(1.0 / beta))


def biv_weights(variance, minimal_size, valid=None):
    """Batch inverse-variance weights (IV-RL), summing to 1 over the valid samples; (weights, xi).

    w_i = (1 / (var_i + xi)) / sum_j 1 / (var_j + xi), with xi = 0 when the effective batch size
    1 / sum_i w_i^2 is at least m = min(n - 1, minimal_size) (n valid samples), else the xi that
    brings it to m: a bisection on log xi, as the effective batch size grows with xi (IV-RL runs
    Nelder-Mead). Invalid samples weigh 0. Variances are floored at 1e-8 (a terminal target's
    spread is 0) and carry no gradient.
    """
    variance = jnp.maximum(jax.lax.stop_gradient(variance), 1e-8)
    valid = jnp.ones(variance.shape, bool) if valid is None else valid
    n = valid.sum()
    m = jnp.minimum(n - 1, minimal_size)

    def weights(xi):
        inverse = jnp.where(valid, 1.0 / (variance + xi), 0.0)
        return inverse / jnp.maximum(inverse.sum(), 1e-30)

    def short(xi):  # the effective batch size falls short of m
        return 1.0 / jnp.square(weights(xi)).sum() < m

    # At xi = n max(var) the weights lie within a factor 1 + 1/n: the effective batch size is
    # above n - 1/(4n) > m, so the root lies in (0, high].
    high = n * jnp.where(valid, variance, 0.0).max()

    def bisect(_, bounds):
        low, high = bounds
        middle = jnp.sqrt(low) * jnp.sqrt(high)
        return jnp.where(short(middle), middle, low), jnp.where(short(middle), high, middle)

    _, xi = jax.lax.fori_loop(0, 40, bisect, (1e-12 * high, high))
    xi = jnp.where(short(0.0), xi, 0.0)
    return weights(xi), xi


def critic_loss(critic_params, batch, next_action, next_log_prob, target_critic, alpha, config):
    """Soft Bellman error of both critics against the smaller target critic, its samples weighed
    as ``config.critic_weighting`` says; returns (loss, metrics)."""
    _, critic = _networks(config, batch["action"].shape[-1])
    q_next_each = critic.apply(target_critic, batch["next_obs"], next_action)  # (2, batch)
    q_next = q_next_each.min(0)
    discount = config.gamma * (1.0 - batch["terminated"])
    target = config.reward_scale * batch["reward"] + discount * (q_next - alpha * next_log_prob)
    if config.critic_weighting == "uniform":
        q = critic.apply(critic_params, batch["obs"], batch["action"])
        loss = 0.5 * jnp.square(q - jax.lax.stop_gradient(target)).mean(-1).sum()
        return loss, {"q_mean": q.mean()}
    # The target's spread over the twin target critics (epistemic), through the discount.
    variance = jnp.square(discount) * q_next_each.var(0)
    metrics = {}
    if config.critic_weighting == "ggd":
        q, beta = critic.clone(beta_head=True).apply(critic_params, batch["obs"], batch["action"])
        nll = ggd_nll(jax.lax.stop_gradient(target - q), beta).mean(-1).sum()
        variance = variance + ggd_variance(jax.lax.stop_gradient(beta)).mean(0)
        metrics = {"ggd_nll": nll, "ggd_beta": beta.mean()}
    else:
        q, nll = critic.apply(critic_params, batch["obs"], batch["action"]), 0.0
    weights, xi = biv_weights(variance, config.biv_minimal_size)
    loss = 0.5 * (weights * jnp.square(q - jax.lax.stop_gradient(target))).sum(-1).sum() + nll
    metrics |= {"biv_xi": xi, "effective_batch_size": 1.0 / jnp.square(weights).sum()}
    return loss, {"q_mean": q.mean(), **metrics}


def actor_loss(actor_params, params: Params, obs, rng, config):
    actor, critic = _networks(config, params.action_dim)
    mean, log_std = actor.apply(actor_params, obs)
    action, log_prob = sample_action(mean, log_std, params.action_low, params.action_high, rng)
    q = critic.apply(params.critic, obs, action).min(0)
    alpha = jnp.exp(params.log_alpha)
    return (alpha * log_prob - q).mean(), log_prob


def alpha_loss(log_alpha, log_prob, target_entropy):
    return -(log_alpha * (jax.lax.stop_gradient(log_prob) + target_entropy)).mean()


# --- The contract ---


def check(config: Config) -> None:
    """The rules across Config fields; the runner calls it on each concrete config."""
    if abs(config.utd_ratio * config.steps_per_update - config.gradient_steps) > 1e-6:
        raise ValueError(
            f"utd_ratio * num_envs * num_steps = {config.utd_ratio * config.steps_per_update} "
            "must be a whole number of gradient steps per iteration (at least 1)"
        )
    if config.gradient_steps < 1:
        raise ValueError(f"utd_ratio={config.utd_ratio} gives no gradient step per iteration")
    if config.buffer_size < max(config.steps_per_update, config.learning_starts):
        raise ValueError(
            f"buffer_size={config.buffer_size} must hold one iteration's transitions "
            f"(num_envs * num_steps = {config.steps_per_update}) and learning_starts="
            f"{config.learning_starts}"
        )


def init(config: Config, env, env_params, rng: jax.Array) -> TrainState:
    obs_shape = env.observation_space(env_params).shape
    space = env.action_space(env_params)
    if len(obs_shape) != 1:
        raise ValueError(
            f"SAC's MLPs take vector observations, got shape {obs_shape}; flatten them "
            "(rljax.envs.make(name, flatten_obs=True), or gymnax's FlattenObservationWrapper)"
        )
    bounds = getattr(space, "low", None), getattr(space, "high", None)
    finite = bounds[0] is not None and all(np.isfinite(b).all() for b in bounds)
    if not finite or len(space.shape) != 1:
        raise ValueError(
            f"SAC needs a continuous action box with finite bounds, got a "
            f"{type(space).__name__} action space"
        )
    low, high = (np.broadcast_to(bound, space.shape) for bound in bounds)
    if config.critic_weighting not in ("uniform", "biv", "ggd"):
        raise ValueError(
            f"critic_weighting={config.critic_weighting!r} is not allowed; choose one of "
            "['uniform', 'biv', 'ggd']"
        )
    check(config)
    rng, actor_key, critic_key, env_key = jax.random.split(rng, 4)
    action_dim = space.shape[0]
    actor, critic = _networks(config, action_dim)
    # GGD's beta-heads: the same weights, and one more head per critic that Q ignores.
    critic = critic.clone(beta_head=config.critic_weighting == "ggd")
    dummy_obs, dummy_action = jnp.zeros(obs_shape), jnp.zeros(action_dim)
    params = Params(
        actor=actor.init(actor_key, dummy_obs),
        critic=critic.init(critic_key, dummy_obs, dummy_action),
        log_alpha=jnp.log(jnp.asarray(config.init_alpha, jnp.float32)),
        action_low=jnp.asarray(low, jnp.float32),
        action_high=jnp.asarray(high, jnp.float32),
        action_dim=int(action_dim),
    )
    example = {
        "obs": dummy_obs,
        "action": dummy_action,
        "reward": jnp.zeros(()),
        "next_obs": dummy_obs,
        "terminated": jnp.zeros(()),
    }
    reset = jax.vmap(env.reset, in_axes=(0, None), axis_name=ENV_AXIS)
    obs, env_state = reset(jax.random.split(env_key, config.num_envs), env_params)
    return TrainState(
        params=params,
        target_critic=params.critic,
        actor_opt=optax.adam(config.actor_lr).init(params.actor),
        critic_opt=optax.adam(config.critic_lr).init(params.critic),
        alpha_opt=optax.adam(config.alpha_lr).init(params.log_alpha),
        buffer=buffer_init(config.buffer_size, example),
        env_state=env_state,
        obs=obs,
        rng=rng,
        update_step=jnp.zeros((), jnp.int32),
    )


def update(config: Config, env, env_params, state: TrainState) -> tuple[TrainState, dict]:
    """One iteration: num_steps x num_envs environment steps, then the gradient steps."""
    step = jax.vmap(env.step, in_axes=(0, 0, 0, None), axis_name=ENV_AXIS)
    params = state.params
    action_dim = params.action_dim
    actor, _ = _networks(config, action_dim)
    action_shape = (config.num_envs, action_dim)
    steps_before = state.update_step * config.steps_per_update

    # --- Collect ---
    def env_step(carry, t):
        env_state, obs, rng = carry
        rng, random_key, policy_key, step_key = jax.random.split(rng, 4)
        random_action = jax.random.uniform(
            random_key, action_shape, minval=params.action_low, maxval=params.action_high
        )
        policy_action = act(config, params, obs, policy_key)
        warming_up = steps_before + t * config.num_envs < config.learning_starts
        action = jnp.where(warming_up, random_action, policy_action)
        step_keys = jax.random.split(step_key, config.num_envs)
        next_obs, env_state, reward, terminated, truncated, info = step(
            step_keys, env_state, action, env_params
        )
        transition = {
            "obs": obs,
            "action": action,
            "reward": reward.astype(jnp.float32),
            "next_obs": info.pop("final_observation"),  # before any auto-reset
            "terminated": terminated.astype(jnp.float32),
        }
        return (env_state, next_obs, rng), (transition, info)

    (env_state, obs, rng), (transitions, infos) = jax.lax.scan(
        env_step, (state.env_state, state.obs, state.rng), jnp.arange(config.num_steps)
    )
    flat = jax.tree.map(lambda x: x.reshape(config.steps_per_update, *x.shape[2:]), transitions)
    buffer = buffer_add(state.buffer, flat)
    state = state.replace(buffer=buffer, env_state=env_state, obs=obs)

    # --- Learn ---
    actor_optimizer = optax.adam(config.actor_lr)
    critic_optimizer = optax.adam(config.critic_lr)
    alpha_optimizer = optax.adam(config.alpha_lr)
    target_entropy = -float(action_dim)

    def gradient_step(state: TrainState, rng):
        sample_key, next_key, actor_key = jax.random.split(rng, 3)
        params = state.params
        batch = buffer_sample(buffer, sample_key, config.batch_size)
        alpha = jnp.exp(params.log_alpha)

        next_mean, next_log_std = actor.apply(params.actor, batch["next_obs"])
        next_action, next_log_prob = sample_action(
            next_mean, next_log_std, params.action_low, params.action_high, next_key
        )
        (loss_q, critic_metrics), critic_grads = jax.value_and_grad(critic_loss, has_aux=True)(
            params.critic, batch, next_action, next_log_prob, state.target_critic, alpha, config
        )
        updates, critic_opt = critic_optimizer.update(critic_grads, state.critic_opt)
        params = params.replace(critic=optax.apply_updates(params.critic, updates))

        (loss_pi, log_prob), actor_grads = jax.value_and_grad(actor_loss, has_aux=True)(
            params.actor, params, batch["obs"], actor_key, config
        )
        updates, actor_opt = actor_optimizer.update(actor_grads, state.actor_opt)
        params = params.replace(actor=optax.apply_updates(params.actor, updates))

        loss_alpha, alpha_grad = jax.value_and_grad(alpha_loss)(
            params.log_alpha, log_prob, target_entropy
        )
        updates, alpha_opt = alpha_optimizer.update(alpha_grad, state.alpha_opt)
        params = params.replace(log_alpha=optax.apply_updates(params.log_alpha, updates))

        target_critic = optax.incremental_update(params.critic, state.target_critic, config.tau)
        state = state.replace(
            params=params,
            target_critic=target_critic,
            actor_opt=actor_opt,
            critic_opt=critic_opt,
            alpha_opt=alpha_opt,
        )
        metrics = {
            "critic_loss": loss_q,
            "actor_loss": loss_pi,
            "alpha_loss": loss_alpha,
            "alpha": alpha,
            "entropy": -log_prob.mean(),
            "grad_norm": optax.tree.norm(critic_grads),
            "actor_grad_norm": optax.tree.norm(actor_grads),
            **critic_metrics,
        }
        return state, metrics

    def learn(state, rng):
        keys = jax.random.split(rng, config.gradient_steps)
        state, metrics = jax.lax.scan(gradient_step, state, keys)
        return state, jax.tree.map(jnp.mean, metrics)

    def wait(state, rng):  # warm-up: same outputs as learn, nothing learned
        shapes = jax.eval_shape(learn, state, rng)[1]
        return state, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

    rng, learn_key = jax.random.split(rng)
    ready = steps_before + config.steps_per_update >= jnp.maximum(config.learning_starts, 1)
    # The buffer is read, not written, while learning: keep it out of the cond's outputs,
    # so XLA never copies it.
    state, metrics = jax.lax.cond(ready, learn, wait, state.replace(buffer=None), learn_key)
    state = state.replace(buffer=buffer)
    state = state.replace(rng=rng, update_step=state.update_step + 1)
    return state, {**metrics, **_episode_metrics(infos)}


def train(config: Config, env, env_params, rng: jax.Array, num_updates: int | None = None):
    """init, then num_updates (default: total_timesteps // steps_per_update) updates."""
    num_updates = config.num_updates if num_updates is None else num_updates
    state = init(config, env, env_params, rng)
    return jax.lax.scan(lambda s, _: update(config, env, env_params, s), state, None, num_updates)


def act(
    config: Config, params: Params, obs: jax.Array, rng: jax.Array, deterministic: bool = False
):
    actor, _ = _networks(config, params.action_dim)
    mean, log_std = actor.apply(params.actor, obs)
    if deterministic:
        half_range = (params.action_high - params.action_low) / 2
        return params.action_low + half_range * (jnp.tanh(mean) + 1)
    return sample_action(mean, log_std, params.action_low, params.action_high, rng)[0]


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

    env_name = sys.argv[1] if len(sys.argv) > 1 else "Pendulum-v1"
    env, env_params = gymnax.make(env_name)
    env = LogWrapper(env)
    # configs/sac/pendulum.yaml: small networks, one gradient step per env step.
    config = Config(
        num_envs=4, utd_ratio=1.0, batch_size=128, learning_starts=1_000, total_timesteps=20_000,
        hidden_sizes=(64, 64), actor_lr=1e-3, critic_lr=1e-3, alpha_lr=1e-3,
    )  # fmt: skip
    start = time.time()
    _, metrics = jax.jit(lambda key: train(config, env, env_params, key))(jax.random.PRNGKey(0))
    returns = np.asarray(metrics["episode_return"])
    print(f"SAC on {env_name}: {config.total_timesteps} steps in {time.time() - start:.1f}s")
    window = max(1, len(returns) // 10)
    for i in np.linspace(window - 1, len(returns) - 1, 10).astype(int):
        step = (i + 1) * config.steps_per_update
        print(f"  step {step:>8d}  return {np.nanmean(returns[i + 1 - window : i + 1]):8.1f}")
