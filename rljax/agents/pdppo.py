"""PDPPO: PPO with a pre-decision critic V(s) and a post-decision critic V^x(s^x).

Felizardo, Fadda, Brandimarte, Del-Moral-Hernandez, Nascimento, "A Reinforcement Learning Method
for Environments with Stochastic Variables: Post-Decision Proximal Policy Optimization with Dual
Critic Networks", arXiv 2504.05150 (IJCNN 2025), github.com/leokan92/pdppo. Everything else is
PPO as in ppo.py (PureJaxRL's details); diff the two files to see the paper's change.

A step splits into a deterministic part (s_t, a_t) -> s^x_t, the post-decision state, and a
stochastic part s^x_t -> s_{t+1}. The env reports s^x_t as ``info["post_decision_obs"]`` and the
deterministic reward r^x_t (lot sizing: minus the setup costs) as ``info["post_decision_reward"]``.

    A_t, R_t     = GAE(r, V(s)) as in ppo.py               the pre-decision critic
    A^x_t, R^x_t = GAE(r^x, V^x(s^x))                      the post-decision critic
    advantage="max" (the paper): A = max(A^x_t, A_t),       L_V = L_V(V, R) + L_V(V^x, R^x)
    advantage="min" (the authors' code at a760530): A = R_t - min(V(s_t), V^x(s^x_t)),
                                                           L_V = L_V(min(V, V^x), R)
    advantage="pre": A = A_t, L_V = L_V(V, R): plain PPO on the same network, the baseline
    L = L_pi(A) + vf_coef L_V - ent_coef mean(H[pi]),      L_pi and L_V clipped as in ppo.py

The policy is one categorical per action dimension (per machine), log pi(a|s) = sum_m
log pi_m(a_m|s), for MultiDiscrete action spaces (``nvec``). The post-decision trace ends at
every episode end and at the rollout's end (bootstrapping there would take the next decision's
post-decision state), so for advantage="max" rollouts hold whole episodes: num_steps is a
multiple of max_steps_in_episode, as in the paper (an update every 40 whole episodes).
``reward_scale`` scales r and r^x alike; a reward-normalizing wrapper would scale only r and
break the comparison of the two advantages.

The authors' protocol (their code, agents/PDPPO.py and PDPPOAgent.py; the spec's section 2)
differs from ppo.py's in four ingredients, each an option here, so a comparison can change one
at a time (configs/pdppo/authors_15x5.yaml sets all four):

- ``advantage_estimator="monte_carlo"``: Monte-Carlo returns in place of GAE, for both critics,

      G_t = r_t + gamma G_{t+1},  G^x_t = r^x_t + gamma G^x_{t+1},  restarted at each episode end;
      A_t = G_t - V(s_t),  A^x_t = G^x_t - V^x(s^x_t),  R_t = G_t,  R^x_t = G^x_t

  with G = 0 after a termination and past the rollout's last step (the authors bootstrap
  nowhere; G = V(s'_t) after a truncation, which their env never has), so rollouts hold whole
  episodes. On whole episodes it is GAE with gae_lambda=1, up to float rounding.
- ``separate_optimizers=True``: one Adam per network, each clipping its own gradient: the actor
  at ``lr``, the critic and the post-decision critic at ``critic_lr`` (their three Adams).
- 60 full-batch epochs: ``num_minibatches=1, update_epochs=60``.
- an update every 4000 steps, 40 whole episodes: ``num_envs=40, num_steps=100``.

What stays ppo.py's, where their code differs: advantages normalized per minibatch (they do not
normalize; a760530 normalizes the returns instead), value clipping and the 1/2 in the value
loss, one joint ratio per action (they clip one ratio per machine), orthogonal init and one
activation for all networks (their actor is ReLU, their critics tanh), rewards scaled by
``reward_scale``. Their max-advantage code (bf3f368) also fits V to the returns of r - r^x
(the stochastic costs alone) and trains each update on its last six rollouts (old
log-probabilities kept), with 40 epochs, gamma 0.9 and an update every 400 steps; we follow
the spec (4b36c77's 60 epochs, gamma 0.99, 4000 steps) and the paper's G = sum_k gamma^k r.
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

LEARNS_FROM = "env"  # what it learns from, as declared in rljax/agents/__init__.py
GOAL_CONDITIONED = False
WRAPS_ENV = False
RECURRENT = False
PAPER = (
    'Felizardo et al., "A Reinforcement Learning Method for Environments with Stochastic '
    'Variables: Post-Decision Proximal Policy Optimization with Dual Critic Networks", IJCNN '
    "2025"
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
    num_envs: int = _field(
        16, static=True, bounds="[1, inf)", doc="environments stepped in parallel"
    )
    num_steps: int = _field(
        100, static=True, bounds="[1, inf)", doc="env steps per environment per iteration"
    )
    num_minibatches: int = _field(
        4, static=True, bounds="[1, inf)", doc="minibatches per epoch of the rollout"
    )
    update_epochs: int = _field(
        4, static=True, bounds="[1, inf)", doc="passes of minibatch SGD over each rollout"
    )
    total_timesteps: int = _field(
        240_000, static=True, bounds="[1, inf)", doc="env steps summed over envs (the budget)"
    )
    hidden_sizes: tuple = _field(
        (128, 128), static=True, doc="hidden-layer widths of the actor and of each critic"
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
    advantage: str = _field(
        "max",
        static=True,
        choices=("max", "min", "pre"),
        doc="how the two critics' advantages combine",
    )
    advantage_estimator: str = _field(
        "gae",
        static=True,
        choices=("gae", "monte_carlo"),
        doc="GAE, or Monte-Carlo returns-to-go minus V (not bootstrapped at the rollout's end)",
    )
    separate_optimizers: bool = _field(
        False, static=True, doc="one Adam per network: the actor at lr, the critics at critic_lr"
    )
    lr: float = _field(
        1e-3, bounds="(0, inf)", doc="Adam learning rate (the initial one when annealed)"
    )
    critic_lr: float = _field(
        1e-3, bounds="(0, inf)", doc="the critics' learning rate with separate_optimizers"
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
    reward_scale: float = _field(
        0.01, bounds="(0, inf)", doc="scale of the rewards r and r^x alike"
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
    action_shape: tuple = struct.field(pytree_node=False)  # (action dimensions, choices)


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
    post_obs: jax.Array  # the post-decision state after the action, before the noise
    post_reward: jax.Array  # the deterministic part of the reward
    info: dict  # the episode statistics among the env's info


# --- Networks ---


class ActorCritic(nn.Module):
    """Separate actor, critic and post-decision critic MLPs; orthogonal init as in PureJaxRL.

    Called with obs only, returns (pi, V(s)); with post_obs too, (pi, V(s), V^x(s^x)).
    """

    action_shape: tuple  # (action dimensions, choices per dimension)
    hidden_sizes: tuple
    activation: str

    @nn.compact
    def __call__(self, obs, post_obs=None):
        activation = {"tanh": nn.tanh, "relu": nn.relu}[self.activation]

        def torso(x, name):
            for i, size in enumerate(self.hidden_sizes):
                dense = nn.Dense(size, kernel_init=orthogonal(np.sqrt(2)), name=f"{name}_{i}")
                x = activation(dense(x))
            return x

        logits = nn.DenseGeneral(
            self.action_shape,
            kernel_init=orthogonal(0.01),
            bias_init=constant(0.0),
            name="actor_head",
        )(torso(obs, "actor"))
        pi = distrax.Independent(distrax.Categorical(logits=logits), reinterpreted_batch_ndims=1)

        def critic(x, name):
            value = nn.Dense(
                1, kernel_init=orthogonal(1.0), bias_init=constant(0.0), name=f"{name}_head"
            )(torso(x, name))
            return jnp.squeeze(value, -1)

        if post_obs is None:
            return pi, critic(obs, "critic")
        return pi, critic(obs, "critic"), critic(post_obs, "post_critic")


def _network(config: Config, action_space) -> ActorCritic:
    action_shape = (len(action_space.nvec), int(action_space.nvec[0]))
    return ActorCritic(action_shape, tuple(config.hidden_sizes), config.activation)


def _optimizer(config: Config, lr) -> optax.GradientTransformation:
    # Hyperparameters enter as (possibly traced) values, so a sweep over them compiles once.
    return optax.chain(optax.clip_by_global_norm(config.max_grad_norm), optax.adam(lr, eps=1e-5))


def _owners(net):
    """The network each weight belongs to, as a tree like net's: "actor", "critic" or
    "post_critic", read from its layer's name."""

    owners = {}
    for name, layer in net["params"].items():
        owner = "post_critic" if name.startswith("post_critic") else name.split("_")[0]
        owners[name] = jax.tree.map(lambda _, owner=owner: owner, layer)
    return {"params": owners}


