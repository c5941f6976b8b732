"""On-policy MDPO: PPO's loop with a KL-regularized surrogate in place of clipping, for
discrete and continuous actions.

Tomar, Shani, Efroni, Ghavamzadeh, "Mirror Descent Policy Optimization", ICLR 2022
(arXiv 2005.09814); the loss as in the authors' mdpo_on/mdpo.py (method "multistep-SGD").
Everything but the policy objective is ppo.py.

    delta_t = r_t + gamma (1 - terminated_t) V(s'_t) - V(s_t)     s'_t: next state before reset
    A_t     = delta_t + gamma lambda (1 - done_t) A_{t+1}          done = terminated or truncated
    rho     = pi(a|s) / pi_old(a|s),  A normalized per minibatch
    t_k     = t_0 (1 - k / K)                                     k = 0, ..., K - 1 updates
    L_pi    = -mean(rho A) + mean(KL(pi(.|s) || pi_old(.|s))) / t_k
    L_V     = 1/2 mean(max((V - R)^2, (V_old + clip(V - V_old, -eps, eps) - R)^2)),  R = A + V_old
    L       = L_pi + vf_coef L_V - ent_coef mean(H[pi])

Each update approximately solves the mirror-descent step
argmax_pi E[A_old] - KL(pi || pi_old) / t_k with update_epochs x num_minibatches SGD steps
from pi_old (the authors take m full-batch steps: num_minibatches=1, update_epochs=m). The
tempering t_k (the paper's t_0 = 1) makes the KL weight grow from 1 to K over training. The KL
is closed form, new against old as in the authors' code. The clip range eps (vf_clip_eps) only
clips the value function, as in the authors' code.

GAE bootstraps through truncation (time limits) and not through termination;
``truncation_as_termination=True`` reproduces PureJaxRL, which cuts both.
"""

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
from jax.flatten_util import ravel_pytree

LEARNS_FROM = "env"  # what it learns from, as declared in rljax/agents/__init__.py
GOAL_CONDITIONED = False
WRAPS_ENV = False
RECURRENT = False
PAPER = 'Tomar et al., "Mirror Descent Policy Optimization", ICLR 2022'

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
    num_envs: int = _field(
        4, static=True, bounds="[1, inf)", doc="environments stepped in parallel"
    )
    num_steps: int = _field(
        128, static=True, bounds="[1, inf)", doc="env steps per environment per iteration"
    )
    num_minibatches: int = _field(
        4, static=True, bounds="[1, inf)", doc="minibatches per epoch of the rollout"
    )
    update_epochs: int = _field(
        4, static=True, bounds="[1, inf)", doc="passes of minibatch SGD over each rollout"
    )
    total_timesteps: int = _field(
        500_000, static=True, bounds="[1, inf)", doc="env steps summed over envs (the budget)"
    )
    hidden_sizes: tuple = _field(
        (64, 64), static=True, doc="hidden-layer widths of the actor and of the critic"
    )
    activation: str = _field(
        "tanh", static=True, choices=("tanh", "relu"), doc="activation of the hidden layers"
    )
    anneal_lr: bool = _field(
        True, static=True, doc="decay the learning rate linearly to 0 over the run"
    )
    truncation_as_termination: bool = _field(
        False, static=True, doc="treat time limits as terminations (as PureJaxRL)"
    )
    lr: float = _field(
        2.5e-4, bounds="(0, inf)", doc="Adam learning rate (the initial one when annealed)"
    )
    gamma: float = _field(0.99, bounds="[0, 1]", doc="discount factor gamma")
    gae_lambda: float = _field(0.95, bounds="[0, 1]", doc="GAE lambda")
    vf_clip_eps: float = _field(0.2, bounds="(0, inf)", doc="clip range eps of the value loss only")
    step_size: float = _field(
        1.0, bounds="(0, inf)", doc="first mirror-descent step size t_0, tempered to 0"
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

    net: Any  # the ActorCritic's weights
    action_dim: int = struct.field(pytree_node=False)  # number of actions if discrete
    discrete: bool = struct.field(pytree_node=False)


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


class ActorCritic(nn.Module):
    """Separate actor and critic MLPs; orthogonal init as in PureJaxRL."""

    action_dim: int
    discrete: bool
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

        logits_or_mean = nn.Dense(
            self.action_dim,
            kernel_init=orthogonal(0.01),
            bias_init=constant(0.0),
            name="actor_head",
        )(torso(obs, "actor"))
        if self.discrete:
            pi = distrax.Categorical(logits=logits_or_mean)
        else:
            log_std = self.param("log_std", constant(0.0), (self.action_dim,))
            pi = distrax.MultivariateNormalDiag(logits_or_mean, jnp.exp(log_std))
        value = nn.Dense(
            1, kernel_init=orthogonal(1.0), bias_init=constant(0.0), name="critic_head"
        )(torso(obs, "critic"))
        return pi, jnp.squeeze(value, -1)


def _network(config: Config, action_space) -> ActorCritic:
    discrete = hasattr(action_space, "n")
    action_dim = action_space.n if discrete else int(np.prod(action_space.shape))
    return ActorCritic(action_dim, discrete, tuple(config.hidden_sizes), config.activation)


def _optimizer(config: Config, lr) -> optax.GradientTransformation:
    # Hyperparameters enter as (possibly traced) values, so a sweep over them compiles once.
    return optax.chain(optax.clip_by_global_norm(config.max_grad_norm), optax.adam(lr, eps=1e-5))


def _action_noise(key: jax.Array, params: Params, num_envs: int) -> jax.Array:
    """The noise that ``pi.sample(seed=key)`` draws for a batch of num_envs actions: Gumbel
    noise on the logits if discrete, standard normal noise if continuous."""
    if params.discrete:
        return jax.random.gumbel(key, (num_envs, params.action_dim))
    return jax.random.normal(key, (num_envs, params.action_dim))


def _sample(pi, noise: jax.Array) -> jax.Array:
    """``pi.sample(seed=key)`` from ``_action_noise(key, ...)``, so that a rollout can draw all
    its noise before its loop: the same numbers (tests/test_ppo.py), though inside a loop XLA
    may fuse a continuous action's multiply-add differently (a difference of float rounding)."""
    if isinstance(pi, distrax.Categorical):
        return jnp.argmax(noise + pi.logits, axis=-1).astype(jnp.int32)
    return noise * pi.scale_diag + pi.loc


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


def tempered_step_size(config: Config, update_step):
    """t_k = t_0 (1 - k / K): decays linearly from t_0 to t_0 / K over the K updates."""
    return config.step_size * (1.0 - update_step / config.num_updates)


def mdpo_loss(
    log_prob, old_log_prob, advantages, value, old_value, targets, entropy, kl, t_k, config
):
    """The MDPO objective on one minibatch, with kl = KL(pi(.|s) || pi_old(.|s)) per sample;
    returns (loss, parts)."""
    advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    log_ratio = log_prob - old_log_prob
    ratio = jnp.exp(log_ratio)
    kl = kl.mean()
    policy_loss = -(ratio * advantages).mean() + kl / t_k
    value_clipped = old_value + jnp.clip(value - old_value, -config.vf_clip_eps, config.vf_clip_eps)
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
        "kl": kl,
    }
    return loss, parts


