"""f-DVL (dual V-learning): IQL's skeleton with V fitted by the dual loss of an f-divergence.

Sikchi, Zheng, Zhang, Niekum, "Dual RL: Unification and New Methods for Reinforcement and
Imitation Learning", ICLR 2024 (hari-sikchi/DVL, ``offline/``). Each gradient step, in this order,
with x = min_i Qbar_i(s, a) - V(s) on the target critics and alpha the loss temperature:

    L_V  = mean(l_f(x)) over the batch's (s, a) and k uniform actions a ~ U[-1, 1]^A per state
           chi_square:       l = alpha max(x + x^2 / 4, 0) - (1 - alpha) x
           total_variation:  l = alpha max(x, 0) - (1 - alpha) x
           reverse_kl:       z = min(x / alpha, max_clip),  z_max = sg(max(max_batch z, -1)),
                             l = exp(z - z_max) - z exp(-z_max) - exp(-z_max)
    L_pi = -mean(min(exp(beta (min_i Qbar_i(s, a) - V(s))), 100) log pi(a|s))  (the new V)
    L_Q  = sum_i mean(huber_delta(Q_i(s, a) - (r + gamma (1 - terminal) V(s'))))  (the new V)
    Qbar <- (1 - tau) Qbar + tau Q

Up to a term free of V, L_V is (1 - alpha) V(s) + alpha g(Q - V), the paper's dual-V form: the
first term pushes V down, the conjugate term g up wherever Q exceeds it, so V becomes an implicit
maximum of Q over the data's actions. reverse_kl is XQL's Gumbel regression; it divides by
e^z_max, the batch's largest exponent held fixed (sg = stop-gradient), which rescales the
gradient like an adaptive learning rate. The k = ``sample_random_times`` uniform actions
("1/2 (rho + Unif)" in the code's comment) enter only L_V, and z_max is taken over them too.
alpha weighs the two terms, so chi_square and total_variation take it in (0, 1] (``check``
refuses more; the code does not); at alpha = 1 total_variation keeps no downward pull, and V
rises to the largest Q of its rows, uniform actions included (the README uses 0.8 there).

The losses, the step order and the networks are the authors' code's; where it and its README
differ we take the README's MuJoCo command (``--f=chi-square --temp=1 --sample_random_times=1
--max_clip=5``) over the flag defaults (``sample_random_times=0``, ``max_clip=7``), and the flag
default batch 1024 that the command keeps. The code's ``f`` strings are hyphenated and case
sensitive: its README's ``--f=reverse-KL`` matches no branch of its ``'reverse-kl'`` test (so
that command fails); here ``f`` is one of three snake_case names and anything else is refused
by name. From ``configs/mujoco_config.py``: beta = 3 (its ``temperature``), LayerNorm in the
value network's hidden layers only (before the ReLU), lr 3e-4, and a cosine-decayed actor lr.
Not carried over: value dropout (the AntMaze config's 0.5), ``num_v_updates`` > 1, the optional
gradient penalty and action noise (all off in the README commands), and the code's orthogonal
initialization (flax's default, as in rljax's IQL, so the two compare like for like). The
actor is IQL's: a Gaussian whose mean passes through tanh, a state-independent log std, no tanh
squashing of samples, the mean at evaluation. Rewards are preprocessed as in the code (MuJoCo:
r <- 1000 r / (max - min episode return); AntMaze: r - 1); observations are normalized by the
dataset's statistics, ``(s - mu) / (sigma + 1e-3)``, as rljax's IQL does (the code does not).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

LEARNS_FROM = "dataset"  # what it learns from, as declared in rljax/agents/__init__.py
GOAL_CONDITIONED = False
WRAPS_ENV = False
RECURRENT = False
PAPER = (
    'Sikchi et al., "Dual RL: Unification and New Methods for Reinforcement and Imitation '
    'Learning", ICLR 2024'
)

DIVERGENCES = ("chi_square", "total_variation", "reverse_kl")


def _field(default, *, static=False, bounds=None, choices=None, doc):
    """A config field. Static fields are shapes and switches (changing one recompiles); the
    rest are traced, so a sweep can vmap over them. bounds/choices let a runner validate; doc,
    the field's meaning in one line, is required so that no field goes unexplained."""
    metadata = {"bounds": bounds, "choices": choices, "doc": doc}
    return struct.field(pytree_node=not static, default=default, metadata=metadata)


