"""Soft actor-critic with a probabilistic mixture-of-experts policy (PMOE-SAC).

Ren, Li, Ding, Pan, Dong, "Probabilistic Mixture-of-Experts for Efficient Deep Reinforcement
Learning", arXiv 2104.09122 (2021), as the first author's code implements it
(github.com/quantumiracle/Popular-RL-Algorithms, pmoe_sac.py); SAC as in ``sac.py``.

The policy mixes K tanh-Gaussian experts, pi(a|s) = sum_k w_k(s) pi_k(a|s), with a router
w(s) = softmax(Linear(s)) on the raw observation. Each gradient step samples every expert:

    a_k ~ pi_k(.|s) reparameterized,  q_k = min_i Q_i(s, a_k),  k* = argmax_k q_k
    L_pi    = mean(alpha log pi_k*(a_k*|s) - q_k*) + L_w     only the winner gets the gradient
    L_w     = mean((w(s) - onehot(k*))^2)                    the router regresses onto the winner
    k' ~ Cat(w(s')),  a' ~ pi_k'(.|s')
    y       = r~ + gamma (1 - terminated) (min_i Qbar_i(s', a') - alpha log pi_k'(a'|s'))
    r~      = k (r - mean_B r) / (std_B r + 1e-6)            or k r without standardize_rewards
    L_Q     = 1/2 sum_i mean((Q_i(s, a) - y)^2)
    L_alpha = -mean(log alpha (log pi_k*(a_k*|s) + H)),      H = -dim(A)
    Qbar   <- (1 - tau) Qbar + tau Q

As in the authors' code: the entropy terms use the chosen expert's log-density, not the
mixture's; the router learns from L_w alone (log pi_k* does not depend on w), so its expected
target is how often each expert wins; rewards are standardized per batch and scaled by
k = ``reward_scale`` = 10; tau is 0.01; the experts' heads start at U(+-3e-3), so they begin
alike and the winner-take-all gradient pulls them apart. Where we differ: one ``hidden_sizes``
for the actor's trunk and the critics (the authors' actor has 4 layers of 512, their critics 3),
the SAC family's uniform warm-up (``learning_starts``) before the policy acts, and a
deterministic ``act`` that takes the router's most probable expert (the authors' samples it).
Time limits are bootstrapped through: only ``terminated`` cuts the target.
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
    'Ren et al., "Probabilistic Mixture-of-Experts for Efficient Deep Reinforcement Learning", '
    "arXiv 2021"
)

# Agents vmap env.reset and env.step over this axis; wrappers may pool statistics over it.
ENV_AXIS = "env"
LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0


def _field(default, *, static=False, bounds=None, choices=None, doc):
    """A config field. Static fields are shapes and switches (changing one recompiles); the
    rest are traced, so a sweep can vmap over them. bounds/choices let a runner validate; doc,
    the field's meaning in one line, is required so that no field goes unexplained."""
    metadata = {"bounds": bounds, "choices": choices, "doc": doc}
    return struct.field(pytree_node=not static, default=default, metadata=metadata)


@struct.dataclass
class Config:
    num_components: int = _field(
        2, static=True, bounds="[1, inf)", doc="experts K in the policy's Gaussian mixture"
    )
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
        300, static=True, bounds="[1, inf)", doc="transitions per gradient step"
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
        (512, 512, 512), static=True, doc="hidden-layer widths of the actor and both critics"
    )
    activation: str = _field(
        "relu", static=True, choices=("relu", "gelu", "tanh"), doc="activation of the hidden layers"
    )
    standardize_rewards: bool = _field(
        True, static=True, doc="standardize each batch's rewards before the scale (the authors')"
    )
    actor_lr: float = _field(3e-4, bounds="(0, inf)", doc="Adam learning rate of actor and router")
    critic_lr: float = _field(3e-4, bounds="(0, inf)", doc="Adam learning rate of the critics")
    alpha_lr: float = _field(
        3e-4, bounds="(0, inf)", doc="Adam learning rate of the temperature alpha"
    )
    gamma: float = _field(0.99, bounds="[0, 1]", doc="discount factor gamma")
    tau: float = _field(0.01, bounds="(0, 1]", doc="Polyak rate tau of the target critics")
    reward_scale: float = _field(10.0, bounds="(0, inf)", doc="reward scale k in the critic target")
    init_alpha: float = _field(1.0, bounds="(0, inf)", doc="initial temperature alpha")

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
    actor: Any  # the experts and the router
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


def _uniform(scale):
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(
        key, shape, dtype, -scale, scale
    )


