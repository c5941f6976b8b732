"""Quasimetric RL (QRL), offline and goal-conditioned, as OGBench implements it.

Wang, Torralba, Isola, Zhang, "Optimal Goal-Reaching Reinforcement Learning via Quasimetric
Learning", ICML 2023; the value is an interval quasimetric embedding (IQE: Wang, Isola,
"Improved Representation of Asymmetrical Distances with Interval Quasimetric Embeddings",
2022) or a metric residual network (MRN: Liu et al., AAAI 2023); the losses, defaults and goal
sampling are OGBench's ``impls/agents/qrl.py`` (Park et al., "OGBench: Benchmarking Offline
Goal-Conditioned RL", ICLR 2025). With z = phi(s), a learned latent of ``latent_dim``:

    d(s, g)   = IQE(phi(s), phi(g)): per component of dim_per_component coordinates, the length
                of the union of the intervals [z_s_j, z_g_j] with z_s_j < z_g_j; then
                w mean + (1 - w) max over components, w = sigmoid(a learned scalar)
    L_V       = mean 100 softplus(5 - d(s, g_rand) / 100) + stopgrad(lam) mean relu(d(s, s') - 1)^2
    L_lam     = lam (eps - stopgrad(mean relu(d(s, s') - 1)^2)),      lam = exp(log_lam)
    L_dyn     = mean (d~(z', z^) + d~(z^, z')) / 2,    z^ = z + f(z, a),  d~ the same IQE on latents
    L_pi      = -mean Q / stopgrad(mean |Q| + 1e-6) - alpha mean log pi(a | s, g),
                Q = -d~(z + f(z, clip(mu(s, g), -1, 1)), phi(g))   (phi and f held fixed)

all summed and minimised by one Adam step per update (there are no target networks). Minimising
L_lam over log_lam raises lam while the local constraint mean relu(d(s, s') - 1)^2 <= eps is
violated: d is pushed as far apart as possible between random pairs while one step stays <= 1.
The actor is a Gaussian with unit standard deviation (OGBench's const_std) on [s; g]; actions
are the mean (deterministic) or a sample, clipped to [-1, 1]. Continuous actions only: DDPG+BC
needs a differentiable action.
"""

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

LEARNS_FROM = "dataset"  # what it learns from, as declared in rljax/agents/__init__.py
GOAL_CONDITIONED = True
WRAPS_ENV = False
RECURRENT = False
PAPER = (
    'Wang et al., "Optimal Goal-Reaching Reinforcement Learning via Quasimetric Learning", '
    "ICML 2023"
)


def _field(default, *, static=False, bounds=None, choices=None, doc):
    """A config field. Static fields are shapes and switches (changing one recompiles); the
    rest are traced, so a sweep can vmap over them. bounds/choices let a runner validate; doc,
    the field's meaning in one line, is required so that no field goes unexplained."""
    metadata = {"bounds": bounds, "choices": choices, "doc": doc}
    return struct.field(pytree_node=not static, default=default, metadata=metadata)


