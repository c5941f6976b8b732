"""DSAC-T: distributional soft actor-critic with three refinements.

Duan, Wang, Xiao, Gao, Li, Liu, Li, Li, Cheng, "Distributional Soft Actor-Critic with Three
Refinements", IEEE TPAMI 47(5), 2025 (arXiv 2310.05858); authors' code: GOPS
``gops/algorithm/dsact.py`` and github.com/Jingliang-Duan/DSAC-v2 ``dsac_v2.py``.

Each critic is a Gaussian return distribution Z_i(s, a) = N(Q_i, sigma_i^2). With a' and
log pi'(a'|s') from the target policy, target critics Qbar_i, sigmabar_i and j = argmin_i Qbar_i
(refinement 2, twin value distributions: the critic with the smaller mean gives both targets):

    y_q = k r + gamma (1 - terminated) (Qbar_j(s', a') - alpha log pi'(a'|s'))
    y_z = k r + gamma (1 - terminated) (Qbar_j + clip(eps, -3, 3) sigmabar_j - alpha log pi')

Refinement 1 (expected value substitution): the mean is learned from y_q, the spread from the
sample y_z. Refinement 3 (variance-based critic gradient adjustment): with the moving average
b_i <- (1 - tau_b) b_i + tau_b mean(sigma_i) (started at the first batch mean), the sample is
clipped to y_z' = Q_i + clip(y_z - Q_i, -3 b_i, 3 b_i) and the gradient of the Gaussian negative
log likelihood is scaled by (b_i^2 + e), e = 0.1. ``critic_loss="paper"`` (default: the paper's
form, as in GOPS) is the loss whose gradient is exactly that, with the fractions held constant:

    L_i = (b_i^2 + e) mean(-(y_q - Q_i) / (sigma_i^2 + e) Q_i
                            - ((Q_i - y_z')^2 - sigma_i^2) / (sigma_i^3 + e) sigma_i)

``critic_loss="dsac_v2"`` is the standalone repository's variant: a Huber (delta 50) mean term,
the same spread term with Huber instead of the square, both weighted per sample by
clip(b_i^2 / (sigma_i^2 + e), 0.1, 10). The actor and the temperature are as in SAC,
with min_i Q_i(s, a~) over critic means; critics step every gradient step, the policy, the
temperature and the Polyak targets (critics and policy) every ``policy_delay`` steps, all from
gradients taken before the critic step. That delayed part (the policy's and the temperature's
losses, gradients and Adam steps, and the Polyak updates) runs inside a ``lax.cond`` on whether
any member is at its delayed step (``_any_member``), so the steps between skip it, under vmap
(seeds, sweeps) too; on those steps ``actor_loss``, ``alpha_loss``, ``entropy`` and
``actor_grad_norm`` repeat the last delayed step's values (zeros before the first), carried in
the state as ``actor_metrics``, and an iteration reports their mean over its gradient steps.
The defaults are the authors' MuJoCo settings (``example_train/dsacv2_mlp_mujoco_offserial.py``):
20 environment steps per gradient step.
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
PAPER = 'Duan et al., "Distributional Soft Actor-Critic with Three Refinements", IEEE TPAMI 2025'

# Agents vmap env.reset and env.step over this axis; wrappers may pool statistics over it.
ENV_AXIS = "env"
LOG_STD_MIN, LOG_STD_MAX = -20.0, 0.5  # the authors' policy clamp
EPS = 0.1  # e above: keeps the variance-based weights finite as sigma -> 0
SIGMA_CLIP = 3.0  # the sample noise and the bound 3 b, both in standard deviations


def _field(default, *, static=False, bounds=None, choices=None, doc):
    """A config field. Static fields are shapes and switches (changing one recompiles); the
    rest are traced, so a sweep can vmap over them. bounds/choices let a runner validate; doc,
    the field's meaning in one line, is required so that no field goes unexplained."""
    metadata = {"bounds": bounds, "choices": choices, "doc": doc}
    return struct.field(pytree_node=not static, default=default, metadata=metadata)