def _optimizers(config: Config, lr, critic_lr) -> optax.GradientTransformation:
    """One optimizer for all the weights at lr; with separate_optimizers one per network, each
    clipping its own gradient: the actor's at lr, the two critics' at critic_lr."""
    if not config.separate_optimizers:
        return _optimizer(config, lr)
    optimizers = {
        "actor": _optimizer(config, lr),
        "critic": _optimizer(config, critic_lr),
        "post_critic": _optimizer(config, critic_lr),
    }
    return optax.multi_transform(optimizers, _owners)


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


def monte_carlo(rewards, values, next_values, terminated, truncated, gamma):
    """Monte-Carlo returns-to-go within the rollout, time-major (the PDPPO authors' estimator).

    G_t = r_t + gamma G_{t+1}, restarted at each episode end: with 0 after a termination, with
    V(s'_t) (``next_values``) after a truncation only; and with 0 past the rollout's last step,
    as the authors (no bootstrap at the cut). Returns (advantages, targets) = (G - V, G).
    """
    terminated = terminated.astype(jnp.float32)
    done = jnp.maximum(terminated, truncated.astype(jnp.float32))
    bootstraps = (done - terminated) * next_values  # V(s') where truncated and not terminated

    def backward(next_return, step):
        reward, done, bootstrap = step
        ret = reward + gamma * ((1.0 - done) * next_return + bootstrap)
        return ret, ret

    _, returns = jax.lax.scan(
        backward, jnp.zeros_like(rewards[0]), (rewards, done, bootstraps), reverse=True, unroll=16
    )
    return returns - values, returns


