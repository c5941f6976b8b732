"""PPO with a probabilistic mixture-of-experts policy (PMOE-PPO), for continuous actions.

Ren, Li, Ding, Pan, Dong, "Probabilistic Mixture-of-Experts for Efficient Deep Reinforcement
Learning", arXiv 2104.09122 (2021), as the authors' code implements it
(github.com/quantumiracle/Popular-RL-Algorithms, pmoe_ppo.py); PPO as in ``ppo.py``.

    pi(a|s) = sum_k w_k(s) N(a; mu_k(s), diag sigma_k^2),   w(s) = softmax(Linear(s))
    log pi  = logsumexp_k(log w_k(s) + sum_d log N(a_d; mu_k,d(s), sigma_k,d))
    rho     = pi(a|s) / pi_old(a|s),  A by GAE, normalized per minibatch,  R = A + V_old
    L_pi    = -mean(min(rho A, clip(rho, 1 - eps, 1 + eps) A))
    L_V     = 1/2 mean(max((V - R)^2, (V_old + clip(V - V_old, -eps, eps) - R)^2))
    L_Q     = mean((Q(s, a) - R)^2)                  an auxiliary critic of the actions taken
    L_w     = mean((w(s) - onehot(argmax_k Q(s, a_k)))^2),   a_k ~ N(mu_k(s), sigma_k^2) afresh
    L       = L_pi + vf_coef L_V + L_Q + L_w

An action is a_k with k ~ Cat(w(s)); there is no tanh (the env's action clipping bounds it),
sigma_k is a state-independent parameter, and there is no entropy bonus, as in the authors'
code. The router learns from both the clipped surrogate, through the mixture likelihood, and
L_w; the auxiliary Q learns from L_Q alone. The authors compute log pi as the log of a weighted
sum of exponentials, which underflows to -inf for many action dimensions; here it is a
logsumexp. ``act(deterministic=True)`` returns the mean of the router's most probable expert.
GAE bootstraps through truncation (time limits) and not through termination.
"""

import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from flax.linen.initializers import constant, orthogonal
from jax.flatten_util import ravel_pytree

LEARNS_FROM = "env"  # what it learns from, as declared in rljax/agents/__init__.py
GOAL_CONDITIONED = False
WRAPS_ENV = False
RECURRENT = False
PAPER = (
    'Ren et al., "Probabilistic Mixture-of-Experts for Efficient Deep Reinforcement Learning", '
    "arXiv 2021"
)

# Agents vmap env.reset and env.step over this axis; wrappers may pool statistics over it.
ENV_AXIS = "env"
# The info entries a rollout keeps: the episode statistics that _episode_metrics reads.
EPISODE_STATISTICS = ("returned_episode", "returned_episode_returns", "returned_episode_lengths")


def _field(default, *, static=False, bounds=None, choices=None, doc):
    """A config field. Static fields are shapes and switches (changing one recompiles); the
    rest are traced, so a sweep can vmap over them. bounds/choices let a runner validate; doc,
    the field's meaning in one line, is required so that no field goes unexplained."""
    metadata = {"bounds": bounds, "choices": choices, "doc": doc}
    return struct.field(pytree_node=not static, default=default, metadata=metadata)


