"""ODICE: V-DICE with the orthogonal-gradient update of the value, and weighted behaviour cloning.

Mao, Xu, Zhang, Zhan, "ODICE: Revealing the Mystery of Distribution Correction Estimation via
Orthogonal-gradient Update", ICLR 2024 (maoliyuan/ODICE-Pytorch, ``orthogonal_true_g_update``).
The value minimizes the V-DICE objective with the Pearson chi^2 conjugate
f*(x) = x w - (w - 1)^2, w = max(x / 2 + 1, 0), whose derivative is w and (f')^-1(x) = max(x, 0):

    L(V) = (1 - lambda) E_s[V(s)] + lambda E_D[f*(r + gamma (1 - d) V(s') - V(s))]

Its true gradient has a forward part (through V(s)) and a backward part (through V(s')); ODICE
keeps only the backward part orthogonal to the forward one. Each gradient step, per value head i:

    d_f = r + gamma (1 - d) Vbar(s') - V_i(s)       forward residual (target value at s')
    d_b = r + gamma (1 - d) V_i(s') - Vbar(s)       backward residual (target value at s)
    g_f = grad lambda E[f*(d_f)],   g_b = grad lambda eta E[f*(d_b)]   (all value parameters,
                                                                        flattened into one vector)
    g_b_perp = g_b - <g_f, g_b> / max(<g_f, g_f>, 1e-10) g_f
    theta <- Adam(theta, (1 - lambda) grad E[V_i(s)] + g_f + g_b_perp);  Vbar <- EMA(V, tau)
    L_pi = -E[w log pi(a|s)],   w = min(max(d_f, 0), 100), no gradient, d_f from this step

Vbar is the smaller of the two target heads; the objective's terms are averaged over both online
heads (the projection is over the parameters of both at once). The policy's weight is the mean of
the two heads' w, as the code's (2, B) weight broadcast against a (B,) log-likelihood gives.
pi(.|s) = N(mu(s), diag(exp(2 log_std))), mu without tanh, a state-independent log_std clipped to
[log_std_min, log_std_max]; acting clips to [-1, 1] (the mean when deterministic). Its Adam has
weight decay as PyTorch's ``Adam(weight_decay=...)``: an L2 term added to the gradient before the
moments (not AdamW's decoupled decay). No learning-rate schedule. Value heads: Dense, LayerNorm,
ReLU per hidden layer (the code's ``util.mlp``); the actor has no LayerNorm.

Choices (the authors' code is followed where it and the paper's text could be read apart):
* The projection is applied at every step, whatever the sign of <g_f, g_b>, as in the code.
* w = max(d_f, 0) clipped at 100, as in the code, with no division by lambda: a constant factor
  on w would only move where the clip bites and scale the actor's step.
* Per step: the value, then its EMA target, then the actor, as in the code; the actor's weights
  use d_f from before the value moved.
* One ``hidden_sizes`` for every network: the code's value heads are 2x256 but its policy is
  2x1024.
* Observations are normalized by the dataset's statistics, (s - mu) / (sigma + 1e-3), as the
  other offline agents here do (the code's ``normalize`` is off by default).
* Initialization is flax's (LeCun normal, zero bias), not PyTorch's uniform.
* Rewards as the code preprocesses them: ``"return_range"`` (MuJoCo) r <- 1000 r / (max episode
  return - min episode return) (the code multiplies by max_episode_steps = 1000), ``"antmaze"``
  r <- 3 r - 3, which on AntMaze's 0/1 rewards is the code's np.where(r == 0, -3, 0), or
  ``"none"``. For AntMaze the code also turns LayerNorm off, and twin V off on large and
  umaze-diverse: set ``layer_norm`` and ``twin_v``.
* Only the orthogonal update and Pearson chi^2 are here: the code's ``true_g`` / ``semi_g``
  ablations and its reverse-KL option are left out.
Actions are assumed in [-1, 1] (the D4RL convention).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.flatten_util import ravel_pytree

LEARNS_FROM = "dataset"  # what it learns from, as declared in rljax/agents/__init__.py
GOAL_CONDITIONED = False
WRAPS_ENV = False
RECURRENT = False
PAPER = (
    'Mao et al., "ODICE: Revealing the Mystery of Distribution Correction Estimation via '
    'Orthogonal-gradient Update", ICLR 2024'
)


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
        (256, 256), static=True, doc="hidden-layer widths of the value heads and the actor"
    )
    layer_norm: bool = _field(
        True, static=True, doc="LayerNorm before each hidden ReLU of the value heads"
    )
    twin_v: bool = _field(
        True, static=True, doc="two value heads (target: their min) instead of one"
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
    actor_lr: float = _field(2e-4, bounds="(0, inf)", doc="Adam learning rate of the actor")
    value_lr: float = _field(2e-4, bounds="(0, inf)", doc="Adam learning rate of the value heads")
    weight_decay: float = _field(
        1e-4, bounds="[0, inf)", doc="L2 weight decay in the actor's Adam (PyTorch's)"
    )
    gamma: float = _field(0.99, bounds="[0, 1]", doc="discount factor gamma")
    tau: float = _field(0.005, bounds="(0, 1]", doc="EMA rate tau of the target value heads")
    lam: float = _field(
        0.6, bounds="(0, 1)", doc="lambda: weight of the dual term, 1 - lambda on E[V(s)]"
    )
    eta: float = _field(
        1.0, bounds="[0, inf)", doc="eta: scale of the backward (projected) gradient"
    )
    max_weight: float = _field(100.0, bounds="(0, inf)", doc="clip of the actor's BC weights")
    log_std_min: float = _field(-5.0, doc="lower clip of the actor's log std")
    log_std_max: float = _field(2.0, doc="upper clip of the actor's log std")

    @property
    def num_updates(self) -> int:
        return self.total_updates


@struct.dataclass
class Params:
    actor: Any
    value: Any  # the value heads (2, or 1 without twin_v), stacked on a leading axis
    obs_mean: jax.Array  # normalized obs = (obs - obs_mean) / obs_std
    obs_std: jax.Array
    action_dim: int = struct.field(pytree_node=False, default=1)


@struct.dataclass
class TrainState:
    params: Params
    target_value: Any
    actor_opt: Any
    value_opt: Any
    reward_scale: jax.Array  # r <- reward_scale * r + reward_shift, fixed at init
    reward_shift: jax.Array
    rng: jax.Array
    step: jax.Array  # gradient steps done so far


# --- Networks ---


def _mlp(x, hidden_sizes):
    for size in hidden_sizes:
        x = nn.relu(nn.Dense(size)(x))
    return x


def _value_mlp(x, hidden_sizes, layer_norm):
    """Dense, then LayerNorm (PyTorch's epsilon) if layer_norm, then ReLU, per hidden layer."""
    for size in hidden_sizes:
        x = nn.Dense(size)(x)
        x = nn.LayerNorm(epsilon=1e-5)(x) if layer_norm else x
        x = nn.relu(x)
    return x


class Actor(nn.Module):
    """The Gaussian's mean (no tanh) and its state-independent log standard deviation."""

    action_dim: int
    hidden_sizes: tuple

    @nn.compact
    def __call__(self, obs):
        x = _mlp(obs, self.hidden_sizes)
        mean = nn.Dense(self.action_dim)(x)
        log_std = self.param("log_std", nn.initializers.zeros, (self.action_dim,))
        return mean, log_std


class Value(nn.Module):
    hidden_sizes: tuple
    layer_norm: bool

    @nn.compact
    def __call__(self, obs):
        x = _value_mlp(obs, self.hidden_sizes, self.layer_norm)
        return jnp.squeeze(nn.Dense(1)(x), -1)


class ValueHeads(nn.Module):
    """Independent value networks evaluated as one vmapped network; outputs (num_heads, ...)."""

    num_heads: int
    hidden_sizes: tuple
    layer_norm: bool

    @nn.compact
    def __call__(self, obs):
        heads = nn.vmap(
            Value,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=None,
            axis_size=self.num_heads,
        )
        return heads(self.hidden_sizes, self.layer_norm)(obs)


def _networks(config: Config, action_dim: int) -> tuple[Actor, ValueHeads]:
    hidden = tuple(config.hidden_sizes)
    return Actor(action_dim, hidden), ValueHeads(
        2 if config.twin_v else 1, hidden, config.layer_norm
    )


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


def f_star(x):
    """The Pearson chi^2 conjugate: x w - (w - 1)^2 with w = max(x / 2 + 1, 0); its derivative
    is w, so residuals below -2 carry no gradient."""
    omega = jnp.maximum(x / 2 + 1, 0.0)
    return x * omega - (omega - 1) ** 2


def f_prime_inverse(x):
    """(f')^-1 of Pearson chi^2: max(x, 0), the unclipped BC weight."""
    return jnp.maximum(x, 0.0)


def dual_losses(v, v_next, target_v, target_v_next, batch, config: Config):
    """The three terms of the value objective and the forward residual, from values (heads, B).

    ``(1 - lambda) mean V(s)``, ``lambda mean f*(d_f)`` and ``lambda eta mean f*(d_b)``, with
    d_f = r + gamma (1 - d) Vbar(s') - V(s) and d_b = r + gamma (1 - d) V(s') - Vbar(s); the
    target values carry no gradient, so the forward term reaches the parameters only through
    V(s) and the backward term only through V(s'). Rewards already preprocessed.
    """
    target_v, target_v_next = jax.lax.stop_gradient((target_v, target_v_next))
    discount = config.gamma * (1.0 - batch["terminals"])
    forward_residual = batch["rewards"] + discount * target_v_next - v
    backward_residual = batch["rewards"] + discount * v_next - target_v
    mean_term = (1 - config.lam) * v.mean()
    forward = config.lam * f_star(forward_residual).mean()
    backward = config.lam * config.eta * f_star(backward_residual).mean()
    return mean_term, forward, backward, forward_residual


def parallel_coefficient(g_forward, g_backward):
    """<g_f, g_b> / max(<g_f, g_f>, 1e-10): g_b's component along g_f, in units of g_f."""
    return jnp.vdot(g_forward, g_backward) / jnp.maximum(jnp.vdot(g_forward, g_forward), 1e-10)


def orthogonal_projection(g_forward, g_backward):
    """g_b less its component along g_f (flat vectors), so the backward gradient cannot undo
    the forward one. The guard leaves g_b whole where g_f vanishes (every d_f < -2)."""
    return g_backward - parallel_coefficient(g_forward, g_backward) * g_forward


def value_gradient(value_params, target_value, batch, config: Config):
    """ODICE's update direction for the value heads: (1 - lambda) grad E[V(s)] + g_f + g_b_perp.

    One forward pass over s and one over s'; the three terms' gradients are pulled back through
    them one by one (g_f and g_b must be apart to project; pulling the two cotangents on V(s)
    as one vmapped batch ran slower on CPU), then flattened with ravel_pytree so that the
    projection is over all value parameters at once. Batch normalized.
    """
    _, value = _networks(config, 1)
    obs, next_obs = batch["observations"], batch["next_observations"]
    target_v = value.apply(target_value, obs).min(0)
    target_v_next = value.apply(target_value, next_obs).min(0)
    v, pull = jax.vjp(lambda p: value.apply(p, obs), value_params)
    v_next, pull_next = jax.vjp(lambda p: value.apply(p, next_obs), value_params)

    def terms(v, v_next):
        return jnp.stack(dual_losses(v, v_next, target_v, target_v_next, batch, config)[:3])

    d_v, d_v_next = jax.jacrev(terms, argnums=(0, 1))(v, v_next)  # (3, heads, B) each
    # The mean and forward terms reach the parameters through V(s) only, the backward term
    # through V(s') only (dual_losses stops the targets' gradients).
    g_mean, unravel = ravel_pytree(pull(d_v[0])[0])
    g_forward = ravel_pytree(pull(d_v[1])[0])[0]
    g_backward = ravel_pytree(pull_next(d_v_next[2])[0])[0]
    direction = g_mean + g_forward + orthogonal_projection(g_forward, g_backward)
    mean_term, forward, backward, forward_residual = dual_losses(
        v, v_next, target_v, target_v_next, batch, config
    )
    aux = {
        "value_loss": mean_term + forward + backward,
        "forward_loss": forward,
        "backward_loss": backward,
        "v_mean": v.mean(),
        "forward_residual": forward_residual,
        "parallel_coef": parallel_coefficient(g_forward, g_backward),
        "gradient_cosine": jnp.vdot(g_forward, g_backward)
        / jnp.maximum(jnp.linalg.norm(g_forward) * jnp.linalg.norm(g_backward), 1e-10),
    }
    return unravel(direction), aux


def bc_weight(forward_residual, config: Config):
    """min(max(d_f, 0), max_weight) per head, averaged over the heads; (B,), no gradient."""
    weight = jnp.minimum(f_prime_inverse(forward_residual), config.max_weight)
    return jax.lax.stop_gradient(weight.mean(0))


def actor_loss(actor_params, params: Params, weight, batch, config: Config):
    """Weighted behaviour cloning, -mean(w log pi(a|s)); the weights are constants."""
    actor, _ = _networks(config, params.action_dim)
    mean, log_std = actor.apply(actor_params, batch["observations"])
    log_std = jnp.clip(log_std, config.log_std_min, config.log_std_max)
    log_prob = gaussian_log_prob(mean, log_std, batch["actions"])
    return -(jax.lax.stop_gradient(weight) * log_prob).mean(), log_prob.mean()


# --- The contract ---


def check(config: Config) -> None:
    """The rule across fields: log_std_min < log_std_max. Traced values are skipped; the runner
    calls this on every concrete config."""
    low, high = config.log_std_min, config.log_std_max
    if isinstance(low, jax.core.Tracer) or isinstance(high, jax.core.Tracer):
        return
    if not float(low) < float(high):
        raise ValueError(f"log_std_min={low} must be below log_std_max={high}")


def _reward_transform(config: Config, dataset) -> tuple[float, float]:
    if config.reward_preprocessing == "antmaze":
        return 3.0, -3.0
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
            f"ODICE takes vector observations and actions, got shapes "
            f"{dataset.observations.shape[1:]} and {dataset.actions.shape[1:]}"
        )
    if isinstance(dataset.actions, jax.core.Tracer):
        raise ValueError(
            "ODICE's init reads the dataset on the host (reward scaling): close over the "
            "dataset instead of passing it through jit or vmap"
        )
    largest = float(np.abs(np.asarray(dataset.actions)).max())
    if largest > 1 + 1e-4:
        raise ValueError(
            f"dataset actions reach {largest:.4g} but the actor acts in [-1, 1]: "
            "rescale the dataset's actions into [-1, 1] (the D4RL convention)"
        )