def critic_values(config: Config, value, post_value):
    """What the value loss fits, (..., critics): [V, V^x] ("max"), [min(V, V^x)] or [V]."""
    if config.advantage == "max":
        return jnp.stack([value, post_value], -1)
    if config.advantage == "min":
        return jnp.minimum(value, post_value)[..., None]
    return value[..., None]


def combine_advantages(advantages, targets, values, post_rewards, post_values, done, config):
    """The paper's change, time-major. The post-decision trace, GAE(r^x, V^x) or its Monte-Carlo
    returns as the advantages' estimator, ends at every episode end (done) and at the rollout's
    end, where the next post-decision state is unknown. Returns the advantages the policy
    follows, the critics' old values and targets (last axis: the critics of critic_values), and
    the fraction of steps where A^x > A."""
    ends = done.at[-1].set(True)
    next_post_values = jnp.concatenate([post_values[1:], jnp.zeros_like(post_values[:1])])
    if config.advantage_estimator == "monte_carlo":
        post_advantages, post_targets = monte_carlo(
            post_rewards, post_values, next_post_values, ends, ends, config.gamma
        )
    else:
        post_advantages, post_targets = gae(
            post_rewards, post_values, next_post_values, ends, ends, config.gamma,
            config.gae_lambda,
        )  # fmt: skip
    post_wins = (post_advantages > advantages).mean()
    old_values = critic_values(config, values, post_values)
    if config.advantage == "max":
        advantages = jnp.maximum(advantages, post_advantages)
        targets = jnp.stack([targets, post_targets], -1)
    else:
        if config.advantage == "min":
            advantages = targets - old_values[..., 0]
        targets = targets[..., None]
    return advantages, old_values, targets, post_wins


