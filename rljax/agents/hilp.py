"""Hilbert foundation policies (HILP), offline goal-conditioned, with zero-shot prompting.

Park, Rybkin, Levine, "Foundation Policies with Hilbert Representations", ICML 2024, as the
authors' goal-conditioned code implements it (seohongpark/HILP at be2431b: ``hilp_gcrl/src/
agents/hilp.py``, ``src/special_networks.py``, ``jaxrl_m/evaluation.py``, ``main.py``). Two
parts, trained together by one Adam step on the sum of four losses.

The Hilbert representation phi: S -> R^d (d = skill_dim), twice (phi_1, phi_2, with Polyak
targets phibar_j), defines V_j(s, g) = -sqrt(max(||phi_j(s) - phi_j(g)||^2, 1e-6)), trained on
relabelled goals (r = 1(s = g) - 1, m = 1 - 1(s = g), on the current row) by GCIVL's double
expectile loss:

    adv   = r + gamma m min_j Vbar_j(s', g) - mean_j Vbar_j(s, g)             (targets only)
    L_phi = sum_j mean(|tau - 1(adv < 0)| (r + gamma m Vbar_j(s', g) - V_j(s, g))^2)

The skill policy pi(a | s, z) is trained on latent directions z, one per row, uniform on the
unit sphere, with the intrinsic reward r_z = (phi(s') - phi(s))^T z (phi = phi_1 as it was
before the step, without gradient) by IQL: a skill value V(s, z), twin critics Q_i(s, z, a),
Polyak targets Qbar_i, and V held fixed in L_Q and L_pi:

    L_V  = mean(|tau_z - 1(u < 0)| u^2),  u = min_i Qbar_i(s, z, a) - V(s, z)
    L_Q  = sum_i mean((Q_i(s, z, a) - (r_z + gamma_z V(s', z)))^2)   (no mask: a skill never ends)
    L_pi = -mean(min(exp(beta (min_i Qbar_i(s, z, a) - V(s, z))), 100) log pi(a | s, z))

After the step the targets move toward the networks as they were before it (the authors'
order). Zero-shot prompting reads phi = phi_1:

    goal g:  z = (phi(g) - phi(s)) / ||phi(g) - phi(s)||                         (``act``)
    reward:  z = w / ||w||,  w = argmin_w sum_k ((phi(s_k) - mean_k phi(s_k))^T w - r_k)^2
             over dataset samples (s_k, r_k)                             (``reward_prompt``)

and test-time planning (``planning_num_recursions`` = K > 0, the authors' HILP-Plan) replaces
phi(g) K times by the mean phi of the ``planning_num_knns`` stored dataset states x with the
smallest max(||phi(x) - phi(s)||, ||phi(x) - phi(g)||), a midpoint subgoal, before z is formed.

The length of z. The GCRL code samples z = N(0, I) / ||N(0, I)|| (the unit sphere) and divides
goal prompts by their norm; the zero-shot code (``hilp_zsrl``) trains and prompts on
sqrt(d) S^{d-1} instead. A prompt must have the length the skill policy was trained on, so this
file uses the unit sphere throughout, reward prompts included (where zsrl's sqrt(d) z / ||z|| is
the same rule at its own scale).

What the reward prompt regresses. zsrl regresses rewards on phi(s) by default (its
``feature_type='state'``; 'diff' regresses on phi(s') - phi(s)). This file regresses on phi(s):
the skill critic's return telescopes, sum_t gamma^t (phi(s_{t+1}) - phi(s_t))^T z
= -phi(s_0)^T z + (1 - gamma) / gamma sum_{t>=1} gamma^t phi(s_t)^T z, so the z that fits a
state reward as phi(s)^T z is the one whose skill maximizes that reward's discounted return.
Centring phi fits an intercept (zsrl subtracts a running mean of phi over training batches; here
the prompt samples' own mean), which a reward may carry without changing the best policy; pass
as ``observations`` the states the rewards are earned in (s' for a reward on arrival).

Networks, as the authors': phi, the skill value and the critics are MLPs with GELU and
LayerNorm after each hidden layer (fan-avg uniform init); the actor (jaxrl_m's Policy) an MLP
with ReLU, a mean head initialised at scale 1e-2, a state-independent learned log std clipped
to [-5, 2], no tanh; ``act`` uses the mean (the authors' temperature 0), clipped to [-1, 1].
Goals come from OGBench's sampler with HILP's defaults (current 0, future 0.625 with geometric
offsets, random 0.375). Fresh skills every step, as the code since be2431b ("Fix random skill
issue"): the paper's numbers came from the earlier code, whose np.random draw ran once, at
trace time, so every step reused one batch of skills (its README; the ``reproduce`` branch).
Where this file differs from the authors' code: a row is drawn from all N rows (theirs from the
first N - 1); the skills are drawn with the batch (the step on a given batch is then a pure
function of it); the planning states are drawn once at init and kept in the params (theirs are
drawn afresh, 50,000 of them, at each evaluation). Continuous actions in [-1, 1] only, as the
authors'. No observation normalization.
"""

