"""RIQL: robust IQL, a Q ensemble's lower quantile as V's target and a Huber loss for the critics.

Yang et al., "Towards Robust Offline Reinforcement Learning under Diverse Data Corruption", ICLR
2024 (YangRui2015/RIQL, ``RIQL.py`` and ``RIQL_config.py``). Each gradient step, every loss on
the parameters from before the step (the authors' order):

    Qhat(s, a) = Quantile_q({Qbar_k(s, a)}_k=1..K)          (target ensemble, linear interpolation)
    L_V  = mean(|tau_e - 1(u < 0)| u^2),   u = Qhat(s, a) - V(s)
    y    = clip(r + gamma (1 - terminal) V(s'), y_min, y_max)
    L_Q  = mean_k,i H(y_i - Q_k(s_i, a_i)),   H(u) = u^2 / (2 b) if |u| < b else |u| - b / 2,
           b = 1 / sigma^2
    L_pi = mean(min(exp(beta (Qhat(s, a) - V(s))), 100) ||pi(s) - a||^2)
    Qbar <- (1 - tau) Qbar + tau Q

y, Qhat and the AWR weight are constants (no gradient flows into V from L_Q, into the critics
from L_V, or into V and the critics from L_pi). pi is a deterministic tanh MLP; its learning rate
decays along a cosine to 0 over ``total_updates``. The K critics are one vmapped network
(parameters stacked on a leading axis). Observations are normalized by the mean and std of
observations and next observations together, ``(s - mu) / (sigma + 1e-3)``; rewards as iql.py
(``"return_range"``: r <- 1000 r / (max - min episode return)). Actions in [-1, 1] (D4RL).

Where the paper and the authors' code differ, this file follows the code:

* Actor: the paper keeps IQL's weighted log-likelihood; the code trains a deterministic tanh
  actor (``DeterministicPolicy``; the README says the deterministic actor is the one used) on the
  weighted squared error, summed over action dimensions.
* Order: V(s') and the advantage use V before its step (the code, as CORL's IQL), where
  Kostrikov's IQL (rljax's iql.py) gives the actor and Q the updated V.
* Huber: the paper's threshold kappa is the code's b = 1 / sigma^2; ``sigma`` = 1 is the code's
  default for clean data (``RIQL_config.py`` tunes sigma in {0.1, 0.5, 1, 3}, q in {0.1, 0.25,
  0.5} and K in {3, 5} per corruption). L_Q is a mean over the K critics, not a sum.
* The target clip [-100, 1000] is the code's (not in the paper). It assumes D4RL MuJoCo rewards
  after the return-range scaling; with other scales (Pendulum's negative rewards: Q down to
  about -400) widen it with ``target_min``/``target_max``, or it holds Q at the bound.
* EDAC's critic initialization: biases 0.1, the output layer U(-3e-3, 3e-3), hidden kernels
  U(+-1/sqrt(fan_out)) (the code's ``VectorizedLinear`` calls PyTorch's default initializer on
  an (in, out) slice, which PyTorch reads as fan_in = out). V and the actor keep flax's defaults.
  ``critic_init="lecun"`` gives the critics flax's defaults too: on Pendulum (4 inputs) the EDAC
  init leaves the critics nearly linear and nearly identical early on, and RIQL learns worse than
  BC in a few thousand updates (configs/riql/pendulum.yaml has the figures).

``huber_linear_fraction`` (a metric) is the share of residuals |y - Q_k| >= b, where H is |u|
and the critics see only the residual's sign.
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
    'Yang et al., "Towards Robust Offline Reinforcement Learning under Diverse Data Corruption", '
    "ICLR 2024"
)

EXP_ADV_MAX = 100.0  # the clip on the AWR weights, as IQL's


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
        (256, 256), static=True, doc="hidden-layer widths of the actor, critics and value"
    )
    num_critics: int = _field(5, static=True, bounds="[1, inf)", doc="critics K in the Q ensemble")
    critic_init: str = _field(
        "edac",
        static=True,
        choices=("edac", "lecun"),
        doc="critic init: the authors' EDAC-style, or flax's default",
    )
    normalize_obs: bool = _field(
        True, static=True, doc="normalize observations by the stats of obs and next obs"
    )
    reward_preprocessing: str = _field(
        "return_range",
        static=True,
        choices=("return_range", "antmaze", "none"),
        doc="reward rescaling as in the paper's code",
    )
    actor_lr: float = _field(
        3e-4, bounds="(0, inf)", doc="initial learning rate of the actor, cosine-decayed to 0"
    )
    critic_lr: float = _field(3e-4, bounds="(0, inf)", doc="Adam learning rate of the critics")
    value_lr: float = _field(3e-4, bounds="(0, inf)", doc="Adam learning rate of the value V")
    gamma: float = _field(0.99, bounds="[0, 1]", doc="discount factor gamma")
    tau: float = _field(0.005, bounds="(0, 1]", doc="Polyak rate tau of the target critics")
    expectile: float = _field(
        0.7, bounds="(0, 1)", doc="expectile tau_e of the value loss (0.5 = mean)"
    )
    beta: float = _field(3.0, bounds="[0, inf)", doc="inverse temperature beta of the AWR weights")
    quantile: float = _field(
        0.25, bounds="[0, 1]", doc="quantile q of the target ensemble that V regresses on"
    )
    sigma: float = _field(
        1.0, bounds="(0, inf)", doc="Huber sigma: quadratic for |u| < 1 / sigma^2, then linear"
    )
    target_min: float = _field(-100.0, doc="lower clip of the critics' target y")
    target_max: float = _field(1000.0, doc="upper clip of the critics' target y")

    @property
    def num_updates(self) -> int:
        return self.total_updates


@struct.dataclass
class Params:
    actor: Any
    critic: Any  # the K critics, stacked on a leading axis of num_critics
    value: Any
    obs_mean: jax.Array  # normalized obs = (obs - obs_mean) / obs_std
    obs_std: jax.Array
    action_dim: int = struct.field(pytree_node=False, default=1)


@struct.dataclass
class TrainState:
    params: Params
    target_critic: Any
    actor_opt: Any
    critic_opt: Any
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


def _uniform(scale):
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(
        key, shape, dtype, -scale, scale
    )


class Actor(nn.Module):
    """Deterministic policy onto [-1, 1]."""

    action_dim: int
    hidden_sizes: tuple

    @nn.compact
    def __call__(self, obs):
        x = _mlp(obs, self.hidden_sizes)
        return jnp.tanh(nn.Dense(self.action_dim)(x))


class Critic(nn.Module):
    """One member; ``edac``: initialized as the authors' (see the module docstring)."""

    hidden_sizes: tuple
    scheme: str = "edac"

    @nn.compact
    def __call__(self, obs, action):
        x = jnp.concatenate([obs, action], -1)
        if self.scheme == "edac":
            kernel = nn.initializers.variance_scaling(1 / 3, "fan_out", "uniform")
            bias = nn.initializers.constant(0.1)
            out_kernel = out_bias = _uniform(3e-3)
        else:  # flax's Dense defaults, as iql.py's critics
            kernel = out_kernel = nn.initializers.lecun_normal()
            bias = out_bias = nn.initializers.zeros
        for size in self.hidden_sizes:
            x = nn.relu(nn.Dense(size, kernel_init=kernel, bias_init=bias)(x))
        out = nn.Dense(1, kernel_init=out_kernel, bias_init=out_bias)
        return jnp.squeeze(out(x), -1)