@struct.dataclass
class Config:
    batch_size: int = _field(1024, static=True, bounds="[1, inf)", doc="rows per gradient step")
    total_updates: int = _field(
        1_000_000, static=True, bounds="[1, inf)", doc="gradient steps in all (the budget)"
    )
    hidden_sizes: tuple = _field(
        (512, 512, 512), static=True, doc="hidden-layer widths of every network"
    )
    latent_dim: int = _field(
        512, static=True, bounds="[1, inf)", doc="dimension of the latent z = phi(s)"
    )
    dim_per_component: int = _field(
        8, static=True, bounds="[1, inf)", doc="latent coordinates per IQE component (IQE only)"
    )
    quasimetric: str = _field(
        "iqe", static=True, choices=("iqe", "mrn"), doc="the distance d: IQE or MRN"
    )
    layer_norm: bool = _field(True, static=True, doc="layer norm in phi and the latent dynamics f")
    value_geom_sample: bool = _field(
        True, static=True, doc="geometric future offsets for value goals (else uniform)"
    )
    actor_geom_sample: bool = _field(
        False, static=True, doc="geometric future offsets for actor goals (else uniform)"
    )
    gc_negative: bool = _field(
        True, static=True, doc="rewards 0/-1 (else 1/0); QRL does not use them"
    )
    lr: float = _field(3e-4, bounds="(0, inf)", doc="Adam learning rate of all networks")
    discount: float = _field(
        0.99, bounds="[0, 1)", doc="gamma, used only by geometric goal offsets"
    )
    eps: float = _field(
        0.05, bounds="(0, inf)", doc="margin eps of the local constraint on d(s, s')"
    )
    alpha: float = _field(0.003, bounds="[0, inf)", doc="BC weight alpha of DDPG+BC")
    value_p_curgoal: float = _field(
        0.0, bounds="[0, 1]", doc="probability the value goal is the current state"
    )
    value_p_trajgoal: float = _field(
        0.0, bounds="[0, 1]", doc="probability the value goal is a future state of its trajectory"
    )
    value_p_randomgoal: float = _field(
        1.0, bounds="[0, 1]", doc="probability the value goal is a random dataset state"
    )
    actor_p_curgoal: float = _field(
        0.0, bounds="[0, 1]", doc="probability the actor goal is the current state"
    )
    actor_p_trajgoal: float = _field(
        1.0, bounds="[0, 1]", doc="probability the actor goal is a future state of its trajectory"
    )
    actor_p_randomgoal: float = _field(
        0.0, bounds="[0, 1]", doc="probability the actor goal is a random dataset state"
    )

    @property
    def num_updates(self) -> int:
        return self.total_updates


@struct.dataclass
class Params:
    value: Any  # phi and IQE's mixing weight
    dynamics: Any  # f(z, a), the latent step z' - z
    actor: Any
    log_lam: jax.Array  # the Lagrange multiplier is exp(log_lam), initially 1
    action_dim: int = struct.field(pytree_node=False, default=1)
    discrete: bool = struct.field(pytree_node=False, default=False)  # continuous only (DDPG+BC)


@struct.dataclass
class TrainState:
    params: Params
    opt: Any  # one Adam state for all of params, as OGBench
    rng: jax.Array
    step: jax.Array  # gradient steps done so far


# --- Quasimetrics ---


def iqe_distance(z_s, z_g, dim_per_component: int, mean_weight):
    """Interval quasimetric embedding d(z_s, z_g), latents of shape (..., latent_dim).

    Each component (dim_per_component consecutive coordinates) measures the union of the
    intervals [z_s_j, z_g_j] over its coordinates j with z_s_j < z_g_j: the sum of the ends that
    no other interval covers minus the sum of such starts (of tied endpoints, the lowest index
    counts). Comparing all pairs costs k^2 per component, but unlike sorting the endpoints it is
    elementwise, which makes it an order of magnitude faster on a CPU. Components combine as
    mean_weight mean + (1 - mean_weight) max.
    """
    k = dim_per_component
    x, y = jnp.broadcast_arrays(
        z_s.reshape(*z_s.shape[:-1], -1, k), z_g.reshape(*z_g.shape[:-1], -1, k)
    )
    valid = x < y
    x_i, y_i = x[..., :, None], y[..., :, None]
    x_j, y_j, valid_j = x[..., None, :], y[..., None, :], valid[..., None, :]
    earlier = jnp.tril(jnp.ones((k, k), bool), -1)  # [i, j]: j < i
    end_covered = valid_j & ((x_j <= y_i) & (y_i < y_j) | (y_j == y_i) & earlier)
    start_covered = valid_j & ((x_j < x_i) & (x_i <= y_j) | (x_j == x_i) & earlier)
    ends = valid & ~end_covered.any(-1)
    starts = valid & ~start_covered.any(-1)
    length = jnp.where(ends, y, 0).sum(-1) - jnp.where(starts, x, 0).sum(-1)
    return mean_weight * length.mean(-1) + (1 - mean_weight) * length.max(-1)