@struct.dataclass
class Config:
    batch_size: int = _field(
        1024, static=True, bounds="[1, inf)", doc="transitions per gradient step"
    )
    total_updates: int = _field(
        1_000_000, static=True, bounds="[1, inf)", doc="gradient steps in all (the budget)"
    )
    hidden_sizes: tuple = _field(
        (256, 256), static=True, doc="hidden-layer widths of the actor, critics and value"
    )
    layer_norm: bool = _field(
        True, static=True, doc="LayerNorm in the value network's hidden layers"
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
    f: str = _field(
        "chi_square", static=True, choices=DIVERGENCES, doc="f-divergence whose dual fits V"
    )
    sample_random_times: int = _field(
        1, static=True, bounds="[0, inf)", doc="uniform random actions per state in the V loss"
    )
    alpha: float = _field(
        1.0, bounds="(0, inf)", doc="temperature alpha of the V loss (the code's --temp)"
    )
    max_clip: float = _field(
        5.0, bounds="(0, inf]", doc="upper clip of z = x / alpha in the reverse_kl loss"
    )
    huber_delta: float = _field(
        20.0, bounds="(0, inf)", doc="Huber threshold of the critics' TD errors"
    )
    actor_lr: float = _field(
        3e-4, bounds="(0, inf)", doc="initial learning rate of the actor, cosine-decayed to 0"
    )
    critic_lr: float = _field(3e-4, bounds="(0, inf)", doc="Adam learning rate of the critics")
    value_lr: float = _field(3e-4, bounds="(0, inf)", doc="Adam learning rate of the value V")
    gamma: float = _field(0.99, bounds="[0, 1]", doc="discount factor gamma")
    tau: float = _field(0.005, bounds="(0, 1]", doc="Polyak rate tau of the target critics")
    beta: float = _field(3.0, bounds="[0, inf)", doc="inverse temperature beta of the AWR weights")
    log_std_min: float = _field(-5.0, doc="lower clip of the actor's log std")
    log_std_max: float = _field(2.0, doc="upper clip of the actor's log std")

    @property
    def num_updates(self) -> int:
        return self.total_updates


def check(config: Config) -> None:
    """The rules across Config fields; the runner calls it on each concrete config."""
    if config.f not in DIVERGENCES:
        raise _unknown_f(config.f)
    if config.f != "reverse_kl" and not 0 < config.alpha <= 1:
        raise ValueError(
            f"alpha={config.alpha} with f={config.f!r}: alpha must lie in (0, 1], the weight "
            "of alpha f*(Q - V) against (1 - alpha) V; above 1 the loss rewards a larger V "
            "(under total_variation without bound). Only reverse_kl, where alpha divides x, "
            "takes a larger temperature"
        )


def _unknown_f(f) -> ValueError:
    return ValueError(
        f"f={f!r} is not allowed; choose one of {list(DIVERGENCES)} (the authors' code spells "
        "them chi-square, total-variation and reverse-kl)"
    )


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
    rng: jax.Array  # also draws the V loss's uniform actions
    step: jax.Array  # gradient steps done so far


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
    """V(s); LayerNorm between each hidden Dense and its ReLU when asked (the code's MLP)."""

    hidden_sizes: tuple
    layer_norm: bool

    @nn.compact
    def __call__(self, obs):
        x = obs
        for size in self.hidden_sizes:
            x = nn.Dense(size)(x)
            x = nn.relu(nn.LayerNorm()(x) if self.layer_norm else x)
        return jnp.squeeze(nn.Dense(1)(x), -1)


def _networks(config: Config, action_dim: int) -> tuple[Actor, TwinCritic, Value]:
    hidden = tuple(config.hidden_sizes)
    return Actor(action_dim, hidden), TwinCritic(hidden), Value(hidden, config.layer_norm)


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


def uniform_actions(config: Config, actions, rng: jax.Array):
    """``sample_random_times`` uniform actions in [-1, 1] for each row: (k, batch, action_dim)."""
    shape = (config.sample_random_times, *actions.shape)
    return jax.random.uniform(rng, shape, minval=-1.0, maxval=1.0)


# --- Losses ---


def chi_square_loss(x, alpha):
    """alpha max(x + x^2 / 4, 0) - (1 - alpha) x, per element, x = Q - V."""
    return alpha * jnp.maximum(x + x**2 / 4, 0.0) - (1 - alpha) * x


def total_variation_loss(x, alpha):
    """alpha max(x, 0) - (1 - alpha) x, per element, x = Q - V."""
    return alpha * jnp.maximum(x, 0.0) - (1 - alpha) * x


def reverse_kl_loss(x, alpha, max_clip):
    """XQL's Gumbel loss e^z - z - 1 with z = min(x / alpha, max_clip), per element, divided
    by e^z_max, z_max = max(max z over the batch, -1) held fixed (no gradient through it)."""
    z = jnp.minimum(x / alpha, max_clip)
    z_max = jax.lax.stop_gradient(jnp.maximum(z.max(), -1.0))
    return jnp.exp(z - z_max) - z * jnp.exp(-z_max) - jnp.exp(-z_max)


def dual_value_loss(x, config: Config):
    """The mean over rows of the chosen f's loss of x = min_i Qbar_i(s, a) - V(s)."""
    if config.f == "chi_square":
        return chi_square_loss(x, config.alpha).mean()
    if config.f == "total_variation":
        return total_variation_loss(x, config.alpha).mean()
    if config.f == "reverse_kl":
        return reverse_kl_loss(x, config.alpha, config.max_clip).mean()
    raise _unknown_f(config.f)


def value_loss(value_params, params: Params, target_critic, batch, random_actions, config: Config):
    """The dual V loss on the *target* critics, over the batch's (s, a) and the k uniform actions
    at each s; observations normalized. V(s) is computed once per state and shared by its k + 1
    rows (the code repeats the states instead: the same loss and gradient)."""
    _, critic, value = _networks(config, params.action_dim)
    obs = batch["observations"]
    v = value.apply(value_params, obs)
    q = critic.apply(target_critic, obs, batch["actions"]).min(0)
    repeated = jnp.broadcast_to(obs, (random_actions.shape[0], *obs.shape))
    q_random = critic.apply(target_critic, repeated, random_actions).min(0)  # (k, batch)
    x = jnp.concatenate([q - v, (q_random - v).reshape(-1)])
    return dual_value_loss(x, config), v.mean()


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
    """Both critics' Huber loss against r + gamma (1 - terminal) V(s'), summed over critics."""
    _, critic, value = _networks(config, params.action_dim)
    v_next = value.apply(params.value, batch["next_observations"])
    target = batch["rewards"] + config.gamma * (1.0 - batch["terminals"]) * v_next
    q = critic.apply(critic_params, batch["observations"], batch["actions"])
    huber = optax.losses.huber_loss(q, target[None], delta=config.huber_delta)
    return huber.mean(-1).sum(), q.mean()


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
            f"f-DVL takes vector observations and actions, got shapes "
            f"{dataset.observations.shape[1:]} and {dataset.actions.shape[1:]}"
        )
    if isinstance(dataset.actions, jax.core.Tracer):
        raise ValueError(
            "f-DVL's init reads the dataset on the host (reward scaling): close over the "
            "dataset instead of passing it through jit or vmap"
        )
    largest = float(np.abs(np.asarray(dataset.actions)).max())
    if largest > 1 + 1e-4:
        raise ValueError(
            f"dataset actions reach {largest:.4g} but the actor's mean and the V loss's uniform "
            "actions lie in [-1, 1]: rescale the dataset's actions into [-1, 1] (the D4RL "
            "convention)"
        )


