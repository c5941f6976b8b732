"""Hierarchical implicit Q-learning (HIQL), offline goal-conditioned.

Park, Ghosh, Eysenbach, Levine, "HIQL: Offline Goal-Conditioned RL with Latent States as
Actions", NeurIPS 2023; as implemented in OGBench (Park et al. 2025, ``impls/agents/hiql.py``,
``impls/utils/datasets.py:HGCDataset``). One value function and two policies share a goal
representation phi([s; g]) (an MLP whose rep_dim outputs are scaled to norm sqrt(rep_dim)):

    V_j(s, g) = f_j([s, phi([s; g])]),  j = 1, 2; Vbar_j the Polyak targets (same phi)
    q = r + gamma m min_j Vbar_j(s', g),   adv = q - mean_j Vbar_j(s, g)
    L_V = sum_j mean(|tau - 1(adv < 0)| (r + gamma m Vbar_j(s', g) - V_j(s, g))^2)   (trains phi)
    L_lo = -mean(min(exp(alpha_lo (V(s', w) - V(s, w))), 100) log pi_lo(a | s, sg(phi([s; w]))))
    L_hi = -mean(min(exp(alpha_hi (V(w', g) - V(s, g))), 100) log pi_hi(sg(phi([s; w'])) | s, g))

with V = mean_j V_j held fixed in the actor losses, w = s_{min(i + k, F)} (k = subgoal_steps, F
the trajectory's last row), g_hi a future row of the trajectory (or a random row with probability
actor_p_randomgoal) and w' = s_{min(i + k, g_hi)} (s_{min(i + k, F)} for a random g_hi). Rewards
and masks come from the value goal: success = (i == g), m = 1 - success, r = success - 1. Both
policies are Gaussians with unit standard deviation (OGBench's const_std) and no tanh; the low
policy is a categorical over actions when ``discrete``. One Adam step on the sum of the three
losses per update. To act, the high policy proposes a subgoal representation, which is rescaled to
norm sqrt(rep_dim) before the low policy reads it. No observation normalization (OGBench has none).
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
    'Park et al., "HIQL: Offline Goal-Conditioned RL with Latent States as Actions", NeurIPS 2023'
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
    layer_norm: bool = _field(True, static=True, doc="layer norm in phi and the value MLPs")
    rep_dim: int = _field(
        10, static=True, bounds="[1, inf)", doc="dimension of the goal representation phi"
    )
    subgoal_steps: int = _field(
        25, static=True, bounds="[1, inf)", doc="steps k ahead to the low actor's subgoal"
    )
    discrete: bool = _field(
        False, static=True, doc="categorical low actor over max(action) + 1 actions"
    )
    value_geom_sample: bool = _field(
        True, static=True, doc="geometric future offsets for value goals (else uniform)"
    )
    actor_geom_sample: bool = _field(
        False, static=True, doc="geometric future offsets for actor goals (else uniform)"
    )
    gc_negative: bool = _field(
        True, static=True, doc="rewards 0/-1 for reaching the value goal (else 1/0)"
    )
    lr: float = _field(3e-4, bounds="(0, inf)", doc="Adam learning rate of all networks")
    discount: float = _field(
        0.99, bounds="[0, 1)", doc="discount gamma (also of geometric goal offsets)"
    )
    tau: float = _field(0.005, bounds="(0, 1]", doc="Polyak rate tau of the target values")
    expectile: float = _field(
        0.7, bounds="(0, 1)", doc="expectile tau of the value loss (0.5 = mean)"
    )
    low_alpha: float = _field(
        3.0, bounds="[0, inf)", doc="inverse temperature alpha_lo of the low actor's AWR"
    )
    high_alpha: float = _field(
        3.0, bounds="[0, inf)", doc="inverse temperature alpha_hi of the high actor's AWR"
    )
    value_p_curgoal: float = _field(
        0.2, bounds="[0, 1]", doc="probability the value goal is the current state"
    )
    value_p_trajgoal: float = _field(
        0.5, bounds="[0, 1]", doc="probability the value goal is a future state of its trajectory"
    )
    value_p_randomgoal: float = _field(
        0.3, bounds="[0, 1]", doc="probability the value goal is a random dataset state"
    )
    # HGCDataset reads only actor_p_randomgoal (the high actor's goals are future rows otherwise).
    actor_p_curgoal: float = _field(
        0.0, bounds="[0, 1]", doc="unused by the sampler: high goals are future unless random"
    )
    actor_p_trajgoal: float = _field(
        1.0, bounds="[0, 1]", doc="unused by the sampler: high goals are future unless random"
    )
    actor_p_randomgoal: float = _field(
        0.0, bounds="[0, 1]", doc="probability the high actor's goal is a random state"
    )

    @property
    def num_updates(self) -> int:
        return self.total_updates


@struct.dataclass
class Params:
    goal_rep: Any  # phi, shared by the value, its targets and the low actor's input
    value: Any  # the two value heads f_j, stacked on a leading axis of 2
    low_actor: Any
    high_actor: Any
    action_dim: int = struct.field(pytree_node=False, default=1)  # number of actions if discrete
    discrete: bool = struct.field(pytree_node=False, default=False)  # config.discrete, for act


@struct.dataclass
class TrainState:
    params: Params
    target_value: Any  # Polyak copy of params.value (phi is not copied: targets use the online phi)
    opt: Any
    rng: jax.Array
    step: jax.Array  # gradient steps done so far


# --- Networks (OGBench's: GELU, LayerNorm after each hidden activation, fan-avg uniform init) ---


def _dense(size, scale=1.0):
    return nn.Dense(size, kernel_init=nn.initializers.variance_scaling(scale, "fan_avg", "uniform"))


class MLP(nn.Module):
    hidden_sizes: tuple
    layer_norm: bool = False

    @nn.compact
    def __call__(self, x):
        for size in self.hidden_sizes:
            x = nn.gelu(_dense(size)(x))
            if self.layer_norm:
                x = nn.LayerNorm()(x)
        return x


def length_normalize(x):
    """x scaled to norm sqrt(dim). The 1e-12 (OGBench has none) keeps an exactly zero x, which a
    LayerNorm of a constant layer can produce, at zero instead of NaN, with finite gradients."""
    return x * jnp.sqrt(x.shape[-1] / (jnp.sum(x**2, axis=-1, keepdims=True) + 1e-12))


class GoalRep(nn.Module):
    """phi([s; g]) scaled to norm sqrt(rep_dim)."""

    hidden_sizes: tuple
    rep_dim: int
    layer_norm: bool

    @nn.compact
    def __call__(self, x):
        x = _dense(self.rep_dim)(MLP(self.hidden_sizes, self.layer_norm)(x))
        return length_normalize(x)


class ValueHead(nn.Module):
    hidden_sizes: tuple
    layer_norm: bool

    @nn.compact
    def __call__(self, x):
        return jnp.squeeze(_dense(1)(MLP(self.hidden_sizes, self.layer_norm)(x)), -1)


class TwinValue(nn.Module):
    """Two value heads on [s, phi([s; g])], evaluated as one vmapped network; outputs (2, ...)."""

    hidden_sizes: tuple
    layer_norm: bool

    @nn.compact
    def __call__(self, x):
        twins = nn.vmap(
            ValueHead,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=None,
            axis_size=2,
        )
        return twins(self.hidden_sizes, self.layer_norm)(x)


class Actor(nn.Module):
    """Gaussian mean (unit std) or categorical logits; the last layer starts near zero."""

    hidden_sizes: tuple
    out_dim: int

    @nn.compact
    def __call__(self, x):
        return _dense(self.out_dim, 1e-2)(MLP(self.hidden_sizes)(x))


class Networks(NamedTuple):
    goal_rep: GoalRep
    value: TwinValue
    low_actor: Actor
    high_actor: Actor


def _networks(config: Config, action_dim: int | None = None) -> Networks:
    """The networks by name. action_dim sizes the low actor only: phi and the values, which
    never see it, are built without it (the low actor then has no output size)."""
    hidden = tuple(config.hidden_sizes)
    return Networks(
        goal_rep=GoalRep(hidden, config.rep_dim, config.layer_norm),
        value=TwinValue(hidden, config.layer_norm),
        low_actor=Actor(hidden, action_dim),
        high_actor=Actor(hidden, config.rep_dim),
    )


def _cat(*xs):
    return jnp.concatenate(xs, -1)


def goal_representation(config: Config, goal_rep_params, obs, goal):
    """phi([s; g]), of norm sqrt(rep_dim)."""
    return _networks(config).goal_rep.apply(goal_rep_params, _cat(obs, goal))


def values(config: Config, value_params, goal_rep_params, obs, goal):
    """(V_1, V_2)(s, g) = f_j([s, phi([s; g])]), stacked: (2, ...)."""
    phi = goal_representation(config, goal_rep_params, obs, goal)
    return _networks(config).value.apply(value_params, _cat(obs, phi))


def unit_gaussian_log_prob(mean, x):
    """log N(x; mean, I), summed over the last axis."""
    return (-0.5 * jnp.square(x - mean) - 0.5 * jnp.log(2 * jnp.pi)).sum(-1)


def low_log_prob(config: Config, params: Params, obs, rep, actions):
    """log pi_lo(a | s, rep): Gaussian with unit std, or categorical over integer actions."""
    low_actor = _networks(config, params.action_dim).low_actor
    out = low_actor.apply(params.low_actor, _cat(obs, rep))
    if config.discrete:
        actions = actions.reshape(out.shape[:-1]).astype(jnp.int32)
        return jnp.take_along_axis(jax.nn.log_softmax(out), actions[..., None], -1)[..., 0]
    return unit_gaussian_log_prob(out, actions)


# --- Goal sampling (OGBench's GCDataset / HGCDataset) ---


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
    """A batch with HGCDataset's goals: value goals (with rewards and masks), the low actor's
    subgoal s_{min(i+k, F)}, the high actor's goal and its target s_{min(i+k, g)} (for a random
    goal s_{min(i+k, F)}). ``actor_goals`` is the high actor's goal, the one a rollout is given."""
    ends = jnp.asarray(trajectory_ends(dataset))
    size = dataset.observations.shape[0]
    idx_key, value_key, future_key, random_key, pick_key = jax.random.split(rng, 5)
    idx = jax.random.randint(idx_key, (config.batch_size,), 0, size)
    final = ends[idx]
    value_goal = sample_goals(
        value_key, idx, final, size, config.value_p_curgoal, config.value_p_trajgoal,
        config.value_p_randomgoal, config.value_geom_sample, config.discount,
    )  # fmt: skip
    success = (idx == value_goal).astype(jnp.float32)
    # The high actor's goal: a future row (p_traj = 1), or a random row with actor_p_randomgoal.
    future_goal = sample_goals(
        future_key, idx, final, size, 0.0, 1.0, 0.0, config.actor_geom_sample, config.discount
    )
    pick_random = jax.random.uniform(pick_key, idx.shape) < config.actor_p_randomgoal
    high_goal = jnp.where(
        pick_random, jax.random.randint(random_key, idx.shape, 0, size), future_goal
    )
    subgoal = jnp.minimum(idx + config.subgoal_steps, final)
    high_target = jnp.where(
        pick_random, subgoal, jnp.minimum(idx + config.subgoal_steps, high_goal)
    )
    obs = dataset.observations
    return {
        "observations": obs[idx],
        "actions": dataset.actions[idx],
        "next_observations": dataset.next_observations[idx],
        "value_goals": obs[value_goal],
        "actor_goals": obs[high_goal],
        "rewards": success - 1.0 if config.gc_negative else success,
        "masks": 1.0 - success,
        "low_actor_goals": obs[subgoal],
        "high_actor_goals": obs[high_goal],
        "high_actor_targets": obs[high_target],
    }


