"""Stock-augmented distributional DQN (the paper's "DηN"), for discrete actions.

Ávila Pires, Rowland, Borsa, Guo, Khetarpal, Barreto, Abel, Munos, Dabney, "Optimizing Return
Distributions with Distributional Dynamic Programming", JMLR 2025 (arXiv 2501.13028), Sec. 6;
on C51 (Bellemare, Dabney, Munos, ICML 2017) and DQN (Mnih et al., Nature 2015).

The agent sees the stock c with the observation and learns the law Z(s, c, a) of the return:

    c_0 ~ U[stock_low, stock_high] (training),   c_{t+1} = (c_t + r_t) / gamma
    so that c_t + G_t = gamma^{-t} (c_0 + G_0): the stock carries what the objective needs
    a*     = argmax_a E[f(c' + Z(s', c', a; theta^-))]                  the greedy step
    Tz_j   = clip(r + gamma (1 - terminated) z_j, v_min, v_max),  projected onto z as in C51
    L      = -sum_i (Phi T Z)_i log p_i(s, c, a; theta)
    acting: argmax_a E[f(c + Z(s, c, a))] (epsilon-greedy while training)

with the expected utility f of the objective: "mean" f(x) = x (classic DQN's greedy step; the
stock is then irrelevant), "threshold" f(x) = 1{x >= 0} started from c_0 = -threshold (the
probability that the return reaches the threshold), and "cvar" f(x) = min(x, 0) with
Rockafellar and Uryasev's reduction, CVaR_alpha(G) = max_b b + E[min(G - b, 0)] / alpha: from
c_0 = -b, acting greedily for f maximizes the inner expectation, and an evaluation episode
starts from the stock

    c_0 = argmax_{c in linspace(stock_low, stock_high, num_stock_candidates)}
              -c + max_a E[min(c + Z(s_0, c, a), 0)] / alpha.

Training samples c_0 uniformly so that one network serves every candidate; alpha enters only
that search, so one trained "cvar" network answers for every level. The equations above
are the paper's; Sec. 6's details of DηN (how the stock enters the network, how training stocks
are drawn) could not be checked against its text, so these are our choices: the stock is one
more input (rescaled so the training range maps to [-1, 1]), drawn uniformly per episode.
The defaults suit RiskyShortcut (``rljax/envs/risky_shortcut.py``: returns in [-20, 0], the
CVaR_0.1-optimal c_0 is 6); another env needs its own support, stock range and gamma.

Categorical (C51) distributions rather than quantiles: a rare catastrophe is a small mass on an
atom, which E[min(c + Z, 0)] and P(c + Z >= 0) read exactly; the price is a fixed support.

The stock lives in the environment: ``wrap_env`` appends it to the observation (the runner
calls it), so ``act`` stays a function of the observation. gamma, the stock range and the
candidate grid are static because that wrapper is built once for all members of a sweep.
"""

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

LEARNS_FROM = "env"  # what it learns from, as declared in rljax/agents/__init__.py
GOAL_CONDITIONED = False
WRAPS_ENV = True
RECURRENT = False
PAPER = (
    'Ávila Pires et al., "Optimizing Return Distributions with Distributional Dynamic '
    'Programming", JMLR 2025'
)

# Agents vmap env.reset and env.step over this axis; wrappers may pool statistics over it.
ENV_AXIS = "env"
OBJECTIVES = ("mean", "cvar", "threshold")


def _field(default, *, static=False, bounds=None, choices=None, doc):
    """A config field. Static fields are shapes and switches (changing one recompiles); the
    rest are traced, so a sweep can vmap over them. bounds/choices let a runner validate; doc,
    the field's meaning in one line, is required so that no field goes unexplained."""
    metadata = {"bounds": bounds, "choices": choices, "doc": doc}
    return struct.field(pytree_node=not static, default=default, metadata=metadata)