# --- The contract ---


def check(config: Config) -> None:
    """The rules across Config fields; the runner calls it on each concrete config."""
    if config.steps_per_update % config.num_minibatches:
        raise ValueError(
            f"num_minibatches={config.num_minibatches} must divide "
            f"num_envs * num_steps = {config.steps_per_update}"
        )


def init(config: Config, env, env_params, rng: jax.Array) -> TrainState:
    obs_shape = env.observation_space(env_params).shape
    if len(obs_shape) != 1:
        raise ValueError(
            f"MDPO's MLP takes vector observations, got shape {obs_shape}; flatten them "
            "(rljax.envs.make(name, flatten_obs=True), or gymnax's FlattenObservationWrapper)"
        )
    check(config)
    rng, net_key, env_key = jax.random.split(rng, 3)
    network = _network(config, env.action_space(env_params))
    net = network.init(net_key, jnp.zeros(obs_shape))
    params = Params(net, int(network.action_dim), network.discrete)
    opt_state = _optimizer(config, config.lr).init(ravel_pytree(params.net)[0])
    reset = jax.vmap(env.reset, in_axes=(0, None), axis_name=ENV_AXIS)
    obs, env_state = reset(jax.random.split(env_key, config.num_envs), env_params)
    return TrainState(params, opt_state, env_state, obs, rng, jnp.zeros((), jnp.int32))


