"""Goal-conditioned implicit V-learning (GCIVL), as OGBench's ``impls/agents/gcivl.py``.

Park, Frans, Eysenbach, Levine, "OGBench: Benchmarking Offline Goal-Conditioned RL", ICLR 2025
(seohongpark/ogbench): IQL's expectile regression (Kostrikov et al., ICLR 2022) with a value
function only, V(s, g), as in HIQL (Park et al., NeurIPS 2023). Relabelled goals give the reward
r = 1(s = g) - 1 (0 at the goal, -1 elsewhere) and the mask m = 1 - 1(s = g), both on the current
row. Twin values V_1, V_2 with Polyak targets Vbar_1, Vbar_2; each step minimises jointly

    adv  = r + gamma m min_j Vbar_j(s', g) - (Vbar_1 + Vbar_2)(s, g) / 2      (target values only)
    L_V  = sum_j mean(|expectile - 1(adv < 0)| (r + gamma m Vbar_j(s', g) - V_j(s, g))^2)
    L_pi = -mean(min(exp(alpha (V(s', g) - V(s, g))), 100) log pi(a | s, g)),  V = (V_1 + V_2) / 2

then Vbar <- (1 - tau) Vbar + tau V. The expectile weight takes its sign from the target
advantage, not from each head's own error (OGBench's double-DQN-like stabiliser); the actor's
advantage V(s', g) - V(s, g) (no reward, no discount) is HIQL's and uses the current V, without
gradient. pi(.|s, g) = N(mu(s, g), I) (OGBench's constant std), or, when ``discrete``, a
categorical over max(action) + 1 actions (as OGBench). No observation normalization.
"""

from typing import Any