@struct.dataclass
class Config:
    num_envs: int = _field(
        8, static=True, bounds="[1, inf)", doc="environments stepped in parallel"
    )
    num_steps: int = _field(
        16, static=True, bounds="[1, inf)", doc="env steps per environment per iteration"
    )
    updates_per_iteration: int = _field(
        8, static=True, bounds="[1, inf)", doc="gradient steps per iteration"
    )
    batch_size: int = _field(
        128, static=True, bounds="[1, inf)", doc="transitions per gradient step"
    )
    buffer_size: int = _field(
        50_000, static=True, bounds="[1, inf)", doc="replay buffer capacity in transitions"
    )
    total_timesteps: int = _field(
        102_400, static=True, bounds="[1, inf)", doc="env steps summed over envs (the budget)"
    )
    hidden_sizes: tuple = _field(
        (128, 128), static=True, doc="hidden-layer widths of the Q-network"
    )
    num_atoms: int = _field(41, static=True, bounds="[2, inf)", doc="atoms K of the support z")
    objective: str = _field(
        "cvar", static=True, choices=OBJECTIVES, doc="utility f that the greedy step maximizes"
    )
    # The stock wrapper reads these, and it is built once per run: they cannot be swept.
    gamma: float = _field(
        1.0, static=True, bounds="(0, 1]", doc="discount; the stock becomes (c + r) / gamma"
    )
    stock_low: float = _field(
        0.0, static=True, doc="lowest training stock c_0 and lowest candidate"
    )
    stock_high: float = _field(
        12.0, static=True, doc="highest training stock c_0 and highest candidate"
    )
    num_stock_candidates: int = _field(
        25, static=True, bounds="[1, inf)", doc="stocks on the grid the cvar c_0 search tries"
    )
    alpha: float = _field(0.1, bounds="(0, 1]", doc="CVaR level alpha (enters only the c_0 search)")
    threshold: float = _field(0.0, doc="return the threshold objective aims to reach")
    v_min: float = _field(-20.0, doc="lowest atom v_min of the support z")
    v_max: float = _field(0.0, doc="highest atom v_max of the support z")
    lr: float = _field(1e-3, bounds="(0, inf)", doc="Adam learning rate")
    adam_eps: float = _field(
        0.01 / 32, bounds="(0, inf)", doc="Adam epsilon (C51's 0.01 / batch of 32)"
    )
    max_grad_norm: float = _field(
        10.0, bounds="(0, inf)", doc="global norm that gradients are clipped to"
    )
    learning_starts: int = _field(
        1_000, bounds="[0, inf)", doc="transitions in the buffer before learning starts"
    )
    target_update_interval: int = _field(
        100, bounds="[1, inf)", doc="gradient steps between target network updates"
    )
    tau: float = _field(
        1.0, bounds="(0, 1]", doc="target update rate (1: the papers' hard copy; < 1: Polyak)"
    )
    start_e: float = _field(1.0, bounds="[0, 1]", doc="epsilon of epsilon-greedy at the start")
    end_e: float = _field(
        0.05, bounds="[0, 1]", doc="final epsilon, also act's when not deterministic"
    )
    exploration_fraction: float = _field(
        0.3, bounds="(0, 1]", doc="fraction of total_timesteps over which epsilon decays"
    )

    def __post_init__(self):
        if not self.stock_low < self.stock_high:
            raise ValueError(
                f"stock_low={self.stock_low} must be less than stock_high={self.stock_high}"
            )
        # Python floats are a config being built; traced or stacked copies were checked then.
        if isinstance(self.v_min, float) and isinstance(self.v_max, float):
            if not self.v_min < self.v_max:
                raise ValueError(f"v_min={self.v_min} must be less than v_max={self.v_max}")
        if self.objective == "threshold" and isinstance(self.threshold, float):
            if not self.stock_low <= -self.threshold <= self.stock_high:
                raise ValueError(
                    f"threshold={self.threshold}: its initial stock -threshold must lie in "
                    f"[stock_low, stock_high] = [{self.stock_low}, {self.stock_high}]"
                )

    @property
    def steps_per_update(self) -> int:
        return self.num_envs * self.num_steps

    @property
    def num_updates(self) -> int:
        return self.total_timesteps // self.steps_per_update


class Transition(NamedTuple):
    obs: jax.Array  # observation and stock
    action: jax.Array
    reward: jax.Array
    next_obs: jax.Array  # after the action, before any auto-reset; its stock is (c + r) / gamma
    terminated: jax.Array


@struct.dataclass
class Buffer:
    data: Any  # a pytree of (capacity, ...) arrays
    position: jax.Array  # the slot the next transition goes to
    size: jax.Array  # filled slots, up to capacity


@struct.dataclass
class Params:
    """The weights, and the facts of the action space that act() needs without an env."""

    net: Any  # the QNetwork's weights
    action_dim: int = struct.field(pytree_node=False)  # the number of actions