@struct.dataclass
class Config:
    num_components: int = _field(
        5, static=True, bounds="[1, inf)", doc="experts K in the policy's Gaussian mixture"
    )
    num_envs: int = _field(
        1, static=True, bounds="[1, inf)", doc="environments stepped in parallel"
    )
    num_steps: int = _field(
        2048, static=True, bounds="[1, inf)", doc="env steps per environment per iteration"
    )
    num_minibatches: int = _field(
        32, static=True, bounds="[1, inf)", doc="minibatches per epoch of the rollout"
    )
    update_epochs: int = _field(
        10, static=True, bounds="[1, inf)", doc="passes of minibatch SGD over each rollout"
    )
    total_timesteps: int = _field(
        1_000_000, static=True, bounds="[1, inf)", doc="env steps summed over envs (the budget)"
    )
    hidden_sizes: tuple = _field(
        (64, 64), static=True, doc="hidden-layer widths of the actor and of the critic"
    )
    activation: str = _field(
        "tanh", static=True, choices=("tanh", "relu"), doc="activation of the hidden layers"
    )
    q_hidden_sizes: tuple = _field(
        (64, 64, 64), static=True, doc="hidden-layer widths of the router's auxiliary ReLU critic"
    )
    anneal_lr: bool = _field(
        False, static=True, doc="decay the learning rate linearly to 0 over the run"
    )
    lr: float = _field(
        3e-4, bounds="(0, inf)", doc="Adam learning rate (the initial one when annealed)"
    )
    gamma: float = _field(0.99, bounds="[0, 1]", doc="discount factor gamma")
    gae_lambda: float = _field(0.95, bounds="[0, 1]", doc="GAE lambda")
    clip_eps: float = _field(
        0.2, bounds="(0, inf)", doc="clip range eps of the ratio and of the value"
    )
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
    """The weights, and the fact of the action space that act() needs without an env."""

    net: Any  # the MixtureActorCritic's weights
    q_net: Any  # the auxiliary critic's weights
    action_dim: int = struct.field(pytree_node=False)  # the action box's dimension


@struct.dataclass
class TrainState:
    params: Params
    opt_state: Any
    env_state: Any
    obs: jax.Array  # (num_envs, obs_dim)
    rng: jax.Array
    update_step: jax.Array  # updates done so far; drives LR annealing


class Transition(NamedTuple):
    obs: jax.Array
    action: jax.Array
    reward: jax.Array
    terminated: jax.Array
    truncated: jax.Array
    value: jax.Array
    log_prob: jax.Array
    next_obs: jax.Array  # the observation after the action, before any auto-reset
    info: dict  # the episode statistics among the env's info


# --- Networks ---


def _uniform(scale):
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(
        key, shape, dtype, -scale, scale
    )


class MixtureActorCritic(nn.Module):
    """Separate actor and critic MLPs, orthogonal init as in PureJaxRL. The actor gives each
    expert's mean, (..., K, dim(A)), beside state-independent log standard deviations; the
    router, a linear map of the observation itself, gives log w(s), (..., K)."""

    action_dim: int
    num_components: int
    hidden_sizes: tuple
    activation: str

    @nn.compact
    def __call__(self, obs):
        activation = {"tanh": nn.tanh, "relu": nn.relu}[self.activation]

        def torso(x, name):
            for i, size in enumerate(self.hidden_sizes):
                dense = nn.Dense(size, kernel_init=orthogonal(np.sqrt(2)), name=f"{name}_{i}")
                x = activation(dense(x))
            return x

        shape = (*obs.shape[:-1], self.num_components, self.action_dim)
        mean = nn.Dense(
            self.num_components * self.action_dim,
            kernel_init=orthogonal(0.01),
            bias_init=constant(0.0),
            name="actor_head",
        )(torso(obs, "actor")).reshape(shape)
        log_std = self.param("log_std", constant(0.0), shape[-2:])
        log_weights = nn.log_softmax(nn.Dense(self.num_components, name="router")(obs))
        value = nn.Dense(
            1, kernel_init=orthogonal(1.0), bias_init=constant(0.0), name="critic_head"
        )(torso(obs, "critic"))
        return mean, jnp.broadcast_to(log_std, shape), log_weights, jnp.squeeze(value, -1)


class AuxiliaryCritic(nn.Module):
    """Q(s, a), trained on the returns of the actions taken, only to tell the router which
    expert's action scores best; the last layer starts at U(+-3e-3) as in the authors' code."""

    hidden_sizes: tuple

    @nn.compact
    def __call__(self, obs, action):
        x = jnp.concatenate([obs, action], -1)
        for size in self.hidden_sizes:
            x = nn.relu(nn.Dense(size)(x))
        out = nn.Dense(1, kernel_init=_uniform(3e-3), bias_init=_uniform(3e-3))(x)
        return jnp.squeeze(out, -1)