@struct.dataclass
class Config:
    num_envs: int = _field(
        20, static=True, bounds="[1, inf)", doc="environments stepped in parallel"
    )
    num_steps: int = _field(
        1, static=True, bounds="[1, inf)", doc="env steps per environment per iteration"
    )
    utd_ratio: float = _field(
        0.05, static=True, bounds="(0, inf)", doc="gradient steps per env step"
    )
    batch_size: int = _field(
        256, static=True, bounds="[1, inf)", doc="transitions per gradient step"
    )
    buffer_size: int = _field(
        1_000_000, static=True, bounds="[1, inf)", doc="replay buffer capacity in transitions"
    )
    learning_starts: int = _field(
        10_000, static=True, bounds="[0, inf)", doc="random-action env steps before learning starts"
    )
    total_timesteps: int = _field(
        30_000_000, static=True, bounds="[1, inf)", doc="env steps summed over envs (the budget)"
    )
    hidden_sizes: tuple = _field(
        (256, 256, 256), static=True, doc="hidden-layer widths of the actor and both critics"
    )
    activation: str = _field(
        "gelu", static=True, choices=("relu", "gelu", "tanh"), doc="activation of the hidden layers"
    )
    policy_delay: int = _field(
        2, static=True, bounds="[1, inf)", doc="gradient steps per policy, alpha and target update"
    )
    critic_loss: str = _field(
        "paper",
        static=True,
        choices=("paper", "dsac_v2"),
        doc="the paper's critic loss or DSAC-v2's Huber one",
    )
    actor_lr: float = _field(1e-4, bounds="(0, inf)", doc="Adam learning rate of the actor")
    critic_lr: float = _field(1e-4, bounds="(0, inf)", doc="Adam learning rate of the critics")
    alpha_lr: float = _field(
        3e-4, bounds="(0, inf)", doc="Adam learning rate of the temperature alpha"
    )
    gamma: float = _field(0.99, bounds="[0, 1]", doc="discount factor gamma")
    tau: float = _field(
        0.005, bounds="(0, 1]", doc="Polyak rate tau of the target critics and policy"
    )
    tau_b: float = _field(0.005, bounds="(0, 1]", doc="rate tau_b of the moving average b of sigma")
    reward_scale: float = _field(1.0, bounds="(0, inf)", doc="reward scale k in the critic target")
    init_alpha: float = _field(
        float(np.e), bounds="(0, inf)", doc="initial alpha (e: the authors' log alpha = 1)"
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


ACTOR_METRICS = ("actor_loss", "alpha_loss", "entropy", "actor_grad_norm")


@struct.dataclass
class TrainState:
    params: Params
    target_actor: Any
    target_critic: Any
    sigma_ema: jax.Array  # (2,) moving average of each critic's mean standard deviation
    actor_opt: Any
    critic_opt: Any
    alpha_opt: Any
    actor_metrics: dict  # ACTOR_METRICS of the last delayed step, reported again until the next
    buffer: Buffer
    env_state: Any
    obs: jax.Array  # (num_envs, obs_dim)
    rng: jax.Array
    update_step: jax.Array  # iterations done so far
    gradient_step: jax.Array  # gradient steps done so far; drives the delay


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
    """A Gaussian return distribution: its mean and its standard deviation (softplus)."""

    hidden_sizes: tuple
    activation: str

    @nn.compact
    def __call__(self, obs, action):
        x = _mlp(jnp.concatenate([obs, action], -1), self.hidden_sizes, self.activation)
        mean, raw_std = jnp.moveaxis(nn.Dense(2)(x), -1, 0)
        return mean, nn.softplus(raw_std)


class TwinCritic(nn.Module):
    """Two independent critics evaluated as one vmapped network; means and stds (2, ...)."""

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


def critic_targets(reward, discount, q_next, sigma_next, noise, next_log_prob, alpha):
    """Refinements 1 and 2: the expected target y_q and the sampled target y_z, both from the
    target critic with the smaller mean. q_next, sigma_next, noise: (2, batch)."""
    z_next = q_next + jnp.clip(noise, -SIGMA_CLIP, SIGMA_CLIP) * sigma_next
    first_smaller = q_next[0] < q_next[1]
    q_min = jnp.where(first_smaller, q_next[0], q_next[1])
    z_min = jnp.where(first_smaller, z_next[0], z_next[1])
    y_q = reward + discount * (q_min - alpha * next_log_prob)
    y_z = reward + discount * (z_min - alpha * next_log_prob)
    return y_q, y_z


def update_sigma_ema(sigma_ema, sigma, tau_b, first):
    """Refinement 3's moving average of each critic's batch-mean std, (2,)."""
    batch_mean = jax.lax.stop_gradient(sigma).mean(-1)
    return jnp.where(first, batch_mean, (1 - tau_b) * sigma_ema + tau_b * batch_mean)


def critic_loss(q, sigma, y_q, y_z, sigma_ema, form: str = "paper"):
    """Refinement 3: the variance-adjusted loss of both critics. q and sigma (2, batch) carry the
    gradient; everything else is held constant. See the module docstring for both forms."""
    q_sg, sigma_sg = jax.lax.stop_gradient(q), jax.lax.stop_gradient(sigma)
    y_q, y_z, sigma_ema = jax.lax.stop_gradient((y_q, y_z, sigma_ema))
    bound = SIGMA_CLIP * sigma_ema[:, None]
    y_z_clipped = q_sg + jnp.clip(y_z - q_sg, -bound, bound)
    if form == "paper":
        mean_grad = -(y_q - q_sg) / (sigma_sg**2 + EPS)
        std_grad = -((q_sg - y_z_clipped) ** 2 - sigma_sg**2) / (sigma_sg**3 + EPS)
        weight = sigma_ema**2 + EPS
        return (weight * (mean_grad * q + std_grad * sigma).mean(-1)).sum()
    weight = jnp.clip(sigma_ema[:, None] ** 2 / (sigma_sg**2 + EPS), 0.1, 10.0)
    mean_term = optax.losses.huber_loss(q, y_q, delta=50.0)
    spread = optax.losses.huber_loss(q_sg, y_z_clipped, delta=50.0)
    std_term = sigma * (sigma_sg**2 - spread) / (sigma_sg + EPS)
    return (weight * (mean_term + std_term)).mean(-1).sum()


def actor_loss(actor_params, params: Params, obs, rng, config):
    """SAC's actor loss on the critic means, with the temperature held constant."""
    actor, critic = _networks(config, params.action_dim)
    mean, log_std = actor.apply(actor_params, obs)
    action, log_prob = sample_action(mean, log_std, params.action_low, params.action_high, rng)
    q, _ = critic.apply(params.critic, obs, action)
    alpha = jax.lax.stop_gradient(jnp.exp(params.log_alpha))
    return (alpha * log_prob - q.min(0)).mean(), log_prob


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


@jax.custom_batching.custom_vmap
def _any_member(flag):
    """``flag``; under vmap, whether any member's flag is set, unbatched. A ``lax.cond`` on a
    batched predicate becomes a select that runs both branches every step; on this one it
    still skips the delayed branch when no member is at its delayed step."""
    return flag


@_any_member.def_vmap
def _any_member_vmap(axis_size, in_batched, flag):
    (batched,) = in_batched
    return _any_member(flag.any(0) if batched else flag), False  # again, for an outer vmap


def init(config: Config, env, env_params, rng: jax.Array) -> TrainState:
    obs_shape = env.observation_space(env_params).shape
    space = env.action_space(env_params)
    if len(obs_shape) != 1:
        raise ValueError(
            f"DSAC-T's MLPs take vector observations, got shape {obs_shape}; flatten them "
            "(rljax.envs.make(name, flatten_obs=True), or gymnax's FlattenObservationWrapper)"
        )
    bounds = getattr(space, "low", None), getattr(space, "high", None)
    finite = bounds[0] is not None and all(np.isfinite(b).all() for b in bounds)
    if not finite or len(space.shape) != 1:
        raise ValueError(
            f"DSAC-T needs a continuous action box with finite bounds, got a "
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
        target_actor=params.actor,
        target_critic=params.critic,
        sigma_ema=jnp.zeros(2),
        actor_opt=optax.adam(config.actor_lr).init(params.actor),
        critic_opt=optax.adam(config.critic_lr).init(params.critic),
        alpha_opt=optax.adam(config.alpha_lr).init(params.log_alpha),
        actor_metrics={name: jnp.zeros(()) for name in ACTOR_METRICS},
        buffer=buffer_init(config.buffer_size, example),
        env_state=env_state,
        obs=obs,
        rng=rng,
        update_step=jnp.zeros((), jnp.int32),
        gradient_step=jnp.zeros((), jnp.int32),
    )


def update(config: Config, env, env_params, state: TrainState) -> tuple[TrainState, dict]:
    """One iteration: num_steps x num_envs environment steps, then the gradient steps."""
    step = jax.vmap(env.step, in_axes=(0, 0, 0, None), axis_name=ENV_AXIS)
    params = state.params
    action_dim = params.action_dim
    actor, critic = _networks(config, action_dim)
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
        sample_key, next_key, noise_key, actor_key = jax.random.split(rng, 4)
        params = state.params
        batch = buffer_sample(buffer, sample_key, config.batch_size)
        alpha = jnp.exp(params.log_alpha)

        next_mean, next_log_std = actor.apply(state.target_actor, batch["next_obs"])
        next_action, next_log_prob = sample_action(
            next_mean, next_log_std, params.action_low, params.action_high, next_key
        )
        q_next, sigma_next = critic.apply(state.target_critic, batch["next_obs"], next_action)
        discount = config.gamma * (1.0 - batch["terminated"])
        y_q, y_z = critic_targets(
            config.reward_scale * batch["reward"], discount, q_next, sigma_next,
            jax.random.normal(noise_key, q_next.shape), next_log_prob, alpha,
        )  # fmt: skip

        def critic_objective(critic_params):
            q, sigma = critic.apply(critic_params, batch["obs"], batch["action"])
            first = state.gradient_step == 0
            sigma_ema = update_sigma_ema(state.sigma_ema, sigma, config.tau_b, first)
            loss = critic_loss(q, sigma, y_q, y_z, sigma_ema, config.critic_loss)
            return loss, (sigma_ema, q, sigma)

        (loss_q, (sigma_ema, q, sigma)), critic_grads = jax.value_and_grad(
            critic_objective, has_aux=True
        )(params.critic)
        updates, critic_opt = critic_optimizer.update(critic_grads, state.critic_opt)
        critic_params = optax.apply_updates(params.critic, updates)

        # The delayed part. Its gradients, too, are taken before any step (params holds the
        # critics before this step's update), as in the authors' code.
        kept = {
            "actor": params.actor,
            "actor_opt": state.actor_opt,
            "log_alpha": params.log_alpha,
            "alpha_opt": state.alpha_opt,
            "target_actor": state.target_actor,
            "target_critic": state.target_critic,
            "actor_metrics": state.actor_metrics,
        }
        delayed = state.gradient_step % config.policy_delay == 0

        def move(kept):
            (loss_pi, log_prob), actor_grads = jax.value_and_grad(actor_loss, has_aux=True)(
                params.actor, params, batch["obs"], actor_key, config
            )
            loss_alpha, alpha_grad = jax.value_and_grad(alpha_loss)(
                params.log_alpha, log_prob, target_entropy
            )
            updates, actor_opt = actor_optimizer.update(actor_grads, state.actor_opt)
            actor_params = optax.apply_updates(params.actor, updates)
            updates, alpha_opt = alpha_optimizer.update(alpha_grad, state.alpha_opt)
            moved = {
                "actor": actor_params,
                "actor_opt": actor_opt,
                "log_alpha": optax.apply_updates(params.log_alpha, updates),
                "alpha_opt": alpha_opt,
                "target_actor": optax.incremental_update(
                    actor_params, state.target_actor, config.tau
                ),
                "target_critic": optax.incremental_update(
                    critic_params, state.target_critic, config.tau
                ),
                "actor_metrics": {
                    "actor_loss": loss_pi,
                    "alpha_loss": loss_alpha,
                    "entropy": -log_prob.mean(),
                    "actor_grad_norm": optax.tree.norm(actor_grads),
                },
            }
            # Under vmap another member's delayed step may bring a member here: it keeps its own.
            return jax.tree.map(lambda m, k: jnp.where(delayed, m, k), moved, kept)

        new = jax.lax.cond(_any_member(delayed), move, lambda kept: kept, kept)
        params = params.replace(
            critic=critic_params, actor=new["actor"], log_alpha=new["log_alpha"]
        )
        state = state.replace(
            params=params,
            target_actor=new["target_actor"],
            target_critic=new["target_critic"],
            sigma_ema=sigma_ema,
            actor_opt=new["actor_opt"],
            critic_opt=critic_opt,
            alpha_opt=new["alpha_opt"],
            actor_metrics=new["actor_metrics"],
            gradient_step=state.gradient_step + 1,
        )
        metrics = {
            "critic_loss": loss_q,
            "alpha": alpha,
            "q_mean": q.mean(),
            "sigma_mean": sigma.mean(),
            "sigma_ema": sigma_ema.mean(),
            "grad_norm": optax.tree.norm(critic_grads),
            **new["actor_metrics"],
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
    # configs/dsac_t/pendulum.yaml: small networks, one gradient step per env step.
    config = Config(
        num_envs=4, utd_ratio=1.0, batch_size=128, learning_starts=1_000, total_timesteps=20_000,
        hidden_sizes=(64, 64), actor_lr=1e-3, critic_lr=1e-3, alpha_lr=1e-3,
    )  # fmt: skip
    start = time.time()
    _, metrics = jax.jit(lambda key: train(config, env, env_params, key))(jax.random.PRNGKey(0))
    returns = np.asarray(metrics["episode_return"])
    print(f"DSAC-T on {env_name}: {config.total_timesteps} steps in {time.time() - start:.1f}s")
    window = max(1, len(returns) // 10)
    for i in np.linspace(window - 1, len(returns) - 1, 10).astype(int):
        step = (i + 1) * config.steps_per_update
        print(f"  step {step:>8d}  return {np.nanmean(returns[i + 1 - window : i + 1]):8.1f}")
