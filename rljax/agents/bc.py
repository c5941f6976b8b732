"""Behaviour cloning, optionally of the best episodes only ("x% BC").

Pomerleau, "Efficient Training of Artificial Neural Networks for Autonomous Navigation", Neural
Computation 1991, and the "x% BC" baseline of Chen et al., "Decision Transformer", NeurIPS 2021,
as in CORL's ``any_percent_bc.py`` and unifloral's ``bc.py``: a deterministic tanh actor
regresses on the dataset's actions,

    L_pi = mean((pi(s) - a)^2)      (the mean over the batch and the action dimensions)

over the transitions of the top ``frac`` of complete episodes ranked by undiscounted return
(``frac = 1`` clones everything). Observations are normalized by the statistics of the whole
dataset, ``(s - mu) / (sigma + 1e-3)``; actions are assumed in [-1, 1] (the D4RL convention).
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
    'Pomerleau, "Efficient Training of Artificial Neural Networks for Autonomous Navigation", '
    "Neural Computation 1991"
)


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
        1_000_000, static=True, bounds="[1, inf)", doc="gradient steps in all (the budget)"
    )
    hidden_sizes: tuple = _field((256, 256), static=True, doc="hidden-layer widths of the actor")
    normalize_obs: bool = _field(
        True, static=True, doc="normalize observations by the dataset's mean and std"
    )
    # Static: which rows exist is a shape.
    frac: float = _field(
        1.0, static=True, bounds="(0, 1]", doc="share of best episodes by return to clone (1: all)"
    )
    lr: float = _field(3e-4, bounds="(0, inf)", doc="Adam learning rate")

    @property
    def num_updates(self) -> int:
        return self.total_updates


@struct.dataclass
class Params:
    actor: Any
    obs_mean: jax.Array  # normalized obs = (obs - obs_mean) / obs_std
    obs_std: jax.Array
    action_dim: int = struct.field(pytree_node=False, default=1)


@struct.dataclass
class TrainState:
    params: Params
    opt: Any
    rng: jax.Array
    step: jax.Array  # gradient steps done so far


class Actor(nn.Module):
    """Deterministic policy onto [-1, 1]."""

    action_dim: int
    hidden_sizes: tuple

    @nn.compact
    def __call__(self, obs):
        x = obs
        for size in self.hidden_sizes:
            x = nn.relu(nn.Dense(size)(x))
        return jnp.tanh(nn.Dense(self.action_dim)(x))


def _normalize(params: Params, obs):
    return (obs - params.obs_mean) / params.obs_std


# --- Data ---


def best_episode_rows(dataset, frac: float) -> np.ndarray:
    """Row indices of the top ``frac`` (at least one) of complete episodes by return, on the
    host; every row when ``frac == 1``."""
    if frac >= 1:
        return np.arange(dataset.rewards.shape[0])
    ends = np.flatnonzero((np.asarray(dataset.terminals) > 0) | (np.asarray(dataset.timeouts) > 0))
    starts = np.concatenate([[0], ends[:-1] + 1])
    returns = np.diff(np.cumsum(np.asarray(dataset.rewards, np.float64))[ends], prepend=0.0)
    best = np.argsort(-returns, kind="stable")[: max(1, int(frac * len(returns)))]
    return np.concatenate([np.arange(starts[i], ends[i] + 1) for i in np.sort(best)])


def sample_batch(config: Config, dataset, rng: jax.Array) -> dict:
    """Uniform with replacement over the kept episodes' rows, as the dict ``update_on_batch``
    takes. The rows are chosen on the host when traced: close over the dataset."""
    rows = jnp.asarray(best_episode_rows(dataset, config.frac), jnp.int32)
    idx = rows[jax.random.randint(rng, (config.batch_size,), 0, rows.shape[0])]
    return {k: getattr(dataset, k)[idx] for k in ("observations", "actions")}


# --- Loss ---


def bc_loss(actor_params, batch, config: Config):
    """Mean squared error of the actor's actions on normalized observations."""
    actor = Actor(batch["actions"].shape[-1], tuple(config.hidden_sizes))
    pi = actor.apply(actor_params, batch["observations"])
    return jnp.square(pi - batch["actions"]).mean()


# --- The contract ---


