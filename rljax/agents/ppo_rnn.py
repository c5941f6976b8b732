"""Recurrent PPO-clip: a GRU or LSTM cell scanned over time, for partially observed envs.

Schulman, Wolski, Dhariwal, Radford, Klimov, "Proximal Policy Optimization Algorithms",
arXiv 1707.06347 (2017), with the recurrent actor-critic of PureJaxRL's ``ppo_rnn`` (Lu et al.,
"Discovered Policy Optimisation", NeurIPS 2022, github.com/luchris429/purejaxrl).

    h_t     = cell(first_t ? 0 : h_{t-1}, embed(o_t)),   first_t = done_{t-1}   (the reset rule)
    pi(.|h_t), V(h_t)                                    actor and critic heads on the cell
    V(s'_t) = V(cell(h_t, embed(o'_t)))                  o'_t: next observation before reset
    delta_t = r_t + gamma (1 - terminated_t) V(s'_t) - V(s_t)
    A_t     = delta_t + gamma lambda (1 - done_t) A_{t+1}          done = terminated or truncated
    L       = L_pi + vf_coef L_V - ent_coef mean(H[pi])            L_pi, L_V as in ppo.py

The reset rule: the hidden state is zeroed before the cell reads the first observation of an
episode, that is before o_t when done_{t-1} (terminated or truncated; every env's first
observation after init counts as first). The step that ends an episode (done_t) still acts on
that episode's memory, and no memory crosses into the next. The rollout and the loss's re-run
of the sequences use the same flags (``Transition.first``); PureJaxRL's ppo_rnn once re-ran them
with done_t, resetting one step early.

Minibatches are whole env sequences: each epoch shuffles the num_envs sequences of the rollout,
splits them into num_minibatches groups and re-runs each group from its hidden state at the
rollout's start (truncated backpropagation through num_steps). GAE bootstraps through truncation
(time limits) and not through termination, as ppo.py; ``truncation_as_termination=True``
reproduces PureJaxRL, which cuts both.
``egae=True`` is T-PPO's extended GAE as in ppo.py (UNVERIFIED reading, see there): the value
loss takes only the steps whose episode ends inside the rollout.

The agent declares ``RECURRENT``: ``act_step`` carries the hidden state from step to step, from
``initial_hidden``, and the runner's evaluation, ``rljax eval`` and ``rljax.load_policy`` (a
``RecurrentPolicy``) act through it with memory. ``act`` alone is the policy at an episode's
first observation (a zero hidden state).
"""

import functools
import math
from typing import Any, NamedTuple

import distrax
import flax.linen as nn
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from flax.linen.initializers import constant, orthogonal

LEARNS_FROM = "env"  # what it learns from, as declared in rljax/agents/__init__.py
GOAL_CONDITIONED = False
WRAPS_ENV = False
RECURRENT = True
PAPER = 'Schulman et al., "Proximal Policy Optimization Algorithms", arXiv 2017'

# Agents vmap env.reset and env.step over this axis; wrappers may pool statistics over it.
ENV_AXIS = "env"
# The info entries a rollout keeps: the episode statistics that _episode_metrics reads.
EPISODE_STATISTICS = ("returned_episode", "returned_episode_returns", "returned_episode_lengths")
CELLS = ("gru", "lstm")


def _field(default, *, static=False, bounds=None, choices=None, doc):
    """A config field. Static fields are shapes and switches (changing one recompiles); the
    rest are traced, so a sweep can vmap over them. bounds/choices let a runner validate; doc,
    the field's meaning in one line, is required so that no field goes unexplained."""
    metadata = {"bounds": bounds, "choices": choices, "doc": doc}
    return struct.field(pytree_node=not static, default=default, metadata=metadata)