def init(config: Config, dataset, rng: jax.Array) -> TrainState:
    """Networks, optimizers, normalization statistics and reward scaling for ``dataset``.

    ``dataset`` (an rljax Dataset) must be concrete: close over it rather than pass it through
    jit, since the reward scale is computed from its episodes on the host.
    """
    if config.f not in DIVERGENCES:
        raise _unknown_f(config.f)
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
    params = state.params
    batch = batch | {
        "observations": _normalize(params, batch["observations"]),
        "next_observations": _normalize(params, batch["next_observations"]),
        "rewards": state.reward_scale * batch["rewards"] + state.reward_shift,
    }
    rng, random_key = jax.random.split(state.rng)
    random_actions = uniform_actions(config, batch["actions"], random_key)

    (loss_v, v_mean), value_grads = jax.value_and_grad(value_loss, has_aux=True)(
        params.value, params, state.target_critic, batch, random_actions, config
    )
    updates, value_opt = optax.adam(config.value_lr).update(value_grads, state.value_opt)
    params = params.replace(value=optax.apply_updates(params.value, updates))

    (loss_pi, aux), actor_grads = jax.value_and_grad(actor_loss, has_aux=True)(
        params.actor, params, state.target_critic, batch, config
    )
    lr = actor_learning_rate(config, state.step)
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
        rng=rng,
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
    print(f"f-DVL on {episodes} noisy swing-up episodes of Pendulum-v1 (dataset return "
          f"{float(rewards.sum(1).mean()):.1f}), greedy returns over 10 episodes:")  # fmt: skip
    # The README's temperatures: chi_square 1 (MuJoCo), total_variation 0.8 (AntMaze),
    # reverse_kl 8 (Kitchen, Adroit).
    for f, alpha in zip(DIVERGENCES, (1.0, 0.8, 8.0), strict=True):
        config = Config(
            total_updates=10_000, batch_size=256, hidden_sizes=(64, 64), f=f, alpha=alpha,
            actor_lr=1e-3, critic_lr=1e-3, value_lr=1e-3,
        )  # fmt: skip
        start = time.time()
        state, metrics = jax.jit(lambda key, c=config: train(c, dataset, key))(
            jax.random.PRNGKey(1)
        )
        greedy = lambda o, _, s=state, c=config: act(c, s.params, o, None, True)  # noqa: E731
        returns = jax.jit(jax.vmap(lambda k, g=greedy: rollout(k, g)[2].sum()))(
            jax.random.split(keys[0], 10)
        )
        print(f"  {f:<16} alpha {alpha:<4} return {float(returns.mean()):7.1f}  "
              f"v_mean {float(metrics['v_mean'][-1]):8.1f}  q_mean "
              f"{float(metrics['q_mean'][-1]):8.1f}  ({time.time() - start:.0f}s)")  # fmt: skip
