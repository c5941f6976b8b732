"""N-PG-IGT and (N)-HARPG: single-trajectory policy gradients with implicit gradient transport
or a Hessian-aided recursive correction, beside plain REINFORCE, for discrete and continuous
actions.

Fatkhullin, Barakat, Kireeva, He, "Stochastic Policy Gradient Methods: Improved Sample
Complexity for Fisher-non-degenerate Policies", ICML 2023 (arXiv 2302.01734), Algorithm 1
(N-PG-IGT) and Algorithm 2 ((N)-HARPG); REINFORCE (Williams 1992) is the baseline.

Each iteration samples ``num_envs`` trajectories per point (1: the paper's single trajectory;
more: independent trajectories whose estimates are averaged), each from ``env.reset`` for
``horizon`` = H steps or to its first termination or truncation, whichever comes first:

    R_t            = sum_{h=t}^{H-1} gamma^h r_h                  (discounted from the start)
    Phi(tau, th)   = sum_t R_t log pi_th(a_t|s_t),   log p(tau|th) = sum_t log pi_th(a_t|s_t)
    g(tau, th)     = grad Phi(tau, th)                           (no baseline, no critic)
    B(tau, th) u   = grad Phi (grad log p . u) + hess Phi u      (one jvp over grad)

    reinforce:  tau ~ pi_th_t;  d_t = g(tau, th_t);  th_{t+1} = th_t + lr d_t
    n_pg_igt:   th~_t = th_t + (1 - eta) / eta (th_t - th_{t-1});  tau ~ pi_th~_t
                d_t = (1 - eta) d_{t-1} + eta g(tau, th~_t);  th_{t+1} = th_t + lr d_t / |d_t|
    harpg:      q ~ U[0, 1];  th^_t = q th_t + (1 - q) th_{t-1};  tau ~ pi_th_t, tau^ ~ pi_th^_t
                d_t = (1 - eta) (d_{t-1} + B(tau^, th^_t) (th_t - th_{t-1})) + eta g(tau, th_t)
                th_{t+1} = th_t + lr d_t;   n_harpg: th_{t+1} = th_t + lr d_t / |d_t|

No importance sampling: IGT's extrapolation and HARPG's Hessian correction carry the old
estimate to the new parameters instead. The first iteration takes eta = 1 (th_{-1} = th_0,
d_0 = g(tau_0, th_0); our choice, the paper's initialization unread); lr may be annealed
linearly to 0.

What we could confirm: the abstract (N-PG-IGT samples one trajectory per iteration and uses
neither importance sampling nor second-order information; (N)-HARPG adds a Hessian-vector
product correction and samples at most two trajectories per iteration). The N-PG-IGT recursion
above is as a later paper citing it restates Algorithm 1 (not read in the paper itself).
UNVERIFIED, implemented as our reading of Algorithm 2: the uniform interpolation point th^_t,
the form of B (the truncated policy-Hessian estimator of Shen et al., ICML 2019, whose mean is
the Hessian of the truncated return) and where the correction enters d_t. The paper's step-size
and momentum schedules (gamma_t, eta_t) are UNVERIFIED and not implemented: both are constants.

Trajectories start from ``env.reset`` every iteration, so the env's running normalization
wrappers (``normalize_obs``, ``normalize_reward``) would restart with every trajectory: leave
them off for this agent.
"""

from typing import Any, NamedTuple

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from flax.linen.initializers import constant, orthogonal

LEARNS_FROM = "env"  # what it learns from, as declared in rljax/agents/__init__.py
GOAL_CONDITIONED = False
WRAPS_ENV = False
RECURRENT = False
PAPER = (
    'Fatkhullin et al., "Stochastic Policy Gradient Methods: Improved Sample Complexity for '
    'Fisher-non-degenerate Policies", ICML 2023'
)

# Agents vmap env.reset and env.step over this axis; wrappers may pool statistics over it.
ENV_AXIS = "env"
ESTIMATORS = ("reinforce", "n_pg_igt", "harpg", "n_harpg")
HESSIAN_AIDED = ("harpg", "n_harpg")
NORMALIZED = ("n_pg_igt", "n_harpg")