@struct.dataclass
class TrainState:
    params: Params
    target_params: Any  # theta^-, weights like params.net
    opt_state: Any
    buffer: Buffer
    env_state: Any
    obs: jax.Array  # (num_envs, obs_dim + 1): the last entry is the stock
    rng: jax.Array
    update_step: jax.Array  # iterations done so far; drives the epsilon schedule
    gradient_step: jax.Array  # gradient steps taken; drives the target network updates


# --- Stock augmentation ---


@struct.dataclass
class StockState:
    env_state: Any
    stock: jax.Array


def _augment(obs, stock):
    return jnp.concatenate([obs.astype(jnp.float32), stock[..., None].astype(jnp.float32)], -1)


class StockAugmentation:
    """Appends the stock c_t to a gymnax-style env's vector observation.

    ``initial_stock(key, obs) -> c_0`` draws each episode's first stock from its first
    observation; the stock then follows c_{t+1} = (c_t + r_t) / gamma, and
    ``info["final_observation"]`` carries the stock after an episode's last reward.
    """

    def __init__(self, env, gamma: float, initial_stock):
        self._env, self.gamma, self.initial_stock = env, gamma, initial_stock

    def __getattr__(self, name):
        if name == "_env":
            raise AttributeError(name)
        return getattr(self._env, name)

    def observation_space(self, params):
        inner = self._env.observation_space(params)
        return type(inner)(-jnp.inf, jnp.inf, (inner.shape[0] + 1,), jnp.float32)

    def reset(self, key, params=None):
        reset_key, stock_key = jax.random.split(key)
        obs, env_state = self._env.reset(reset_key, params)
        stock = jnp.asarray(self.initial_stock(stock_key, obs), jnp.float32)
        return _augment(obs, stock), StockState(env_state, stock)

    def step(self, key, state, action, params=None):
        step_key, stock_key = jax.random.split(key)
        obs, env_state, reward, terminated, truncated, info = self._env.step(
            step_key, state.env_state, action, params
        )
        stock = (state.stock + reward) / self.gamma
        # At an auto-reset obs is the next episode's first observation: draw its stock.
        first_stock = jnp.asarray(self.initial_stock(stock_key, obs), jnp.float32)
        next_stock = jnp.where(terminated | truncated, first_stock, stock)
        info = {**info, "final_observation": _augment(info["final_observation"], stock)}
        state = StockState(env_state, next_stock)
        return _augment(obs, next_stock), state, reward, terminated, truncated, info


def wrap_env(config: Config, env, env_params, params=None):
    """The runner's hook: ``env`` stock-augmented, and its params unchanged.

    While training (``params`` None) each episode starts from c_0 ~ U[stock_low, stock_high].
    Given trained params (evaluation), it starts from the agent's own ``initial_stock``.
    """

    def initial(key, obs):
        if params is None:
            return jax.random.uniform(key, (), minval=config.stock_low, maxval=config.stock_high)
        return initial_stock(config, params, obs)

    return StockAugmentation(env, config.gamma, initial), env_params


# --- Replay buffer ---


def buffer_init(capacity: int, example) -> Buffer:
    """An empty uniform circular buffer for pytrees shaped like ``example``."""
    data = jax.tree.map(lambda x: jnp.zeros((capacity, *x.shape), x.dtype), example)
    return Buffer(data, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))


def buffer_add(buffer: Buffer, batch) -> Buffer:
    """Writes a batch (leading axis n <= capacity) after the last write, wrapping around."""
    capacity = jax.tree.leaves(buffer.data)[0].shape[0]
    n = jax.tree.leaves(batch)[0].shape[0]
    slots = (buffer.position + jnp.arange(n)) % capacity
    data = jax.tree.map(lambda d, b: d.at[slots].set(b), buffer.data, batch)
    return Buffer(data, (buffer.position + n) % capacity, jnp.minimum(buffer.size + n, capacity))


def buffer_sample(buffer: Buffer, rng: jax.Array, batch_size: int):
    """batch_size transitions drawn uniformly, with replacement, from the filled slots."""
    slots = jax.random.randint(rng, (batch_size,), 0, jnp.maximum(buffer.size, 1))
    return jax.tree.map(lambda d: d[slots], buffer.data)


# --- Networks ---