@struct.dataclass
class Config:
    num_envs: int = _field(
        4, static=True, bounds="[1, inf)", doc="environments stepped in parallel (the sequences)"
    )
    num_steps: int = _field(
        128, static=True, bounds="[1, inf)", doc="env steps per environment per iteration"
    )
    num_minibatches: int = _field(
        4, static=True, bounds="[1, inf)", doc="minibatches per epoch, each of whole env sequences"
    )
    update_epochs: int = _field(
        4, static=True, bounds="[1, inf)", doc="passes of minibatch SGD over each rollout"
    )
    total_timesteps: int = _field(
        500_000, static=True, bounds="[1, inf)", doc="env steps summed over envs (the budget)"
    )
    cell: str = _field("gru", static=True, choices=CELLS, doc="the recurrent cell")
    cell_size: int = _field(
        128, static=True, bounds="[1, inf)", doc="width of the cell's hidden state"
    )
    embed_size: int = _field(
        128, static=True, bounds="[1, inf)", doc="width of the dense layer before the cell"
    )
    hidden_sizes: tuple = _field(
        (128,), static=True, doc="hidden-layer widths of the actor and critic heads on the cell"
    )
    activation: str = _field(
        "relu", static=True, choices=("tanh", "relu"), doc="activation of the dense layers"
    )
    anneal_lr: bool = _field(
        True, static=True, doc="decay the learning rate linearly to 0 over the run"
    )
    truncation_as_termination: bool = _field(
        False, static=True, doc="treat time limits as terminations (as PureJaxRL)"
    )
    egae: bool = _field(
        False, static=True, doc="T-PPO's EGAE: only steps whose episode ends in the rollout train V"
    )
    lr: float = _field(
        2.5e-4, bounds="(0, inf)", doc="Adam learning rate (the initial one when annealed)"
    )
    gamma: float = _field(0.99, bounds="[0, 1]", doc="discount factor gamma")
    gae_lambda: float = _field(0.95, bounds="[0, 1]", doc="GAE lambda")
    clip_eps: float = _field(
        0.2, bounds="(0, inf)", doc="clip range eps of the ratio and of the value"
    )
    ent_coef: float = _field(0.01, bounds="[0, inf)", doc="weight of the entropy bonus")
    vf_coef: float = _field(0.5, bounds="[0, inf)", doc="weight of the value loss")
    max_grad_norm: float = _field(
        0.5, bounds="(0, inf)", doc="global norm that gradients are clipped to"
    )

    @property
    def steps_per_update(self) -> int:
        return self.num_envs * self.num_steps

    @property
    def num_updates(self) -> int:
        return self.total_timesteps // self.steps_per_update


@struct.dataclass
class Params:
    """The weights, and the facts of the action space that act() needs without an env."""

    net: Any  # the ActorCriticRNN's weights
    action_dim: int = struct.field(pytree_node=False)  # number of actions if discrete
    discrete: bool = struct.field(pytree_node=False)


@struct.dataclass
class TrainState:
    params: Params
    opt_state: Any
    env_state: Any
    obs: jax.Array  # (num_envs, obs_dim)
    first: jax.Array  # (num_envs,): obs starts an episode, so the cell reads it from zeros
    hidden: Any  # the state the cell left at the last step: (num_envs, cell_size) per leaf
    rng: jax.Array
    update_step: jax.Array  # updates done so far; drives LR annealing


class Transition(NamedTuple):
    obs: jax.Array
    first: jax.Array  # done at the step before: the hidden state was zeroed before obs
    action: jax.Array
    reward: jax.Array
    terminated: jax.Array
    truncated: jax.Array
    value: jax.Array
    log_prob: jax.Array
    next_obs: jax.Array  # the observation after the action, before any auto-reset
    hidden: Any  # the cell's state after it read obs
    info: dict  # the episode statistics among the env's info


# --- Networks ---