from collections.abc import Callable
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
PAPER = 'Park et al., "Foundation Policies with Hilbert Representations", ICML 2024'


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
    layer_norm: bool = _field(
        True, static=True, doc="layer norm in phi, the skill value and critics"
    )
    skill_dim: int = _field(
        32, static=True, bounds="[1, inf)", doc="dimension d of phi and of the skills z"
    )
    value_geom_sample: bool = _field(
        True, static=True, doc="geometric future offsets for value goals (else uniform)"
    )
    planning_num_recursions: int = _field(
        0, static=True, bounds="[0, inf)", doc="act's midpoint-subgoal refinements (0: none)"
    )
    planning_num_states: int = _field(
        50_000, static=True, bounds="[0, inf)", doc="dataset states kept in params for planning"
    )
    planning_num_knns: int = _field(
        50, static=True, bounds="[1, inf)", doc="states averaged into each planned subgoal"
    )
    lr: float = _field(3e-4, bounds="(0, inf)", doc="Adam learning rate of all networks")
    discount: float = _field(
        0.99, bounds="[0, 1)", doc="discount gamma of phi's value (and geometric goal offsets)"
    )
    tau: float = _field(0.005, bounds="(0, 1]", doc="Polyak rate tau of both targets")
    expectile: float = _field(
        0.95, bounds="(0, 1)", doc="expectile tau of phi's value loss (0.5 = mean)"
    )
    skill_discount: float = _field(
        0.99, bounds="[0, 1)", doc="discount gamma_z of the skill critic"
    )
    skill_expectile: float = _field(
        0.9, bounds="(0, 1)", doc="expectile tau_z of the skill value loss"
    )
    skill_temperature: float = _field(
        10.0, bounds="[0, inf)", doc="inverse temperature beta of the skill actor's AWR"
    )
    value_p_curgoal: float = _field(
        0.0, bounds="[0, 1]", doc="probability the value goal is the current state"
    )
    value_p_trajgoal: float = _field(
        0.625, bounds="[0, 1]", doc="probability the value goal is a future state of its trajectory"
    )
    value_p_randomgoal: float = _field(
        0.375, bounds="[0, 1]", doc="probability the value goal is a random dataset state"
    )

    @property
    def num_updates(self) -> int:
        return self.total_updates


@struct.dataclass
class Params:
    phi: Any  # phi_1 and phi_2, stacked on a leading axis of 2
    skill_value: Any
    skill_critic: Any  # Q_1 and Q_2, stacked on a leading axis of 2
    actor: Any
    planning_observations: jax.Array  # (planning_num_states, obs_dim) dataset rows for planning
    action_dim: int = struct.field(pytree_node=False, default=1)
    skill_dim: int = struct.field(pytree_node=False, default=1)  # phi's output size, for prompts


@struct.dataclass
class TrainState:
    params: Params
    target_phi: Any
    target_skill_critic: Any
    opt: Any  # Adam's state over the four networks (not the planning states)
    rng: jax.Array
    step: jax.Array  # gradient steps done so far


# --- Networks (the authors': GELU and LayerNorm in the value MLPs, ReLU in the actor) ---


def _dense(size, scale=1.0):
    return nn.Dense(size, kernel_init=nn.initializers.variance_scaling(scale, "fan_avg", "uniform"))