def _networks(config: Config, action_dim: int) -> tuple[MixtureActorCritic, AuxiliaryCritic]:
    hidden = tuple(config.hidden_sizes)
    network = MixtureActorCritic(action_dim, config.num_components, hidden, config.activation)
    return network, AuxiliaryCritic(tuple(config.q_hidden_sizes))


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


def _pick(x, index):
    """The expert that ``index`` (...) names at each leading position: x (..., K) -> (...), or
    x (..., K, D) -> (..., D)."""
    if x.ndim == index.ndim + 1:
        return jnp.take_along_axis(x, index[..., None], -1)[..., 0]
    return jnp.take_along_axis(x, index[..., None, None], -2)[..., 0, :]


def mixture_log_prob(mean, log_std, log_weights, action):
    """log sum_k w_k N(a; mu_k, diag sigma_k^2) as a logsumexp over experts, finite where the
    sum of exponentials underflows. mean, log_std (..., K, D); log_weights (..., K); action
    (..., D)."""
    z = (action[..., None, :] - mean) * jnp.exp(-log_std)
    expert_log_probs = (-0.5 * z**2 - log_std - 0.5 * jnp.log(2 * jnp.pi)).sum(-1)
    return jax.nn.logsumexp(log_weights + expert_log_probs, -1)


def sample_mixture(mean, log_std, log_weights, rng):
    """One expert k ~ Cat(w) per state and a Gaussian action from it."""
    expert_key, noise_key = jax.random.split(rng)
    k = jax.random.categorical(expert_key, log_weights)
    noise = jax.random.normal(noise_key, mean.shape[:-2] + mean.shape[-1:])
    return _pick(mean, k) + jnp.exp(_pick(log_std, k)) * noise


def router_loss(weights, q):
    """mean((w - onehot(argmax_k q))^2) over states and experts: the router regresses onto the
    expert whose action scores best. ``weights`` and ``q`` are (..., K); q gets no gradient."""
    winner = jnp.argmax(q, -1)
    target = jax.nn.one_hot(winner, q.shape[-1], dtype=weights.dtype)
    return jnp.square(weights - target).mean()


def pmoe_loss(
    log_prob, old_log_prob, advantages, value, old_value, targets, q, weights, q_experts, config
):
    """PMOE-PPO's objective on one minibatch: the clipped surrogate on mixture likelihoods, the
    clipped value loss, the auxiliary critic's q = Q(s, a) against the returns and the router
    against argmax_k q_experts (B, K); returns (loss, parts)."""
    advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    log_ratio = log_prob - old_log_prob
    ratio = jnp.exp(log_ratio)
    clipped_ratio = jnp.clip(ratio, 1.0 - config.clip_eps, 1.0 + config.clip_eps)
    policy_loss = -jnp.minimum(ratio * advantages, clipped_ratio * advantages).mean()
    value_clipped = old_value + jnp.clip(value - old_value, -config.clip_eps, config.clip_eps)
    value_loss = (
        0.5 * jnp.maximum(jnp.square(value - targets), jnp.square(value_clipped - targets)).mean()
    )
    q_loss = jnp.square(q - targets).mean()
    loss_w = router_loss(weights, q_experts)
    loss = policy_loss + config.vf_coef * value_loss + q_loss + loss_w
    parts = {
        "policy_loss": policy_loss,
        "value_loss": value_loss,
        "q_loss": q_loss,
        "router_loss": loss_w,
        "entropy": -log_prob.mean(),  # a sample estimate: the mixture has no closed form
        "approx_kl": ((ratio - 1.0) - log_ratio).mean(),
        "clip_fraction": (jnp.abs(ratio - 1.0) > config.clip_eps).mean(),
    }
    return loss, parts


# --- The contract ---


def check(config: Config) -> None:
    """The rules across Config fields; the runner calls it on each concrete config."""
    if config.num_components < 1:
        raise ValueError(
            f"num_components={config.num_components} is out of range: the mixture needs at "
            "least 1 expert"
        )
    if config.steps_per_update % config.num_minibatches:
        raise ValueError(
            f"num_minibatches={config.num_minibatches} must divide "
            f"num_envs * num_steps = {config.steps_per_update}"
        )


