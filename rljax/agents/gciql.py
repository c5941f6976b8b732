"""Goal-conditioned implicit Q-learning (GCIQL), as OGBench's ``impls/agents/gciql.py``.

Park, Frans, Eysenbach, Levine, "OGBench: Benchmarking Offline Goal-Conditioned RL", ICLR 2025
(seohongpark/ogbench): IQL (Kostrikov, Nair, Levine, ICLR 2022) with goals. Relabelled goals
give the reward r = 1(s = g) - 1 and the mask m = 1 - 1(s = g), both on the current row. A value
V(s, g), twin critics Q_1, Q_2 and Polyak targets Qbar_i; each step minimises jointly

    L_V  = mean(|expectile - 1(u < 0)| u^2),  u = min_i Qbar_i(s, a, g) - V(s, g)   (target critics)
    L_Q  = sum_i mean((Q_i(s, a, g) - (r + gamma m V(s', g)))^2)               (V: no gradient)
    L_pi = -mean(Q(s, clip(mu(s, g)), g) / stopgrad(mean |Q|)) - alpha mean(log pi(a | s, g))
           with Q = min_i Q_i (DDPG+BC, ``actor_loss="ddpgbc"``, OGBench's default), or
    L_pi = -mean(min(exp(alpha (min_i Q_i(s, a, g) - V(s, g))), 100) log pi(a | s, g))  ("awr")

then Qbar <- (1 - tau) Qbar + tau Q. The actor's Q and V are the current networks, without
gradient. pi(.|s, g) = N(mu(s, g), I) (OGBench's constant std; DDPG+BC then uses the mean mu,
clipped to [-1, 1]), or, when ``discrete``, a categorical over max(action) + 1 actions with
critics on one-hot actions and AWR only (as OGBench). No observation normalization.
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
    layer_norm: bool = _field(True, static=True, doc="layer norm in the value and critic networks")
    discrete: bool = _field(
        False, static=True, doc="categorical actor (awr only), critics on one-hot actions"
    )
    actor_loss: str = _field(
        "ddpgbc", static=True, choices=("ddpgbc", "awr"), doc="actor loss: ddpgbc (DDPG+BC) or awr"
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
    tau: float = _field(0.005, bounds="(0, 1]", doc="Polyak rate tau of the target critics")
    expectile: float = _field(
        0.9, bounds="(0, 1)", doc="expectile tau of the value loss (0.5 = mean)"
    )
    alpha: float = _field(
        0.3, bounds="[0, inf)", doc="BC weight alpha (ddpgbc) or AWR inverse temperature (awr)"
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
    value: Any
    critic: Any  # both critics, stacked on a leading axis of 2
    action_dim: int = struct.field(pytree_node=False, default=1)  # number of actions if discrete
    discrete: bool = struct.field(pytree_node=False, default=False)  # config.discrete, for act


@struct.dataclass
class TrainState:
    params: Params
    target_critic: Any
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
    """V(s, g) or Q(s, g, a) on the concatenated inputs; LayerNorm after each hidden activation,
    as OGBench's value MLP."""

    hidden_sizes: tuple
    layer_norm: bool

    @nn.compact
    def __call__(self, *inputs):
        x = jnp.concatenate(inputs, -1)
        for size in self.hidden_sizes:
            x = nn.gelu(_dense(size)(x))
            if self.layer_norm:
                x = nn.LayerNorm()(x)
        return jnp.squeeze(_dense(1)(x), -1)


class TwinCritic(nn.Module):
    """Two independent critics evaluated as one vmapped network; outputs (2, ...)."""

    hidden_sizes: tuple
    layer_norm: bool

    @nn.compact
    def __call__(self, obs, goal, action):
        twins = nn.vmap(
            Value, variable_axes={"params": 0}, split_rngs={"params": True}, in_axes=None,
            axis_size=2,
        )  # fmt: skip
        return twins(self.hidden_sizes, self.layer_norm)(obs, goal, action)


def _value(config: Config, value_params, obs, goal):
    return Value(tuple(config.hidden_sizes), config.layer_norm).apply(value_params, obs, goal)


def _critic(config: Config, critic_params, action_dim: int, obs, goal, action):
    if config.discrete:
        action = jax.nn.one_hot(action, action_dim)
    twin = TwinCritic(tuple(config.hidden_sizes), config.layer_norm)
    return twin.apply(critic_params, obs, goal, action)


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


def value_loss(value_params, params: Params, target_critic, batch, config: Config):
    """Expectile regression of V(s, g) on the smaller *target* critic."""
    obs, goal = batch["observations"], batch["value_goals"]
    q = _critic(config, target_critic, params.action_dim, obs, goal, batch["actions"]).min(0)
    v = _value(config, value_params, obs, goal)
    weight = jnp.where(q - v >= 0, config.expectile, 1 - config.expectile)
    return (weight * jnp.square(q - v)).mean(), {"v_mean": v.mean()}


def critic_loss(critic_params, params: Params, batch, config: Config):
    """Both critics regress on r + gamma m V(s', g) with the current V (no gradient to V)."""
    next_v = _value(config, params.value, batch["next_observations"], batch["value_goals"])
    target = batch["rewards"] + config.discount * batch["masks"] * next_v
    q = _critic(config, critic_params, params.action_dim, batch["observations"],
                batch["value_goals"], batch["actions"])  # fmt: skip
    return jnp.square(q - target).mean(-1).sum(), {"q_mean": q.mean()}