class QNetwork(nn.Module):
    """An MLP on (observation, stock) with one categorical distribution per action: (..., A, K).

    The stock is rescaled so the training range maps to [-1, 1]; later stocks may leave it.
    """

    num_actions: int
    num_atoms: int
    hidden_sizes: tuple
    stock_low: float
    stock_high: float

    @nn.compact
    def __call__(self, obs):
        middle, half = (
            (self.stock_high + self.stock_low) / 2,
            (self.stock_high - self.stock_low) / 2,
        )
        x = jnp.concatenate([obs[..., :-1], (obs[..., -1:] - middle) / half], -1)
        for size in self.hidden_sizes:
            x = nn.relu(nn.Dense(size)(x))
        logits = nn.Dense(self.num_actions * self.num_atoms, name="head")(x)
        return logits.reshape(*logits.shape[:-1], self.num_actions, self.num_atoms)


def _network(config: Config, num_actions: int) -> QNetwork:
    return QNetwork(
        num_actions, config.num_atoms, tuple(config.hidden_sizes),
        config.stock_low, config.stock_high,
    )  # fmt: skip


def _support(config: Config) -> jax.Array:
    return jnp.linspace(config.v_min, config.v_max, config.num_atoms)


def _optimizer(config: Config) -> optax.GradientTransformation:
    # Hyperparameters enter as (possibly traced) values, so a sweep over them compiles once.
    return optax.chain(
        optax.clip_by_global_norm(config.max_grad_norm),
        optax.adam(config.lr, eps=config.adam_eps),
    )


def _epsilon(config: Config, env_steps):
    """DQN's schedule: linear from start_e to end_e over exploration_fraction of the run."""
    duration = config.exploration_fraction * config.total_timesteps
    progress = jnp.clip(env_steps / duration, 0.0, 1.0)
    return config.start_e + progress * (config.end_e - config.start_e)


def _epsilon_greedy(rng, q, epsilon):
    explore_key, action_key = jax.random.split(rng)
    random_action = jax.random.randint(action_key, q.shape[:-1], 0, q.shape[-1])
    explore = jax.random.uniform(explore_key, q.shape[:-1]) < epsilon
    return jnp.where(explore, random_action, jnp.argmax(q, -1))


# --- Pure functions ---


def objective_values(objective: str, probs, z, stock):
    """E[f(c + Z(s, c, a))] for each action: probs (..., A, K) on support z (K,), stock (...).

    Returns (..., A). Ties in argmax go to the lowest action index.
    """
    x = stock[..., None, None] + z
    utility = {
        "mean": lambda: x,
        "cvar": lambda: jnp.minimum(x, 0.0),
        "threshold": lambda: (x >= 0.0).astype(jnp.float32),
    }[objective]()
    return (probs * utility).sum(-1)


def cvar_search(probs, z, stocks, alpha):
    """Rockafellar-Uryasev's max over b = -c: (index of the best c, its CVaR_alpha estimate).

    probs (C, A, K) are the laws Z(s_0, c, a) for the C candidate stocks ``stocks`` (C,).
    """
    values = -stocks + objective_values("cvar", probs, z, stocks).max(-1) / alpha
    best = jnp.argmax(values)
    return best, values[best]


def initial_stock(config: Config, params: Params, obs):
    """The c_0 of an evaluation episode, from its first observation (without the stock).

    "cvar": the best candidate of ``cvar_search``; "threshold": -threshold; "mean": the middle
    of the training range (any stock gives the same greedy actions, this one is familiar).
    """
    if config.objective == "threshold":
        return -jnp.asarray(config.threshold, jnp.float32)
    if config.objective == "mean":
        return jnp.float32((config.stock_low + config.stock_high) / 2)
    stocks = jnp.linspace(config.stock_low, config.stock_high, config.num_stock_candidates)
    obs = jnp.broadcast_to(obs.astype(jnp.float32), (stocks.shape[0], *obs.shape))
    network = _network(config, params.action_dim)
    probs = jax.nn.softmax(network.apply(params.net, _augment(obs, stocks)))
    best, _ = cvar_search(probs, _support(config), stocks, config.alpha)
    return stocks[best]


def categorical_projection(z_t, p_t, z):
    """Projects the distribution sum_j p_t[j] delta(z_t[j]) onto the evenly spaced support z.

    Each atom, clipped to [z[0], z[-1]], splits its mass between its two neighbours in z in
    proportion to closeness: Phi_i = sum_j clip(1 - |z_t[j] - z[i]| / dz, 0, 1) p_t[j].
    An atom exactly on z[i] gives it all its mass (no floor = ceil loss).
    """
    dz = z[1] - z[0]
    z_t = jnp.clip(z_t, z[0], z[-1])
    weights = jnp.clip(1.0 - jnp.abs(z_t[None, :] - z[:, None]) / dz, 0.0, 1.0)  # (K, K')
    return (weights * p_t[None, :]).sum(-1)