def mrn_distance(z_s, z_g):
    """Metric residual network: Euclidean distance between the first halves of the latents plus
    the largest positive difference of the second halves, max_j relu(z_s_j - z_g_j)."""
    half = z_s.shape[-1] // 2
    squared = jnp.square(z_s[..., :half] - z_g[..., :half]).sum(-1)
    asymmetric = jax.nn.relu((z_s[..., half:] - z_g[..., half:]).max(-1))
    return jnp.sqrt(jnp.maximum(squared, 1e-12)) + asymmetric


# --- Networks ---

_xavier = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform")


class MLP(nn.Module):
    """OGBench's MLP: GELU, then LayerNorm when asked; the last layer stays linear unless
    activate_final."""

    sizes: tuple
    layer_norm: bool = False
    activate_final: bool = False

    @nn.compact
    def __call__(self, x):
        for i, size in enumerate(self.sizes):
            x = nn.Dense(size, kernel_init=_xavier)(x)
            if i + 1 < len(self.sizes) or self.activate_final:
                x = nn.gelu(x)
                if self.layer_norm:
                    x = nn.LayerNorm()(x)
        return x


class Quasimetric(nn.Module):
    """d(s, g) on the latents phi(s), phi(g); ``encode`` and ``distance`` apply the halves."""

    hidden_sizes: tuple
    latent_dim: int
    dim_per_component: int
    kind: str
    layer_norm: bool

    def setup(self):
        self.phi = MLP((*self.hidden_sizes, self.latent_dim), self.layer_norm)
        if self.kind == "iqe":
            self.mix = self.param("mix", nn.initializers.zeros, ())  # w = sigmoid(mix) = 1/2

    def encode(self, obs):
        return self.phi(obs)

    def distance(self, z_s, z_g):
        if self.kind == "mrn":
            return mrn_distance(z_s, z_g)
        return iqe_distance(z_s, z_g, self.dim_per_component, jax.nn.sigmoid(self.mix))

    def __call__(self, obs, goal):
        return self.distance(self.encode(obs), self.encode(goal))


class Actor(nn.Module):
    """Mean of the goal-conditioned Gaussian (unit standard deviation) on [s; g]."""

    action_dim: int
    hidden_sizes: tuple

    @nn.compact
    def __call__(self, obs, goal):
        x = MLP(self.hidden_sizes, activate_final=True)(jnp.concatenate([obs, goal], -1))
        init = nn.initializers.variance_scaling(1e-2, "fan_avg", "uniform")
        return nn.Dense(self.action_dim, kernel_init=init)(x)


class Networks(NamedTuple):
    value: Quasimetric  # d(s, g), and its halves phi (encode) and d~ (distance)
    dynamics: MLP  # f(z, a)
    actor: Actor


def _networks(config: Config, action_dim: int) -> Networks:
    hidden = tuple(config.hidden_sizes)
    value = Quasimetric(
        hidden, config.latent_dim, config.dim_per_component, config.quasimetric, config.layer_norm
    )
    dynamics = MLP((*hidden, config.latent_dim), config.layer_norm)
    return Networks(value=value, dynamics=dynamics, actor=Actor(action_dim, hidden))


def unit_gaussian_log_prob(mean, x):
    """log N(x; mean, I), summed over the last axis."""
    return (-0.5 * jnp.square(x - mean) - 0.5 * jnp.log(2 * jnp.pi)).sum(-1)


# --- Goal relabelling (OGBench's GCDataset; identical in every GC agent) ---


def trajectory_ends(dataset) -> np.ndarray:
    """Index of each row's trajectory's last transition, on the host (the dataset is concrete)."""
    if isinstance(dataset.observations, jax.core.Tracer):
        raise ValueError("goal sampling reads trajectory ends on the host: close over the dataset")
    ends = np.flatnonzero((np.asarray(dataset.terminals) > 0) | (np.asarray(dataset.timeouts) > 0))
    if len(ends) == 0 or ends[-1] != len(dataset.timeouts) - 1:
        raise ValueError("the dataset's last row must end a trajectory (terminals or timeouts = 1)")
    return ends[np.searchsorted(ends, np.arange(len(dataset.timeouts)))]