def _field(default, *, static=False, bounds=None, choices=None, doc):
    """A config field. Static fields are shapes and switches (changing one recompiles); the
    rest are traced, so a sweep can vmap over them. bounds/choices let a runner validate; doc,
    the field's meaning in one line, is required so that no field goes unexplained."""
    metadata = {"bounds": bounds, "choices": choices, "doc": doc}
    return struct.field(pytree_node=not static, default=default, metadata=metadata)


@struct.dataclass
class Config:
    estimator: str = _field(
        "n_harpg", static=True, choices=ESTIMATORS, doc="the gradient estimator and step rule"
    )
    num_envs: int = _field(
        1, static=True, bounds="[1, inf)", doc="trajectories per sampling point, averaged"
    )
    horizon: int = _field(
        500, static=True, bounds="[1, inf)", doc="truncation horizon H of each trajectory"
    )
    total_timesteps: int = _field(
        1_000_000, static=True, bounds="[1, inf)", doc="env steps simulated (the budget)"
    )
    hidden_sizes: tuple = _field((64, 64), static=True, doc="hidden-layer widths of the policy")
    activation: str = _field(
        "tanh", static=True, choices=("tanh", "relu"), doc="activation of the hidden layers"
    )
    anneal_lr: bool = _field(
        True, static=True, doc="decay the step size linearly to 0 over the run"
    )
    lr: float = _field(
        0.04, bounds="(0, inf)", doc="step size: the step's length for n_pg_igt and n_harpg"
    )
    eta: float = _field(
        0.3, bounds="(0, 1]", doc="momentum eta: the fresh gradient's weight in d_t"
    )
    gamma: float = _field(0.99, bounds="[0, 1]", doc="discount factor gamma")

    @property
    def trajectories_per_update(self) -> int:
        return self.num_envs * (2 if self.estimator in HESSIAN_AIDED else 1)

    @property
    def steps_per_update(self) -> int:
        return self.trajectories_per_update * self.horizon

    @property
    def num_updates(self) -> int:
        return self.total_timesteps // self.steps_per_update


@struct.dataclass
class Params:
    """The weights, and the facts of the action space that act() needs without an env."""

    net: Any  # the Policy's weights
    action_low: Any  # the action box (continuous), None for discrete actions
    action_high: Any
    action_dim: int = struct.field(pytree_node=False)  # number of actions if discrete
    discrete: bool = struct.field(pytree_node=False)


@struct.dataclass
class TrainState:
    params: Params
    prev_net: Any  # th_{t-1}
    direction: Any  # d_{t-1}, a pytree like params.net
    rng: jax.Array
    update_step: jax.Array  # iterations done so far


class Trajectory(NamedTuple):
    """Time-major, (horizon, num_envs, ...); steps after the first episode end have valid 0."""

    obs: jax.Array
    action: jax.Array
    reward: jax.Array
    valid: jax.Array  # 1.0 up to and including the step that ends the episode
    info: dict


# --- Network ---


class Policy(nn.Module):
    """An MLP to a categorical or a diagonal Gaussian (state-independent std); PPO's init."""

    action_dim: int
    discrete: bool
    hidden_sizes: tuple
    activation: str

    @nn.compact
    def __call__(self, obs):
        activation = {"tanh": nn.tanh, "relu": nn.relu}[self.activation]
        x = obs
        for i, size in enumerate(self.hidden_sizes):
            x = activation(nn.Dense(size, kernel_init=orthogonal(np.sqrt(2)), name=f"actor_{i}")(x))
        logits_or_mean = nn.Dense(
            self.action_dim,
            kernel_init=orthogonal(0.01),
            bias_init=constant(0.0),
            name="actor_head",
        )(x)
        if self.discrete:
            return distrax.Categorical(logits=logits_or_mean)
        log_std = self.param("log_std", constant(0.0), (self.action_dim,))
        return distrax.MultivariateNormalDiag(logits_or_mean, jnp.exp(log_std))


def _policy(config: Config, params: Params) -> Policy:
    return Policy(params.action_dim, params.discrete, tuple(config.hidden_sizes), config.activation)