def _actor_optimizer(config: Config):
    """PyTorch's Adam(weight_decay): the L2 term joins the gradient before Adam's moments."""
    return optax.chain(optax.add_decayed_weights(config.weight_decay), optax.adam(config.actor_lr))


def init(config: Config, dataset, rng: jax.Array) -> TrainState:
    """Networks, optimizers, normalization statistics and reward scaling for ``dataset``.

    ``dataset`` (an rljax Dataset) must be concrete: close over it rather than pass it through
    jit, since the reward scale is computed from its episodes on the host.
    """
    _check_dataset(dataset)
    check(config)
    reward_scale, reward_shift = _reward_transform(config, dataset)
    actor_key, value_key, rng = jax.random.split(rng, 3)
    obs_dim, action_dim = dataset.observations.shape[-1], dataset.actions.shape[-1]
    actor, value = _networks(config, action_dim)
    dummy_obs = jnp.zeros(obs_dim)
    if config.normalize_obs:
        obs_mean = dataset.observations.mean(0)
        obs_std = dataset.observations.std(0) + 1e-3
    else:
        obs_mean, obs_std = jnp.zeros(obs_dim), jnp.ones(obs_dim)
    params = Params(
        actor=actor.init(actor_key, dummy_obs),
        value=value.init(value_key, dummy_obs),
        obs_mean=obs_mean,
        obs_std=obs_std,
        action_dim=action_dim,
    )
    return TrainState(
        params=params,
        target_value=params.value,
        actor_opt=_actor_optimizer(config).init(params.actor),
        value_opt=optax.adam(config.value_lr).init(params.value),
        reward_scale=jnp.asarray(reward_scale, jnp.float32),
        reward_shift=jnp.asarray(reward_shift, jnp.float32),
        rng=rng,
        step=jnp.zeros((), jnp.int32),
    )