def update(config: Config, env, env_params, state: TrainState) -> tuple[TrainState, dict]:
    """One iteration: a rollout of num_steps x num_envs, then update_epochs of minibatch SGD."""
    network = _network(config, env.action_space(env_params))
    step = jax.vmap(env.step, in_axes=(0, 0, 0, None), axis_name=ENV_AXIS)

    # --- Rollout ---
    # Its randomness is drawn before its loop, each kind in one batched call: the numbers of
    # splitting and sampling step by step, without a threefry call per step (on a CPU, a rolled
    # loop of small kernels each).
    def split(rng, _):
        rng, action_key, step_key = jax.random.split(rng, 3)
        return rng, (action_key, step_key)

    rng, as_given = written_out_keys(state.rng)  # the same numbers, drawn faster
    rng, (action_keys, step_keys) = jax.lax.scan(split, rng, None, config.num_steps)
    noise = jax.vmap(lambda key: _action_noise(key, state.params, config.num_envs))(action_keys)
    env_keys = jax.vmap(lambda key: jax.random.split(key, config.num_envs))(step_keys)
    if holds_keys(state.env_state):  # its step may keep a key: hand it the kind it holds
        env_keys = as_given(env_keys)

    def env_step(carry, noise_and_keys):
        env_state, obs = carry
        noise, keys = noise_and_keys
        pi, value = network.apply(state.params.net, obs)
        action = _sample(pi, noise)
        next_obs, env_state, reward, terminated, truncated, info = step(
            keys, env_state, action, env_params
        )
        transition = Transition(
            obs, action, reward, terminated, truncated, value, pi.log_prob(action),
            info["final_observation"], {k: info[k] for k in EPISODE_STATISTICS if k in info},
        )  # fmt: skip
        return (env_state, next_obs), transition

    (env_state, obs), traj = jax.lax.scan(env_step, (state.env_state, state.obs), (noise, env_keys))

    # --- Advantages ---
    _, next_values = network.apply(state.params.net, traj.next_obs)
    terminated = traj.terminated
    if config.truncation_as_termination:
        terminated = jnp.logical_or(terminated, traj.truncated)
    advantages, targets = gae(
        traj.reward, traj.value, next_values, terminated, traj.truncated,
        config.gamma, config.gae_lambda,
    )  # fmt: skip

    # --- Minibatch epochs ---
    lr = config.lr
    if config.anneal_lr:
        lr = config.lr * (1.0 - state.update_step / config.num_updates)
    optimizer = _optimizer(config, lr)
    t_k = tempered_step_size(config, state.update_step)

    # The optimizer steps one flat vector of the weights: Adam's and the clip's arithmetic as on
    # the tree, in a few fused kernels instead of a few per weight array.
    flat_params, unravel = ravel_pytree(state.params.net)

    def loss_fn(flat_params, batch):
        params = unravel(flat_params)
        obs, action, old_log_prob, old_value, advantages, targets = batch
        pi, value = network.apply(params, obs)
        old_pi, _ = network.apply(state.params.net, obs)  # pi_old: the params that collected traj
        return mdpo_loss(
            pi.log_prob(action), old_log_prob, advantages, value, old_value, targets,
            pi.entropy(), pi.kl_divergence(old_pi), t_k, config,
        )  # fmt: skip

    def minibatch_step(carry, batch):
        params, opt_state = carry
        (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return (params, opt_state), {"loss": loss, "grad_norm": optax.tree.norm(grads), **parts}

    def epoch(carry, _):
        params, opt_state, rng = carry
        rng, perm_key = jax.random.split(rng)
        batch = (traj.obs, traj.action, traj.log_prob, traj.value, advantages, targets)
        batch = jax.tree.map(lambda x: x.reshape(config.steps_per_update, *x.shape[2:]), batch)
        permutation = random_permutation(perm_key, config.steps_per_update)
        minibatches = jax.tree.map(
            lambda x: x[permutation].reshape(config.num_minibatches, -1, *x.shape[1:]), batch
        )
        (params, opt_state), losses = jax.lax.scan(minibatch_step, (params, opt_state), minibatches)
        return (params, opt_state, rng), losses

    (flat_params, opt_state, rng), losses = jax.lax.scan(
        epoch, (flat_params, state.opt_state, rng), None, config.update_epochs
    )

    params = state.params.replace(net=unravel(flat_params))
    state = TrainState(params, opt_state, env_state, obs, as_given(rng), state.update_step + 1)
    metrics = {
        **jax.tree.map(jnp.mean, losses),
        **_episode_metrics(traj.info),
        "lr": lr,
        "step_size": t_k,
    }
    return state, metrics


def train(config: Config, env, env_params, rng: jax.Array, num_updates: int | None = None):
    """init, then num_updates (default: total_timesteps // steps_per_update) updates."""
    num_updates = config.num_updates if num_updates is None else num_updates
    state = init(config, env, env_params, rng)
    return jax.lax.scan(lambda s, _: update(config, env, env_params, s), state, None, num_updates)


def act(
    config: Config, params: Params, obs: jax.Array, rng: jax.Array, deterministic: bool = False
):
    network = ActorCritic(
        params.action_dim, params.discrete, tuple(config.hidden_sizes), config.activation
    )
    pi, _ = network.apply(params.net, obs)
    return pi.mode() if deterministic else pi.sample(seed=rng)


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

    env_name = sys.argv[1] if len(sys.argv) > 1 else "CartPole-v1"
    env, env_params = gymnax.make(env_name)
    env = LogWrapper(env)
    config = Config()
    start = time.time()
    _, metrics = jax.jit(lambda key: train(config, env, env_params, key))(jax.random.PRNGKey(30))
    returns = np.asarray(metrics["episode_return"])
    print(f"MDPO on {env_name}: {config.total_timesteps} steps in {time.time() - start:.1f}s")
    for i in np.linspace(0, len(returns) - 1, 10).astype(int):
        step = (i + 1) * config.steps_per_update
        print(f"  step {step:>8d}  return {np.nanmean(returns[max(0, i - 9) : i + 1]):8.1f}")