class MixtureActor(nn.Module):
    """Each expert's mean and log standard deviation before the tanh, (..., K, dim(A)) each,
    from one trunk; and the router's weights w(s), (..., K), a softmax of a linear map of the
    observation itself."""

    action_dim: int
    num_components: int
    hidden_sizes: tuple
    activation: str

    @nn.compact
    def __call__(self, obs):
        x = _mlp(obs, self.hidden_sizes, self.activation)
        shape = (*obs.shape[:-1], self.num_components, self.action_dim)
        small = dict(kernel_init=_uniform(3e-3), bias_init=_uniform(3e-3))
        mean = nn.Dense(self.num_components * self.action_dim, **small, name="mean")(x)
        log_std = nn.Dense(self.num_components * self.action_dim, **small, name="log_std")(x)
        log_std = jnp.clip(log_std, LOG_STD_MIN, LOG_STD_MAX)
        weights = nn.softmax(nn.Dense(self.num_components, name="router")(obs))
        return mean.reshape(shape), log_std.reshape(shape), weights


class Critic(nn.Module):
    hidden_sizes: tuple
    activation: str

    @nn.compact
    def __call__(self, obs, action):
        x = _mlp(jnp.concatenate([obs, action], -1), self.hidden_sizes, self.activation)
        return jnp.squeeze(nn.Dense(1)(x), -1)


class TwinCritic(nn.Module):
    """Two independent critics evaluated as one vmapped network; outputs (2, ...)."""

    hidden_sizes: tuple
    activation: str

    @nn.compact
    def __call__(self, obs, action):
        twins = nn.vmap(
            Critic,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=None,
            axis_size=2,
        )
        return twins(self.hidden_sizes, self.activation)(obs, action)


def _networks(config: Config, action_dim: int) -> tuple[MixtureActor, TwinCritic]:
    hidden = tuple(config.hidden_sizes)
    actor = MixtureActor(action_dim, config.num_components, hidden, config.activation)
    return actor, TwinCritic(hidden, config.activation)


def sample_action(mean, log_std, low, high, rng):
    """A tanh-Gaussian action on the box [low, high] and its log density there."""
    noise = jax.random.normal(rng, mean.shape)
    squashed = jnp.tanh(mean + jnp.exp(log_std) * noise)
    half_range = (high - low) / 2
    gaussian_log_prob = -0.5 * noise**2 - log_std - 0.5 * jnp.log(2 * jnp.pi)
    log_det = jnp.log(half_range * (1 - squashed**2) + 1e-6)
    return low + half_range * (squashed + 1), (gaussian_log_prob - log_det).sum(-1)


def _pick(x, index):
    """The expert that ``index`` (...) names at each leading position: x (..., K) -> (...), or
    x (..., K, D) -> (..., D)."""
    if x.ndim == index.ndim + 1:
        return jnp.take_along_axis(x, index[..., None], -1)[..., 0]
    return jnp.take_along_axis(x, index[..., None, None], -2)[..., 0, :]


def sample_squashed_mixture(mean, log_std, weights, low, high, rng):
    """One expert k ~ Cat(w) per state, its tanh-Gaussian action on [low, high] and that
    expert's log density there (PMOE's acting rule and its next action in the critic target)."""
    expert_key, action_key = jax.random.split(rng)
    actions, log_probs = sample_action(mean, log_std, low, high, action_key)  # every expert
    k = jax.random.categorical(expert_key, jnp.log(weights))
    return _pick(actions, k), _pick(log_probs, k)


# --- Losses ---


def router_loss(weights, q):
    """mean((w - onehot(argmax_k q))^2) over states and experts: the router regresses onto the
    expert whose action scores best. ``weights`` and ``q`` are (..., K); q gets no gradient."""
    winner = jnp.argmax(q, -1)
    target = jax.nn.one_hot(winner, q.shape[-1], dtype=weights.dtype)
    return jnp.square(weights - target).mean()


def winner_loss(q, log_probs, weights, alpha):
    """PMOE's actor loss from every expert's value q (B, K) and log density log_probs (B, K):
    mean(alpha log pi_k* - q_k*) + L_w, with k* = argmax_k q_k. Only the winner's entries carry
    gradient. Returns (loss, aux): aux holds log pi_k*, L_w, k* and how often the router's
    favourite expert is the winner."""
    winner = jnp.argmax(q, -1)
    log_prob = _pick(log_probs, winner)
    loss_w = router_loss(weights, q)
    aux = {
        "log_prob": log_prob,
        "router_loss": loss_w,
        "winner": winner,
        "router_agreement": (jnp.argmax(weights, -1) == winner).mean(),
    }
    return (alpha * log_prob - _pick(q, winner)).mean() + loss_w, aux


def scaled_rewards(reward, config):
    """k (r - mean r) / (std r + 1e-6) over the batch (std with Bessel's correction, as torch's),
    or k r without ``standardize_rewards``."""
    if config.standardize_rewards:
        reward = (reward - reward.mean()) / (reward.std(ddof=1) + 1e-6)
    return config.reward_scale * reward


def critic_loss(critic_params, batch, next_action, next_log_prob, target_critic, alpha, config):
    """Soft Bellman error of both critics against the smaller target critic."""
    _, critic = _networks(config, batch["action"].shape[-1])
    q_next = critic.apply(target_critic, batch["next_obs"], next_action).min(0)
    discount = config.gamma * (1.0 - batch["terminated"])
    target = scaled_rewards(batch["reward"], config) + discount * (q_next - alpha * next_log_prob)
    q = critic.apply(critic_params, batch["obs"], batch["action"])
    loss = 0.5 * jnp.square(q - jax.lax.stop_gradient(target)).mean(-1).sum()
    return loss, q.mean()