def pdppo_loss(log_prob, old_log_prob, advantages, value, old_value, targets, entropy, config):
    """The clipped PPO objective on one minibatch, one clipped value loss per critic (the last
    axis of value, old_value and targets), summed; returns (loss, parts)."""
    advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    log_ratio = log_prob - old_log_prob
    ratio = jnp.exp(log_ratio)
    clipped_ratio = jnp.clip(ratio, 1.0 - config.clip_eps, 1.0 + config.clip_eps)
    policy_loss = -jnp.minimum(ratio * advantages, clipped_ratio * advantages).mean()
    value_clipped = old_value + jnp.clip(value - old_value, -config.clip_eps, config.clip_eps)
    squared_errors = jnp.maximum(jnp.square(value - targets), jnp.square(value_clipped - targets))
    value_loss = 0.5 * squared_errors.sum(-1).mean()  # one term per critic
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
            f"PDPPO's MLP takes vector observations, got shape {obs_shape}; flatten them "
            "(rljax.envs.make(name, flatten_obs=True), or gymnax's FlattenObservationWrapper)"
        )
    if config.advantage_estimator not in ("gae", "monte_carlo"):
        raise ValueError(
            f"advantage_estimator={config.advantage_estimator!r} is not allowed; choose one of "
            "['gae', 'monte_carlo']"
        )
    check(config)
    action_space = env.action_space(env_params)
    nvec = getattr(action_space, "nvec", None)
    if nvec is None or len(set(nvec)) != 1:
        raise ValueError(
            f"PDPPO needs a MultiDiscrete action space with as many choices in every dimension "
            f"(nvec), got {action_space}"
        )
    horizon = getattr(env_params, "max_steps_in_episode", None)
    whole_episodes = config.advantage == "max" or config.advantage_estimator == "monte_carlo"
    if whole_episodes and horizon and config.num_steps % horizon:
        raise ValueError(
            f"num_steps={config.num_steps} must be a multiple of max_steps_in_episode={horizon}: "
            "the post-decision returns (advantage='max') and the Monte-Carlo returns end with "
            "each rollout, so rollouts hold whole episodes"
        )
    rng, net_key, env_key = jax.random.split(rng, 3)
    reset = jax.vmap(env.reset, in_axes=(0, None), axis_name=ENV_AXIS)
    obs, env_state = reset(jax.random.split(env_key, config.num_envs), env_params)
    # The post-decision state comes in the step's info: its shape, without stepping.
    step = jax.vmap(env.step, in_axes=(0, 0, 0, None), axis_name=ENV_AXIS)
    keys = jax.random.split(env_key, config.num_envs)
    actions = jax.vmap(action_space.sample)(keys)
    info = jax.eval_shape(step, keys, env_state, actions, env_params)[-1]
    if not {"post_decision_obs", "post_decision_reward"} <= set(info):
        raise ValueError(
            "PDPPO needs an env whose step reports info['post_decision_obs'] and "
            "info['post_decision_reward'] (as rljax/LotSizing-* does)"
        )
    network = _network(config, action_space)
    post_obs_shape = info["post_decision_obs"].shape[1:]
    net = network.init(net_key, jnp.zeros(obs_shape), jnp.zeros(post_obs_shape))
    params = Params(net, network.action_shape)
    opt_state = _optimizers(config, config.lr, config.critic_lr).init(params.net)
    return TrainState(params, opt_state, env_state, obs, rng, jnp.zeros((), jnp.int32))


