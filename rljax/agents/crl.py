"""Contrastive RL (CRL), offline and goal-conditioned, as OGBench implements it.

Eysenbach, Zhang, Levine, Salakhutdinov, "Contrastive Learning as Goal-Conditioned
Reinforcement Learning", NeurIPS 2022; the losses, defaults and goal sampling are OGBench's
``impls/agents/crl.py`` after its commit 15594e3 (the critic outputs logits; Park et al.,
"OGBench: Benchmarking Offline Goal-Conditioned RL", ICLR 2025). An ensemble of two bilinear
critics, e = 1, 2:

    f_e(s, a, g) = phi_e(s, a)^T psi_e(g) / sqrt(latent_dim)
    L_f  = mean_{e, i, j} BCE(sigmoid(f_e(s_i, a_i, g_j)), 1[i = j])     g_i: a future state of
           row i's trajectory, so the B x B logits hold one positive and B - 1 negatives per row
    L_pi = -mean Q / stopgrad(mean |Q| + 1e-6) - alpha mean log pi(a | s, g),
           Q = min_e f_e(s, clip(mu(s, g), -1, 1), g)       (the critics held fixed)

summed and minimised by one Adam step per update (there are no target networks). The logit
f estimates log p(g | s, a) / p(g) up to a constant, the discounted occupancy ratio that ranks
actions like the Q-function. The actor is a Gaussian with unit standard deviation (OGBench's
const_std) on [s; g]; actions are the mean (deterministic) or a sample, clipped to [-1, 1].
Continuous actions only: DDPG+BC needs a differentiable action.
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
    'Eysenbach et al., "Contrastive Learning as Goal-Conditioned Reinforcement Learning", '
    "NeurIPS 2022"
)


def _field(default, *, static=False, bounds=None, choices=None, doc):
    """A config field. Static fields are shapes and switches (changing one recompiles); the
    rest are traced, so a sweep can vmap over them. bounds/choices let a runner validate; doc,
    the field's meaning in one line, is required so that no field goes unexplained."""
    metadata = {"bounds": bounds, "choices": choices, "doc": doc}
    return struct.field(pytree_node=not static, default=default, metadata=metadata)