# --- Losses ---


def value_loss(params: Params, target_value, batch, config: Config):
    """GCIVL's twin expectile loss on V(s, phi([s; g])); the weight's advantage uses the targets
    (with the online phi, held fixed), the regressed errors each head's own target; trains phi."""
    sg = jax.lax.stop_gradient(params.goal_rep)
    obs, next_obs, goals = batch["observations"], batch["next_observations"], batch["value_goals"]
    next_v_t = values(config, target_value, sg, next_obs, goals)  # (2, B)
    v_t = values(config, target_value, sg, obs, goals).mean(0)
    discount = config.discount * batch["masks"]
    adv = batch["rewards"] + discount * next_v_t.min(0) - v_t
    q = batch["rewards"] + discount * next_v_t  # (2, B)
    v = values(config, params.value, params.goal_rep, obs, goals)
    weight = jnp.where(adv >= 0, config.expectile, 1 - config.expectile)
    loss = (weight * (q - v) ** 2).mean(-1).sum()
    return loss, {"v_mean": v.mean(), "v_max": v.max(), "v_min": v.min()}


def awr_weight(advantage, alpha):
    return jnp.minimum(jnp.exp(alpha * advantage), 100.0)


def low_actor_loss(params: Params, batch, config: Config):
    """AWR toward the subgoal w = s_{i+k} with A = V(s', w) - V(s, w); the policy reads the fixed
    representation phi([s; w])."""
    sg = jax.lax.stop_gradient(params)
    obs, goals = batch["observations"], batch["low_actor_goals"]
    v = values(config, sg.value, sg.goal_rep, obs, goals).mean(0)
    next_v = values(config, sg.value, sg.goal_rep, batch["next_observations"], goals).mean(0)
    advantage = next_v - v
    rep = goal_representation(config, sg.goal_rep, obs, goals)
    log_prob = low_log_prob(config, params, obs, rep, batch["actions"])
    loss = -(awr_weight(advantage, config.low_alpha) * log_prob).mean()
    return loss, {"low_advantage": advantage.mean(), "low_log_prob": log_prob.mean()}