def sample_goals(rng, idx, final, size, p_cur, p_traj, p_rand, geom_sample: bool, discount):
    """Goal row per index, as OGBench's GCDataset.sample_goals: the current row with probability
    p_cur, else a future row of the same trajectory with probability p_traj / (1 - p_cur) (offset
    k ~ Geometric(1 - discount), k >= 1, or uniform over [i + 1, F]), else a uniform random row.
    p_rand is implied (= 1 - p_cur - p_traj); it is an argument so call sites read like OGBench."""
    del p_rand
    random_key, offset_key, mix_key, cur_key = jax.random.split(rng, 4)
    random_goal = jax.random.randint(random_key, idx.shape, 0, size)
    if geom_sample:
        offset = jax.random.geometric(offset_key, 1 - discount, idx.shape)
        future_goal = jnp.minimum(idx + offset, final)
    else:
        u = jax.random.uniform(offset_key, idx.shape)
        future_goal = jnp.round(jnp.minimum(idx + 1, final) * u + final * (1 - u)).astype(idx.dtype)
    p_future = p_traj / jnp.maximum(1 - p_cur, 1e-12)
    goal = jnp.where(jax.random.uniform(mix_key, idx.shape) < p_future, future_goal, random_goal)
    return jnp.where(jax.random.uniform(cur_key, idx.shape) < p_cur, idx, goal)


def sample_batch(config: Config, dataset, rng: jax.Array) -> dict:
    """Uniform rows, value and actor goals relabelled by ``sample_goals``, and the goal-reaching
    reward and mask of the value goal (on the current row, as OGBench)."""
    ends = jnp.asarray(trajectory_ends(dataset))
    size = dataset.observations.shape[0]
    idx_key, value_key, actor_key = jax.random.split(rng, 3)
    idx = jax.random.randint(idx_key, (config.batch_size,), 0, size)
    final = ends[idx]
    value_goal = sample_goals(
        value_key, idx, final, size, config.value_p_curgoal, config.value_p_trajgoal,
        config.value_p_randomgoal, config.value_geom_sample, config.discount,
    )  # fmt: skip
    actor_goal = sample_goals(
        actor_key, idx, final, size, config.actor_p_curgoal, config.actor_p_trajgoal,
        config.actor_p_randomgoal, config.actor_geom_sample, config.discount,
    )  # fmt: skip
    success = (idx == value_goal).astype(jnp.float32)
    return {
        "observations": dataset.observations[idx],
        "actions": dataset.actions[idx],
        "next_observations": dataset.next_observations[idx],
        "value_goals": dataset.observations[value_goal],
        "actor_goals": dataset.observations[actor_goal],
        "rewards": success - 1.0 if config.gc_negative else success,
        "masks": 1.0 - success,
    }


# --- Losses ---


def quasimetric_losses(d_neg, d_pos, lam, eps):
    """QRL's shaped objective on distances to random goals (d_neg) and to next states (d_pos):
    (L_V, L_lam, push term, local constraint term). lam enters L_V and the constraint enters
    L_lam only as constants, so each is the other's fixed coefficient."""
    d_neg_loss = (100 * jax.nn.softplus(5 - d_neg / 100)).mean()
    d_pos_loss = jnp.square(jax.nn.relu(d_pos - 1)).mean()
    value_loss = d_neg_loss + jax.lax.stop_gradient(lam) * d_pos_loss
    lam_loss = lam * (eps - jax.lax.stop_gradient(d_pos_loss))
    return value_loss, lam_loss, d_neg_loss, d_pos_loss


def ddpg_bc_loss(q, log_prob, alpha):
    """-mean Q / stopgrad(mean |Q| + 1e-6) - alpha mean log pi: scale-free in Q."""
    q_loss = -q.mean() / jax.lax.stop_gradient(jnp.abs(q).mean() + 1e-6)
    return q_loss - alpha * log_prob.mean(), q_loss