class ScannedCell(nn.Module):
    """The cell over time-major inputs (T, B, features), its state zeroed before each input
    that starts an episode. Returns the state after each step and the cell's outputs."""

    cell: str
    size: int

    @functools.partial(
        nn.scan, variable_broadcast="params", split_rngs={"params": False}, in_axes=0, out_axes=0
    )
    @nn.compact
    def __call__(self, hidden, inputs):
        x, first = inputs
        hidden = jax.tree.map(lambda h: jnp.where(first[..., None], 0.0, h), hidden)
        cell = {"gru": nn.GRUCell, "lstm": nn.OptimizedLSTMCell}[self.cell](self.size)
        hidden, y = cell(hidden, x)
        return hidden, (hidden, y)


class ActorCriticRNN(nn.Module):
    """Observation embedding, then the cell, then separate actor and critic heads; orthogonal
    init with PureJaxRL's ppo_rnn gains (sqrt 2 on the embedding, 2 on the heads' layers)."""

    action_dim: int
    discrete: bool
    cell: str
    cell_size: int
    embed_size: int
    hidden_sizes: tuple
    activation: str

    @nn.compact
    def __call__(self, hidden, obs, first):
        """Time-major: obs (T, B, obs_dim), first (T, B), hidden (B, cell_size) per leaf.
        Returns (the hidden state after each step, pi, value), over (T, B)."""
        activation = {"tanh": nn.tanh, "relu": nn.relu}[self.activation]
        x = nn.Dense(self.embed_size, kernel_init=orthogonal(np.sqrt(2)), name="embed")(obs)
        _, (hiddens, x) = ScannedCell(self.cell, self.cell_size, name="rnn")(
            hidden, (activation(x), first)
        )

        def head(x, name):
            for i, size in enumerate(self.hidden_sizes):
                x = activation(nn.Dense(size, kernel_init=orthogonal(2.0), name=f"{name}_{i}")(x))
            return x

        logits_or_mean = nn.Dense(
            self.action_dim,
            kernel_init=orthogonal(0.01),
            bias_init=constant(0.0),
            name="actor_head",
        )(head(x, "actor"))
        if self.discrete:
            pi = distrax.Categorical(logits=logits_or_mean)
        else:
            log_std = self.param("log_std", constant(0.0), (self.action_dim,))
            pi = distrax.MultivariateNormalDiag(logits_or_mean, jnp.exp(log_std))
        value = nn.Dense(
            1, kernel_init=orthogonal(1.0), bias_init=constant(0.0), name="critic_head"
        )(head(x, "critic"))
        return hiddens, pi, jnp.squeeze(value, -1)


def _recurrent_network(config: Config, action_dim: int, discrete: bool) -> ActorCriticRNN:
    return ActorCriticRNN(
        action_dim, discrete, config.cell, config.cell_size, config.embed_size,
        tuple(config.hidden_sizes), config.activation,
    )  # fmt: skip


def _network(config: Config, action_space) -> ActorCriticRNN:
    discrete = hasattr(action_space, "n")
    action_dim = action_space.n if discrete else int(np.prod(action_space.shape))
    return _recurrent_network(config, action_dim, discrete)


def initial_hidden(config: Config, batch_shape: tuple = ()):
    """The cell's state at an episode's start, zeros: (*batch_shape, cell_size) per leaf (one
    leaf for a GRU, the pair (c, h) for an LSTM)."""
    zeros = jnp.zeros((*batch_shape, config.cell_size))
    return (zeros, zeros) if config.cell == "lstm" else zeros


def _optimizer(config: Config, lr) -> optax.GradientTransformation:
    # Hyperparameters enter as (possibly traced) values, so a sweep over them compiles once.
    return optax.chain(optax.clip_by_global_norm(config.max_grad_norm), optax.adam(lr, eps=1e-5))


# --- Written-out threefry ---
# jax's threefry2x32 keys drawn through the hash written out in jnp: the same numbers
# (tests/test_inlined_copies.py). On a CPU jax runs its hash as a loop of five rounds of small
# kernels, about 0.4 us a draw, and a rollout's env step draws twice (its auto-reset splits a
# key and draws a start state); written out, XLA fuses each draw into one kernel.