def update(config: Config, env, env_params, state: TrainState) -> tuple[TrainState, dict]:
    """One iteration: a rollout of num_steps x num_envs, then update_epochs of minibatch SGD."""
    network = _network(config, env.action_space(env_params))
    step = jax.vmap(env.step, in_axes=(0, 0, 0, None), axis_name=ENV_AXIS)

    # --- Rollout ---
    # Its randomness is drawn before its loop, each kind in one batched call: the numbers of
    # splitting and sampling step by step, without a threefry call per step (on a CPU, a rolled
    # loop of small kernels each). The action noise is the Gumbel noise that pi.sample draws for
    # its one categorical per action dimension.
    def split(rng, _):
        rng, action_key, step_key = jax.random.split(rng, 3)
        return rng, (action_key, step_key)

    rng, as_given = written_out_keys(state.rng)  # the same numbers, drawn faster
    rng, (action_keys, step_keys) = jax.lax.scan(split, rng, None, config.num_steps)
    noise_shape = (config.num_envs, *state.params.action_shape)
    noise = jax.vmap(lambda key: jax.random.gumbel(key, noise_shape))(action_keys)
    env_keys = jax.vmap(lambda key: jax.random.split(key, config.num_envs))(step_keys)
    if holds_keys(state.env_state):  # its step may keep a key: hand it the kind it holds
        env_keys = as_given(env_keys)

    def env_step(carry, noise_and_keys):
        env_state, obs = carry
        noise, keys = noise_and_keys
        pi, value = network.apply(state.params.net, obs)
        action = _sample(pi.distribution, noise)  # the categoricals inside the Independent
        next_obs, env_state, reward, terminated, truncated, info = step(
            keys, env_state, action, env_params
        )
        transition = Transition(
            obs, action, reward, terminated, truncated, value, pi.log_prob(action),
            info["final_observation"], info["post_decision_obs"], info["post_decision_reward"],
            {k: info[k] for k in EPISODE_STATISTICS if k in info},
        )  # fmt: skip
        return (env_state, next_obs), transition

    (env_state, obs), traj = jax.lax.scan(env_step, (state.env_state, state.obs), (noise, env_keys))

    # --- Advantages ---
    # next_obs and post_obs both follow the action: one pass gives V(s'_t) and V^x(s^x_t).
    _, next_values, post_values = network.apply(state.params.net, traj.next_obs, traj.post_obs)
    terminated = traj.terminated
    if config.truncation_as_termination:
        terminated = jnp.logical_or(terminated, traj.truncated)
    if config.advantage_estimator == "monte_carlo":
        advantages, targets = monte_carlo(
            config.reward_scale * traj.reward, traj.value, next_values, terminated, traj.truncated,
            config.gamma,
        )  # fmt: skip
    else:
        advantages, targets = gae(
            config.reward_scale * traj.reward, traj.value, next_values, terminated,
            traj.truncated, config.gamma, config.gae_lambda,
        )  # fmt: skip
    done = jnp.logical_or(traj.terminated, traj.truncated)
    advantages, old_values, targets, post_wins = combine_advantages(
        advantages, targets, traj.value, config.reward_scale * traj.post_reward, post_values,
        done, config,
    )  # fmt: skip

    # --- Minibatch epochs ---
    lr, critic_lr = config.lr, config.critic_lr
    if config.anneal_lr:
        fraction = 1.0 - state.update_step / config.num_updates  # of the run still to come
        lr = config.lr * fraction
        if config.separate_optimizers:
            critic_lr = config.critic_lr * fraction
    optimizer = _optimizers(config, lr, critic_lr)

    # The optimizer steps the tree of weights, not one flat vector as ppo.py's: with this file's
    # ~100k weights, flattening measured ~2% slower on a CPU (the copies in and out cost more
    # than the kernels it saves).
    def loss_fn(params, batch):
        obs, post_obs, action, old_log_prob, old_value, advantages, targets = batch
        pi, value, post_value = network.apply(params, obs, post_obs)
        return pdppo_loss(
            pi.log_prob(action), old_log_prob, advantages,
            critic_values(config, value, post_value), old_value, targets, pi.entropy(), config,
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
        batch = (traj.obs, traj.post_obs, traj.action, traj.log_prob, old_values, advantages,
                 targets)  # fmt: skip
        batch = jax.tree.map(lambda x: x.reshape(config.steps_per_update, *x.shape[2:]), batch)
        permutation = random_permutation(perm_key, config.steps_per_update)
        minibatches = jax.tree.map(
            lambda x: x[permutation].reshape(config.num_minibatches, -1, *x.shape[1:]), batch
        )
        (params, opt_state), losses = jax.lax.scan(minibatch_step, (params, opt_state), minibatches)
        return (params, opt_state, rng), losses

    (params, opt_state, rng), losses = jax.lax.scan(
        epoch, (state.params.net, state.opt_state, rng), None, config.update_epochs
    )

    params = state.params.replace(net=params)
    state = TrainState(params, opt_state, env_state, obs, as_given(rng), state.update_step + 1)
    metrics = {**jax.tree.map(jnp.mean, losses), **_episode_metrics(traj.info), "lr": lr}
    metrics["post_advantage_wins"] = post_wins  # how often A^x > A, whichever advantage is used
    if config.separate_optimizers:
        metrics["critic_lr"] = critic_lr
    return state, metrics


def train(config: Config, env, env_params, rng: jax.Array, num_updates: int | None = None):
    """init, then num_updates (default: total_timesteps // steps_per_update) updates."""
    num_updates = config.num_updates if num_updates is None else num_updates
    state = init(config, env, env_params, rng)
    return jax.lax.scan(lambda s, _: update(config, env, env_params, s), state, None, num_updates)


def act(
    config: Config, params: Params, obs: jax.Array, rng: jax.Array, deterministic: bool = False
):
    network = ActorCritic(params.action_shape, tuple(config.hidden_sizes), config.activation)
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

    from rljax.envs import make

    # The post-decision state comes from the env: rljax's lot sizing (rljax/envs/lot_sizing.py).
    env_name = sys.argv[1] if len(sys.argv) > 1 else "rljax/LotSizing-15x5"
    env, env_params = make(env_name)
    for advantage in ("max", "pre"):
        config = Config(advantage=advantage)
        start = time.time()
        _, metrics = jax.jit(lambda key, c=config: train(c, env, env_params, key))(
            jax.random.PRNGKey(30)
        )
        costs = -np.asarray(metrics["episode_return"])
        print(f"advantage={advantage} on {env_name}: {config.total_timesteps} steps in "
              f"{time.time() - start:.1f}s")  # fmt: skip
        for i in np.linspace(0, len(costs) - 1, 10).astype(int):
            step = (i + 1) * config.steps_per_update
            print(
                f"  step {step:>8d}  episode cost {np.nanmean(costs[max(0, i - 9) : i + 1]):8.1f}"
            )