def stock_categorical_loss(logits_tm1, a_tm1, r_t, discount_t, logits_t, stock_t, z, objective):
    """Cross-entropy of p(s, c, a) against Phi T Z(s', c', a*) for one transition.

    logits_tm1 (A, K) from the online network at (s, c); logits_t (A, K) from the target
    network at (s', c'), c' = stock_t, which picks a* greedily for the objective;
    discount_t = gamma (1 - terminated).
    """
    p_t = jax.nn.softmax(logits_t)
    a_t = jnp.argmax(objective_values(objective, p_t, z, stock_t))
    target = categorical_projection(r_t + discount_t * z, p_t[a_t], z)
    return -(jax.lax.stop_gradient(target) * jax.nn.log_softmax(logits_tm1[a_tm1])).sum()


# --- The contract ---


def check(config: Config) -> None:
    """The rules across Config fields; the runner calls it on each concrete config."""
    if config.buffer_size < config.steps_per_update:
        raise ValueError(
            f"buffer_size={config.buffer_size} must hold one iteration's "
            f"num_envs * num_steps = {config.steps_per_update} transitions"
        )


def init(config: Config, env, env_params, rng: jax.Array) -> TrainState:
    """``env`` must be stock-augmented already (``wrap_env``; the runner does it)."""
    if not isinstance(env, StockAugmentation):
        raise ValueError(
            "stock_dqn trains on a stock-augmented env: pass wrap_env(config, env, env_params)"
        )
    obs_shape = env.observation_space(env_params).shape
    action_space = env.action_space(env_params)
    if not hasattr(action_space, "n"):
        raise ValueError(f"stock_dqn needs discrete actions, got {type(action_space).__name__}")
    check(config)
    rng, net_key, env_key = jax.random.split(rng, 3)
    net = _network(config, action_space.n).init(net_key, jnp.zeros(obs_shape))
    params = Params(net, int(action_space.n))
    opt_state = _optimizer(config).init(net)
    reset = jax.vmap(env.reset, in_axes=(0, None), axis_name=ENV_AXIS)
    obs, env_state = reset(jax.random.split(env_key, config.num_envs), env_params)
    example = Transition(obs[0], jnp.int32(0), jnp.float32(0), obs[0], jnp.bool_(False))
    buffer = buffer_init(config.buffer_size, example)
    zero = jnp.zeros((), jnp.int32)
    return TrainState(params, net, opt_state, buffer, env_state, obs, rng, zero, zero)