class Ensemble(nn.Module):
    """num_critics independent critics evaluated as one vmapped network; outputs (K, ...)."""

    num_critics: int
    hidden_sizes: tuple
    scheme: str = "edac"

    @nn.compact
    def __call__(self, obs, action):
        members = nn.vmap(
            Critic,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=None,
            axis_size=self.num_critics,
        )
        return members(self.hidden_sizes, self.scheme)(obs, action)


class Value(nn.Module):
    hidden_sizes: tuple

    @nn.compact
    def __call__(self, obs):
        x = _mlp(obs, self.hidden_sizes)
        return jnp.squeeze(nn.Dense(1)(x), -1)


def _networks(config: Config, action_dim: int) -> tuple[Actor, Ensemble, Value]:
    hidden = tuple(config.hidden_sizes)
    ensemble = Ensemble(config.num_critics, hidden, config.critic_init)
    return Actor(action_dim, hidden), ensemble, Value(hidden)


def _normalize(params: Params, obs):
    return (obs - params.obs_mean) / params.obs_std


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


def huber_loss(u, sigma):
    """The authors' H(u), elementwise: u^2 / (2 b) where |u| < b, else |u| - b / 2, b = 1 / sigma^2
    (optax.huber_loss(u, delta=b) / b: slope at most 1, whatever sigma)."""
    b = 1.0 / sigma**2
    absolute = jnp.abs(u)
    return jnp.where(absolute < b, 0.5 * u**2 / b, absolute - 0.5 * b)