class MLP(nn.Module):
    hidden_sizes: tuple
    layer_norm: bool = False
    activation: Callable = nn.gelu

    @nn.compact
    def __call__(self, x):
        for size in self.hidden_sizes:
            x = self.activation(_dense(size)(x))
            if self.layer_norm:
                x = nn.LayerNorm()(x)
        return x


class Head(nn.Module):
    """An MLP and a linear output of out_dim units: (..., out_dim)."""

    hidden_sizes: tuple
    layer_norm: bool
    out_dim: int = 1

    @nn.compact
    def __call__(self, x):
        return _dense(self.out_dim)(MLP(self.hidden_sizes, self.layer_norm)(x))


class Twin(nn.Module):
    """Two independent heads evaluated as one vmapped network: (2, ..., out_dim)."""

    hidden_sizes: tuple
    layer_norm: bool
    out_dim: int = 1

    @nn.compact
    def __call__(self, x):
        twins = nn.vmap(
            Head, variable_axes={"params": 0}, split_rngs={"params": True}, in_axes=None,
            axis_size=2,
        )  # fmt: skip
        return twins(self.hidden_sizes, self.layer_norm, self.out_dim)(x)


class Actor(nn.Module):
    """pi(a | s, z): the Gaussian's mean and its state-independent log std, clipped."""

    hidden_sizes: tuple
    action_dim: int

    @nn.compact
    def __call__(self, x):
        mean = _dense(self.action_dim, 1e-2)(MLP(self.hidden_sizes, activation=nn.relu)(x))
        log_std = self.param("log_std", nn.initializers.zeros, (self.action_dim,))
        return mean, jnp.clip(log_std, -5.0, 2.0)


class Networks(NamedTuple):
    phi: Twin
    skill_value: Head
    skill_critic: Twin
    actor: Actor


def _networks(config: Config, action_dim: int | None = None) -> Networks:
    """The networks by name; action_dim sizes the actor only (phi and the values never see it)."""
    hidden = tuple(config.hidden_sizes)
    return Networks(
        phi=Twin(hidden, config.layer_norm, config.skill_dim),
        skill_value=Head(hidden, config.layer_norm),
        skill_critic=Twin(hidden, config.layer_norm),
        actor=Actor(hidden, action_dim),
    )


def hilbert_values(config: Config, phi_params, obs, goal):
    """(V_1, V_2)(s, g) = -sqrt(max(||phi_j(s) - phi_j(g)||^2, 1e-6)), stacked: (2, ...)."""
    phi = _networks(config).phi
    diff = phi.apply(phi_params, obs) - phi.apply(phi_params, goal)
    return -jnp.sqrt(jnp.maximum(jnp.sum(diff**2, -1), 1e-6))


def representation(config: Config, phi_params, obs):
    """phi(s) = phi_1(s), the representation that rewards and prompts read: (..., skill_dim)."""
    return _networks(config).phi.apply(phi_params, obs)[0]


def intrinsic_reward(phi, next_phi, skills):
    """r_z = (phi(s') - phi(s))^T z, over the last axis."""
    return jnp.sum((next_phi - phi) * skills, -1)


def unit_normalize(x):
    """x / ||x|| over the last axis; the 1e-12 keeps an exactly zero x at zero, not NaN."""
    return x / jnp.sqrt(jnp.sum(x**2, axis=-1, keepdims=True) + 1e-12)


def sample_skills(rng, shape, skill_dim: int):
    """Skills uniform on the unit sphere S^{d-1}: normalized standard normals, (*shape, d)."""
    return unit_normalize(jax.random.normal(rng, (*shape, skill_dim)))


def _skill_value(config: Config, value_params, obs, skills):
    x = jnp.concatenate([obs, skills], -1)
    return _networks(config).skill_value.apply(value_params, x)[..., 0]


def _skill_critic(config: Config, critic_params, obs, skills, actions):
    x = jnp.concatenate([obs, skills, actions], -1)
    return _networks(config).skill_critic.apply(critic_params, x)[..., 0]  # (2, ...)