# --- Pure functions ---


def rewards_to_go(reward, valid, gamma):
    """R_t = sum_{h >= t} gamma^h r_h over valid steps, time-major; gamma^h counts from the
    trajectory's start, as the paper's truncated gradient."""
    discounts = gamma ** jnp.arange(reward.shape[0], dtype=reward.dtype)
    discounted = discounts.reshape(-1, *[1] * (reward.ndim - 1)) * reward * valid
    return jnp.flip(jnp.cumsum(jnp.flip(discounted, 0), 0), 0)


def surrogate(config: Config, params: Params, traj: Trajectory):
    """Per trajectory, (Phi(tau, th), log p(tau|th)) at th = params.net: sum_t R_t log pi and
    sum_t log pi over the valid steps."""
    pi = _policy(config, params).apply(params.net, traj.obs)
    log_prob = pi.log_prob(traj.action) * traj.valid
    returns = rewards_to_go(traj.reward, traj.valid, config.gamma)
    return (returns * log_prob).sum(0), log_prob.sum(0)


def reinforce_gradient(config: Config, params: Params, traj: Trajectory):
    """g(tau, th) = grad Phi(tau, th) at th = params.net, averaged over the trajectories."""
    phi = lambda net: surrogate(config, params.replace(net=net), traj)[0].mean()  # noqa: E731
    return jax.grad(phi)(params.net)


def hessian_vector_product(config: Config, params: Params, traj: Trajectory, u):
    """B(tau, th) u = grad Phi (grad log p . u) + hess Phi u at th = params.net, averaged over
    the trajectories.

    One forward-mode jvp over the reverse-mode gradient per trajectory: the Hessian is never
    formed. The outer-product term needs each trajectory's own grad Phi and grad log p . u."""

    def one(traj):  # a single trajectory, (horizon, ...)
        def phi_and_log_p(net):
            return surrogate(config, params.replace(net=net), traj)

        grad_phi_and_log_p = jax.grad(phi_and_log_p, has_aux=True)
        (grad_phi, _), (hess_phi_u, log_p_u) = jax.jvp(grad_phi_and_log_p, (params.net,), (u,))
        return jax.tree.map(lambda g, h: g * log_p_u + h, grad_phi, hess_phi_u)

    per_trajectory = jax.vmap(one, in_axes=1)(traj._replace(info={}))
    return jax.tree.map(lambda x: x.mean(0), per_trajectory)


def igt_point(net, prev_net, eta):
    """IGT's extrapolation th~ = th + (1 - eta) / eta (th - th_prev)."""
    return jax.tree.map(lambda p, q: p + (1.0 - eta) / eta * (p - q), net, prev_net)


def harpg_point(net, prev_net, q):
    """HARPG's interpolation th^ = q th + (1 - q) th_prev."""
    return jax.tree.map(lambda p, r: q * p + (1.0 - q) * r, net, prev_net)


def momentum(config: Config, update_step):
    """eta_t: 1 on the first iteration (d_0 = g) and for REINFORCE, config.eta after."""
    if config.estimator == "reinforce":
        return jnp.ones(())
    return jnp.where(update_step == 0, 1.0, config.eta)


def step_size(config: Config, update_step):
    if config.anneal_lr:
        return config.lr * (1.0 - update_step / config.num_updates)
    return config.lr


def sampling_points(config: Config, state: TrainState, q):
    """Where this iteration's trajectories come from: (th_t, or IGT's th~_t; HARPG's th^_t)."""
    net, prev = state.params.net, state.prev_net
    if config.estimator == "n_pg_igt":
        return igt_point(net, prev, momentum(config, state.update_step)), None
    if config.estimator in HESSIAN_AIDED:
        return net, harpg_point(net, prev, q)
    return net, None