@struct.dataclass
class Config:
    # At least 2: one negative per row.
    batch_size: int = _field(
        1024, static=True, bounds="[2, inf)", doc="rows B per step: B x B logits, B - 1 negatives"
    )
    total_updates: int = _field(
        1_000_000, static=True, bounds="[1, inf)", doc="gradient steps in all (the budget)"
    )
    hidden_sizes: tuple = _field(
        (512, 512, 512), static=True, doc="hidden-layer widths of every network"
    )
    latent_dim: int = _field(
        512, static=True, bounds="[1, inf)", doc="dimension of the critics' phi and psi"
    )
    layer_norm: bool = _field(True, static=True, doc="layer norm in the critics' phi and psi")
    value_geom_sample: bool = _field(
        True, static=True, doc="geometric future offsets for value goals (else uniform)"
    )
    actor_geom_sample: bool = _field(
        False, static=True, doc="geometric future offsets for actor goals (else uniform)"
    )
    gc_negative: bool = _field(
        False, static=True, doc="rewards 0/-1 (else 1/0); CRL does not use them"
    )
    lr: float = _field(3e-4, bounds="(0, inf)", doc="Adam learning rate of all networks")
    discount: float = _field(
        0.99, bounds="[0, 1)", doc="gamma of geometric goal offsets: the horizon"
    )
    alpha: float = _field(0.1, bounds="[0, inf)", doc="BC weight alpha of DDPG+BC")
    value_p_curgoal: float = _field(
        0.0, bounds="[0, 1]", doc="probability the value goal is the current state"
    )
    value_p_trajgoal: float = _field(
        1.0, bounds="[0, 1]", doc="probability the value goal is a future state of its trajectory"
    )
    value_p_randomgoal: float = _field(
        0.0, bounds="[0, 1]", doc="probability the value goal is a random dataset state"
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
    critic: Any  # both bilinear critics, stacked on a leading axis of 2
    actor: Any
    action_dim: int = struct.field(pytree_node=False, default=1)
    discrete: bool = struct.field(pytree_node=False, default=False)  # continuous only (DDPG+BC)


@struct.dataclass
class TrainState:
    params: Params
    opt: Any  # one Adam state for all of params, as OGBench
    rng: jax.Array
    step: jax.Array  # gradient steps done so far


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


class Representations(nn.Module):
    """phi(s, a) and psi(g), each of latent_dim."""

    hidden_sizes: tuple
    latent_dim: int
    layer_norm: bool

    @nn.compact
    def __call__(self, obs, action, goal):
        sizes = (*self.hidden_sizes, self.latent_dim)
        phi = MLP(sizes, self.layer_norm)(jnp.concatenate([obs, action], -1))
        return phi, MLP(sizes, self.layer_norm)(goal)


class BilinearCritic(nn.Module):
    """Two independent (phi, psi) pairs evaluated as one vmapped network; outputs (2, ...)."""

    hidden_sizes: tuple
    latent_dim: int
    layer_norm: bool

    @nn.compact
    def __call__(self, obs, action, goal):
        twins = nn.vmap(
            Representations,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=None,
            axis_size=2,
        )
        return twins(self.hidden_sizes, self.latent_dim, self.layer_norm)(obs, action, goal)


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
    critic: BilinearCritic
    actor: Actor


def _networks(config: Config, action_dim: int) -> Networks:
    hidden = tuple(config.hidden_sizes)
    return Networks(
        critic=BilinearCritic(hidden, config.latent_dim, config.layer_norm),
        actor=Actor(action_dim, hidden),
    )


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
    reward and mask of the value goal (on the current row, as OGBench; CRL uses neither)."""
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


def binary_nce_loss(logits):
    """Mean sigmoid cross-entropy of logits (..., B, B) against the identity: entry [i, j]
    scores (s_i, a_i) against goal g_j, so the diagonal holds the positive pairs."""
    labels = jnp.eye(logits.shape[-1])
    return optax.sigmoid_binary_cross_entropy(logits, jnp.broadcast_to(labels, logits.shape)).mean()


def ddpg_bc_loss(q, log_prob, alpha):
    """-mean Q / stopgrad(mean |Q| + 1e-6) - alpha mean log pi: scale-free in Q."""
    q_loss = -q.mean() / jax.lax.stop_gradient(jnp.abs(q).mean() + 1e-6)
    return q_loss - alpha * log_prob.mean(), q_loss


def critic_loss(params: Params, batch: dict, config: Config):
    """Binary NCE over each critic's B x B logits; value goals are the positives."""
    phi, psi = _networks(config, params.action_dim).critic.apply(
        params.critic, batch["observations"], batch["actions"], batch["value_goals"]
    )  # (2, B, latent_dim) each
    logits = jnp.einsum("eik,ejk->eij", phi, psi) / jnp.sqrt(config.latent_dim)
    loss = binary_nce_loss(logits)
    eye = jnp.eye(logits.shape[-1])
    mean_logits = logits.mean(0)
    return loss, {
        "critic_loss": loss,
        "logits_pos": (mean_logits * eye).sum() / eye.sum(),
        "logits_neg": (mean_logits * (1 - eye)).sum() / (1 - eye).sum(),
        "binary_accuracy": ((mean_logits > 0) == (eye > 0)).mean(),
        "categorical_accuracy": (mean_logits.argmax(1) == jnp.arange(eye.shape[0])).mean(),
    }


def critic_values(config: Config, critic_params, obs, action, goal):
    """f_e(s, a, g) for both critics, (2, ...): the diagonal of the NCE logits."""
    critic = _networks(config, action.shape[-1]).critic
    phi, psi = critic.apply(critic_params, obs, action, goal)
    return (phi * psi).sum(-1) / jnp.sqrt(config.latent_dim)


def actor_loss(params: Params, batch: dict, config: Config):
    """DDPG+BC on the smaller critic at the actor's clipped mean (critics fixed)."""
    actor = _networks(config, params.action_dim).actor
    mean = actor.apply(params.actor, batch["observations"], batch["actor_goals"])
    q = critic_values(
        config, jax.lax.stop_gradient(params.critic), batch["observations"],
        jnp.clip(mean, -1, 1), batch["actor_goals"],
    ).min(0)  # fmt: skip
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
    loss_f, critic_info = critic_loss(params, batch, config)
    loss_pi, actor_info = actor_loss(params, batch, config)
    loss = loss_f + loss_pi
    return loss, {"total_loss": loss, **critic_info, **actor_info}


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
            "CRL reads the dataset on the host (trajectory ends, action range): close over the "
            "dataset instead of passing it through jit or vmap"
        )
    if not jnp.issubdtype(dataset.actions.dtype, jnp.floating):
        raise ValueError(
            f"CRL's DDPG+BC actor needs continuous actions, got {dataset.actions.dtype} actions "
            "(a discrete dataset): use a GC agent that supports discrete actions (e.g. GCIVL)"
        )
    if dataset.observations.ndim != 2 or dataset.actions.ndim != 2:
        raise ValueError(
            f"CRL takes vector observations and actions, got shapes "
            f"{dataset.observations.shape[1:]} and {dataset.actions.shape[1:]}"
        )
    largest = float(np.abs(np.asarray(dataset.actions)).max())
    if largest > 1 + 1e-4:
        raise ValueError(
            f"dataset actions reach {largest:.4g} but CRL's actions are clipped to [-1, 1]: "
            "rescale the dataset's actions into [-1, 1] (the OGBench convention)"
        )


def init(config: Config, dataset, rng: jax.Array) -> TrainState:
    """Both critics, the actor and one Adam state for ``dataset`` (an rljax Dataset, closed over
    rather than traced)."""
    check(config)
    _check_dataset(dataset)
    trajectory_ends(dataset)  # fail here, not inside the first jitted update
    critic_key, actor_key, rng = jax.random.split(rng, 3)
    obs_dim, action_dim = dataset.observations.shape[-1], dataset.actions.shape[-1]
    net = _networks(config, action_dim)
    obs = jnp.zeros(obs_dim)
    params = Params(
        critic=net.critic.init(critic_key, obs, jnp.zeros(action_dim), obs),
        actor=net.actor.init(actor_key, obs, obs),
        action_dim=action_dim,
    )
    return TrainState(
        params=params,
        opt=optax.adam(config.lr).init(params),
        rng=rng,
        step=jnp.zeros((), jnp.int32),
    )


def update_on_batch(config: Config, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    """One Adam step on the sum of the contrastive critic loss and the actor loss."""
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
        batch_size=256, total_updates=3_000, hidden_sizes=(128, 128), latent_dim=64, alpha=0.03
    )
    start = time.time()
    state, metrics = jax.block_until_ready(
        jax.jit(lambda key: train(config, dataset, key))(jax.random.PRNGKey(1))
    )
    print(f"CRL on {episodes} noisy point trajectories in [0, 1]^2: "
          f"{config.total_updates} updates in {time.time() - start:.1f}s")  # fmt: skip
    for i in np.linspace(0, config.total_updates - 1, 5).astype(int):
        shown = ("critic_loss", "categorical_accuracy", "logits_pos", "logits_neg", "mse")
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