def init(config: Config, env, env_params, rng: jax.Array) -> TrainState:
    obs_shape = env.observation_space(env_params).shape
    space = env.action_space(env_params)
    if len(obs_shape) != 1:
        raise ValueError(
            f"PMOE-PPO's MLPs take vector observations, got shape {obs_shape}; flatten them "
            "(rljax.envs.make(name, flatten_obs=True), or gymnax's FlattenObservationWrapper)"
        )
    if hasattr(space, "n") or len(space.shape) != 1:
        raise ValueError(
            f"PMOE-PPO mixes Gaussians over a continuous action vector, got a "
            f"{type(space).__name__} action space"
        )
    check(config)
    rng, net_key, q_key, env_key = jax.random.split(rng, 4)
    action_dim = int(space.shape[0])
    network, q_network = _networks(config, action_dim)
    dummy_obs = jnp.zeros(obs_shape)
    params = Params(
        net=network.init(net_key, dummy_obs),
        q_net=q_network.init(q_key, dummy_obs, jnp.zeros(action_dim)),
        action_dim=action_dim,
    )
    opt_state = _optimizer(config, config.lr).init(ravel_pytree((params.net, params.q_net))[0])
    reset = jax.vmap(env.reset, in_axes=(0, None), axis_name=ENV_AXIS)
    obs, env_state = reset(jax.random.split(env_key, config.num_envs), env_params)
    return TrainState(params, opt_state, env_state, obs, rng, jnp.zeros((), jnp.int32))