def _threefry2x32(k1, k2, x1, x2):
    """Threefry-2x32's 20 rounds, as jax's ``threefry2x32`` computes them."""
    ks = (k1, k2, k1 ^ k2 ^ np.uint32(0x1BD11BDA))
    x1, x2 = x1 + ks[0], x2 + ks[1]
    for i in range(5):
        for r in ((13, 15, 26, 6), (17, 29, 16, 24))[i % 2]:
            x1 = x1 + x2
            x2 = x1 ^ ((x2 << np.uint32(r)) | (x2 >> np.uint32(32 - r)))
        x1, x2 = x1 + ks[(i + 1) % 3], x2 + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x1, x2


def _threefry_keys(key_data):
    return jax.random.wrap_key_data(key_data, impl="threefry2x32")


def _written_out(shape) -> bool:
    """Whether the written-out hash draws ``shape``; jax's own draws past 2**32 counts and in
    its older, non-partitionable layout."""
    return jax.config.jax_threefry_partitionable and math.prod(shape) < 2**32


def _hashed_counts(key_data, shape):
    """The hash of the counts 0, 1, ... in ``shape``: each a 64-bit count, its high half (0
    here) as x1 and its low half as x2, as jax's partitionable threefry lays them out."""
    low = jnp.arange(math.prod(shape), dtype=jnp.uint32).reshape(shape)
    return _threefry2x32(key_data[0], key_data[1], jnp.zeros_like(low), low)


def _split(key_data, shape):
    if not _written_out(shape):
        return jax.random.key_data(jax.random.split(_threefry_keys(key_data), shape))
    return jnp.stack(_hashed_counts(key_data, shape), axis=-1)


def _random_bits(key_data, bit_width, shape):
    if bit_width == 64 or not _written_out(shape):
        return jax.random.bits(_threefry_keys(key_data), shape, f"uint{bit_width}")
    x1, x2 = _hashed_counts(key_data, shape)
    return (x1 ^ x2).astype(f"uint{bit_width}")


WRITTEN_OUT_THREEFRY = jax.extend.random.define_prng_impl(
    key_shape=(2,),
    seed=lambda seed: jax.random.key_data(jax.random.key(seed, impl="threefry2x32")),
    split=_split,
    random_bits=_random_bits,
    fold_in=lambda data, x: jax.random.key_data(jax.random.fold_in(_threefry_keys(data), x)),
    name="threefry2x32_written_out",
    tag="fwo",
)


def written_out_keys(keys):
    """``keys`` (jax's threefry keys, raw or typed) as WRITTEN_OUT_THREEFRY keys, and the
    function that turns such keys back into the kind given; keys of another PRNG unchanged."""
    typed = jnp.issubdtype(keys.dtype, jax.dtypes.prng_key)
    impl = str(jax.random.key_impl(keys)) if typed else jax.config.jax_default_prng_impl
    if impl != "threefry2x32":
        return keys, lambda same: same
    data = jax.random.key_data(keys) if typed else keys
    back = (lambda k: _threefry_keys(jax.random.key_data(k))) if typed else jax.random.key_data
    return jax.random.wrap_key_data(data, impl=WRITTEN_OUT_THREEFRY), back


def holds_keys(tree) -> bool:
    """Whether a pytree holds PRNG keys (typed, or raw: uint32 pairs): an env state that does
    may keep a key its step derives, so the step must get keys of the kind it holds."""
    return any(
        jnp.issubdtype(x.dtype, jax.dtypes.prng_key)
        or (x.dtype == jnp.uint32 and x.shape[-1:] == (2,))
        for x in jax.tree.leaves(tree)
    )


# --- Pure functions ---


