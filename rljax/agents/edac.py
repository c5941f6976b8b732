"""EDAC and SAC-N: soft actor-critic made pessimistic by the minimum over a large Q-ensemble.

An, Moon, Kim, Song, "Uncertainty-Based Offline Reinforcement Learning with Diversified
Q-Ensemble", NeurIPS 2021 (snu-mllab/EDAC), as CORL's ``algorithms/offline/edac.py`` implements
it. SAC-N is the same agent with eta = 0 (``configs/edac/sac_n_pendulum.yaml``); eta is traced,
so one vmapped sweep trains both. Each gradient step, in this order:

    L_alpha = -mean(log alpha (log pi(a~|s) - |A|)),   a~ ~ pi(.|s)   (no gradient into log pi)
    L_pi    = mean(alpha log pi(a~|s) - min_j Q_j(s, a~))   (the same a~, reparameterized; the
              new alpha; the critics constant)
    y       = r + gamma (1 - d) (min_j Qbar_j(s', a') - alpha log pi(a'|s')),  a' ~ pi(.|s')
              (the new pi and alpha; y is a constant)
    L_Q     = sum_j mean_B (Q_j(s, a) - y)^2 + eta ES(s, a)
    ES      = 1 / (N - 1) mean_B sum_{i != j} <g_i, g_j>,
              g_j = grad_a Q_j(s, a) / (|grad_a Q_j(s, a)| + 1e-10)   (a: the dataset's action)
    Qbar   <- (1 - tau) Qbar + tau Q

ES, the ensemble's gradient similarity, is differentiated through the action gradients g_j
(second order) into the critics' weights only. It is computed and logged (``diversity``)
whatever eta, so SAC-N shows how alike its critics' action gradients grow, at the cost of the
second-order pass (about a fifth of a step with N = 2). The N critics are one MLP vmapped over
weights stacked on a leading axis N (``q_values``); pi is a tanh-squashed Gaussian with log
sigma clipped to [-5, 2] and evaluated at tanh(mean). Initialization as EDAC's: PyTorch's
default weights, hidden biases 0.1, the critics' last layer U(+-3e-3), the actor's mean and log
sigma heads U(+-1e-3). Actions are assumed in [-1, 1] (the D4RL convention). Defaults are
CORL's halfcheetah ones (N = 10, eta = 1, learning rates 3e-4, gamma 0.99, tau 5e-3, three
hidden layers of 256, batch 256, 3M updates); the paper tunes N and eta per dataset.

Where the paper's code (snu-mllab/EDAC) and CORL differ, and what this file does:
* Order: CORL steps alpha, then the actor with the new alpha, then the critics with the new
  actor and alpha (followed here); EDAC's code takes all three losses at the step's starting
  parameters. One sample a~ serves L_alpha and L_pi, as in EDAC's code (CORL draws one for
  each): the actor's forward pass runs once.
* ES: over all N critics, as the paper's equation and CORL; EDAC's code averages it over a
  random subset of min(N, |A|) critics (so with one action dimension it divides 0 by 0).
* log pi: the exact tanh Jacobian, log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)); both
  codes use log(1 - tanh(u)^2 + 1e-6), which caps the density of saturated actions.
* CORL normalizes neither observations nor rewards by default; ``normalize_obs`` (off) offers
  the (s - mu) / (sigma + 1e-3) of the other offline agents here (the Pendulum preset uses it).
With one action dimension g_j = sign(dQ_j/da) is piecewise constant, so ES carries (almost) no
gradient and EDAC trains as SAC-N: on Pendulum eta = 0 and eta = 1 learn alike.
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
    'An et al., "Uncertainty-Based Offline Reinforcement Learning with Diversified Q-Ensemble", '
    "NeurIPS 2021"
)

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0  # EDAC's clip of log sigma (SAC's code: -20, 2)
GRAD_NORM_EPS = 1e-10  # added to |grad_a Q_j| in ES, as in both codes


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
        3_000_000, static=True, bounds="[1, inf)", doc="gradient steps in all (the budget)"
    )
    hidden_sizes: tuple = _field(
        (256, 256, 256), static=True, doc="hidden-layer widths of the actor and every critic"
    )
    num_critics: int = _field(
        10, static=True, bounds="[2, inf)", doc="critics N in the ensemble (the min is over N)"
    )
    normalize_obs: bool = _field(
        False, static=True, doc="normalize observations by the dataset's mean and std"
    )
    actor_lr: float = _field(3e-4, bounds="(0, inf)", doc="Adam learning rate of the actor")
    critic_lr: float = _field(3e-4, bounds="(0, inf)", doc="Adam learning rate of the critics")
    alpha_lr: float = _field(
        3e-4, bounds="(0, inf)", doc="Adam learning rate of the temperature alpha"
    )
    gamma: float = _field(0.99, bounds="[0, 1]", doc="discount factor gamma")
    tau: float = _field(5e-3, bounds="(0, 1]", doc="Polyak rate tau of the target critics")
    eta: float = _field(
        1.0, bounds="[0, inf)", doc="weight eta of the gradient diversity term (0: SAC-N)"
    )

    @property
    def num_updates(self) -> int:
        return self.total_updates


@struct.dataclass
class Params:
    actor: Any
    critic: Any  # the N critics' weights, stacked on a leading axis of num_critics
    log_alpha: jax.Array
    obs_mean: jax.Array  # normalized obs = (obs - obs_mean) / obs_std
    obs_std: jax.Array
    action_dim: int = struct.field(pytree_node=False, default=1)


@struct.dataclass
class TrainState:
    params: Params
    target_critic: Any
    actor_opt: Any
    critic_opt: Any
    alpha_opt: Any
    rng: jax.Array
    step: jax.Array  # gradient steps done so far


# --- Networks (EDAC's initialization) ---


def _torch_init():
    return nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def _uniform(scale):
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(
        key, shape, dtype, -scale, scale
    )


def _edac_trunk(x, hidden_sizes):
    """ReLU layers with PyTorch's default weights and biases 0.1."""
    for size in hidden_sizes:
        dense = nn.Dense(size, kernel_init=_torch_init(), bias_init=nn.initializers.constant(0.1))
        x = nn.relu(dense(x))
    return x