def value_loss(params: Params, batch: dict, config: Config):
    """L_V + L_lam: push random goals apart, keep one step within distance 1 (on average)."""
    value = _networks(config, params.action_dim).value
    d_neg = value.apply(params.value, batch["observations"], batch["value_goals"])
    d_pos = value.apply(params.value, batch["observations"], batch["next_observations"])
    lam = jnp.exp(params.log_lam)
    loss_v, loss_lam, d_neg_loss, d_pos_loss = quasimetric_losses(d_neg, d_pos, lam, config.eps)
    return loss_v + loss_lam, {
        "value_loss": loss_v,
        "lam_loss": loss_lam,
        "d_neg_loss": d_neg_loss,
        "d_pos_loss": d_pos_loss,
        "d_neg_mean": d_neg.mean(),
        "d_pos_mean": d_pos.mean(),
        "lam": lam,
    }


def dynamics_loss(params: Params, batch: dict, config: Config):
    """Symmetrised latent distance between phi(s') and phi(s) + f(phi(s), a); it trains phi too."""
    net = _networks(config, params.action_dim)
    value, dynamics = net.value, net.dynamics
    z = value.apply(params.value, batch["observations"], method="encode")
    z_next = value.apply(params.value, batch["next_observations"], method="encode")
    z_pred = z + dynamics.apply(params.dynamics, jnp.concatenate([z, batch["actions"]], -1))
    there = value.apply(params.value, z_next, z_pred, method="distance")
    back = value.apply(params.value, z_pred, z_next, method="distance")
    return (there + back).mean() / 2


def actor_loss(params: Params, batch: dict, config: Config):
    """DDPG+BC through the latent model: Q(s, a, g) = -d~(phi(s) + f(phi(s), a), phi(g)) with phi
    and f fixed, at the actor's clipped mean, plus alpha times the BC log-likelihood."""
    net = _networks(config, params.action_dim)
    value, dynamics = net.value, net.dynamics
    value_params = jax.lax.stop_gradient(params.value)
    mean = net.actor.apply(params.actor, batch["observations"], batch["actor_goals"])
    z = value.apply(value_params, batch["observations"], method="encode")
    z_goal = value.apply(value_params, batch["actor_goals"], method="encode")
    step = dynamics.apply(
        jax.lax.stop_gradient(params.dynamics),
        jnp.concatenate([z, jnp.clip(mean, -1, 1)], -1),
    )
    q = -value.apply(value_params, z + step, z_goal, method="distance")
    log_prob = unit_gaussian_log_prob(mean, batch["actions"])
    loss, q_loss = ddpg_bc_loss(q, log_prob, config.alpha)
    return loss, {
        "actor_loss": loss,
        "q_loss": q_loss,
        "q_mean": q.mean(),
        "q_abs_mean": jnp.abs(q).mean(),
        "bc_log_prob": log_prob.mean(),
        "mse": jnp.square(mean - batch["actions"]).mean(),
    }


def total_loss(params: Params, batch: dict, config: Config):
    loss_v, value_info = value_loss(params, batch, config)
    loss_dyn = dynamics_loss(params, batch, config)
    loss_pi, actor_info = actor_loss(params, batch, config)
    loss = loss_v + loss_dyn + loss_pi
    return loss, {"total_loss": loss, "dynamics_loss": loss_dyn, **value_info, **actor_info}


# --- The contract ---


def check(config: Config) -> None:
    """The rule across fields: each goal mixture's probabilities sum to 1. Traced values (init
    under jit, vmap or lax.map) are skipped; the runner calls this on every concrete config."""
    for who in ("value", "actor"):
        names = [f"{who}_p_{kind}goal" for kind in ("cur", "traj", "random")]
        values = [getattr(config, name) for name in names]
        if any(isinstance(v, jax.core.Tracer) for v in values):
            continue
        total = sum(float(v) for v in values)
        if abs(total - 1) > 1e-6:
            raise ValueError(f"{' + '.join(names)} = {total:.6g}; they must sum to 1")