def ensemble_quantile(q, quantile):
    """The q-quantile over the ensemble axis 0, interpolating linearly between order statistics
    (torch.quantile's default, which the authors call)."""
    return jnp.quantile(q, quantile, axis=0, method="linear")


def expectile_loss(diff, expectile):
    """Asymmetric squared error: weight expectile where diff >= 0, 1 - expectile below."""
    weight = jnp.where(diff < 0, 1 - expectile, expectile)
    return (weight * diff**2).mean()


def value_loss(value_params, target_q, batch, config: Config):
    """Expectile regression of V(s) on the (constant) ensemble quantile; batch normalized.

    Returns the loss and V(s), from which the actor's advantage is taken (V before its step).
    """
    value = Value(tuple(config.hidden_sizes))
    v = value.apply(value_params, batch["observations"])
    return expectile_loss(jax.lax.stop_gradient(target_q) - v, config.expectile), v


def critic_loss(critic_params, value_params, batch, config: Config):
    """mean over critics and batch of H(y - Q_k(s, a)), y = clip(r + gamma (1 - d) V(s')) held
    constant; rewards already preprocessed."""
    _, critic, value = _networks(config, batch["actions"].shape[-1])
    v_next = value.apply(value_params, batch["next_observations"])
    target = batch["rewards"] + config.gamma * (1.0 - batch["terminals"]) * v_next
    target = jax.lax.stop_gradient(jnp.clip(target, config.target_min, config.target_max))
    q = critic.apply(critic_params, batch["observations"], batch["actions"])  # (K, B)
    u = target - q
    linear = (jnp.abs(u) >= config.sigma**-2).mean()  # the share where H is |u|, not u^2
    return huber_loss(u, config.sigma).mean(), {"q_mean": q.mean(), "linear": linear}


def awr_weights(advantage, beta):
    """min(exp(beta A), 100), held constant."""
    return jax.lax.stop_gradient(jnp.minimum(jnp.exp(beta * advantage), EXP_ADV_MAX))


def actor_loss(actor_params, advantage, batch, config: Config):
    """mean of w ||pi(s) - a||^2 (summed over action dimensions), w the AWR weights."""
    actor = Actor(batch["actions"].shape[-1], tuple(config.hidden_sizes))
    pi = actor.apply(actor_params, batch["observations"])
    bc = jnp.square(pi - batch["actions"]).sum(-1)
    weight = awr_weights(advantage, config.beta)
    return (weight * bc).mean(), {"bc_loss": bc.mean(), "weight": weight.mean()}


# --- The contract ---


def check(config: Config) -> None:
    """The rule across fields: target_min < target_max. Traced values are skipped; the runner
    calls this on every concrete config."""
    low, high = config.target_min, config.target_max
    if isinstance(low, jax.core.Tracer) or isinstance(high, jax.core.Tracer):
        return
    if not float(low) < float(high):
        raise ValueError(
            f"target_min={float(low)!r} must lie below target_max={float(high)!r}: they clip "
            "the critics' target y"
        )