class Actor(nn.Module):
    """Mean and clipped log standard deviation of the Gaussian before the tanh."""

    action_dim: int
    hidden_sizes: tuple

    @nn.compact
    def __call__(self, obs):
        x = _edac_trunk(obs, self.hidden_sizes)
        small = dict(kernel_init=_uniform(1e-3), bias_init=_uniform(1e-3))
        mean = nn.Dense(self.action_dim, name="mean", **small)(x)
        log_std = nn.Dense(self.action_dim, name="log_std", **small)(x)
        return mean, jnp.clip(log_std, LOG_STD_MIN, LOG_STD_MAX)


class Critic(nn.Module):
    """One critic; the ensemble is this network vmapped over stacked weights."""

    hidden_sizes: tuple

    @nn.compact
    def __call__(self, obs, action):
        x = _edac_trunk(jnp.concatenate([obs, action], -1), self.hidden_sizes)
        out = nn.Dense(1, kernel_init=_uniform(3e-3), bias_init=_uniform(3e-3))
        return jnp.squeeze(out(x), -1)


def _actor(config: Config, action_dim: int) -> Actor:
    return Actor(action_dim, tuple(config.hidden_sizes))


def _ensemble(config: Config, critic_params, obs, actions):
    """Q_j(s, a) for every critic j: (N, ...), from weights stacked on a leading axis N."""
    critic = Critic(tuple(config.hidden_sizes))
    return jax.vmap(critic.apply, in_axes=(0, None, None))(critic_params, obs, actions)


def _normalize(params: Params, obs):
    return (obs - params.obs_mean) / params.obs_std