def update(config: Config, env, env_params, state: TrainState) -> tuple[TrainState, dict]:
    """One iteration: a rollout of num_steps x num_envs, then update_epochs of minibatch SGD."""
    network, q_network = _networks(config, state.params.action_dim)
    step = jax.vmap(env.step, in_axes=(0, 0, 0, None), axis_name=ENV_AXIS)

    # --- Rollout ---
    # Its keys are split before its loop, in one batched call each: the keys of splitting step
    # by step, without a threefry call per step for them (on a CPU, a rolled loop of small
    # kernels each). The mixture still draws its expert and noise inside the loop.
    def split(rng, _):
        rng, action_key, step_key = jax.random.split(rng, 3)
        return rng, (action_key, step_key)

    rng, as_given = written_out_keys(state.rng)  # the same numbers, drawn faster
    rng, (action_keys, step_keys) = jax.lax.scan(split, rng, None, config.num_steps)
    env_keys = jax.vmap(lambda key: jax.random.split(key, config.num_envs))(step_keys)
    if holds_keys(state.env_state):  # its step may keep a key: hand it the kind it holds
        env_keys = as_given(env_keys)

    def env_step(carry, action_key_and_keys):
        env_state, obs = carry
        action_key, keys = action_key_and_keys
        mean, log_std, log_weights, value = network.apply(state.params.net, obs)
        action = sample_mixture(mean, log_std, log_weights, action_key)
        next_obs, env_state, reward, terminated, truncated, info = step(
            keys, env_state, action, env_params
        )
        log_prob = mixture_log_prob(mean, log_std, log_weights, action)
        transition = Transition(
            obs, action, reward, terminated, truncated, value, log_prob,
            info["final_observation"], {k: info[k] for k in EPISODE_STATISTICS if k in info},
        )  # fmt: skip
        return (env_state, next_obs), transition

    carry = (state.env_state, state.obs)
    (env_state, obs), traj = jax.lax.scan(env_step, carry, (action_keys, env_keys))

    # --- Advantages ---
    next_values = network.apply(state.params.net, traj.next_obs)[3]
    advantages, targets = gae(
        traj.reward, traj.value, next_values, traj.terminated, traj.truncated,
        config.gamma, config.gae_lambda,
    )  # fmt: skip

    # --- Minibatch epochs ---
    lr = config.lr
    if config.anneal_lr:
        lr = config.lr * (1.0 - state.update_step / config.num_updates)
    optimizer = _optimizer(config, lr)

    # The optimizer steps one flat vector of both networks' weights: Adam's and the clip's
    # arithmetic as on the tree, in a few fused kernels instead of a few per weight array.
    flat_trainable, unravel = ravel_pytree((state.params.net, state.params.q_net))

    def loss_fn(flat_trainable, batch, rng):
        net, q_net = unravel(flat_trainable)
        obs, action, old_log_prob, old_value, advantages, targets = batch
        mean, log_std, log_weights, value = network.apply(net, obs)
        # Every expert proposes a fresh action; the auxiliary critic names the best for L_w.
        noise = jax.random.normal(rng, mean.shape)
        proposals = jax.lax.stop_gradient(mean + jnp.exp(log_std) * noise)  # (B, K, D)
        obs_k = jnp.broadcast_to(obs[..., None, :], (*proposals.shape[:-1], obs.shape[-1]))
        return pmoe_loss(
            mixture_log_prob(mean, log_std, log_weights, action), old_log_prob, advantages,
            value, old_value, targets, q_network.apply(q_net, obs, action),
            jnp.exp(log_weights), q_network.apply(q_net, obs_k, proposals), config,
        )  # fmt: skip

    def minibatch_step(carry, batch_and_key):
        trainable, opt_state = carry
        batch, key = batch_and_key
        (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable, batch, key)
        updates, opt_state = optimizer.update(grads, opt_state, trainable)
        trainable = optax.apply_updates(trainable, updates)
        return (trainable, opt_state), {"loss": loss, "grad_norm": optax.tree.norm(grads), **parts}

    def epoch(carry, _):
        trainable, opt_state, rng = carry
        rng, perm_key, loss_key = jax.random.split(rng, 3)
        batch = (traj.obs, traj.action, traj.log_prob, traj.value, advantages, targets)
        batch = jax.tree.map(lambda x: x.reshape(config.steps_per_update, *x.shape[2:]), batch)
        permutation = random_permutation(perm_key, config.steps_per_update)
        minibatches = jax.tree.map(
            lambda x: x[permutation].reshape(config.num_minibatches, -1, *x.shape[1:]), batch
        )
        keys = jax.random.split(loss_key, config.num_minibatches)
        (trainable, opt_state), losses = jax.lax.scan(
            minibatch_step, (trainable, opt_state), (minibatches, keys)
        )
        return (trainable, opt_state, rng), losses

    (flat_trainable, opt_state, rng), losses = jax.lax.scan(
        epoch, (flat_trainable, state.opt_state, rng), None, config.update_epochs
    )

    net, q_net = unravel(flat_trainable)
    params = state.params.replace(net=net, q_net=q_net)
    state = TrainState(params, opt_state, env_state, obs, as_given(rng), state.update_step + 1)
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
    """An expert k ~ Cat(w(s)) and a Gaussian action from it; deterministic: the mean of the
    router's most probable expert."""
    network, _ = _networks(config, params.action_dim)
    mean, log_std, log_weights, _ = network.apply(params.net, obs)
    if deterministic:
        return _pick(mean, jnp.argmax(log_weights, -1))
    return sample_mixture(mean, log_std, log_weights, rng)


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

    env_name = sys.argv[1] if len(sys.argv) > 1 else "Pendulum-v1"
    env, env_params = gymnax.make(env_name)
    env = LogWrapper(env)
    # Raw Pendulum rewards (the preset, configs/ppo_pmoe/pendulum.yaml, normalizes them instead).
    config = Config(
        num_envs=16, num_steps=128, total_timesteps=300_000, gamma=0.95, lr=1e-3, anneal_lr=True
    )
    start = time.time()
    _, metrics = jax.jit(lambda key: train(config, env, env_params, key))(jax.random.PRNGKey(0))
    returns = np.asarray(metrics["episode_return"])
    print(f"PMOE-PPO on {env_name}: {config.total_timesteps} steps in {time.time() - start:.1f}s")
    for i in np.linspace(0, len(returns) - 1, 10).astype(int):
        step = (i + 1) * config.steps_per_update
        print(f"  step {step:>8d}  return {np.nanmean(returns[max(0, i - 9) : i + 1]):8.1f}")