def random_permutation(key: jax.Array, n: int) -> jax.Array:
    """``jax.random.permutation(key, n)``, the same numbers (tests/test_inlined_copies.py), in
    about half the time on a CPU. jax orders the indices by random 32-bit keys, ties by index,
    with a sort of (key, index) pairs, which XLA's CPU backend runs through a compiled
    comparator; here each key is replaced by its rank among the keys (a search of the keys
    sorted alone) and packed with its index into one 32-bit number, sorted alone too."""
    if n > 2**16:  # rank and index no longer fit 32 bits together
        return jax.random.permutation(key, n)
    rounds = int(np.ceil(3 * np.log(max(1, n)) / np.log(np.iinfo(np.uint32).max)))  # as jax's
    indices = jnp.arange(n, dtype=jnp.uint32)
    order = indices
    for _ in range(rounds):
        key, subkey = jax.random.split(key)
        bits = jax.random.bits(subkey, (n,), jnp.uint32)
        rank = jnp.searchsorted(jnp.sort(bits), bits).astype(jnp.uint32)
        order = order[jnp.sort(rank * n + indices) % n]
    return order.astype(jnp.int32)


def gae(rewards, values, next_values, terminated, truncated, gamma, lam):
    """Generalized advantage estimation, time-major.

    Bootstraps through truncation (time limits) but not through termination. ``next_values``
    are the values of the states reached, before any auto-reset. Returns (advantages, targets).
    """
    terminated = terminated.astype(jnp.float32)
    done = jnp.maximum(terminated, truncated.astype(jnp.float32))
    deltas = rewards + gamma * (1.0 - terminated) * next_values - values
    decays = gamma * lam * (1.0 - done)

    def backward(next_advantage, delta_and_decay):
        delta, decay = delta_and_decay
        advantage = delta + decay * next_advantage
        return advantage, advantage

    _, advantages = jax.lax.scan(
        backward, jnp.zeros_like(deltas[0]), (deltas, decays), reverse=True, unroll=16
    )
    return advantages, advantages + values


def egae(rewards, values, next_values, terminated, truncated, gamma, lam):
    """T-PPO's extended GAE on a window of episodes that need not have finished, time-major.

    The advantages and targets are GAE's, which bootstraps an unfinished episode with the value
    at the window's end. Returns (advantages, targets, complete): complete marks the steps whose
    episode ends inside the window, the only ones whose targets do not depend on that bootstrap.
    """
    advantages, targets = gae(rewards, values, next_values, terminated, truncated, gamma, lam)
    done = jnp.logical_or(terminated, truncated)
    complete = jax.lax.associative_scan(jnp.logical_or, done, reverse=True, axis=0)
    return advantages, targets, complete


def ppo_loss(log_prob, old_log_prob, advantages, value, old_value, targets, entropy, config):
    """The clipped PPO objective on one minibatch; returns (loss, parts)."""
    advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    log_ratio = log_prob - old_log_prob
    ratio = jnp.exp(log_ratio)
    clipped_ratio = jnp.clip(ratio, 1.0 - config.clip_eps, 1.0 + config.clip_eps)
    policy_loss = -jnp.minimum(ratio * advantages, clipped_ratio * advantages).mean()
    value_clipped = old_value + jnp.clip(value - old_value, -config.clip_eps, config.clip_eps)
    value_loss = (
        0.5 * jnp.maximum(jnp.square(value - targets), jnp.square(value_clipped - targets)).mean()
    )
    entropy = entropy.mean()
    loss = policy_loss + config.vf_coef * value_loss - config.ent_coef * entropy
    parts = {
        "policy_loss": policy_loss,
        "value_loss": value_loss,
        "entropy": entropy,
        "approx_kl": ((ratio - 1.0) - log_ratio).mean(),
        "clip_fraction": (jnp.abs(ratio - 1.0) > config.clip_eps).mean(),
    }
    return loss, parts


def weighted_value_loss(value, old_value, targets, weights, clip_eps):
    """PPO's clipped value loss with its samples weighed (weights summing to 1, as EGAE's mask
    and GGD's BIV make them) instead of averaged."""
    value_clipped = old_value + jnp.clip(value - old_value, -clip_eps, clip_eps)
    error = jnp.maximum(jnp.square(value - targets), jnp.square(value_clipped - targets))
    return 0.5 * (weights * error).sum()


