"""SMORe: occupancy matching for offline goal-conditioned RL without a discriminator.

Sikchi, Chitnis, Touati, Geramifard, Zhang, Niekum, "Score Models for Offline Goal-Conditioned
Reinforcement Learning", ICLR 2024. Written from the authors' code (hari-sikchi/SMORe at
68e59de): ``critic_gcrl.py`` (the V and Q losses), ``actor.py:update_gcrl`` (the actor),
``learner.py`` (the order of the updates, the target, the networks), and
``train_offline_smore.py`` with ``dataset_utils.py:GCRLMixedDataset.sample`` (the batch).
SMORe's dual turns matching the policy's goal-conditioned occupancy to one that up-weights
goal-reaching transitions into a score S(s, a, g), learnt without a discriminator; the code is an
IQL-style learner: twin critics Q_j (the score), their Polyak targets Qbar_j, a value V and an
actor, all on [s; g], on a batch of 2B rows. Its first half D holds dataset transitions with
relabelled goals, its second half G goal transitions, whose next state is their goal. Each step,
in the authors' order (V, then the actor and Q with the new V, then the target):

    L_V  = mean_D(|tau - 1(u < 0)| u^2),  u = min_j Qbar_j(s, a, g) - V(s, g)
    L_pi = -mean_D(min(exp(beta (min_j Qbar_j(s, a, g) - V(s, g))), 100) log pi(a | s, g))
    L_Q  = sum_j [mean_G (Q_j - 2 / (1 - gamma))^2 + (1 - gamma) 1e-4 mean_D Q_j^2
                  + 0.5 mean_D (Q_j - (-2 + gamma V(s', g)))^2]          (loss="smore_stable")
    L_Q  = sum_j [-mean_G Q_j + 1e-4 mean_D Q_j + 0.5 mean_D (Q_j - gamma V(s', g))^2]  ("smore")
    Qbar <- (1 - tau) Qbar + tau Q

No reward and no mask enter: reaching the goal is rewarded only through the goal half, and
V(s', g) is bootstrapped on every data row. V and the actor's weights read the target critics;
neither V nor the weights receive gradients from the losses that read them.

The batch. G: a uniform dataset row i with goal g = s'_i (its next observation), so the row
enters its goal. The authors' 'HER_goal_entry_distribution' takes row j - 1 with g the achieved
goal of s_j, where s_j is, with probability 0.8, a uniform later step of a random trajectory
(rows skewed toward late steps), else a step where the commanded goal of their WGCSL data was
reached; an OGBench dataset stores no commanded goal, so every goal row here is of the first kind.
D: uniform rows relabelled with OGBench's goal sampler, as the other GC agents here: value goals
(current 0.2, geometric future 0.5, random 0.3) for L_V and L_Q and actor goals (uniform
future) for L_pi, as GCIQL; the authors draw one goal per row for all three (a uniform future
state with probability 0.8, else the commanded goal).

Networks, policy and optimizers as the other GC agents here, so that SMORe differs from them
only in its batch, losses and update order: OGBench's MLPs (GELU, fan-avg uniform init,
LayerNorm after each hidden activation in V and the critics, the actor's last layer scaled by
1e-2), pi(.|s, g) = N(mu(s, g), I) acting with the mean clipped to [-1, 1] (a categorical over
max(action) + 1 actions when ``discrete``, critics on one-hot actions), one Adam per network at a
constant rate. The authors' differ: ReLU MLPs with orthogonal(sqrt 2) init, LayerNorm in V only,
N(tanh(mu), diag(exp(2 log_std))) with a learnt state-independent log std, and the actor's rate
cosine-decayed to 0. With theirs, on GridMaze-medium navigate (3000 updates, 128x128, 2 seeds)
even the unweighted actor (beta 0, plain goal-conditioned BC) reached no task, where these
networks reach 3 of 5 (as GCBC). Defaults as their config and README: 256x3 networks, lr 3e-4,
gamma 0.99, tau 0.005, beta 3.0, expectile 0.8 (their V reads ``--beta``, 0.8 in the README),
B = 256 per half. No observation normalization (their flag is off by default); goals are full
observations. Discrete actions are an rljax extension that fails on GridMaze: a move into a wall
keeps the cell, so such rows enter the goal g = s, the critics rate standing still highly near
every goal, and the greedy actor stops at walls (no evaluation task reached with beta 3, 1 or 0.3
in 6,000 to 10,000 updates).
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
PAPER = (
    'Sikchi et al., "Score Models for Offline Goal-Conditioned Reinforcement Learning", ICLR 2024'
)

# Constants of the authors' critic losses (critic_gcrl.py).
NEG_REWARD = -2.0  # the data rows' reward; the goal rows' target is -NEG_REWARD / (1 - gamma)
Q_PENALTY = 1e-4  # weight of the data rows' Q (smore) or Q^2 (smore_stable, times 1 - gamma)


def _field(default, *, static=False, bounds=None, choices=None, doc):
    """A config field. Static fields are shapes and switches (changing one recompiles); the
    rest are traced, so a sweep can vmap over them. bounds/choices let a runner validate; doc,
    the field's meaning in one line, is required so that no field goes unexplained."""
    metadata = {"bounds": bounds, "choices": choices, "doc": doc}
    return struct.field(pytree_node=not static, default=default, metadata=metadata)