def actor_loss(actor_params, params: Params, obs, rng, config):
    """Every expert samples an action; the critics pick the winner per state (winner_loss)."""
    actor, critic = _networks(config, params.action_dim)
    mean, log_std, weights = actor.apply(actor_params, obs)
    actions, log_probs = sample_action(mean, log_std, params.action_low, params.action_high, rng)
    obs_k = jnp.broadcast_to(obs[..., None, :], (*actions.shape[:-1], obs.shape[-1]))
    q = critic.apply(params.critic, obs_k, actions).min(0)  # (B, K)
    return winner_loss(q, log_probs, weights, jnp.exp(params.log_alpha))


def alpha_loss(log_alpha, log_prob, target_entropy):
    return -(log_alpha * (jax.lax.stop_gradient(log_prob) + target_entropy)).mean()


# --- The contract ---


def check(config: Config) -> None:
    """The rules across Config fields; the runner calls it on each concrete config."""
    if config.num_components < 1:
        raise ValueError(
            f"num_components={config.num_components} is out of range: the mixture needs at "
            "least 1 expert"
        )
    if config.standardize_rewards and config.batch_size < 2:
        raise ValueError(
            f"batch_size={config.batch_size} must be at least 2 with standardize_rewards: "
            "one reward has no standard deviation"
        )
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
            f"PMOE-SAC's MLPs take vector observations, got shape {obs_shape}; flatten them "
            "(rljax.envs.make(name, flatten_obs=True), or gymnax's FlattenObservationWrapper)"
        )
    bounds = getattr(space, "low", None), getattr(space, "high", None)
    finite = bounds[0] is not None and all(np.isfinite(b).all() for b in bounds)
    if not finite or len(space.shape) != 1:
        raise ValueError(
            f"PMOE-SAC needs a continuous action box with finite bounds, got a "
            f"{type(space).__name__} action space"
        )
    low, high = (np.broadcast_to(bound, space.shape) for bound in bounds)
    check(config)
    rng, actor_key, critic_key, env_key = jax.random.split(rng, 4)
    action_dim = space.shape[0]
    actor, critic = _networks(config, action_dim)
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

        next_action, next_log_prob = sample_squashed_mixture(
            *actor.apply(params.actor, batch["next_obs"]),
            params.action_low, params.action_high, next_key,
        )  # fmt: skip
        (loss_q, q_mean), critic_grads = jax.value_and_grad(critic_loss, has_aux=True)(
            params.critic, batch, next_action, next_log_prob, state.target_critic, alpha, config
        )
        updates, critic_opt = critic_optimizer.update(critic_grads, state.critic_opt)
        params = params.replace(critic=optax.apply_updates(params.critic, updates))

        (loss_pi, aux), actor_grads = jax.value_and_grad(actor_loss, has_aux=True)(
            params.actor, params, batch["obs"], actor_key, config
        )
        log_prob = aux["log_prob"]
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
            "router_loss": aux["router_loss"],
            "router_agreement": aux["router_agreement"],
            "alpha_loss": loss_alpha,
            "alpha": alpha,
            "entropy": -log_prob.mean(),
            "q_mean": q_mean,
            "grad_norm": optax.tree.norm(critic_grads),
            "actor_grad_norm": optax.tree.norm(actor_grads),
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
    """An expert k ~ Cat(w(s)) and its action; deterministic: the mean of the router's most
    probable expert, squashed onto the box."""
    actor, _ = _networks(config, params.action_dim)
    mean, log_std, weights = actor.apply(params.actor, obs)
    if deterministic:
        half_range = (params.action_high - params.action_low) / 2
        mode = _pick(mean, jnp.argmax(weights, -1))
        return params.action_low + half_range * (jnp.tanh(mode) + 1)
    return sample_squashed_mixture(
        mean, log_std, weights, params.action_low, params.action_high, rng
    )[0]


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
    # configs/sac_pmoe/pendulum.yaml: small networks, one gradient step per env step.
    config = Config(
        num_envs=4, utd_ratio=1.0, batch_size=128, learning_starts=1_000, total_timesteps=20_000,
        hidden_sizes=(64, 64), actor_lr=1e-3, critic_lr=1e-3, alpha_lr=1e-3,
    )  # fmt: skip
    start = time.time()
    _, metrics = jax.jit(lambda key: train(config, env, env_params, key))(jax.random.PRNGKey(0))
    returns = np.asarray(metrics["episode_return"])
    print(f"PMOE-SAC on {env_name}: {config.total_timesteps} steps in {time.time() - start:.1f}s")
    window = max(1, len(returns) // 10)
    for i in np.linspace(window - 1, len(returns) - 1, 10).astype(int):
        step = (i + 1) * config.steps_per_update
        print(f"  step {step:>8d}  return {np.nanmean(returns[i + 1 - window : i + 1]):8.1f}")