def sample_action(mean, log_std, rng):
    """A tanh-Gaussian action on [-1, 1] and its log density there (exact tanh Jacobian)."""
    pre_tanh = mean + jnp.exp(log_std) * jax.random.normal(rng, mean.shape)
    gaussian_log_prob = -0.5 * ((pre_tanh - mean) / jnp.exp(log_std)) ** 2 - log_std
    gaussian_log_prob -= 0.5 * jnp.log(2 * jnp.pi)
    # log(1 - tanh(x)^2) = 2 (log 2 - x - softplus(-2x)), stable for large |x|
    log_det = 2 * (jnp.log(2.0) - pre_tanh - jax.nn.softplus(-2 * pre_tanh))
    return jnp.tanh(pre_tanh), (gaussian_log_prob - log_det).sum(-1)


def q_values(config: Config, params: Params, observations, actions):
    """Every critic's Q(s, a), shape (N, ...), on raw observations (normalized here, as in
    training) and actions in [-1, 1]; pure and differentiable in both (e.g. for attacks)."""
    return _ensemble(config, params.critic, _normalize(params, observations), actions)


# --- Data ---

BATCH_KEYS = ("observations", "actions", "rewards", "terminals", "next_observations")


def sample_batch(config: Config, dataset, rng: jax.Array) -> dict:
    """Rows drawn uniformly with replacement, as the dict ``update_on_batch`` takes."""
    idx = jax.random.randint(rng, (config.batch_size,), 0, dataset.rewards.shape[0])
    return {k: getattr(dataset, k)[idx] for k in BATCH_KEYS}


# --- Losses (observations already normalized) ---


def values_and_action_grads(critic_params, obs, actions, config: Config):
    """Q_j(s, a) (N, B) and grad_a Q_j(s, a) (N, B, |A|), one forward and one backward pass
    per critic; differentiable in the weights (the action gradients to second order)."""
    critic = Critic(tuple(config.hidden_sizes))

    def one(weights):
        q, pullback = jax.vjp(lambda a: critic.apply(weights, obs, a), actions)
        return q, pullback(jnp.ones_like(q))[0]  # rows are independent: d(sum q)/da per row

    return jax.vmap(one)(critic_params)


def diversity_loss(action_grads):
    """ES = 1 / (N - 1) mean_B sum_{i != j} <g_i, g_j> of the normalized action gradients
    g_j = grad_j / (|grad_j| + 1e-10); action_grads (N, B, |A|). A zero gradient stays zero."""
    squares = jnp.square(action_grads).sum(-1, keepdims=True)
    positive = squares > 0
    norms = jnp.where(positive, jnp.sqrt(jnp.where(positive, squares, 1.0)), 0.0)
    g = action_grads / (norms + GRAD_NORM_EPS)
    # sum_{i != j} <g_i, g_j> = |sum_i g_i|^2 - sum_i |g_i|^2: O(N), not O(N^2), per row
    pairs = jnp.square(g.sum(0)).sum(-1) - jnp.square(g).sum((0, -1))
    return pairs.mean() / (g.shape[0] - 1)


def critic_target(batch, next_action, next_log_prob, target_critic, alpha, config: Config):
    """y = r + gamma (1 - d) (min_j Qbar_j(s', a') - alpha log pi(a'|s'))."""
    q_next = _ensemble(config, target_critic, batch["next_observations"], next_action).min(0)
    soft_value = q_next - alpha * next_log_prob
    return batch["rewards"] + config.gamma * (1.0 - batch["terminals"]) * soft_value


def critic_loss(critic_params, batch, target, config: Config):
    """sum_j mean_B (Q_j(s, a) - y)^2 + eta ES(s, a), y held constant."""
    q, action_grads = values_and_action_grads(
        critic_params, batch["observations"], batch["actions"], config
    )
    bellman = jnp.square(q - jax.lax.stop_gradient(target)).mean(-1).sum()
    diversity = diversity_loss(action_grads)
    loss = bellman + config.eta * diversity
    return loss, {"bellman": bellman, "diversity": diversity, "q_mean": q.mean()}


def policy_terms(actor_params, params: Params, obs, rng, config: Config):
    """(log pi(a~|s), min_j Q_j(s, a~)) for a~ reparameterized from pi(.|s), and diagnostics;
    the critics are constants here."""
    mean, log_std = _actor(config, params.action_dim).apply(actor_params, obs)
    action, log_prob = sample_action(mean, log_std, rng)
    q = _ensemble(config, params.critic, obs, action)
    return (log_prob, q.min(0)), {"entropy": -log_prob.mean(), "q_policy_std": q.std(0).mean()}