@struct.dataclass
class Config:
    batch_size: int = _field(
        256, static=True, bounds="[1, inf)", doc="rows in each half (data, goal) of a batch"
    )
    total_updates: int = _field(
        1_000_000, static=True, bounds="[1, inf)", doc="gradient steps in all (the budget)"
    )
    hidden_sizes: tuple = _field(
        (256, 256, 256), static=True, doc="hidden-layer widths of every network"
    )
    loss: str = _field(
        "smore_stable",
        static=True,
        choices=("smore_stable", "smore"),
        doc="critic loss: smore_stable (squared, the default) or smore (the original, linear)",
    )
    layer_norm: bool = _field(True, static=True, doc="layer norm in the value and critic networks")
    discrete: bool = _field(
        False, static=True, doc="categorical actor over max(action) + 1 actions"
    )
    value_geom_sample: bool = _field(
        True, static=True, doc="geometric future offsets for value goals (else uniform)"
    )
    actor_geom_sample: bool = _field(
        False, static=True, doc="geometric future offsets for actor goals (else uniform)"
    )
    lr: float = _field(3e-4, bounds="(0, inf)", doc="Adam learning rate of every network")
    discount: float = _field(
        0.99, bounds="[0, 1)", doc="discount gamma (also of geometric goal offsets)"
    )
    tau: float = _field(0.005, bounds="(0, 1]", doc="Polyak rate tau of the target critics")
    expectile: float = _field(
        0.8, bounds="(0, 1)", doc="expectile tau of the value loss (the authors' --beta)"
    )
    beta: float = _field(3.0, bounds="[0, inf)", doc="inverse temperature beta of the AWR weights")
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
    critic: Any  # both critics, stacked on a leading axis of 2
    value: Any
    action_dim: int = struct.field(pytree_node=False, default=1)  # number of actions if discrete
    discrete: bool = struct.field(pytree_node=False, default=False)  # config.discrete, for act


@struct.dataclass
class TrainState:
    params: Params
    target_critic: Any
    actor_opt: Any
    critic_opt: Any
    value_opt: Any
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
    """2 * batch_size rows: first uniform rows relabelled by OGBench's sampler (value goals for
    V and Q, actor goals for the actor), then goal transitions, uniform rows i whose goal (value
    and actor) is their own next observation s'_i. SMORe reads no reward and no mask."""
    ends = jnp.asarray(trajectory_ends(dataset))
    size = dataset.observations.shape[0]
    idx_key, value_key, actor_key, goal_key = jax.random.split(rng, 4)
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
    entry = jax.random.randint(goal_key, (config.batch_size,), 0, size)
    rows = jnp.concatenate([idx, entry])
    entered = dataset.next_observations[entry]
    return {
        "observations": dataset.observations[rows],
        "actions": dataset.actions[rows],
        "next_observations": dataset.next_observations[rows],
        "value_goals": jnp.concatenate([dataset.observations[value_goal], entered]),
        "actor_goals": jnp.concatenate([dataset.observations[actor_goal], entered]),
    }