def rollout(config: Config, env, env_params, params: Params, rng) -> Trajectory:
    """num_envs trajectories of horizon steps under the policy at params.net, each from
    env.reset; steps after an episode's first termination or truncation are masked out."""
    policy = _policy(config, params)
    reset = jax.vmap(env.reset, in_axes=(0, None), axis_name=ENV_AXIS)
    step = jax.vmap(env.step, in_axes=(0, 0, 0, None), axis_name=ENV_AXIS)
    rng, reset_key = jax.random.split(rng)
    obs, env_state = reset(jax.random.split(reset_key, config.num_envs), env_params)

    def env_step(carry, _):
        env_state, obs, alive, rng = carry
        rng, action_key, step_key = jax.random.split(rng, 3)
        action = policy.apply(params.net, obs).sample(seed=action_key)
        step_keys = jax.random.split(step_key, config.num_envs)
        next_obs, env_state, reward, terminated, truncated, info = step(
            step_keys, env_state, action, env_params
        )
        info.pop("final_observation")
        done = jnp.logical_or(terminated, truncated)
        transition = Trajectory(obs, action, reward, alive, info)
        return (env_state, next_obs, alive * (1.0 - done), rng), transition

    alive = jnp.ones(config.num_envs)
    _, traj = jax.lax.scan(env_step, (env_state, obs, alive, rng), None, config.horizon)
    return traj


def update_on_trajectories(
    config: Config, state: TrainState, traj: Trajectory, traj_hat: Trajectory | None, q
) -> tuple[TrainState, dict]:
    """The step, given this iteration's trajectories: ``traj`` from sampling_points' first
    point and, for HARPG, ``traj_hat`` from th^_t = harpg_point(th_t, th_{t-1}, q)."""
    net, prev = state.params.net, state.prev_net
    at = lambda net: state.params.replace(net=net)  # noqa: E731  (the policy at weights net)
    eta = momentum(config, state.update_step)
    metrics = {}
    if config.estimator in HESSIAN_AIDED:
        grad = reinforce_gradient(config, state.params, traj)
        shift = jax.tree.map(jnp.subtract, net, prev)
        correction = hessian_vector_product(config, at(harpg_point(net, prev, q)), traj_hat, shift)
        carried = jax.tree.map(jnp.add, state.direction, correction)
        metrics["correction_norm"] = optax.tree.norm(correction)
    else:
        point = igt_point(net, prev, eta)  # th_t itself when eta = 1 (REINFORCE)
        grad = reinforce_gradient(config, at(point), traj)
        carried = state.direction
    direction = jax.tree.map(lambda c, g: (1.0 - eta) * c + eta * g, carried, grad)
    norm = optax.tree.norm(direction)
    scale = 1.0 / jnp.maximum(norm, 1e-12) if config.estimator in NORMALIZED else 1.0
    lr = step_size(config, state.update_step)
    new_net = jax.tree.map(lambda p, d: p + lr * scale * d, net, direction)

    state = state.replace(
        params=state.params.replace(net=new_net),
        prev_net=net,
        direction=direction,
        update_step=state.update_step + 1,
    )
    used = traj.valid.sum() + (0.0 if traj_hat is None else traj_hat.valid.sum())
    metrics |= {
        "grad_norm": optax.tree.norm(grad),
        "direction_norm": norm,
        "trajectory_return": (traj.reward * traj.valid).sum(0).mean(),
        "trajectory_length": traj.valid.sum(0).mean(),
        "samples": used,
        "lr": lr,
    }
    return state, metrics


# --- The contract ---


def check(config: Config) -> None:
    """The rules across Config fields; the runner calls it on each concrete config."""
    if config.estimator not in ESTIMATORS:
        raise ValueError(f"estimator={config.estimator!r} is not one of {ESTIMATORS}")
    if config.num_updates < 1:
        raise ValueError(
            f"total_timesteps={config.total_timesteps} is less than one iteration's "
            f"steps_per_update = {config.steps_per_update} ({config.trajectories_per_update} "
            f"trajectories of horizon {config.horizon})"
        )