def _check_dataset(dataset) -> None:
    if isinstance(dataset.actions, jax.core.Tracer):
        raise ValueError(
            "QRL reads the dataset on the host (trajectory ends, action range): close over the "
            "dataset instead of passing it through jit or vmap"
        )
    if not jnp.issubdtype(dataset.actions.dtype, jnp.floating):
        raise ValueError(
            f"QRL's DDPG+BC actor needs continuous actions, got {dataset.actions.dtype} actions "
            "(a discrete dataset): use a GC agent that supports discrete actions (e.g. GCIVL)"
        )
    if dataset.observations.ndim != 2 or dataset.actions.ndim != 2:
        raise ValueError(
            f"QRL takes vector observations and actions, got shapes "
            f"{dataset.observations.shape[1:]} and {dataset.actions.shape[1:]}"
        )
    largest = float(np.abs(np.asarray(dataset.actions)).max())
    if largest > 1 + 1e-4:
        raise ValueError(
            f"dataset actions reach {largest:.4g} but QRL's actions are clipped to [-1, 1]: "
            "rescale the dataset's actions into [-1, 1] (the OGBench convention)"
        )


def init(config: Config, dataset, rng: jax.Array) -> TrainState:
    """Quasimetric, latent dynamics, actor, lambda = 1 and one Adam state for ``dataset`` (an
    rljax Dataset, closed over rather than traced)."""
    check(config)
    _check_dataset(dataset)
    if config.quasimetric == "iqe" and config.latent_dim % config.dim_per_component:
        raise ValueError(
            f"latent_dim={config.latent_dim} must be a multiple of "
            f"dim_per_component={config.dim_per_component} (IQE splits it into components)"
        )
    if config.quasimetric == "mrn" and config.latent_dim < 2:
        raise ValueError(f"latent_dim={config.latent_dim} must be >= 2 for MRN's two halves")
    trajectory_ends(dataset)  # fail here, not inside the first jitted update
    value_key, dynamics_key, actor_key, rng = jax.random.split(rng, 4)
    obs_dim, action_dim = dataset.observations.shape[-1], dataset.actions.shape[-1]
    net = _networks(config, action_dim)
    obs = jnp.zeros(obs_dim)
    params = Params(
        value=net.value.init(value_key, obs, obs),
        dynamics=net.dynamics.init(dynamics_key, jnp.zeros(config.latent_dim + action_dim)),
        actor=net.actor.init(actor_key, obs, obs),
        log_lam=jnp.zeros(()),
        action_dim=action_dim,
    )
    return TrainState(
        params=params,
        opt=optax.adam(config.lr).init(params),
        rng=rng,
        step=jnp.zeros((), jnp.int32),
    )