# --- Losses (each on a batch whose first half is data rows, second half goal rows) ---


def _data_rows(batch: dict) -> dict:
    """The batch's first half, the relabelled dataset rows."""
    return jax.tree.map(lambda x: x[: x.shape[0] // 2], batch)


def expectile_loss(diff, expectile):
    """Asymmetric squared error: weight expectile where diff >= 0, 1 - expectile below."""
    weight = jnp.where(diff < 0, 1 - expectile, expectile)
    return (weight * diff**2).mean()


def value_loss(value_params, params: Params, target_critic, batch, config: Config):
    """Expectile regression of V(s, g) on the smaller target critic, on the data rows only."""
    data = _data_rows(batch)
    obs, goal = data["observations"], data["value_goals"]
    q = _critic(config, target_critic, params.action_dim, obs, goal, data["actions"]).min(0)
    v = _value(config, value_params, obs, goal)
    return expectile_loss(jax.lax.stop_gradient(q) - v, config.expectile), {"v_mean": v.mean()}


def actor_loss(actor_params, params: Params, target_critic, batch, config: Config):
    """AWR on the data rows toward their actor goals: weights exp(beta (min Qbar - V)), clipped
    at 100, from the target critics and the value (as updated this step), without gradient."""
    data = _data_rows(batch)
    obs, goal, actions = data["observations"], data["actor_goals"], data["actions"]
    q = _critic(config, target_critic, params.action_dim, obs, goal, actions).min(0)
    advantage = jax.lax.stop_gradient(q - _value(config, params.value, obs, goal))
    weight = jnp.minimum(jnp.exp(config.beta * advantage), 100.0)
    logp = _policy(config, params.replace(actor=actor_params), obs, goal).log_prob(actions)
    info = {"advantage_mean": advantage.mean(), "awr_weight_mean": weight.mean()}
    return -(weight * logp).mean(), info | {"bc_log_prob": logp.mean()}


def critic_loss(critic_params, params: Params, batch, config: Config):
    """Each critic is raised on the goal rows (toward 2 / (1 - gamma), or without bound for
    ``smore``), held down on the data rows and backed up there from V(s', g), a constant."""
    data = _data_rows(batch)
    next_v = _value(config, params.value, data["next_observations"], data["value_goals"])
    next_v = jax.lax.stop_gradient(next_v)
    q = _critic(config, critic_params, params.action_dim, batch["observations"],
                batch["value_goals"], batch["actions"])  # (2, 2B)  # fmt: skip
    half = q.shape[-1] // 2
    q_data, q_goal = q[:, :half], q[:, half:]
    if config.loss == "smore_stable":
        target = NEG_REWARD + config.discount * next_v
        goal_term = jnp.square(q_goal + NEG_REWARD / (1 - config.discount)).mean(-1)
        penalty = (1 - config.discount) * Q_PENALTY * jnp.square(q_data).mean(-1)
    else:
        target = config.discount * next_v
        goal_term = -q_goal.mean(-1)
        penalty = Q_PENALTY * q_data.mean(-1)
    bellman = 0.5 * jnp.square(q_data - target).mean(-1)
    info = {
        "critic_goal_loss": goal_term.sum(),
        "critic_penalty": penalty.sum(),
        "critic_bellman_loss": bellman.sum(),
        "q_data_mean": q_data.mean(),
        "q_goal_mean": q_goal.mean(),
    }
    return (goal_term + penalty + bellman).sum(), info


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
    """Actor, twin critics (targets = copies), value and their Adams for ``dataset`` (an rljax
    Dataset, closed over rather than traced: trajectory ends and the number of discrete actions
    are read on the host)."""
    check(config)
    _check_dataset(config, dataset)
    actor_key, critic_key, value_key, rng = jax.random.split(rng, 4)
    obs = jnp.zeros(dataset.observations.shape[1:])
    if config.discrete:  # as OGBench: the largest action in the data + 1
        action_dim = int(np.asarray(dataset.actions).max()) + 1
    else:
        action_dim = dataset.actions.shape[-1]
    hidden = tuple(config.hidden_sizes)
    params = Params(
        actor=Actor(action_dim, hidden).init(actor_key, obs, obs),
        critic=TwinCritic(hidden, config.layer_norm).init(
            critic_key, obs, obs, jnp.zeros(action_dim)
        ),
        value=Value(hidden, config.layer_norm).init(value_key, obs, obs),
        action_dim=action_dim,
        discrete=config.discrete,
    )
    return TrainState(
        params=params,
        target_critic=params.critic,
        actor_opt=optax.adam(config.lr).init(params.actor),
        critic_opt=optax.adam(config.lr).init(params.critic),
        value_opt=optax.adam(config.lr).init(params.value),
        rng=rng,
        step=jnp.zeros((), jnp.int32),
    )


def update_on_batch(config: Config, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    """One step in the authors' order: V, then the actor and the critics (both with the new V),
    then the target critics toward the new critics."""
    params = state.params
    (loss_v, value_info), value_grads = jax.value_and_grad(value_loss, has_aux=True)(
        params.value, params, state.target_critic, batch, config
    )
    updates, value_opt = optax.adam(config.lr).update(value_grads, state.value_opt)
    params = params.replace(value=optax.apply_updates(params.value, updates))

    (loss_pi, actor_info), actor_grads = jax.value_and_grad(actor_loss, has_aux=True)(
        params.actor, params, state.target_critic, batch, config
    )
    updates, actor_opt = optax.adam(config.lr).update(actor_grads, state.actor_opt)
    actor = optax.apply_updates(params.actor, updates)

    (loss_q, critic_info), critic_grads = jax.value_and_grad(critic_loss, has_aux=True)(
        params.critic, params, batch, config
    )
    updates, critic_opt = optax.adam(config.lr).update(critic_grads, state.critic_opt)
    params = params.replace(actor=actor, critic=optax.apply_updates(params.critic, updates))

    state = state.replace(
        params=params,
        target_critic=optax.incremental_update(params.critic, state.target_critic, config.tau),
        actor_opt=actor_opt,
        critic_opt=critic_opt,
        value_opt=value_opt,
        step=state.step + 1,
    )
    metrics = {
        "value_loss": loss_v,
        "actor_loss": loss_pi,
        "critic_loss": loss_q,
        "grad_norm": optax.tree.norm(critic_grads),
        "actor_grad_norm": optax.tree.norm(actor_grads),
        "value_grad_norm": optax.tree.norm(value_grads),
    }
    return state, metrics | value_info | actor_info | critic_info


def update(config: Config, dataset, state: TrainState) -> tuple[TrainState, dict]:
    """One gradient step on a batch sampled inside jit."""
    rng, batch_key = jax.random.split(state.rng)
    return update_on_batch(config, state.replace(rng=rng), sample_batch(config, dataset, batch_key))


def train(config: Config, dataset, rng: jax.Array, num_updates: int | None = None):
    """init, then a lax.scan of num_updates (default: total_updates) ``update`` steps (what the
    runner's chunk runs), each on a batch of relabelled and goal rows sampled inside jit. The
    dataset is closed over, not carried in the state, so seeds vmapped over ``train`` share one
    copy of it."""
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

    config = Config(total_updates=2_000, hidden_sizes=(256, 256))
    start = time.time()
    state, metrics = jax.jit(lambda key: train(config, dataset, key))(jax.random.PRNGKey(1))
    print(f"SMORe on {episodes} noisy straight-line trajectories in the unit square: "
          f"{config.total_updates} updates in {time.time() - start:.1f}s")  # fmt: skip
    keys = ("value_loss", "critic_loss", "actor_loss", "q_goal_mean", "q_data_mean")
    for i in np.linspace(0, config.total_updates - 1, 5).astype(int):
        print(
            f"  update {i + 1:>6d}  " + "  ".join(f"{k} {float(metrics[k][i]):.3f}" for k in keys)
        )
    untrained = init(config, dataset, jax.random.PRNGKey(1)).params
    trained_rate, untrained_rate = (
        float(success_rate(p, jax.random.PRNGKey(2))) for p in (state.params, untrained)
    )
    print(
        f"  success rate over 200 random goals: {trained_rate:.2f} (untrained {untrained_rate:.2f})"
    )