def rollout(config: Config, env, env_params, state: TrainState) -> tuple[TrainState, Transition]:
    """num_steps steps of the num_envs envs under the current policy, time-major. Returns the
    state with the envs, observations, first flags, hidden state and key moved on, and the
    transitions (each with the hidden state the step left, for V(s'_t))."""
    network = _network(config, env.action_space(env_params))
    step = jax.vmap(env.step, in_axes=(0, 0, 0, None), axis_name=ENV_AXIS)

    # Unlike ppo.py's rollout, this one draws its keys and noise step by step: at this file's
    # default (a 128-wide GRU) drawing them before the loop measured ~3% slower on a CPU.
    def env_step(carry, _):
        env_state, obs, first, hidden, rng = carry
        rng, action_key, step_key = jax.random.split(rng, 3)
        # A sequence of length 1: the network zeroes hidden where first, then reads obs.
        hiddens, pi, value = network.apply(state.params.net, hidden, obs[None], first[None])
        action = pi.sample(seed=action_key)
        log_prob, action, value = pi.log_prob(action)[0], action[0], value[0]
        hidden = jax.tree.map(lambda h: h[0], hiddens)
        step_keys = jax.random.split(step_key, config.num_envs)
        if holds_keys(state.env_state):  # its step may keep a key: hand it the kind it holds
            step_keys = as_given(step_keys)
        next_obs, env_state, reward, terminated, truncated, info = step(
            step_keys, env_state, action, env_params
        )
        transition = Transition(
            obs, first, action, reward, terminated, truncated, value, log_prob,
            info["final_observation"], hidden,
            {k: info[k] for k in EPISODE_STATISTICS if k in info},
        )  # fmt: skip
        next_first = jnp.logical_or(terminated, truncated)
        return (env_state, next_obs, next_first, hidden, rng), transition

    rng, as_given = written_out_keys(state.rng)  # the same numbers, drawn faster
    carry = (state.env_state, state.obs, state.first, state.hidden, rng)
    (env_state, obs, first, hidden, rng), traj = jax.lax.scan(
        env_step, carry, None, config.num_steps
    )
    rng = as_given(rng)
    state = state.replace(env_state=env_state, obs=obs, first=first, hidden=hidden, rng=rng)
    return state, traj


def bootstrap_values(network: ActorCriticRNN, net, traj: Transition) -> jax.Array:
    """V(s'_t), (num_steps, num_envs): the cell reads o'_t, the next observation before any
    reset, from the state it left at step t, with no reset. All steps at once, as a batch of
    sequences of length 1; where the episode goes on, this is V(s_{t+1}) of the rollout."""
    num_steps, num_envs = traj.reward.shape
    batch = num_steps * num_envs
    hidden = jax.tree.map(lambda h: h.reshape(batch, *h.shape[2:]), traj.hidden)
    next_obs = traj.next_obs.reshape(1, batch, *traj.next_obs.shape[2:])
    _, _, values = network.apply(net, hidden, next_obs, jnp.zeros((1, batch), bool))
    return values.reshape(num_steps, num_envs)


# --- The contract ---


def check(config: Config) -> None:
    """The rules across Config fields; the runner calls it on each concrete config."""
    if config.cell not in CELLS:
        raise ValueError(f"cell={config.cell!r} is not a cell type; choose one of {CELLS}")
    if config.num_envs % config.num_minibatches:
        raise ValueError(
            f"num_minibatches={config.num_minibatches} must divide num_envs={config.num_envs}: "
            "a minibatch is a group of whole env sequences"
        )