def actor_loss(actor_params, params: Params, batch, config: Config):
    """DDPG+BC (Q of the clipped mean action, normalised by stopgrad mean |Q|, plus alpha times
    the BC log-likelihood) or AWR (weights exp(alpha (Q - V)) clipped at 100)."""
    obs, goal = batch["observations"], batch["actor_goals"]
    dist = _policy(config, params.replace(actor=actor_params), obs, goal)
    log_prob = dist.log_prob(batch["actions"])
    info = {"bc_log_prob": log_prob.mean()}
    if not config.discrete:
        info["mse"] = jnp.square(dist.mode() - batch["actions"]).mean()
    if config.actor_loss == "awr":
        q = _critic(config, params.critic, params.action_dim, obs, goal, batch["actions"]).min(0)
        adv = q - _value(config, params.value, obs, goal)
        weight = jnp.minimum(jnp.exp(config.alpha * adv), 100.0)
        info |= {"actor_advantage": adv.mean(), "awr_weight": weight.mean()}
        return -(weight * log_prob).mean(), info
    q_action = jnp.clip(dist.mode(), -1.0, 1.0)
    q = _critic(config, params.critic, params.action_dim, obs, goal, q_action).min(0)
    q_loss = -q.mean() / jax.lax.stop_gradient(jnp.abs(q).mean() + 1e-6)
    bc_loss = -config.alpha * log_prob.mean()
    return q_loss + bc_loss, info | {"ddpg_q_loss": q_loss, "ddpg_bc_loss": bc_loss}


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
    if config.discrete and config.actor_loss == "ddpgbc":
        raise ValueError(
            "actor_loss='ddpgbc' differentiates Q through the action, so it needs continuous "
            "actions: with discrete=True set actor_loss='awr' (as OGBench does)"
        )
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
    """Actor, value, twin critics (targets = copies) and one Adam for ``dataset`` (an rljax
    Dataset, closed over rather than traced: trajectory ends and the number of discrete actions
    are read on the host)."""
    check(config)
    _check_dataset(config, dataset)
    actor_key, value_key, critic_key, rng = jax.random.split(rng, 4)
    obs = jnp.zeros(dataset.observations.shape[1:])
    if config.discrete:  # as OGBench: the largest action in the data + 1
        action_dim = int(np.asarray(dataset.actions).max()) + 1
    else:
        action_dim = dataset.actions.shape[-1]
    hidden = tuple(config.hidden_sizes)
    params = Params(
        actor=Actor(action_dim, hidden).init(actor_key, obs, obs),
        value=Value(hidden, config.layer_norm).init(value_key, obs, obs),
        critic=TwinCritic(hidden, config.layer_norm).init(
            critic_key, obs, obs, jnp.zeros(action_dim)
        ),
        action_dim=action_dim,
        discrete=config.discrete,
    )
    return TrainState(
        params=params,
        target_critic=params.critic,
        opt=optax.adam(config.lr).init(params),
        rng=rng,
        step=jnp.zeros((), jnp.int32),
    )


def update_on_batch(config: Config, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    """One Adam step on L_V + L_Q + L_pi (as OGBench: one joint loss), then the Polyak update.
    Each loss reads the other networks at their values before the step, without gradient."""

    def loss_fn(trainable: Params):
        params = state.params
        loss_v, value_info = value_loss(trainable.value, params, state.target_critic, batch, config)
        loss_q, critic_info = critic_loss(trainable.critic, params, batch, config)
        loss_pi, actor_info = actor_loss(trainable.actor, params, batch, config)
        losses = {"value_loss": loss_v, "critic_loss": loss_q, "actor_loss": loss_pi}
        return loss_v + loss_q + loss_pi, losses | value_info | critic_info | actor_info

    (_, info), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt = optax.adam(config.lr).update(grads, state.opt)
    params = optax.apply_updates(state.params, updates)
    state = state.replace(
        params=params,
        target_critic=optax.incremental_update(params.critic, state.target_critic, config.tau),
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

    # OGBench tunes alpha per dataset (0.003 to 0.3); after only 2000 updates the critic is still
    # rough, and a stronger BC term (alpha 3) keeps the policy on the data (0.3 reaches ~40%).
    config = Config(total_updates=2_000, batch_size=256, hidden_sizes=(256, 256), alpha=3.0)
    start = time.time()
    state, metrics = jax.jit(lambda key: train(config, dataset, key))(jax.random.PRNGKey(1))
    print(f"GCIQL on {episodes} noisy straight-line trajectories in the unit square: "
          f"{config.total_updates} updates in {time.time() - start:.1f}s")  # fmt: skip
    for i in np.linspace(0, config.total_updates - 1, 5).astype(int):
        losses = {
            k: float(metrics[k][i]) for k in ("value_loss", "critic_loss", "actor_loss", "v_mean")
        }
        print(f"  update {i + 1:>6d}  " + "  ".join(f"{k} {v:.3f}" for k, v in losses.items()))
    untrained = init(config, dataset, jax.random.PRNGKey(1)).params
    trained_rate, untrained_rate = (
        float(success_rate(p, jax.random.PRNGKey(2))) for p in (state.params, untrained)
    )
    print(
        f"  success rate over 200 random goals: {trained_rate:.2f} (untrained {untrained_rate:.2f})"
    )