def init(config: Config, env, env_params, rng: jax.Array) -> TrainState:
    obs_shape = env.observation_space(env_params).shape
    if len(obs_shape) != 1:
        raise ValueError(
            f"the policy MLP takes vector observations, got shape {obs_shape}; flatten them "
            "(rljax.envs.make(name, flatten_obs=True), or gymnax's FlattenObservationWrapper)"
        )
    check(config)
    space = env.action_space(env_params)
    if hasattr(space, "n"):
        low = high = None
        params = Params(None, None, None, int(space.n), True)
    elif hasattr(space, "low") and len(space.shape) == 1:
        low, high = (
            jnp.asarray(np.broadcast_to(bound, space.shape), jnp.float32)
            for bound in (space.low, space.high)
        )
        params = Params(None, low, high, int(space.shape[0]), False)
    else:
        raise ValueError(
            f"harpg acts in a Discrete space or a 1-d Box, got a {type(space).__name__} "
            f"of shape {getattr(space, 'shape', None)}"
        )
    rng, net_key = jax.random.split(rng)
    net = _policy(config, params).init(net_key, jnp.zeros(obs_shape))
    params = params.replace(net=net)
    direction = jax.tree.map(jnp.zeros_like, net)
    return TrainState(params, net, direction, rng, jnp.zeros((), jnp.int32))


def update(config: Config, env, env_params, state: TrainState) -> tuple[TrainState, dict]:
    """One iteration: trajectories at this iteration's sampling points, then one step."""
    rng, q_key, key, hat_key = jax.random.split(state.rng, 4)
    q = jax.random.uniform(q_key)
    point, hat_point = sampling_points(config, state, q)
    traj = rollout(config, env, env_params, state.params.replace(net=point), key)
    traj_hat = None
    if hat_point is not None:
        traj_hat = rollout(config, env, env_params, state.params.replace(net=hat_point), hat_key)
    state, metrics = update_on_trajectories(config, state.replace(rng=rng), traj, traj_hat, q)
    return state, {**metrics, **_episode_metrics(_first_episodes(traj))}


def train(config: Config, env, env_params, rng: jax.Array, num_updates: int | None = None):
    """init, then num_updates (default: total_timesteps // steps_per_update) updates."""
    num_updates = config.num_updates if num_updates is None else num_updates
    state = init(config, env, env_params, rng)
    return jax.lax.scan(lambda s, _: update(config, env, env_params, s), state, None, num_updates)


def act(
    config: Config, params: Params, obs: jax.Array, rng: jax.Array, deterministic: bool = False
):
    pi = _policy(config, params).apply(params.net, obs)
    action = pi.mode() if deterministic else pi.sample(seed=rng)
    if params.discrete:
        return action
    return jnp.clip(action, params.action_low, params.action_high)


def _first_episodes(traj: Trajectory) -> dict:
    """The trajectory's info with only the episode each trajectory follows marked finished."""
    if "returned_episode" not in traj.info:
        return traj.info
    return {**traj.info, "returned_episode": traj.info["returned_episode"] * (traj.valid > 0)}


def _episode_metrics(info: dict) -> dict:
    """Mean return and length of the episodes that finished in this rollout (NaN if none)."""
    if "returned_episode" not in info:  # an env without episode statistics
        return {}
    finished = info["returned_episode"]
    count = finished.sum()

    def mean(x):
        return jnp.where(count > 0, (x * finished).sum() / jnp.maximum(count, 1), jnp.nan)

    return {
        "episode_return": mean(info["returned_episode_returns"]),
        "episode_length": mean(info["returned_episode_lengths"]),
        "episodes": count,
    }


if __name__ == "__main__":
    import sys
    import time

    import gymnax
    from gymnax.wrappers.purerl import LogWrapper

    estimator = sys.argv[1] if len(sys.argv) > 1 else "n_harpg"
    env, env_params = gymnax.make("CartPole-v1")
    env = LogWrapper(env)
    config = Config(estimator=estimator)
    start = time.time()
    _, metrics = jax.jit(lambda key: train(config, env, env_params, key))(jax.random.PRNGKey(0))
    returns = np.asarray(metrics["trajectory_return"])
    print(
        f"{estimator} on CartPole-v1: {config.total_timesteps} steps in {time.time() - start:.1f}s"
    )
    window = max(1, len(returns) // 10)
    for i in np.linspace(window - 1, len(returns) - 1, 10).astype(int):
        step = (i + 1) * config.steps_per_update
        print(f"  step {step:>8d}  return {np.mean(returns[i + 1 - window : i + 1]):8.1f}")