def actor_loss(actor_params, params: Params, obs, rng, alpha, config: Config):
    """mean(alpha log pi(a~|s) - min_j Q_j(s, a~)); alpha is a constant here."""
    (log_prob, q_min), aux = policy_terms(actor_params, params, obs, rng, config)
    return (alpha * log_prob - q_min).mean(), aux


def alpha_loss(log_alpha, log_prob, target_entropy):
    return -(log_alpha * (jax.lax.stop_gradient(log_prob) + target_entropy)).mean()


# --- The contract ---


def check(config: Config) -> None:
    """The rules on Config's static fields; the runner calls it on each concrete config."""
    if config.num_critics < 2:
        raise ValueError(
            f"num_critics={config.num_critics}: EDAC takes the min over an ensemble and its "
            "diversity term compares pairs of critics, so it needs at least 2 (SAC-N is eta=0)"
        )


def _validate_dataset(dataset) -> None:
    if isinstance(dataset.actions, jax.core.Tracer):
        raise ValueError(
            "EDAC's init reads the dataset on the host (its statistics and action range): close "
            "over the dataset instead of passing it through jit or vmap"
        )
    obs, actions = np.asarray(dataset.observations), np.asarray(dataset.actions)
    if obs.ndim != 2 or actions.ndim != 2:
        raise ValueError(
            f"EDAC takes vector observations and actions, got observations {obs.shape} and "
            f"actions {actions.shape}"
        )
    if len(actions) == 0:
        raise ValueError("the dataset has no transitions")
    if not np.issubdtype(actions.dtype, np.floating):
        raise ValueError(
            f"EDAC's actor is continuous but the dataset's actions are {actions.dtype}: it "
            "learns from continuous actions in [-1, 1]"
        )
    if not (np.isfinite(obs).all() and np.isfinite(actions).all()):
        raise ValueError("the dataset's observations or actions hold NaN or infinite values")
    if np.abs(actions).max() > 1 + 1e-4:
        raise ValueError(
            f"EDAC's tanh actor needs dataset actions in [-1, 1], found |a| up to "
            f"{np.abs(actions).max():.4g}: rescale them (D4RL convention)"
        )


def init(config: Config, dataset, rng: jax.Array) -> TrainState:
    """Networks, optimizers and normalization statistics for ``dataset`` (an rljax Dataset),
    which must be concrete (closed over, not passed through jit)."""
    check(config)
    _validate_dataset(dataset)
    obs = np.asarray(dataset.observations)
    obs_dim, action_dim = obs.shape[1], dataset.actions.shape[1]
    if config.normalize_obs:
        obs_mean, obs_std = obs.mean(0), obs.std(0) + 1e-3
    else:
        obs_mean, obs_std = np.zeros(obs_dim), np.ones(obs_dim)
    rng, actor_key, critic_key = jax.random.split(rng, 3)
    dummy_obs, dummy_action = jnp.zeros(obs_dim), jnp.zeros(action_dim)
    critic_keys = jax.random.split(critic_key, config.num_critics)
    critic = Critic(tuple(config.hidden_sizes))
    params = Params(
        actor=_actor(config, action_dim).init(actor_key, dummy_obs),
        critic=jax.vmap(critic.init, in_axes=(0, None, None))(critic_keys, dummy_obs, dummy_action),
        log_alpha=jnp.zeros(()),
        obs_mean=jnp.asarray(obs_mean, jnp.float32),
        obs_std=jnp.asarray(obs_std, jnp.float32),
        action_dim=action_dim,
    )
    return TrainState(
        params=params,
        target_critic=params.critic,
        actor_opt=optax.adam(config.actor_lr).init(params.actor),
        critic_opt=optax.adam(config.critic_lr).init(params.critic),
        alpha_opt=optax.adam(config.alpha_lr).init(params.log_alpha),
        rng=rng,
        step=jnp.zeros((), jnp.int32),
    )


def _adam_step(lr, grads, opt_state, value):
    updates, opt_state = optax.adam(lr).update(grads, opt_state)
    return optax.apply_updates(value, updates), opt_state