def gaussian_log_prob(mean, log_std, action):
    """log N(action; mean, diag(exp(log_std)^2)), summed over the action dimensions."""
    z = (action - mean) * jnp.exp(-log_std)
    return (-0.5 * z**2 - log_std - 0.5 * jnp.log(2 * jnp.pi)).sum(-1)


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
    """Uniform rows with relabelled value goals (rewards 0 / -1 and masks on the current row,
    as the authors') and one skill per row, uniform on the unit sphere."""
    ends = jnp.asarray(trajectory_ends(dataset))
    size = dataset.observations.shape[0]
    idx_key, value_key, skill_key = jax.random.split(rng, 3)
    idx = jax.random.randint(idx_key, (config.batch_size,), 0, size)
    value_goal = sample_goals(
        value_key, idx, ends[idx], size, config.value_p_curgoal, config.value_p_trajgoal,
        config.value_p_randomgoal, config.value_geom_sample, config.discount,
    )  # fmt: skip
    success = (idx == value_goal).astype(jnp.float32)
    return {
        "observations": dataset.observations[idx],
        "actions": dataset.actions[idx],
        "next_observations": dataset.next_observations[idx],
        "value_goals": dataset.observations[value_goal],
        "rewards": success - 1.0,
        "masks": 1.0 - success,
        "skills": sample_skills(skill_key, (config.batch_size,), config.skill_dim),
    }


# --- Losses ---


def value_loss(phi_params, target_phi, batch, config: Config):
    """The double expectile loss on the Hilbert values: each phi_j regresses its own target,
    weighted by the sign of the target values' advantage (as GCIVL)."""
    obs, goals, rewards = batch["observations"], batch["value_goals"], batch["rewards"]
    next_v = hilbert_values(config, target_phi, batch["next_observations"], goals)
    bootstrap = config.discount * batch["masks"] * next_v  # (2, B)
    adv = rewards + bootstrap.min(0) - hilbert_values(config, target_phi, obs, goals).mean(0)
    weight = jnp.where(adv >= 0, config.expectile, 1 - config.expectile)
    v = hilbert_values(config, phi_params, obs, goals)
    loss = (weight * jnp.square(rewards + bootstrap - v)).mean(-1).sum()
    return loss, {"v_mean": v.mean(), "value_advantage": adv.mean()}


def skill_rewards(config: Config, phi_params, batch):
    """The intrinsic rewards of the batch's transitions under its skills, without gradient."""
    phi_params = jax.lax.stop_gradient(phi_params)
    phi = representation(config, phi_params, batch["observations"])
    next_phi = representation(config, phi_params, batch["next_observations"])
    return intrinsic_reward(phi, next_phi, batch["skills"])


def skill_value_loss(value_params, target_critic, batch, config: Config):
    """IQL's expectile regression of V(s, z) on min_i Qbar_i(s, z, a)."""
    obs, skills = batch["observations"], batch["skills"]
    q = _skill_critic(config, target_critic, obs, skills, batch["actions"]).min(0)
    v = _skill_value(config, value_params, obs, skills)
    weight = jnp.where(q >= v, config.skill_expectile, 1 - config.skill_expectile)
    return (weight * jnp.square(q - v)).mean(), {"skill_v_mean": v.mean()}


def skill_critic_loss(critic_params, params: Params, batch, config: Config):
    """Both critics regress r_z + gamma_z V(s', z), with no mask and V without gradient."""
    rewards = skill_rewards(config, params.phi, batch)
    next_v = _skill_value(config, params.skill_value, batch["next_observations"], batch["skills"])
    target = rewards + config.skill_discount * next_v
    q = _skill_critic(config, critic_params, batch["observations"], batch["skills"],
                      batch["actions"])  # fmt: skip
    return jnp.square(q - target).mean(-1).sum(), {
        "skill_reward": rewards.mean(),
        "q_mean": q.mean(),
    }


def skill_actor_loss(actor_params, params: Params, target_critic, batch, config: Config):
    """AWR with A = min_i Qbar_i(s, z, a) - V(s, z) (V without gradient), weights clipped at 100."""
    obs, skills = batch["observations"], batch["skills"]
    v = _skill_value(config, params.skill_value, obs, skills)
    adv = _skill_critic(config, target_critic, obs, skills, batch["actions"]).min(0) - v
    weight = jnp.minimum(jnp.exp(config.skill_temperature * adv), 100.0)
    actor = _networks(config, params.action_dim).actor
    mean, log_std = actor.apply(actor_params, jnp.concatenate([obs, skills], -1))
    log_prob = gaussian_log_prob(mean, log_std, batch["actions"])
    info = {
        "skill_advantage": adv.mean(),
        "bc_log_prob": log_prob.mean(),
        "mse": jnp.square(mean - batch["actions"]).mean(),
    }
    return -(weight * log_prob).mean(), info