def _reward_transform(config: Config, dataset) -> tuple[float, float]:
    if config.reward_preprocessing == "antmaze":
        return 1.0, -1.0
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
            f"RIQL takes vector observations and actions, got shapes "
            f"{dataset.observations.shape[1:]} and {dataset.actions.shape[1:]}"
        )
    if isinstance(dataset.actions, jax.core.Tracer):
        raise ValueError(
            "RIQL's init reads the dataset on the host (reward scaling): close over the "
            "dataset instead of passing it through jit or vmap"
        )
    largest = float(np.abs(np.asarray(dataset.actions)).max())
    if largest > 1 + 1e-4:
        raise ValueError(
            f"dataset actions reach {largest:.4g} but the tanh actor acts in [-1, 1]: "
            "rescale the dataset's actions into [-1, 1] (the D4RL convention)"
        )


def _observation_stats(dataset, normalize: bool):
    """Mean and std + 1e-3 of observations and next observations together (the authors')."""
    obs_dim = dataset.observations.shape[-1]
    if not normalize:
        return jnp.zeros(obs_dim), jnp.ones(obs_dim)
    both = np.concatenate([np.asarray(dataset.observations), np.asarray(dataset.next_observations)])
    return jnp.asarray(both.mean(0), jnp.float32), jnp.asarray(both.std(0) + 1e-3, jnp.float32)


def init(config: Config, dataset, rng: jax.Array) -> TrainState:
    """Networks, optimizers, normalization statistics and reward scaling for ``dataset``.

    ``dataset`` (an rljax Dataset) must be concrete: close over it rather than pass it through
    jit, since the statistics and the reward scale are computed from it on the host.
    """
    check(config)
    _check_dataset(dataset)
    reward_scale, reward_shift = _reward_transform(config, dataset)
    actor_key, critic_key, value_key, rng = jax.random.split(rng, 4)
    obs_dim, action_dim = dataset.observations.shape[-1], dataset.actions.shape[-1]
    actor, critic, value = _networks(config, action_dim)
    dummy_obs, dummy_action = jnp.zeros(obs_dim), jnp.zeros(action_dim)
    obs_mean, obs_std = _observation_stats(dataset, config.normalize_obs)
    params = Params(
        actor=actor.init(actor_key, dummy_obs),
        critic=critic.init(critic_key, dummy_obs, dummy_action),
        value=value.init(value_key, dummy_obs),
        obs_mean=obs_mean,
        obs_std=obs_std,
        action_dim=action_dim,
    )
    return TrainState(
        params=params,
        target_critic=params.critic,
        actor_opt=optax.adam(config.actor_lr).init(params.actor),
        critic_opt=optax.adam(config.critic_lr).init(params.critic),
        value_opt=optax.adam(config.value_lr).init(params.value),
        reward_scale=jnp.asarray(reward_scale, jnp.float32),
        reward_shift=jnp.asarray(reward_shift, jnp.float32),
        rng=rng,
        step=jnp.zeros((), jnp.int32),
    )


def actor_learning_rate(config: Config, step):
    """Cosine decay from actor_lr to 0 over total_updates (optax.cosine_decay_schedule)."""
    progress = jnp.minimum(step, config.total_updates) / config.total_updates
    return config.actor_lr * 0.5 * (1 + jnp.cos(jnp.pi * progress))