def high_actor_loss(params: Params, batch, config: Config):
    """AWR of the subgoal representation phi([s; w']) with A = V(w', g) - V(s, g)."""
    sg = jax.lax.stop_gradient(params)
    obs, goals, targets = (
        batch["observations"],
        batch["high_actor_goals"],
        batch["high_actor_targets"],
    )
    v = values(config, sg.value, sg.goal_rep, obs, goals).mean(0)
    next_v = values(config, sg.value, sg.goal_rep, targets, goals).mean(0)
    advantage = next_v - v
    target_rep = goal_representation(config, sg.goal_rep, obs, targets)
    high_actor = _networks(config, params.action_dim).high_actor
    mean = high_actor.apply(params.high_actor, _cat(obs, goals))
    log_prob = unit_gaussian_log_prob(mean, target_rep)
    loss = -(awr_weight(advantage, config.high_alpha) * log_prob).mean()
    metrics = {
        "high_advantage": advantage.mean(),
        "high_log_prob": log_prob.mean(),
        "high_mse": ((mean - target_rep) ** 2).mean(),
    }
    return loss, metrics


def total_loss(params: Params, target_value, batch, config: Config):
    loss_v, info_v = value_loss(params, target_value, batch, config)
    loss_lo, info_lo = low_actor_loss(params, batch, config)
    loss_hi, info_hi = high_actor_loss(params, batch, config)
    losses = {"value_loss": loss_v, "low_actor_loss": loss_lo, "high_actor_loss": loss_hi}
    return loss_v + loss_lo + loss_hi, losses | info_v | info_lo | info_hi


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