def _weights(params: Params) -> dict:
    """The trained networks of params (not the planning states), as Adam sees them."""
    names = ("phi", "skill_value", "skill_critic", "actor")
    return {name: getattr(params, name) for name in names}


def total_loss(weights: dict, params: Params, target_phi, target_critic, batch, config: Config):
    """L_phi + L_V + L_Q + L_pi of ``weights``; the rewards and fixed values read ``params``,
    the networks as they were before this step."""
    loss_phi, info_phi = value_loss(weights["phi"], target_phi, batch, config)
    loss_v, info_v = skill_value_loss(weights["skill_value"], target_critic, batch, config)
    loss_q, info_q = skill_critic_loss(weights["skill_critic"], params, batch, config)
    loss_pi, info_pi = skill_actor_loss(weights["actor"], params, target_critic, batch, config)
    losses = {
        "value_loss": loss_phi,
        "skill_value_loss": loss_v,
        "skill_critic_loss": loss_q,
        "actor_loss": loss_pi,
    }
    return loss_phi + loss_v + loss_q + loss_pi, losses | info_phi | info_v | info_q | info_pi


# --- The contract ---


def check(config: Config) -> None:
    """The rules across fields: the value goal mixture sums to 1, and planning keeps at least
    as many states as it averages. A traced mixture (init under jit, vmap or lax.map) is
    skipped; the runner calls this on every concrete config."""
    names = [f"value_p_{kind}goal" for kind in ("cur", "traj", "random")]
    values = [getattr(config, name) for name in names]
    if not any(isinstance(v, jax.core.Tracer) for v in values):
        total = sum(float(v) for v in values)
        if abs(total - 1) > 1e-6:
            raise ValueError(f"{' + '.join(names)} = {total:.6g}; they must sum to 1")
    if config.planning_num_recursions > 0 and config.planning_num_knns > config.planning_num_states:
        raise ValueError(
            f"planning_num_knns={config.planning_num_knns} exceeds planning_num_states="
            f"{config.planning_num_states}: planning averages that many of the kept states"
        )


def _check_dataset(dataset) -> None:
    """The dataset is concrete, ends its last trajectory, has vector observations and
    continuous actions in [-1, 1]."""
    trajectory_ends(dataset)  # the dataset is concrete and its last row ends a trajectory
    if dataset.observations.ndim != 2:
        raise ValueError(f"HILP takes vector observations, got {dataset.observations.shape[1:]}")
    actions = np.asarray(dataset.actions)
    if (
        actions.ndim != 2
        or not np.issubdtype(actions.dtype, np.floating)
        or np.abs(actions).max() > 1 + 1e-4
    ):
        raise ValueError(
            f"HILP takes continuous actions of shape (N, action_dim) in [-1, 1], got "
            f"{actions.dtype} actions of shape {actions.shape} reaching {np.abs(actions).max():.4g}"
        )


def _check_representation(config: Config, params: Params) -> None:
    """The params' phi has config.skill_dim outputs, and planning has enough stored states."""
    if params.skill_dim != config.skill_dim:
        raise ValueError(
            f"the params' representation phi has {params.skill_dim} outputs but config."
            f"skill_dim={config.skill_dim}: use the config the params were trained with"
        )
    stored = params.planning_observations.shape[-2]
    if config.planning_num_recursions > 0 and stored < config.planning_num_knns:
        raise ValueError(
            f"planning_num_recursions={config.planning_num_recursions} averages "
            f"planning_num_knns={config.planning_num_knns} states, but the params keep {stored} "
            "(planning_num_states at init)"
        )


