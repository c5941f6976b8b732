"""TD3+BC: TD3 with a behaviour-cloning term in the actor loss, for offline RL.

Fujimoto & Gu, "A Minimalist Approach to Offline Reinforcement Learning", NeurIPS 2021
(sfujim/TD3_BC), on top of TD3 (Fujimoto, van Hoof, Meger, ICML 2018):

    a' = clip(pibar(s') + clip(N(0, sigma^2), -c, c), -1, 1)
    y = r + gamma (1 - terminal) min_i Qbar_i(s', a')
    L_Q  = sum_i mean((Q_i(s, a) - y)^2)
    lambda = alpha / mean|Q_1(s, pi(s))|                      (no gradient through lambda)
    L_pi = -lambda mean Q_1(s, pi(s)) + mean((pi(s) - a)^2)   (every ``policy_freq`` steps)
    Qbar <- (1 - tau) Qbar + tau Q,  pibar <- (1 - tau) pibar + tau pi   (on actor steps only)

The actor's step (its loss, gradient and Adam step) and both Polyak updates run inside a
``lax.cond`` on whether any member is at its actor step (``_any_member``), so the other steps
skip them, under vmap (seeds, sweeps) too, where a plain batched cond would run both branches.
On those steps ``actor_loss``, ``bc_loss``, ``lambda`` and ``actor_grad_norm`` repeat the last
actor step's values (zeros before the first), carried in the state as ``actor_metrics``.

Observations are normalized by the dataset's statistics, ``(s - mu) / (sigma + 1e-3)``; the
statistics live in ``Params`` so ``act`` applies them too. Actions are assumed in [-1, 1] (the
D4RL convention; rescale a dataset's actions before training), the range of the tanh actor.
Timeouts are not terminals: the target bootstraps through them.
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
PAPER = 'Fujimoto, Gu, "A Minimalist Approach to Offline Reinforcement Learning", NeurIPS 2021'


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
    hidden_sizes: tuple = _field(
        (256, 256), static=True, doc="hidden-layer widths of the actor and both critics"
    )
    normalize_obs: bool = _field(
        True, static=True, doc="normalize observations by the dataset's mean and std"
    )
    policy_freq: int = _field(
        2, static=True, bounds="[1, inf)", doc="gradient steps per actor and target update"
    )
    actor_lr: float = _field(3e-4, bounds="(0, inf)", doc="Adam learning rate of the actor")
    critic_lr: float = _field(3e-4, bounds="(0, inf)", doc="Adam learning rate of the critics")
    gamma: float = _field(0.99, bounds="[0, 1]", doc="discount factor gamma")
    tau: float = _field(
        0.005, bounds="(0, 1]", doc="Polyak rate tau of the target actor and critics"
    )
    alpha: float = _field(
        2.5, bounds="[0, inf)", doc="alpha of the Q-term weight lambda = alpha / mean|Q|"
    )
    policy_noise: float = _field(
        0.2, bounds="[0, inf)", doc="std sigma of the noise on the target action"
    )
    noise_clip: float = _field(
        0.5, bounds="[0, inf)", doc="clip c of the noise on the target action"
    )

    @property
    def num_updates(self) -> int:
        return self.total_updates


@struct.dataclass
class Params:
    actor: Any
    critic: Any  # both critics, stacked on a leading axis of 2
    obs_mean: jax.Array  # normalized obs = (obs - obs_mean) / obs_std
    obs_std: jax.Array
    action_dim: int = struct.field(pytree_node=False, default=1)


ACTOR_METRICS = ("actor_loss", "bc_loss", "lambda", "actor_grad_norm")


@struct.dataclass
class TrainState:
    params: Params
    target_actor: Any
    target_critic: Any
    actor_opt: Any
    critic_opt: Any
    actor_metrics: dict  # ACTOR_METRICS of the last actor step, reported again until the next
    rng: jax.Array
    step: jax.Array  # gradient steps done so far


# --- Networks ---


def _mlp(x, hidden_sizes):
    for size in hidden_sizes:
        x = nn.relu(nn.Dense(size)(x))
    return x


class Actor(nn.Module):
    """Deterministic policy onto [-1, 1]."""

    action_dim: int
    hidden_sizes: tuple

    @nn.compact
    def __call__(self, obs):
        x = _mlp(obs, self.hidden_sizes)
        return jnp.tanh(nn.Dense(self.action_dim)(x))


class Critic(nn.Module):
    hidden_sizes: tuple

    @nn.compact
    def __call__(self, obs, action):
        x = _mlp(jnp.concatenate([obs, action], -1), self.hidden_sizes)
        return jnp.squeeze(nn.Dense(1)(x), -1)


class TwinCritic(nn.Module):
    """Two independent critics evaluated as one vmapped network; outputs (2, ...)."""

    hidden_sizes: tuple

    @nn.compact
    def __call__(self, obs, action):
        twins = nn.vmap(
            Critic,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=None,
            axis_size=2,
        )
        return twins(self.hidden_sizes)(obs, action)


def _networks(config: Config, action_dim: int) -> tuple[Actor, TwinCritic]:
    hidden = tuple(config.hidden_sizes)
    return Actor(action_dim, hidden), TwinCritic(hidden)


def _normalize(params: Params, obs):
    return (obs - params.obs_mean) / params.obs_std


# --- Data ---


BATCH_KEYS = ("observations", "actions", "rewards", "terminals", "next_observations")


def sample_batch(config: Config, dataset, rng: jax.Array) -> dict:
    """Rows drawn uniformly with replacement, as the dict ``update_on_batch`` takes."""
    idx = jax.random.randint(rng, (config.batch_size,), 0, dataset.rewards.shape[0])
    return {k: getattr(dataset, k)[idx] for k in BATCH_KEYS}


# --- Losses ---


def critic_loss(critic_params, batch, next_action, target_critic, config: Config):
    """Both critics regress on r + gamma (1 - terminal) min_i Qbar_i(s', a'); batch normalized."""
    _, critic = _networks(config, batch["actions"].shape[-1])
    q_next = critic.apply(target_critic, batch["next_observations"], next_action).min(0)
    target = batch["rewards"] + config.gamma * (1.0 - batch["terminals"]) * q_next
    q = critic.apply(critic_params, batch["observations"], batch["actions"])
    loss = jnp.square(q - jax.lax.stop_gradient(target)).mean(-1).sum()
    return loss, q.mean()


def actor_loss(actor_params, critic_params, batch, config: Config):
    """-lambda mean Q_1(s, pi(s)) + mean (pi(s) - a)^2, lambda = alpha / mean|Q_1| held fixed."""
    actor, critic = _networks(config, batch["actions"].shape[-1])
    pi = actor.apply(actor_params, batch["observations"])
    q = critic.apply(critic_params, batch["observations"], pi)[0]
    lmbda = jax.lax.stop_gradient(config.alpha / jnp.abs(q).mean())
    bc = jnp.square(pi - batch["actions"]).mean()
    return -lmbda * q.mean() + bc, {"bc_loss": bc, "lambda": lmbda}


# --- The contract ---


def _observation_stats(observations, normalize: bool):
    if not normalize:
        return jnp.zeros(observations.shape[1:]), jnp.ones(observations.shape[1:])
    return observations.mean(0), observations.std(0) + 1e-3


def _check_dataset(dataset) -> None:
    if dataset.observations.ndim != 2 or dataset.actions.ndim != 2:
        raise ValueError(
            f"TD3+BC takes vector observations and actions, got shapes "
            f"{dataset.observations.shape[1:]} and {dataset.actions.shape[1:]}"
        )
    if isinstance(dataset.actions, jax.core.Tracer):
        return  # a dataset passed through jit as an argument: close over it to get this check
    largest = float(np.abs(np.asarray(dataset.actions)).max())
    if largest > 1 + 1e-4:
        raise ValueError(
            f"dataset actions reach {largest:.4g} but the tanh actor acts in [-1, 1]: "
            "rescale the dataset's actions into [-1, 1] (the D4RL convention)"
        )


@jax.custom_batching.custom_vmap
def _any_member(flag):
    """``flag``; under vmap, whether any member's flag is set, unbatched. A ``lax.cond`` on a
    batched predicate becomes a select that runs both branches every step; on this one it
    still skips the delayed branch when no member is at its delayed step."""
    return flag


@_any_member.def_vmap
def _any_member_vmap(axis_size, in_batched, flag):
    (batched,) = in_batched
    return _any_member(flag.any(0) if batched else flag), False  # again, for an outer vmap


def init(config: Config, dataset, rng: jax.Array) -> TrainState:
    """Networks, optimizers and normalization statistics for ``dataset`` (an rljax Dataset)."""
    _check_dataset(dataset)
    actor_key, critic_key, rng = jax.random.split(rng, 3)
    obs_dim, action_dim = dataset.observations.shape[-1], dataset.actions.shape[-1]
    actor, critic = _networks(config, action_dim)
    dummy_obs, dummy_action = jnp.zeros(obs_dim), jnp.zeros(action_dim)
    obs_mean, obs_std = _observation_stats(dataset.observations, config.normalize_obs)
    params = Params(
        actor=actor.init(actor_key, dummy_obs),
        critic=critic.init(critic_key, dummy_obs, dummy_action),
        obs_mean=obs_mean,
        obs_std=obs_std,
        action_dim=action_dim,
    )
    return TrainState(
        params=params,
        target_actor=params.actor,
        target_critic=params.critic,
        actor_opt=optax.adam(config.actor_lr).init(params.actor),
        critic_opt=optax.adam(config.critic_lr).init(params.critic),
        actor_metrics={name: jnp.zeros(()) for name in ACTOR_METRICS},
        rng=rng,
        step=jnp.zeros((), jnp.int32),
    )


def update_on_batch(config: Config, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    """One critic step; the actor and both targets move on every ``policy_freq``-th step (the
    actor's metrics on the other steps are the last actor step's)."""
    params = state.params
    actor, _ = _networks(config, batch["actions"].shape[-1])
    batch = batch | {
        "observations": _normalize(params, batch["observations"]),
        "next_observations": _normalize(params, batch["next_observations"]),
    }
    rng, noise_key = jax.random.split(state.rng)

    # Target policy smoothing.
    noise = config.policy_noise * jax.random.normal(noise_key, batch["actions"].shape)
    noise = jnp.clip(noise, -config.noise_clip, config.noise_clip)
    next_pi = actor.apply(state.target_actor, batch["next_observations"])
    next_action = jnp.clip(next_pi + noise, -1.0, 1.0)
    (loss_q, q_mean), critic_grads = jax.value_and_grad(critic_loss, has_aux=True)(
        params.critic, batch, next_action, state.target_critic, config
    )
    updates, critic_opt = optax.adam(config.critic_lr).update(critic_grads, state.critic_opt)
    params = params.replace(critic=optax.apply_updates(params.critic, updates))

    # Delayed actor and targets (TD3 counts steps from 1: the actor moves on steps 2, 4, ...).
    kept = {
        "actor": params.actor,
        "actor_opt": state.actor_opt,
        "target_actor": state.target_actor,
        "target_critic": state.target_critic,
        "actor_metrics": state.actor_metrics,
    }
    actor_step = (state.step + 1) % config.policy_freq == 0

    def move(kept):
        (loss_pi, aux), actor_grads = jax.value_and_grad(actor_loss, has_aux=True)(
            params.actor, params.critic, batch, config
        )
        updates, actor_opt = optax.adam(config.actor_lr).update(actor_grads, state.actor_opt)
        new_actor = optax.apply_updates(params.actor, updates)
        moved = {
            "actor": new_actor,
            "actor_opt": actor_opt,
            "target_actor": optax.incremental_update(new_actor, state.target_actor, config.tau),
            "target_critic": optax.incremental_update(
                params.critic, state.target_critic, config.tau
            ),
            "actor_metrics": {
                "actor_loss": loss_pi,
                "bc_loss": aux["bc_loss"],
                "lambda": aux["lambda"],
                "actor_grad_norm": optax.tree.norm(actor_grads),
            },
        }
        # Under vmap another member's actor step may bring a member here: it keeps its own.
        return jax.tree.map(lambda m, k: jnp.where(actor_step, m, k), moved, kept)

    new = jax.lax.cond(_any_member(actor_step), move, lambda kept: kept, kept)
    state = state.replace(
        params=params.replace(actor=new["actor"]),
        target_actor=new["target_actor"],
        target_critic=new["target_critic"],
        actor_opt=new["actor_opt"],
        critic_opt=critic_opt,
        actor_metrics=new["actor_metrics"],
        rng=rng,
        step=state.step + 1,
    )
    metrics = {
        "critic_loss": loss_q,
        "q_mean": q_mean,
        "grad_norm": optax.tree.norm(critic_grads),
        **new["actor_metrics"],
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
    """The actor's action on raw observations; deterministic either way, as TD3+BC evaluates."""
    actor, _ = _networks(config, params.action_dim)
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
    config = Config(total_updates=20_000, hidden_sizes=(64, 64), actor_lr=1e-3, critic_lr=1e-3)
    start = time.time()
    state, metrics = jax.jit(lambda key: train(config, dataset, key))(jax.random.PRNGKey(1))
    print(f"TD3+BC on {episodes} noisy swing-up episodes of Pendulum-v1: "
          f"{config.total_updates} updates in {time.time() - start:.1f}s")  # fmt: skip
    for i in np.linspace(1, config.total_updates - 1, 5).astype(int):
        losses = {k: float(metrics[k][i]) for k in ("critic_loss", "bc_loss", "q_mean")}
        print(f"  update {i + 1:>6d}  " + "  ".join(f"{k} {v:.3f}" for k, v in losses.items()))
    greedy = lambda o, _: act(config, state.params, o, None, deterministic=True)  # noqa: E731
    eval_rewards = jax.jit(jax.vmap(lambda k: rollout(k, greedy)[2]))(jax.random.split(keys[0], 10))
    print(f"  dataset return {float(rewards.sum(1).mean()):.1f}, greedy policy return "
          f"{float(eval_rewards.sum(1).mean()):.1f} over 10 episodes")  # fmt: skip