def init(config: Config, env, env_params, rng: jax.Array) -> TrainState:
    obs_shape = env.observation_space(env_params).shape
    if len(obs_shape) != 1:
        raise ValueError(
            f"ppo_rnn's embedding takes vector observations, got shape {obs_shape}; flatten them "
            "(rljax.envs.make(name, flatten_obs=True), or gymnax's FlattenObservationWrapper)"
        )
    check(config)
    rng, net_key, env_key = jax.random.split(rng, 3)
    network = _network(config, env.action_space(env_params))
    hidden = initial_hidden(config, (config.num_envs,))
    first = jnp.ones(config.num_envs, bool)
    net = network.init(net_key, hidden, jnp.zeros((1, config.num_envs, *obs_shape)), first[None])
    params = Params(net, int(network.action_dim), network.discrete)
    opt_state = _optimizer(config, config.lr).init(params.net)
    reset = jax.vmap(env.reset, in_axes=(0, None), axis_name=ENV_AXIS)
    obs, env_state = reset(jax.random.split(env_key, config.num_envs), env_params)
    return TrainState(
        params, opt_state, env_state, obs, first, hidden, rng, jnp.zeros((), jnp.int32)
    )


def update(config: Config, env, env_params, state: TrainState) -> tuple[TrainState, dict]:
    """One iteration: a rollout of num_steps x num_envs, then update_epochs of minibatch SGD
    over whole env sequences."""
    network = _network(config, env.action_space(env_params))

    # --- Rollout ---
    rolled, traj = rollout(config, env, env_params, state)

    # --- Advantages ---
    next_values = bootstrap_values(network, state.params.net, traj)
    terminated = traj.terminated
    if config.truncation_as_termination:
        terminated = jnp.logical_or(terminated, traj.truncated)
    if config.egae:
        advantages, targets, complete = egae(
            traj.reward, traj.value, next_values, terminated, traj.truncated,
            config.gamma, config.gae_lambda,
        )  # fmt: skip
    else:
        advantages, targets = gae(
            traj.reward, traj.value, next_values, terminated, traj.truncated,
            config.gamma, config.gae_lambda,
        )  # fmt: skip
        complete = jnp.ones(targets.shape, bool)

    # --- Minibatch epochs ---
    lr = config.lr
    if config.anneal_lr:
        lr = config.lr * (1.0 - state.update_step / config.num_updates)
    optimizer = _optimizer(config, lr)

    # The optimizer steps the tree of weights, not one flat vector as ppo.py's: with this file's
    # ~130k weights, flattening measured ~8% slower on a CPU.
    def loss_fn(params, batch):
        hidden, (obs, first, action, old_log_prob, old_value, advantages, targets, complete) = batch
        _, pi, value = network.apply(params, hidden, obs, first)
        if not config.egae:
            return ppo_loss(
                pi.log_prob(action), old_log_prob, advantages, value, old_value, targets,
                pi.entropy(), config,
            )  # fmt: skip
        # EGAE: the policy and entropy terms as ever; V trained on the completed steps alone.
        loss, parts = ppo_loss(
            pi.log_prob(action), old_log_prob, advantages, value, old_value, targets,
            pi.entropy(), config.replace(vf_coef=0.0),
        )  # fmt: skip
        weights = complete / jnp.maximum(complete.sum(), 1)
        parts["value_loss"] = weighted_value_loss(
            value, old_value, targets, weights, config.clip_eps
        )
        loss = loss + config.vf_coef * parts["value_loss"]
        return loss, {**parts, "value_fraction": complete.mean()}

    def minibatch_step(carry, batch):
        params, opt_state = carry
        (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return (params, opt_state), {"loss": loss, "grad_norm": optax.tree.norm(grads), **parts}

    def epoch(carry, _):
        params, opt_state, rng = carry
        rng, perm_key = jax.random.split(rng)
        permutation = random_permutation(perm_key, config.num_envs)
        sequences = (
            traj.obs, traj.first, traj.action, traj.log_prob, traj.value, advantages, targets,
            complete,
        )  # fmt: skip
        # (num_envs, ...) -> (num_minibatches, envs per minibatch, ...), and time-major
        # (num_steps, num_envs, ...) -> (num_minibatches, num_steps, envs per minibatch, ...).
        hidden = jax.tree.map(
            lambda x: x[permutation].reshape(config.num_minibatches, -1, *x.shape[1:]),
            state.hidden,
        )
        sequences = jax.tree.map(
            lambda x: jnp.swapaxes(
                x[:, permutation].reshape(x.shape[0], config.num_minibatches, -1, *x.shape[2:]),
                0,
                1,
            ),
            sequences,
        )
        (params, opt_state), losses = jax.lax.scan(
            minibatch_step, (params, opt_state), (hidden, sequences)
        )
        return (params, opt_state, rng), losses

    rng, as_given = written_out_keys(rolled.rng)  # the shuffles' keys drawn faster too
    (params, opt_state, rng), losses = jax.lax.scan(
        epoch, (state.params.net, state.opt_state, rng), None, config.update_epochs
    )

    params = state.params.replace(net=params)
    state = rolled.replace(
        params=params, opt_state=opt_state, rng=as_given(rng), update_step=state.update_step + 1
    )
    metrics = {**jax.tree.map(jnp.mean, losses), **_episode_metrics(traj.info), "lr": lr}
    return state, metrics


def train(config: Config, env, env_params, rng: jax.Array, num_updates: int | None = None):
    """init, then num_updates (default: total_timesteps // steps_per_update) updates."""
    num_updates = config.num_updates if num_updates is None else num_updates
    state = init(config, env, env_params, rng)
    return jax.lax.scan(lambda s, _: update(config, env, env_params, s), state, None, num_updates)


def act(
    config: Config, params: Params, obs: jax.Array, rng: jax.Array, deterministic: bool = False
):
    """The action at an episode's first observation: the cell reads obs from zeros. To act
    with memory, carry the hidden state with act_step."""
    batch_shape = obs.shape[:-1]
    first = jnp.ones(batch_shape, bool)
    hidden = initial_hidden(config, batch_shape)
    return act_step(config, params, hidden, obs, first, rng, deterministic)[1]


def act_step(
    config: Config,
    params: Params,
    hidden: Any,
    obs: jax.Array,
    first: jax.Array,
    rng: jax.Array,
    deterministic: bool = False,
):
    """One step of the recurrent policy: (the hidden state after obs, the action). ``hidden``
    is the state the previous step left (initial_hidden at the start), ``first`` whether obs
    starts an episode (the previous step was done): then the cell reads obs from zeros."""
    network = _recurrent_network(config, params.action_dim, params.discrete)
    hiddens, pi, _ = network.apply(params.net, hidden, obs[None], first[None])
    action = pi.mode() if deterministic else pi.sample(seed=rng)
    return jax.tree.map(lambda h: h[0], hiddens), action[0]


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

    # MemoryChain: the context, seen at the start, decides the reward at the end; a
    # feed-forward policy can only guess it (mean return 0), a recurrent one can reach 1.
    env_name = sys.argv[1] if len(sys.argv) > 1 else "MemoryChain-bsuite"
    env, env_params = gymnax.make(env_name)
    env = LogWrapper(env)
    # configs/ppo_rnn/memory_chain.yaml; Config() is PureJaxRL's (a GRU of 128, 5e5 steps).
    config = Config(
        num_envs=16, num_steps=24, total_timesteps=20_000, cell_size=32, embed_size=32,
        hidden_sizes=(32,), lr=1e-3,
    )  # fmt: skip
    start = time.time()
    _, metrics = jax.jit(lambda key: train(config, env, env_params, key))(jax.random.PRNGKey(30))
    returns = np.asarray(metrics["episode_return"])
    print(f"PPO-RNN on {env_name}: {config.total_timesteps} steps in {time.time() - start:.1f}s")
    for i in np.linspace(0, len(returns) - 1, 10).astype(int):
        step = (i + 1) * config.steps_per_update
        print(f"  step {step:>8d}  return {np.nanmean(returns[max(0, i - 9) : i + 1]):8.1f}")