def init(config: Config, dataset, rng: jax.Array) -> TrainState:
    """Networks, targets (copies), Adam, and planning_num_states dataset rows drawn uniformly
    for planning, for ``dataset`` (an rljax Dataset, closed over rather than traced: trajectory
    ends are read on the host)."""
    check(config)
    _check_dataset(dataset)
    obs_dim, action_dim = dataset.observations.shape[-1], dataset.actions.shape[-1]
    net = _networks(config, action_dim)
    phi_key, value_key, critic_key, actor_key, plan_key, rng = jax.random.split(rng, 6)
    obs, skill, action = jnp.zeros(obs_dim), jnp.zeros(config.skill_dim), jnp.zeros(action_dim)
    rows = jax.random.randint(plan_key, (config.planning_num_states,), 0, len(dataset.observations))
    params = Params(
        phi=net.phi.init(phi_key, obs),
        skill_value=net.skill_value.init(value_key, jnp.concatenate([obs, skill])),
        skill_critic=net.skill_critic.init(critic_key, jnp.concatenate([obs, skill, action])),
        actor=net.actor.init(actor_key, jnp.concatenate([obs, skill])),
        planning_observations=jnp.asarray(dataset.observations)[rows],
        action_dim=action_dim,
        skill_dim=config.skill_dim,
    )
    return TrainState(
        params=params,
        target_phi=params.phi,
        target_skill_critic=params.skill_critic,
        opt=optax.adam(config.lr).init(_weights(params)),
        rng=rng,
        step=jnp.zeros((), jnp.int32),
    )