def update_on_batch(config: Config, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    """One Adam step on the sum of all losses (value, lambda, dynamics, actor)."""
    (_, metrics), grads = jax.value_and_grad(total_loss, has_aux=True)(state.params, batch, config)
    updates, opt = optax.adam(config.lr).update(grads, state.opt)
    state = state.replace(
        params=optax.apply_updates(state.params, updates), opt=opt, step=state.step + 1
    )
    return state, {**metrics, "grad_norm": optax.tree.norm(grads)}


def update(config: Config, dataset, state: TrainState) -> tuple[TrainState, dict]:
    """One gradient step on a batch sampled inside jit."""
    rng, batch_key = jax.random.split(state.rng)
    return update_on_batch(config, state.replace(rng=rng), sample_batch(config, dataset, batch_key))


def train(config: Config, dataset, rng: jax.Array, num_updates: int | None = None):
    """init, then a lax.scan of num_updates (default: total_updates) ``update`` steps (what the
    runner's chunk runs), each on a relabelled batch sampled inside jit. The dataset is closed
    over, not carried in the state, so seeds vmapped over ``train`` share one copy of it."""
    num_updates = config.num_updates if num_updates is None else num_updates
    state = init(config, dataset, rng)
    return jax.lax.scan(lambda state, _: update(config, dataset, state), state, None, num_updates)


def act(config: Config, params: Params, obs, goal, rng: jax.Array, deterministic: bool = False):
    """The Gaussian's mean when deterministic (OGBench's eval_temperature=0), else a sample with
    unit standard deviation; clipped to [-1, 1]. obs and goal: (d,) or (B, d)."""
    mean = _networks(config, params.action_dim).actor.apply(params.actor, obs, goal)
    if not deterministic:
        mean = mean + jax.random.normal(rng, mean.shape)
    return jnp.clip(mean, -1.0, 1.0)


if __name__ == "__main__":
    import time

    # A small offline dataset in the open square [0, 1]^2: a point moves by 0.02 a per step
    # toward a goal that changes every 100 steps, with Gaussian action noise 0.5 (as OGBench's
    # pointmaze data), clipped to [-1, 1].
    @struct.dataclass
    class Transitions:  # the rljax.data.Dataset fields, without importing rljax
        observations: jax.Array
        actions: jax.Array
        rewards: jax.Array
        terminals: jax.Array
        timeouts: jax.Array
        next_observations: jax.Array

    def step_point(xy, action):
        return jnp.clip(xy + 0.02 * action, 0.0, 1.0)

    def trajectory(rng, length=400, goal_every=100):
        start_key, goal_key, noise_key = jax.random.split(rng, 3)
        goals = jnp.repeat(jax.random.uniform(goal_key, (length // goal_every, 2)), goal_every, 0)

        def step(xy, inputs):
            goal, noise = inputs
            direction = (goal - xy) / (jnp.linalg.norm(goal - xy) + 1e-6)
            action = jnp.clip(direction + 0.5 * noise, -1, 1)
            return step_point(xy, action), (xy, action, step_point(xy, action))

        noise = jax.random.normal(noise_key, (length, 2))
        return jax.lax.scan(step, jax.random.uniform(start_key, (2,)), (goals, noise))[1]

    episodes, length = 50, 400
    keys = jax.random.split(jax.random.PRNGKey(0), episodes)
    obs, actions, next_obs = jax.jit(jax.vmap(trajectory))(keys)
    timeouts = jnp.zeros((episodes, length)).at[:, -1].set(1).reshape(-1)
    flat = lambda x: x.reshape(episodes * length, 2)  # noqa: E731
    dataset = Transitions(
        flat(obs), flat(actions), jnp.zeros_like(timeouts), jnp.zeros_like(timeouts), timeouts,
        flat(next_obs),
    )  # fmt: skip
    config = Config(
        batch_size=256, total_updates=2_000, hidden_sizes=(128, 128), latent_dim=64, alpha=0.03
    )
    start = time.time()
    state, metrics = jax.block_until_ready(
        jax.jit(lambda key: train(config, dataset, key))(jax.random.PRNGKey(1))
    )
    print(f"QRL on {episodes} noisy point trajectories in [0, 1]^2: "
          f"{config.total_updates} updates in {time.time() - start:.1f}s")  # fmt: skip
    for i in np.linspace(0, config.total_updates - 1, 5).astype(int):
        shown = ("d_neg_mean", "d_pos_loss", "lam", "dynamics_loss", "mse")
        print(
            f"  update {i + 1:>5d}  " + "  ".join(f"{k} {float(metrics[k][i]):.3f}" for k in shown)
        )

    @jax.jit
    def success_rate(policy_params, rng, episodes=500, steps=150):
        start_key, goal_key, act_key = jax.random.split(rng, 3)
        xy = jax.random.uniform(start_key, (episodes, 2))
        goal = jax.random.uniform(goal_key, (episodes, 2))

        def step(xy, key):
            if policy_params is None:
                action = jax.random.uniform(key, xy.shape, minval=-1, maxval=1)
            else:
                action = act(config, policy_params, xy, goal, key, deterministic=True)
            return step_point(xy, action), None

        xy = jax.lax.scan(step, xy, jax.random.split(act_key, steps))[0]
        return (jnp.linalg.norm(xy - goal, axis=-1) < 0.1).mean()

    print(f"  reaching a random goal within 0.1 in 150 steps: greedy policy "
          f"{float(success_rate(state.params, jax.random.PRNGKey(2))):.0%}, random actions "
          f"{float(success_rate(None, jax.random.PRNGKey(2))):.0%}")  # fmt: skip