def update(config: Config, env, env_params, state: TrainState) -> tuple[TrainState, dict]:
    """One iteration: num_steps epsilon-greedy steps of num_envs envs into the buffer, then
    updates_per_iteration gradient steps once the buffer holds learning_starts transitions."""
    network = _network(config, env.action_space(env_params).n)
    support = _support(config)
    step = jax.vmap(env.step, in_axes=(0, 0, 0, None), axis_name=ENV_AXIS)

    # --- Rollout ---
    def env_step(carry, t):
        env_state, obs, rng = carry
        rng, action_key, step_key = jax.random.split(rng, 3)
        epsilon = _epsilon(config, (state.update_step * config.num_steps + t) * config.num_envs)
        probs = jax.nn.softmax(network.apply(state.params.net, obs))
        values = objective_values(config.objective, probs, support, obs[:, -1])
        action = _epsilon_greedy(action_key, values, epsilon)
        step_keys = jax.random.split(step_key, config.num_envs)
        next_obs, env_state, reward, terminated, truncated, info = step(
            step_keys, env_state, action, env_params
        )
        transition = Transition(obs, action, reward, info.pop("final_observation"), terminated)
        return (env_state, next_obs, rng), (transition, info, epsilon)

    (env_state, obs, rng), (traj, info, epsilon) = jax.lax.scan(
        env_step, (state.env_state, state.obs, state.rng), jnp.arange(config.num_steps)
    )
    flat = jax.tree.map(lambda x: x.reshape(config.steps_per_update, *x.shape[2:]), traj)
    buffer = buffer_add(state.buffer, flat)

    # --- Learning ---
    optimizer = _optimizer(config)
    ready = buffer.size >= config.learning_starts
    loss_one = jax.vmap(stock_categorical_loss, in_axes=(0, 0, 0, 0, 0, 0, None, None))

    def loss_fn(params, target_params, batch):
        logits_tm1 = network.apply(params, batch.obs)
        logits_t = network.apply(target_params, batch.next_obs)
        discount_t = config.gamma * (1.0 - batch.terminated)
        losses = loss_one(
            logits_tm1, batch.action, batch.reward, discount_t, logits_t, batch.next_obs[:, -1],
            support, config.objective,
        )  # fmt: skip
        q = (jax.nn.softmax(logits_tm1) * support).sum(-1)
        return losses.mean(), jnp.take_along_axis(q, batch.action[:, None], -1).mean()

    def gradient_step(carry, key):
        params, target_params, opt_state, count = carry
        batch = buffer_sample(buffer, key, config.batch_size)
        (loss, q_mean), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, target_params, batch
        )
        updates, new_opt_state = optimizer.update(grads, opt_state, params)
        # Before learning_starts the step is computed and discarded: no branch, so vmapped
        # members with different learning_starts stay one program.
        params, opt_state = jax.tree.map(
            lambda new, old: jnp.where(ready, new, old),
            (optax.apply_updates(params, updates), new_opt_state),
            (params, opt_state),
        )
        count = count + ready
        sync = ready & (count % config.target_update_interval == 0)
        target_params = jax.tree.map(
            lambda t, p: jnp.where(sync, config.tau * p + (1.0 - config.tau) * t, t),
            target_params,
            params,
        )
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "q_mean": q_mean}
        return (params, target_params, opt_state, count), metrics

    rng, sample_key = jax.random.split(rng)
    (params, target_params, opt_state, gradient_step_count), losses = jax.lax.scan(
        gradient_step,
        (state.params.net, state.target_params, state.opt_state, state.gradient_step),
        jax.random.split(sample_key, config.updates_per_iteration),
    )

    state = TrainState(
        state.params.replace(net=params), target_params, opt_state, buffer, env_state, obs, rng,
        state.update_step + 1, gradient_step_count,
    )  # fmt: skip
    metrics = {**jax.tree.map(jnp.mean, losses), **_episode_metrics(info)}
    return state, {**metrics, "epsilon": epsilon.mean()}


def train(config: Config, env, env_params, rng: jax.Array, num_updates: int | None = None):
    """init, then num_updates (default: total_timesteps // steps_per_update) updates."""
    num_updates = config.num_updates if num_updates is None else num_updates
    state = init(config, env, env_params, rng)
    return jax.lax.scan(lambda s, _: update(config, env, env_params, s), state, None, num_updates)


def act(
    config: Config, params: Params, obs: jax.Array, rng: jax.Array, deterministic: bool = False
):
    """Greedy for E[f(c + Z(s, c, a))], c = obs[..., -1], when deterministic; otherwise
    epsilon-greedy with end_e, the exploration rate that training ends with."""
    probs = jax.nn.softmax(_network(config, params.action_dim).apply(params.net, obs))
    values = objective_values(config.objective, probs, _support(config), obs[..., -1])
    return jnp.argmax(values, -1) if deterministic else _epsilon_greedy(rng, values, config.end_e)


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

    # Default: rljax's RiskyShortcut (the safe-vs-risky gridworld), else any gymnax env name.
    env_name = sys.argv[1] if len(sys.argv) > 1 else "rljax/RiskyShortcut"
    if env_name.startswith("rljax/"):
        from rljax.envs import make

        env, env_params = make(env_name)
    else:
        env, env_params = gymnax.make(env_name)
        env = LogWrapper(env)
    for objective in ("mean", "cvar"):
        config = Config(objective=objective)
        wrapped, _ = wrap_env(config, env, env_params)
        start = time.time()
        state, metrics = jax.jit(lambda key, c=config, e=wrapped: train(c, e, env_params, key))(
            jax.random.PRNGKey(30)
        )
        returns = np.asarray(metrics["episode_return"])
        print(f"{objective}: {config.total_timesteps} steps in {time.time() - start:.1f}s")
        for i in np.linspace(0, len(returns) - 1, 5).astype(int):
            step = (i + 1) * config.steps_per_update
            print(f"  step {step:>8d}  return {np.nanmean(returns[max(0, i - 9) : i + 1]):8.1f}")
        evaluated, _ = wrap_env(config, env, env_params, state.params)
        obs, _ = evaluated.reset(jax.random.PRNGKey(0), env_params)
        action = act(config, state.params, obs, jax.random.PRNGKey(0), deterministic=True)
        print(f"  initial stock {float(obs[-1]):.2f}, first greedy action {int(action)}")