def _check_dataset(config: Config, dataset) -> None:
    """The dataset is concrete, ends its last trajectory, and has actions that suit the config."""
    if dataset.observations.ndim != 2:
        raise ValueError(f"HIQL takes vector observations, got {dataset.observations.shape[1:]}")
    trajectory_ends(dataset)  # the sampler's checks, at init rather than inside the first trace
    integer = jnp.issubdtype(dataset.actions.dtype, jnp.integer)
    if config.discrete and not integer:
        raise ValueError(f"discrete=True needs integer actions, got {dataset.actions.dtype}")
    if not config.discrete and (integer or dataset.actions.ndim != 2):
        raise ValueError(
            f"discrete=False needs float actions of shape (N, action_dim), got "
            f"{dataset.actions.dtype} {dataset.actions.shape}; integer actions need discrete=True"
        )


def init(config: Config, dataset, rng: jax.Array) -> TrainState:
    """Networks and optimizer for ``dataset`` (an rljax Dataset, closed over rather than traced:
    goal sampling reads its trajectory ends on the host)."""
    check(config)
    _check_dataset(config, dataset)
    obs_dim = dataset.observations.shape[-1]
    if config.discrete:
        action_dim = int(np.asarray(dataset.actions).max()) + 1  # as OGBench: max action + 1
    else:
        action_dim = dataset.actions.shape[-1]
    net = _networks(config, action_dim)
    rep_key, value_key, low_key, high_key, rng = jax.random.split(rng, 5)
    obs, rep = jnp.zeros(obs_dim), jnp.zeros(config.rep_dim)
    params = Params(
        goal_rep=net.goal_rep.init(rep_key, _cat(obs, obs)),
        value=net.value.init(value_key, _cat(obs, rep)),
        low_actor=net.low_actor.init(low_key, _cat(obs, rep)),
        high_actor=net.high_actor.init(high_key, _cat(obs, obs)),
        action_dim=action_dim,
        discrete=config.discrete,
    )
    return TrainState(
        params=params,
        target_value=params.value,
        opt=optax.adam(config.lr).init(params),
        rng=rng,
        step=jnp.zeros((), jnp.int32),
    )