def update_on_batch(config: Config, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    """One gradient step of V, the critics and the actor, each from the parameters before the
    step (so the three are independent), then the target critics."""
    params = state.params
    _, critic, _ = _networks(config, params.action_dim)
    batch = batch | {
        "observations": _normalize(params, batch["observations"]),
        "next_observations": _normalize(params, batch["next_observations"]),
        "rewards": state.reward_scale * batch["rewards"] + state.reward_shift,
    }
    q_all = critic.apply(state.target_critic, batch["observations"], batch["actions"])  # (K, B)
    target_q = ensemble_quantile(q_all, config.quantile)

    (loss_v, v), value_grads = jax.value_and_grad(value_loss, has_aux=True)(
        params.value, target_q, batch, config
    )
    updates, value_opt = optax.adam(config.value_lr).update(value_grads, state.value_opt)
    value_params = optax.apply_updates(params.value, updates)

    (loss_q, aux_q), critic_grads = jax.value_and_grad(critic_loss, has_aux=True)(
        params.critic, params.value, batch, config
    )
    updates, critic_opt = optax.adam(config.critic_lr).update(critic_grads, state.critic_opt)
    critic_params = optax.apply_updates(params.critic, updates)

    advantage = target_q - v
    (loss_pi, aux_pi), actor_grads = jax.value_and_grad(actor_loss, has_aux=True)(
        params.actor, advantage, batch, config
    )
    lr = actor_learning_rate(config, state.step)
    updates, actor_opt = optax.adam(lr).update(actor_grads, state.actor_opt)
    actor_params = optax.apply_updates(params.actor, updates)

    state = state.replace(
        params=params.replace(actor=actor_params, critic=critic_params, value=value_params),
        target_critic=optax.incremental_update(critic_params, state.target_critic, config.tau),
        actor_opt=actor_opt,
        critic_opt=critic_opt,
        value_opt=value_opt,
        step=state.step + 1,
    )
    metrics = {
        "value_loss": loss_v,
        "critic_loss": loss_q,
        "actor_loss": loss_pi,
        "bc_loss": aux_pi["bc_loss"],
        "v_mean": v.mean(),
        "q_mean": aux_q["q_mean"],
        "huber_linear_fraction": aux_q["linear"],  # residuals |u| >= b, where Huber is L1
        "target_q_std": q_all.std(0).mean(),  # the ensemble's spread, which the quantile uses
        "quantile_gap": (q_all.mean(0) - target_q).mean(),
        "advantage_mean": advantage.mean(),
        "awr_weight_mean": aux_pi["weight"],
        "actor_lr": lr,
        "grad_norm": optax.tree.norm(critic_grads),
        "actor_grad_norm": optax.tree.norm(actor_grads),
        "value_grad_norm": optax.tree.norm(value_grads),
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
    """The actor's action on raw observations; deterministic either way, as RIQL evaluates."""
    actor = Actor(params.action_dim, tuple(config.hidden_sizes))
    return actor.apply(params.actor, _normalize(params, obs))


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
    # Pendulum's rewards are negative: its Q values lie far below the code's clip at -100; and
    # on its 4 inputs the EDAC init starts the critics nearly linear (configs/riql/pendulum.yaml).
    config = Config(
        total_updates=20_000, hidden_sizes=(64, 64), actor_lr=1e-3, critic_lr=1e-3,
        value_lr=1e-3, target_min=-1000.0, critic_init="lecun",
    )  # fmt: skip
    start = time.time()
    state, metrics = jax.jit(lambda key: train(config, dataset, key))(jax.random.PRNGKey(1))
    print(f"RIQL ({config.num_critics} critics, q = {config.quantile}) on {episodes} noisy "
          f"swing-up episodes of Pendulum-v1: {config.total_updates} updates in "
          f"{time.time() - start:.1f}s")  # fmt: skip
    for i in np.linspace(0, config.total_updates - 1, 5).astype(int):
        losses = {
            k: float(metrics[k][i])
            for k in ("value_loss", "critic_loss", "actor_loss", "q_mean", "target_q_std")
        }
        print(f"  update {i + 1:>6d}  " + "  ".join(f"{k} {v:.3f}" for k, v in losses.items()))
    greedy = lambda o, _: act(config, state.params, o, None, deterministic=True)  # noqa: E731
    eval_rewards = jax.jit(jax.vmap(lambda k: rollout(k, greedy)[2]))(jax.random.split(keys[0], 10))
    print(f"  dataset return {float(rewards.sum(1).mean()):.1f}, greedy policy return "
          f"{float(eval_rewards.sum(1).mean()):.1f} over 10 episodes")  # fmt: skip