def update_on_batch(config: Config, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    """One Adam step on L_phi + L_V + L_Q + L_pi, then both targets move toward the networks as
    they were before this step (the authors' order)."""
    params = state.params
    (_, info), grads = jax.value_and_grad(total_loss, has_aux=True)(
        _weights(params), params, state.target_phi, state.target_skill_critic, batch, config
    )
    updates, opt = optax.adam(config.lr).update(grads, state.opt)
    state = state.replace(
        params=params.replace(**optax.apply_updates(_weights(params), updates)),
        target_phi=optax.incremental_update(params.phi, state.target_phi, config.tau),
        target_skill_critic=optax.incremental_update(
            params.skill_critic, state.target_skill_critic, config.tau
        ),
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
    """The action toward ``goal`` from raw ``obs``, (d,) or (B, d): the skill policy prompted
    with ``goal_prompt`` (planned subgoals when planning_num_recursions > 0)."""
    return act_with_skill(config, params, obs, goal_prompt(config, params, obs, goal), rng,
                          deterministic)  # fmt: skip


def goal_prompt(config: Config, params: Params, obs, goal):
    """z = (phi(g) - phi(s)) / ||phi(g) - phi(s)||, with phi(g) first replaced
    planning_num_recursions times by the mean phi of the planning_num_knns kept dataset states
    nearest to both ends (smallest max(||phi(x) - phi(s)||, ||phi(x) - phi(g)||)): (..., d)."""
    _check_representation(config, params)
    phi_s = representation(config, params.phi, obs)
    phi_g = representation(config, params.phi, goal)
    if config.planning_num_recursions > 0:
        kept = representation(config, params.phi, params.planning_observations)  # (N, d)
        for _ in range(config.planning_num_recursions):
            to_s = jnp.linalg.norm(kept - phi_s[..., None, :], axis=-1)  # (..., N)
            to_g = jnp.linalg.norm(kept - phi_g[..., None, :], axis=-1)
            _, nearest = jax.lax.top_k(-jnp.maximum(to_s, to_g), config.planning_num_knns)
            phi_g = kept[nearest].mean(-2)
    return unit_normalize(phi_g - phi_s)


def act_with_skill(
    config: Config, params: Params, obs, skill, rng: jax.Array, deterministic: bool = False
):
    """The skill policy's action for skill z (of length skill_dim; unit length, as trained) from
    raw ``obs``: obs and z broadcast against each other's batch shape. The mean when
    deterministic, else a sample; clipped to [-1, 1]."""
    _check_representation(config, params)
    skill = jnp.asarray(skill)
    if skill.shape[-1:] != (config.skill_dim,):
        raise ValueError(
            f"a skill of shape {skill.shape}: this representation's skills have skill_dim="
            f"{config.skill_dim} entries"
        )
    batch = jnp.broadcast_shapes(obs.shape[:-1], skill.shape[:-1])
    x = jnp.concatenate(
        [jnp.broadcast_to(obs, (*batch, obs.shape[-1])),
         jnp.broadcast_to(skill, (*batch, config.skill_dim))], -1,
    )  # fmt: skip
    mean, log_std = _networks(config, params.action_dim).actor.apply(params.actor, x)
    if not deterministic:
        mean = mean + jnp.exp(log_std) * jax.random.normal(rng, mean.shape)
    return jnp.clip(mean, -1.0, 1.0)


def reward_prompt(config: Config, params: Params, observations, rewards):
    """The skill z for a reward function, from dataset samples (observations (N, obs_dim), the
    states the rewards (N,) are earned in): least squares of the rewards on the centred phi(s)
    (with an intercept), normalized to unit length; (skill_dim,). Module docstring: why phi(s)."""
    _check_representation(config, params)
    observations, rewards = jnp.asarray(observations), jnp.asarray(rewards)
    if observations.ndim != 2 or observations.shape[0] == 0:
        raise ValueError(
            f"reward_prompt needs dataset samples: observations of shape (N, obs_dim) with N >= 1, "
            f"got shape {observations.shape}"
        )
    if rewards.shape != observations.shape[:1]:
        raise ValueError(
            f"rewards of shape {rewards.shape} for {observations.shape[0]} observations: one "
            "reward per observation"
        )
    phi = representation(config, params.phi, observations)
    w = jnp.linalg.lstsq(phi - phi.mean(0), rewards.astype(phi.dtype))[0]
    return unit_normalize(w)


if __name__ == "__main__":
    import time

    # A small dataset in the open square [0, 1]^2: a point moves by 0.05 a per step along a noisy
    # straight line toward one random target per trajectory (Gaussian action noise 0.5, as
    # OGBench's pointmaze data); each trajectory ends in a time limit. Then: goals it was never
    # given, and a reward (1 in the right third of the square) it was never trained on.
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
    config = Config(
        total_updates=2_000, batch_size=256, hidden_sizes=(64, 64), skill_dim=8,
        planning_num_states=1_000,
    )  # fmt: skip
    start = time.time()
    state, metrics = jax.jit(lambda key: train(config, dataset, key))(jax.random.PRNGKey(1))
    print(f"HILP on {episodes} noisy straight-line trajectories in the unit square: "
          f"{config.total_updates} updates in {time.time() - start:.1f}s")  # fmt: skip
    keys = ("value_loss", "skill_critic_loss", "actor_loss", "v_mean", "skill_reward")
    for i in np.linspace(0, config.total_updates - 1, 5).astype(int):
        print(
            f"  update {i + 1:>5d}  " + "  ".join(f"{k} {float(metrics[k][i]):.3f}" for k in keys)
        )

    def rollout(policy, x, steps=60):
        return jax.lax.scan(lambda x, _: (step_point(x, policy(x)), x), x, None, steps)

    starts = jax.random.uniform(jax.random.PRNGKey(2), (200, 2))
    goals = jax.random.uniform(jax.random.PRNGKey(3), (200, 2))
    final, _ = jax.jit(
        lambda: rollout(lambda x: act(config, state.params, x, goals, None, True), starts)
    )()
    reached = (jnp.linalg.norm(final - goals, axis=-1) < speed).mean()
    print(f"  greedy rollouts toward 200 random goals: {float(reached):.2f} within {speed}")
    for name, reward in (
        ("r = x", dataset.observations[:, 0]),
        ("r = 1 where x > 2/3", (dataset.observations[:, 0] > 2 / 3).astype(jnp.float32)),
    ):
        z = reward_prompt(config, state.params, dataset.observations, reward)
        final, visited = jax.jit(
            lambda z=z: rollout(
                lambda x: act_with_skill(config, state.params, x, z, None, True), starts
            )
        )()
        print(f"  reward prompt {name}: mean x {float(starts[:, 0].mean()):.2f} at the starts, "
              f"{float(final[:, 0].mean()):.2f} after 60 steps; share of steps with x > 2/3 "
              f"{float((visited[..., 0] > 2 / 3).mean()):.2f}")  # fmt: skip