def _check_dataset(config: Config, dataset) -> None:
    if dataset.observations.ndim != 2 or dataset.actions.ndim != 2:
        raise ValueError(
            f"BC takes vector observations and actions, got shapes "
            f"{dataset.observations.shape[1:]} and {dataset.actions.shape[1:]}"
        )
    if isinstance(dataset.actions, jax.core.Tracer):
        raise ValueError(
            "BC reads the dataset on the host (action range, best episodes): close over the "
            "dataset instead of passing it through jit or vmap"
        )
    largest = float(np.abs(np.asarray(dataset.actions)).max())
    if largest > 1 + 1e-4:
        raise ValueError(
            f"dataset actions reach {largest:.4g} but the tanh actor acts in [-1, 1]: "
            "rescale the dataset's actions into [-1, 1] (the D4RL convention)"
        )
    ended = ((np.asarray(dataset.terminals) > 0) | (np.asarray(dataset.timeouts) > 0)).any()
    if config.frac < 1 and not ended:
        raise ValueError(
            f"frac={config.frac} keeps the best episodes, but the dataset marks no episode end "
            "in terminals or timeouts"
        )


def init(config: Config, dataset, rng: jax.Array) -> TrainState:
    """The actor, its optimizer and normalization statistics for ``dataset`` (an rljax Dataset,
    closed over rather than traced)."""
    _check_dataset(config, dataset)
    actor_key, rng = jax.random.split(rng)
    obs_dim, action_dim = dataset.observations.shape[-1], dataset.actions.shape[-1]
    actor = Actor(action_dim, tuple(config.hidden_sizes))
    if config.normalize_obs:
        obs_mean = dataset.observations.mean(0)
        obs_std = dataset.observations.std(0) + 1e-3
    else:
        obs_mean, obs_std = jnp.zeros(obs_dim), jnp.ones(obs_dim)
    params = Params(actor.init(actor_key, jnp.zeros(obs_dim)), obs_mean, obs_std, action_dim)
    return TrainState(
        params=params,
        opt=optax.adam(config.lr).init(params.actor),
        rng=rng,
        step=jnp.zeros((), jnp.int32),
    )


def update_on_batch(config: Config, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    """One gradient step on a batch of raw (unnormalized) observations and actions."""
    params = state.params
    batch = batch | {"observations": _normalize(params, batch["observations"])}
    loss, grads = jax.value_and_grad(bc_loss)(params.actor, batch, config)
    updates, opt = optax.adam(config.lr).update(grads, state.opt)
    params = params.replace(actor=optax.apply_updates(params.actor, updates))
    state = state.replace(params=params, opt=opt, step=state.step + 1)
    return state, {"bc_loss": loss, "grad_norm": optax.tree.norm(grads)}


def update(config: Config, dataset, state: TrainState) -> tuple[TrainState, dict]:
    """One gradient step on a batch sampled inside jit."""
    rng, batch_key = jax.random.split(state.rng)
    return update_on_batch(config, state.replace(rng=rng), sample_batch(config, dataset, batch_key))


def train(config: Config, dataset, rng: jax.Array, num_updates: int | None = None):
    """init, then num_updates (default: total_updates) gradient steps on uniform batches of the
    kept episodes' rows. The dataset is closed over, not carried in the state."""
    num_updates = config.num_updates if num_updates is None else num_updates
    state = init(config, dataset, rng)
    return jax.lax.scan(lambda state, _: update(config, dataset, state), state, None, num_updates)


def act(config: Config, params: Params, obs: jax.Array, rng: jax.Array, deterministic=False):
    """The actor's action on raw observations (deterministic either way)."""
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
    config = Config(total_updates=20_000, hidden_sizes=(64, 64), lr=1e-3, frac=0.2)
    start = time.time()
    state, metrics = jax.jit(lambda key: train(config, dataset, key))(jax.random.PRNGKey(1))
    print(f"{config.frac:.0%} BC on {episodes} noisy swing-up episodes of Pendulum-v1: "
          f"{config.total_updates} updates in {time.time() - start:.1f}s")  # fmt: skip
    for i in np.linspace(0, config.total_updates - 1, 5).astype(int):
        losses = {k: float(metrics[k][i]) for k in ("bc_loss",)}
        print(f"  update {i + 1:>6d}  " + "  ".join(f"{k} {v:.3f}" for k, v in losses.items()))
    greedy = lambda o, _: act(config, state.params, o, None, deterministic=True)  # noqa: E731
    eval_rewards = jax.jit(jax.vmap(lambda k: rollout(k, greedy)[2]))(jax.random.split(keys[0], 10))
    print(f"  dataset return {float(rewards.sum(1).mean()):.1f}, greedy policy return "
          f"{float(eval_rewards.sum(1).mean()):.1f} over 10 episodes")  # fmt: skip