def update_on_batch(config: Config, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    """One gradient step: the value heads (orthogonal-gradient), their EMA target, then the
    actor, weighted by this step's forward residuals (computed before the value moved)."""
    params = state.params
    batch = batch | {
        "observations": _normalize(params, batch["observations"]),
        "next_observations": _normalize(params, batch["next_observations"]),
        "rewards": state.reward_scale * batch["rewards"] + state.reward_shift,
    }

    value_grads, aux = value_gradient(params.value, state.target_value, batch, config)
    updates, value_opt = optax.adam(config.value_lr).update(value_grads, state.value_opt)
    params = params.replace(value=optax.apply_updates(params.value, updates))

    weight = bc_weight(aux["forward_residual"], config)
    (loss_pi, log_prob), actor_grads = jax.value_and_grad(actor_loss, has_aux=True)(
        params.actor, params, weight, batch, config
    )
    optimizer = _actor_optimizer(config)
    updates, actor_opt = optimizer.update(actor_grads, state.actor_opt, params.actor)
    params = params.replace(actor=optax.apply_updates(params.actor, updates))

    state = state.replace(
        params=params,
        target_value=optax.incremental_update(params.value, state.target_value, config.tau),
        actor_opt=actor_opt,
        value_opt=value_opt,
        step=state.step + 1,
    )
    residual = aux.pop("forward_residual")
    metrics = aux | {
        "actor_loss": loss_pi,
        "log_prob": log_prob,
        "td_mean": residual.mean(),
        "positive_fraction": (residual > 0).mean(),
        "bc_weight_mean": weight.mean(),
        "grad_norm": optax.tree.norm(value_grads),
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
    """The Gaussian's mean when deterministic, else a sample; clipped to [-1, 1]."""
    actor, _ = _networks(config, params.action_dim)
    mean, log_std = actor.apply(params.actor, _normalize(params, obs))
    if deterministic:
        return jnp.clip(mean, -1.0, 1.0)
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
    config = Config(total_updates=20_000, hidden_sizes=(64, 64), actor_lr=1e-3, value_lr=1e-3)
    start = time.time()
    state, metrics = jax.jit(lambda key: train(config, dataset, key))(jax.random.PRNGKey(1))
    jax.block_until_ready(metrics)
    print(f"ODICE on {episodes} noisy swing-up episodes of Pendulum-v1: "
          f"{config.total_updates} updates in {time.time() - start:.1f}s")  # fmt: skip
    for i in np.linspace(0, config.total_updates - 1, 5).astype(int):
        shown = ("value_loss", "actor_loss", "v_mean", "parallel_coef", "positive_fraction")
        print(
            f"  update {i + 1:>6d}  " + "  ".join(f"{k} {float(metrics[k][i]):.3f}" for k in shown)
        )
    greedy = lambda o, _: act(config, state.params, o, None, deterministic=True)  # noqa: E731
    eval_rewards = jax.jit(jax.vmap(lambda k: rollout(k, greedy)[2]))(jax.random.split(keys[0], 10))
    print(f"  dataset return {float(rewards.sum(1).mean()):.1f}, greedy policy return "
          f"{float(eval_rewards.sum(1).mean()):.1f} over 10 episodes")  # fmt: skip