def update_on_batch(config: Config, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    """One Adam step on L_V + L_lo + L_hi, then the targets move toward the value heads as they
    were before this step (OGBench's order)."""
    (_, metrics), grads = jax.value_and_grad(total_loss, has_aux=True)(
        state.params, state.target_value, batch, config
    )
    updates, opt = optax.adam(config.lr).update(grads, state.opt, state.params)
    state = state.replace(
        params=optax.apply_updates(state.params, updates),
        target_value=optax.incremental_update(state.params.value, state.target_value, config.tau),
        opt=opt,
        step=state.step + 1,
    )
    return state, metrics | {"grad_norm": optax.tree.norm(grads)}


def update(config: Config, dataset, state: TrainState) -> tuple[TrainState, dict]:
    """One gradient step on a batch sampled inside jit."""
    rng, batch_key = jax.random.split(state.rng)
    return update_on_batch(config, state.replace(rng=rng), sample_batch(config, dataset, batch_key))


def train(config: Config, dataset, rng: jax.Array, num_updates: int | None = None):
    """init, then a lax.scan of num_updates (default: total_updates) ``update`` steps (what the
    runner's chunk runs), each on an HGCDataset batch sampled inside jit. The dataset is closed
    over, not carried in the state, so seeds vmapped over ``train`` share one copy of it."""
    num_updates = config.num_updates if num_updates is None else num_updates
    state = init(config, dataset, rng)
    return jax.lax.scan(lambda state, _: update(config, dataset, state), state, None, num_updates)


def act(config: Config, params: Params, obs, goal, rng: jax.Array, deterministic: bool = False):
    """The high policy proposes a subgoal representation (its mean when deterministic, else a
    sample), rescaled to norm sqrt(rep_dim); the low policy acts toward it: its mean clipped to
    [-1, 1] or a clipped sample, or for discrete actions the argmax or a categorical sample."""
    net = _networks(config, params.action_dim)
    rep = net.high_actor.apply(params.high_actor, _cat(obs, goal))
    if not deterministic:
        high_key, rng = jax.random.split(rng)
        rep = rep + jax.random.normal(high_key, rep.shape)
    rep = length_normalize(rep)
    out = net.low_actor.apply(params.low_actor, _cat(obs, rep))
    if params.discrete:
        return jnp.argmax(out, -1) if deterministic else jax.random.categorical(rng, out)
    if not deterministic:
        out = out + jax.random.normal(rng, out.shape)
    return jnp.clip(out, -1.0, 1.0)


if __name__ == "__main__":
    import time

    # A small goal-conditioned dataset: noisy straight-line walks between random points of the
    # square [-1, 1]^2, each 50 steps; act toward held-out goals and report the final distance.
    episodes, horizon = 200, 50
    rng = np.random.default_rng(0)
    start = rng.uniform(-1, 1, (episodes, 1, 2))
    end = rng.uniform(-1, 1, (episodes, 1, 2))
    direction = (end - start) / horizon * 10  # an action of norm <= 1 moves 0.1
    actions = np.clip(direction + 0.3 * rng.normal(size=(episodes, horizon, 2)), -1, 1)
    path = start + np.concatenate([np.zeros((episodes, 1, 2)), np.cumsum(actions / 10, 1)], 1)

    @struct.dataclass
    class Transitions:  # the rljax.data.Dataset fields, without importing rljax
        observations: jax.Array
        actions: jax.Array
        rewards: jax.Array
        terminals: jax.Array
        timeouts: jax.Array
        next_observations: jax.Array

    timeouts = np.zeros((episodes, horizon), np.float32)
    timeouts[:, -1] = 1
    flat = lambda x: jnp.asarray(x.reshape(episodes * horizon, *x.shape[2:]), jnp.float32)  # noqa: E731
    dataset = Transitions(
        flat(path[:, :-1]), flat(actions), jnp.zeros(episodes * horizon),
        jnp.zeros(episodes * horizon), flat(timeouts), flat(path[:, 1:]),
    )  # fmt: skip
    config = Config(total_updates=2_000, batch_size=256, hidden_sizes=(64, 64), subgoal_steps=10)
    t0 = time.time()
    state, metrics = jax.jit(lambda key: train(config, dataset, key))(jax.random.PRNGKey(1))
    print(f"HIQL on {episodes} noisy walks in [-1, 1]^2: "
          f"{config.total_updates} updates in {time.time() - t0:.1f}s")  # fmt: skip
    keys = ("value_loss", "low_actor_loss", "high_actor_loss", "v_mean")
    for i in np.linspace(0, config.total_updates - 1, 5).astype(int):
        print(
            f"  update {i + 1:>5d}  " + "  ".join(f"{k} {float(metrics[k][i]):.3f}" for k in keys)
        )

    def rollout(obs, goal):
        def step(obs, _):
            action = act(config, state.params, obs, goal, None, deterministic=True)
            return obs + action / 10, None

        return jax.lax.scan(step, obs, None, 60)[0]

    starts = jnp.asarray(rng.uniform(-1, 1, (100, 2)), jnp.float32)
    goals = jnp.asarray(rng.uniform(-1, 1, (100, 2)), jnp.float32)
    final = jax.jit(jax.vmap(rollout))(starts, goals)
    print(f"  greedy rollouts of 60 steps: mean distance to goal "
          f"{float(jnp.linalg.norm(starts - goals, axis=-1).mean()):.3f} -> "
          f"{float(jnp.linalg.norm(final - goals, axis=-1).mean()):.3f}")  # fmt: skip