import distrax
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
PAPER = 'Park et al., "OGBench: Benchmarking Offline Goal-Conditioned RL", ICLR 2025'


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
    layer_norm: bool = _field(True, static=True, doc="layer norm in the value networks")
    discrete: bool = _field(
        False, static=True, doc="categorical actor over max(action) + 1 actions"
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
        0.9, bounds="(0, 1)", doc="expectile tau of the value loss (0.5 = mean)"
    )
    alpha: float = _field(
        10.0, bounds="[0, inf)", doc="inverse temperature alpha of the AWR weights"
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
    actor: Any
    value: Any  # both values, stacked on a leading axis of 2
    action_dim: int = struct.field(pytree_node=False, default=1)  # number of actions if discrete
    discrete: bool = struct.field(pytree_node=False, default=False)  # config.discrete, for act


@struct.dataclass
class TrainState:
    params: Params
    target_value: Any
    opt: Any
    rng: jax.Array
    step: jax.Array  # gradient steps done so far


# --- Networks (OGBench's MLP: GELU, variance-scaling init, final actor layer scaled by 1e-2) ---


def _dense(size, scale=1.0):
    return nn.Dense(size, kernel_init=nn.initializers.variance_scaling(scale, "fan_avg", "uniform"))


class Actor(nn.Module):
    """pi(.|s, g): the Gaussian's mean (unit std) or the categorical's logits."""

    action_dim: int
    hidden_sizes: tuple

    @nn.compact
    def __call__(self, obs, goal):
        x = jnp.concatenate([obs, goal], -1)
        for size in self.hidden_sizes:
            x = nn.gelu(_dense(size)(x))
        return _dense(self.action_dim, 1e-2)(x)


class Value(nn.Module):
    """V(s, g); LayerNorm after each hidden activation, as OGBench's value MLP."""

    hidden_sizes: tuple
    layer_norm: bool

    @nn.compact
    def __call__(self, obs, goal):
        x = jnp.concatenate([obs, goal], -1)
        for size in self.hidden_sizes:
            x = nn.gelu(_dense(size)(x))
            if self.layer_norm:
                x = nn.LayerNorm()(x)
        return jnp.squeeze(_dense(1)(x), -1)


class TwinValue(nn.Module):
    """Two independent values evaluated as one vmapped network; outputs (2, ...)."""

    hidden_sizes: tuple
    layer_norm: bool

    @nn.compact
    def __call__(self, obs, goal):
        twins = nn.vmap(
            Value, variable_axes={"params": 0}, split_rngs={"params": True}, in_axes=None,
            axis_size=2,
        )  # fmt: skip
        return twins(self.hidden_sizes, self.layer_norm)(obs, goal)


def _value(config: Config, value_params, obs, goal):
    twin = TwinValue(tuple(config.hidden_sizes), config.layer_norm)
    return twin.apply(value_params, obs, goal)


def _policy(config: Config, params: Params, obs, goal):
    out = Actor(params.action_dim, tuple(config.hidden_sizes)).apply(params.actor, obs, goal)
    if params.discrete:
        return distrax.Categorical(logits=out)
    return distrax.MultivariateNormalDiag(out, jnp.ones_like(out))


# --- Goal relabelling (identical in every GC agent; tests/test_goal_relabelling.py checks) ---


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
    """Uniform rows with relabelled value and actor goals; rewards and masks say whether the
    value goal is the current row (OGBench: 0/-1 rewards when gc_negative, else 1/0)."""
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


def value_loss(value_params, target_value, batch, config: Config):
    """Expectile regression of both heads on their own targets, weighted by the sign of the
    target values' advantage."""
    next_v = _value(config, target_value, batch["next_observations"], batch["value_goals"])
    bootstrap = config.discount * batch["masks"] * next_v  # (2, B)
    target_v = _value(config, target_value, batch["observations"], batch["value_goals"])
    adv = batch["rewards"] + bootstrap.min(0) - target_v.mean(0)
    weight = jnp.where(adv >= 0, config.expectile, 1 - config.expectile)
    v = _value(config, value_params, batch["observations"], batch["value_goals"])
    loss = (weight * jnp.square(batch["rewards"] + bootstrap - v)).mean(-1).sum()
    return loss, {"v_mean": v.mean(), "value_advantage": adv.mean()}


def actor_loss(actor_params, params: Params, batch, config: Config):
    """AWR with HIQL's advantage V(s', g) - V(s, g) under the current (not target) values."""
    v = _value(config, params.value, batch["observations"], batch["actor_goals"]).mean(0)
    next_v = _value(config, params.value, batch["next_observations"], batch["actor_goals"])
    adv = next_v.mean(0) - v
    weight = jnp.minimum(jnp.exp(config.alpha * adv), 100.0)
    dist = _policy(config, params.replace(actor=actor_params), batch["observations"],
                   batch["actor_goals"])  # fmt: skip
    log_prob = dist.log_prob(batch["actions"])
    info = {
        "actor_advantage": adv.mean(),
        "awr_weight": weight.mean(),
        "bc_log_prob": log_prob.mean(),
    }
    if not config.discrete:
        info["mse"] = jnp.square(dist.mode() - batch["actions"]).mean()
    return -(weight * log_prob).mean(), info


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
    trajectory_ends(dataset)  # the dataset is concrete and its last row ends a trajectory
    actions = np.asarray(dataset.actions)
    if config.discrete:
        if actions.ndim != 1 or not np.issubdtype(actions.dtype, np.integer) or actions.min() < 0:
            raise ValueError(
                f"discrete=True takes integer actions >= 0 of shape (N,), got {actions.dtype} "
                f"actions of shape {actions.shape}"
            )
    elif actions.ndim != 2 or np.abs(actions).max() > 1 + 1e-4:
        raise ValueError(
            f"discrete=False takes actions of shape (N, action_dim) in [-1, 1], got shape "
            f"{actions.shape} reaching {np.abs(actions).max():.4g}: rescale them, or set "
            "discrete=True for integer actions"
        )


def init(config: Config, dataset, rng: jax.Array) -> TrainState:
    """Actor, twin values (targets = copies) and one Adam for ``dataset`` (an rljax Dataset,
    closed over rather than traced: trajectory ends and the number of discrete actions are read
    on the host)."""
    check(config)
    _check_dataset(config, dataset)
    actor_key, value_key, rng = jax.random.split(rng, 3)
    obs = jnp.zeros(dataset.observations.shape[1:])
    if config.discrete:  # as OGBench: the largest action in the data + 1
        action_dim = int(np.asarray(dataset.actions).max()) + 1
    else:
        action_dim = dataset.actions.shape[-1]
    params = Params(
        actor=Actor(action_dim, tuple(config.hidden_sizes)).init(actor_key, obs, obs),
        value=TwinValue(tuple(config.hidden_sizes), config.layer_norm).init(value_key, obs, obs),
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
    """One Adam step on L_V + L_pi (as OGBench: one joint loss), then the Polyak update."""

    def loss_fn(trainable: Params):
        loss_v, value_info = value_loss(trainable.value, state.target_value, batch, config)
        loss_pi, actor_info = actor_loss(trainable.actor, state.params, batch, config)
        return loss_v + loss_pi, {"value_loss": loss_v, "actor_loss": loss_pi} | value_info | (
            actor_info
        )

    (_, info), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt = optax.adam(config.lr).update(grads, state.opt)
    params = optax.apply_updates(state.params, updates)
    state = state.replace(
        params=params,
        target_value=optax.incremental_update(params.value, state.target_value, config.tau),
        opt=opt,
        step=state.step + 1,
    )
    return state, info | {"grad_norm": optax.tree.norm(grads)}


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
    """The action toward ``goal`` from raw ``obs``, (d,) or (B, d): the mean (argmax) when
    deterministic, else a sample; continuous actions are clipped to [-1, 1]."""
    dist = _policy(config, params, obs, goal)
    action = dist.mode() if deterministic else dist.sample(seed=rng)
    return action if params.discrete else jnp.clip(action, -1.0, 1.0)


if __name__ == "__main__":
    import time

    # A small dataset in the open square [0, 1]^2: a point moves by 0.05 a per step along a
    # noisy straight line toward one random target per trajectory (Gaussian action noise 0.5,
    # as OGBench's pointmaze data); each trajectory ends in a time limit.
    episodes, horizon, speed = 400, 40, 0.05

    def step_point(x, a):
        return jnp.clip(x + speed * a, 0.0, 1.0)

    def navigate(rng):
        start_key, target_key, rng = jax.random.split(rng, 3)
        x0, target = jax.random.uniform(start_key, (2,)), jax.random.uniform(target_key, (2,))

        def step(x, key):
            direction = (target - x) / (jnp.linalg.norm(target - x) + 1e-6)
            a = jnp.clip(direction + 0.5 * jax.random.normal(key, (2,)), -1, 1)
            return step_point(x, a), (x, a, step_point(x, a))

        return jax.lax.scan(step, x0, jax.random.split(rng, horizon))[1]

    @struct.dataclass
    class Transitions:  # the rljax.data.Dataset fields, without importing rljax
        observations: jax.Array
        actions: jax.Array
        rewards: jax.Array
        terminals: jax.Array
        timeouts: jax.Array
        next_observations: jax.Array

    obs, actions, next_obs = jax.vmap(navigate)(jax.random.split(jax.random.PRNGKey(0), episodes))
    timeouts = jnp.zeros((episodes, horizon)).at[:, -1].set(1).reshape(-1)
    n = episodes * horizon
    dataset = Transitions(
        obs.reshape(n, 2), actions.reshape(n, 2), jnp.zeros(n), jnp.zeros(n), timeouts,
        next_obs.reshape(n, 2),
    )  # fmt: skip

    def success_rate(params, rng, episodes=200, steps=60):
        """Greedy rollouts from random starts to random goals; success within 0.05 of the goal."""
        start_key, goal_key = jax.random.split(rng)
        x = jax.random.uniform(start_key, (episodes, 2))
        goal = jax.random.uniform(goal_key, (episodes, 2))

        def step(carry, _):
            x, done = carry
            x = step_point(x, act(config, params, x, goal, None, deterministic=True))
            return (x, done | (jnp.linalg.norm(x - goal, axis=-1) < speed)), None

        return jax.lax.scan(step, (x, jnp.zeros(episodes, bool)), None, steps)[0][1].mean()

    config = Config(total_updates=2_000, batch_size=256, hidden_sizes=(256, 256))
    start = time.time()
    state, metrics = jax.jit(lambda key: train(config, dataset, key))(jax.random.PRNGKey(1))
    print(f"GCIVL on {episodes} noisy straight-line trajectories in the unit square: "
          f"{config.total_updates} updates in {time.time() - start:.1f}s")  # fmt: skip
    for i in np.linspace(0, config.total_updates - 1, 5).astype(int):
        losses = {k: float(metrics[k][i]) for k in ("value_loss", "actor_loss", "v_mean")}
        print(f"  update {i + 1:>6d}  " + "  ".join(f"{k} {v:.3f}" for k, v in losses.items()))
    untrained = init(config, dataset, jax.random.PRNGKey(1)).params
    trained_rate, untrained_rate = (
        float(success_rate(p, jax.random.PRNGKey(2))) for p in (state.params, untrained)
    )
    print(
        f"  success rate over 200 random goals: {trained_rate:.2f} (untrained {untrained_rate:.2f})"
    )