def update_on_batch(config: Config, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    """One gradient step: the temperature, then the actor, then the critics, then the targets."""
    params = state.params
    actor = _actor(config, params.action_dim)
    obs = _normalize(params, batch["observations"])
    next_obs = _normalize(params, batch["next_observations"])
    batch = batch | {"observations": obs, "next_observations": next_obs}
    rng, actor_key, next_key = jax.random.split(state.rng, 3)

    # One sample a~ ~ pi(.|s) serves the temperature and the actor (as EDAC's code; CORL draws
    # one for each): the forward pass runs once, its backward pass after alpha has stepped.
    (log_prob, q_min), pullback, actor_aux = jax.vjp(
        lambda p: policy_terms(p, params, obs, actor_key, config), params.actor, has_aux=True
    )
    loss_alpha, alpha_grad = jax.value_and_grad(alpha_loss)(
        params.log_alpha, log_prob, -float(params.action_dim)
    )
    log_alpha, alpha_opt = _adam_step(
        config.alpha_lr, alpha_grad, state.alpha_opt, params.log_alpha
    )
    alpha = jnp.exp(log_alpha)

    # d/dtheta of actor_loss = mean(alpha log pi - min_j Q_j), with the new alpha
    loss_pi = (alpha * log_prob - q_min).mean()
    weights = (jnp.full_like(log_prob, alpha), jnp.full_like(q_min, -1.0))
    (actor_grads,) = pullback(jax.tree.map(lambda w: w / log_prob.shape[0], weights))
    actor_params, actor_opt = _adam_step(
        config.actor_lr, actor_grads, state.actor_opt, params.actor
    )

    next_action, next_log_prob = sample_action(*actor.apply(actor_params, next_obs), next_key)
    target = critic_target(batch, next_action, next_log_prob, state.target_critic, alpha, config)
    (loss_q, critic_aux), critic_grads = jax.value_and_grad(critic_loss, has_aux=True)(
        params.critic, batch, target, config
    )
    critic_params, critic_opt = _adam_step(
        config.critic_lr, critic_grads, state.critic_opt, params.critic
    )

    state = state.replace(
        params=params.replace(actor=actor_params, critic=critic_params, log_alpha=log_alpha),
        target_critic=optax.incremental_update(critic_params, state.target_critic, config.tau),
        actor_opt=actor_opt,
        critic_opt=critic_opt,
        alpha_opt=alpha_opt,
        rng=rng,
        step=state.step + 1,
    )
    metrics = {
        "critic_loss": loss_q,
        "bellman_loss": critic_aux["bellman"],
        "diversity": critic_aux["diversity"],
        "actor_loss": loss_pi,
        "alpha_loss": loss_alpha,
        "alpha": alpha,
        "entropy": actor_aux["entropy"],
        "q_mean": critic_aux["q_mean"],
        "q_policy_std": actor_aux["q_policy_std"],
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
    """init, then num_updates (default: total_updates) gradient steps on uniform batches.

    The dataset is closed over, not carried in the state, so seeds vmapped over ``train`` share
    one copy of it.
    """
    num_updates = config.num_updates if num_updates is None else num_updates
    state = init(config, dataset, rng)
    return jax.lax.scan(lambda state, _: update(config, dataset, state), state, None, num_updates)


def act(config: Config, params: Params, obs: jax.Array, rng: jax.Array, deterministic=False):
    """tanh of the Gaussian's mean when deterministic, else a tanh-Gaussian sample; in [-1, 1]."""
    mean, log_std = _actor(config, params.action_dim).apply(params.actor, _normalize(params, obs))
    if deterministic:
        return jnp.tanh(mean)
    return sample_action(mean, log_std, rng)[0]


if __name__ == "__main__":
    import time

    import gymnax

    env, env_params = gymnax.make("Pendulum-v1")
    max_torque = 2.0

    def rollouts(rng, num_episodes=20, noise=0.3):
        """A noisy energy-pumping controller on Pendulum; actions scaled to [-1, 1]."""

        def episode(key):
            key, reset_key = jax.random.split(key)
            obs, env_state = env.reset(reset_key, env_params)

            def step(carry, _):
                obs, env_state, key = carry
                key, noise_key, step_key = jax.random.split(key, 3)
                cos, sin, vel = obs
                # Upright: PD; elsewhere: push along the velocity to pump energy.
                upright = jnp.clip(-(10 * jnp.arctan2(sin, cos) + 2 * vel) / max_torque, -1, 1)
                action = jnp.where(cos > 0.8, upright, jnp.sign(vel + 1e-3))
                action = jnp.clip(action + noise * jax.random.normal(noise_key), -1, 1)[None]
                next_obs, env_state, reward, done, _ = env.step_env(  # no auto-reset
                    step_key, env_state, action * max_torque, env_params
                )
                return (next_obs, env_state, key), (obs, action, reward, next_obs, done)

            _, out = jax.lax.scan(
                step, (obs, env_state, key), None, env_params.max_steps_in_episode
            )
            return out

        obs, actions, rewards, next_obs, dones = jax.vmap(episode)(
            jax.random.split(rng, num_episodes)
        )
        flat = lambda x: np.asarray(x).reshape(-1, *x.shape[2:])  # noqa: E731
        timeouts = np.asarray(dones, np.float32)  # Pendulum only ends at its time limit
        return flat(obs), flat(actions), flat(rewards), flat(next_obs), flat(timeouts)

    @struct.dataclass
    class Data:  # the six fields of rljax.data.Dataset
        observations: jax.Array
        actions: jax.Array
        rewards: jax.Array
        terminals: jax.Array
        timeouts: jax.Array
        next_observations: jax.Array

    obs, actions, rewards, next_obs, timeouts = rollouts(jax.random.PRNGKey(0))
    # Device arrays: sample_batch indexes them with traced row numbers (numpy cannot).
    columns = (obs, actions, rewards, np.zeros_like(rewards), timeouts, next_obs)
    dataset = Data(*(jnp.asarray(x) for x in columns))
    print(f"dataset: {len(rewards)} transitions, mean episode return {rewards.sum() / 20:.1f}")

    def evaluate(config, params, rng, num_episodes=10):
        def episode(key):
            obs, env_state = env.reset(key, env_params)

            def step(carry, key):
                obs, env_state, total = carry
                action = act(config, params, obs, key, deterministic=True)
                obs, env_state, reward, _, _ = env.step_env(
                    key, env_state, action * max_torque, env_params
                )
                return (obs, env_state, total + reward), None

            keys = jax.random.split(key, env_params.max_steps_in_episode)
            return jax.lax.scan(step, (obs, env_state, 0.0), keys)[0][2]

        return jax.vmap(episode)(jax.random.split(rng, num_episodes)).mean()

    # The paper's N = 10 and eta = 1 with small networks and learning rates raised to 1e-3 for a
    # short CPU run (as configs/edac/pendulum.yaml). Pendulum has one action dimension, where the
    # diversity term has no gradient (see the docstring): this run is SAC-N in all but its logs.
    config = Config(
        total_updates=5_000, hidden_sizes=(64, 64), normalize_obs=True, actor_lr=1e-3,
        critic_lr=1e-3, alpha_lr=1e-3,
    )  # fmt: skip
    start = time.time()
    state, metrics = jax.block_until_ready(
        jax.jit(lambda key: train(config, dataset, key))(jax.random.PRNGKey(1))
    )
    print(f"EDAC on Pendulum-v1 data: {config.total_updates} updates in {time.time() - start:.1f}s")
    for i in np.linspace(999, config.total_updates - 1, 5).astype(int):
        window = slice(i - 999, i + 1)
        print(
            f"  update {i + 1:>6d}  bellman_loss {np.mean(metrics['bellman_loss'][window]):8.3f}"
            f"  diversity {np.mean(metrics['diversity'][window]):5.2f}"
            f"  alpha {np.mean(metrics['alpha'][window]):5.3f}"
            f"  q_mean {np.mean(metrics['q_mean'][window]):8.2f}"
        )
    print(f"greedy return: {float(evaluate(config, state.params, jax.random.PRNGKey(2))):.1f}")
