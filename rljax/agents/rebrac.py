"""ReBRAC: TD3+BC with a behaviour penalty in the critic target, LayerNorm critics, large batches.

Tarasov, Kurenkov, Nikulin, Kolesnikov, "Revisiting the Minimalist Approach to Offline
Reinforcement Learning", NeurIPS 2023. Follows CORL's ``algorithms/offline/rebrac.py`` (the plain
target; DT6A/ReBRAC's later "calibration" branch, max(target, Monte-Carlo return), is not the
paper's algorithm and is left out).

    a~' = clip(pibar(s') + clip(N(0, sigma^2), -c, c), -1, 1)
    y   = r + gamma (1 - d) [min_i Qbar_i(s', a~') - beta_critic m ||a~' - a'||^2]
    L_Q = sum_i mean((Q_i(s, a) - y)^2)
    L_pi = mean(beta_actor ||pi(s) - a||^2 - lambda min_i Q_i(s, pi(s))),
           lambda = 1 / mean|min_i Q_i(s, pi(s))|  (stop-gradient; 1 without normalize_q)
    every policy_freq steps: actor step, then pibar <- (1 - tau) pibar + tau pi, same for Qbar

a' is the dataset's next action (row i + 1 of the same episode, see ``sample_batch``); squared
norms are summed over action dimensions (TD3+BC's BC term is a mean). m masks the critic penalty
where no next action is recorded (after a time limit or at the end of the data; D4RL's
``qlearning_dataset`` drops those rows). Critics: an ensemble of ``num_critics`` MLPs with
LayerNorm after each hidden ReLU; the actor is a deterministic tanh MLP. Observations are
normalized with the dataset's statistics, (s - mu) / (sigma + 1e-3). Actions are assumed in
[-1, 1] (the D4RL convention). Defaults are CORL's MuJoCo ones with hopper-medium's
(beta_actor, beta_critic) = (0.01, 0.01); the paper tunes them per dataset.
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
    'Tarasov et al., "Revisiting the Minimalist Approach to Offline Reinforcement Learning", '
    "NeurIPS 2023"
)

OBS_EPS = 1e-3
# The dataset arrays that sample_batch reads (rljax.data.Dataset's fields).
FIELDS = ("observations", "actions", "rewards", "terminals", "timeouts", "next_observations")


def _field(default, *, static=False, bounds=None, choices=None, doc):
    """A config field. Static fields are shapes and switches (changing one recompiles); the
    rest are traced, so a sweep can vmap over them. bounds/choices let a runner validate; doc,
    the field's meaning in one line, is required so that no field goes unexplained."""
    metadata = {"bounds": bounds, "choices": choices, "doc": doc}
    return struct.field(pytree_node=not static, default=default, metadata=metadata)


@struct.dataclass
class Config:
    batch_size: int = _field(
        1024, static=True, bounds="[1, inf)", doc="transitions per gradient step"
    )
    total_updates: int = _field(
        1_000_000, static=True, bounds="[1, inf)", doc="gradient steps in all (the budget)"
    )
    hidden_sizes: tuple = _field(
        (256, 256, 256), static=True, doc="hidden-layer widths of the actor and every critic"
    )
    num_critics: int = _field(2, static=True, bounds="[1, inf)", doc="critics in the ensemble")
    critic_layernorm: bool = _field(
        True, static=True, doc="layer norm after each hidden ReLU of the critics"
    )
    actor_layernorm: bool = _field(
        False, static=True, doc="layer norm after each hidden ReLU of the actor"
    )
    normalize_obs: bool = _field(
        True, static=True, doc="normalize observations by the dataset's mean and std"
    )
    normalize_q: bool = _field(
        True, static=True, doc="scale the actor's Q-term by lambda = 1 / mean|Q|"
    )
    policy_freq: int = _field(
        2, static=True, bounds="[1, inf)", doc="gradient steps per actor and target update"
    )
    actor_lr: float = _field(1e-3, bounds="(0, inf)", doc="Adam learning rate of the actor")
    critic_lr: float = _field(1e-3, bounds="(0, inf)", doc="Adam learning rate of the critics")
    gamma: float = _field(0.99, bounds="[0, 1]", doc="discount factor gamma")
    tau: float = _field(
        5e-3, bounds="(0, 1]", doc="Polyak rate tau of the target actor and critics"
    )
    actor_bc_coef: float = _field(
        0.01, bounds="[0, inf)", doc="behaviour penalty weight beta_actor in the actor loss"
    )
    critic_bc_coef: float = _field(
        0.01, bounds="[0, inf)", doc="behaviour penalty weight beta_critic in the critic target"
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
    critic: Any  # the ensemble, stacked on a leading axis of num_critics
    obs_mean: jax.Array
    obs_std: jax.Array
    action_dim: int = struct.field(pytree_node=False, default=1)


@struct.dataclass
class TrainState:
    params: Params
    target_actor: Any
    target_critic: Any
    actor_opt: Any
    critic_opt: Any
    rng: jax.Array
    update_step: jax.Array  # gradient steps done so far


# --- Networks (CORL's initialization: PyTorch's default uniform, small output layers) ---


def _torch_init():
    return nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


_BIAS = nn.initializers.constant(0.1)


def _mlp(x, hidden_sizes, layernorm):
    for size in hidden_sizes:
        x = nn.relu(nn.Dense(size, kernel_init=_torch_init(), bias_init=_BIAS)(x))
        x = nn.LayerNorm()(x) if layernorm else x
    return x


def _uniform(scale):
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(
        key, shape, dtype, -scale, scale
    )


class Actor(nn.Module):
    action_dim: int
    hidden_sizes: tuple
    layernorm: bool

    @nn.compact
    def __call__(self, obs):
        x = _mlp(obs, self.hidden_sizes, self.layernorm)
        out = nn.Dense(
            self.action_dim, name="out", kernel_init=_uniform(1e-3), bias_init=_uniform(1e-3)
        )
        return jnp.tanh(out(x))


class Critic(nn.Module):
    hidden_sizes: tuple
    layernorm: bool

    @nn.compact
    def __call__(self, obs, action):
        x = _mlp(jnp.concatenate([obs, action], -1), self.hidden_sizes, self.layernorm)
        out = nn.Dense(1, kernel_init=_uniform(3e-3), bias_init=_uniform(3e-3))
        return jnp.squeeze(out(x), -1)


class Ensemble(nn.Module):
    """num_critics independent critics evaluated as one vmapped network; outputs (n, ...)."""

    num_critics: int
    hidden_sizes: tuple
    layernorm: bool

    @nn.compact
    def __call__(self, obs, action):
        members = nn.vmap(
            Critic,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=None,
            axis_size=self.num_critics,
        )
        return members(self.hidden_sizes, self.layernorm)(obs, action)


def _networks(config: Config, action_dim: int) -> tuple[Actor, Ensemble]:
    hidden = tuple(config.hidden_sizes)
    return (
        Actor(action_dim, hidden, config.actor_layernorm),
        Ensemble(config.num_critics, hidden, config.critic_layernorm),
    )


def normalize(params: Params, obs):
    return (obs - params.obs_mean) / (params.obs_std + OBS_EPS)


# --- Losses (observations already normalized) ---


def critic_target(batch, next_action, target_critic, config):
    """y = r + gamma (1 - d) [min_i Qbar_i(s', a~') - beta_critic m ||a~' - a'||^2]."""
    _, critic = _networks(config, next_action.shape[-1])
    q_next = critic.apply(target_critic, batch["next_observations"], next_action).min(0)
    penalty = jnp.square(next_action - batch["next_actions"]).sum(-1) * batch["next_action_mask"]
    bootstrap = config.gamma * (1.0 - batch["terminals"])
    return batch["rewards"] + bootstrap * (q_next - config.critic_bc_coef * penalty)


def critic_loss(critic_params, batch, target, config):
    """sum over critics of the mean squared error to the (constant) target."""
    _, critic = _networks(config, batch["actions"].shape[-1])
    q = critic.apply(critic_params, batch["observations"], batch["actions"])
    loss = jnp.square(q - jax.lax.stop_gradient(target)).mean(-1).sum()
    return loss, q.mean()


def actor_loss(actor_params, critic_params, batch, config):
    """mean(beta_actor ||pi(s) - a||^2 - lambda min_i Q_i(s, pi(s))), lambda stop-gradient."""
    actor, critic = _networks(config, batch["actions"].shape[-1])
    action = actor.apply(actor_params, batch["observations"])
    bc = jnp.square(action - batch["actions"]).sum(-1)
    q = critic.apply(critic_params, batch["observations"], action).min(0)
    lam = jax.lax.stop_gradient(1.0 / jnp.abs(q).mean()) if config.normalize_q else 1.0
    loss = (config.actor_bc_coef * bc - lam * q).mean()
    return loss, {"bc_mse": bc.mean(), "lambda": lam * jnp.ones(())}


# --- Sampling ---


def sample_batch(config: Config, dataset, rng: jax.Array) -> dict:
    """A uniform batch with the dataset's next action a' = actions[i + 1] and its mask m.

    m is 0 where row i ends an episode (terminal, timeout) or the data, where row i + 1 belongs
    to another episode; terminals are cut from the target anyway.
    """
    data = {k: getattr(dataset, k) for k in FIELDS}
    size = data["rewards"].shape[0]
    idx = jax.random.randint(rng, (config.batch_size,), 0, size)
    batch = {k: data[k][idx] for k in ("observations", "actions", "rewards", "terminals")}
    batch["next_observations"] = data["next_observations"][idx]
    batch["next_actions"] = data["actions"][jnp.minimum(idx + 1, size - 1)]
    ends = jnp.maximum(data["terminals"][idx], data["timeouts"][idx])
    batch["next_action_mask"] = jnp.where(idx + 1 < size, 1.0 - ends, 0.0)
    return batch


# --- The contract ---


def init(config: Config, dataset, rng: jax.Array) -> TrainState:
    obs, actions = np.asarray(dataset.observations), np.asarray(dataset.actions)
    if obs.ndim != 2 or actions.ndim != 2:
        raise ValueError(
            f"ReBRAC takes vector observations and actions, got observations {obs.shape} and "
            f"actions {actions.shape}"
        )
    if np.abs(actions).max() > 1 + 1e-4:
        raise ValueError(
            f"ReBRAC's tanh actor needs dataset actions in [-1, 1], found |a| up to "
            f"{np.abs(actions).max():.4g}: rescale them (D4RL convention)"
        )
    if config.normalize_obs:
        mean, std = obs.mean(0), obs.std(0)
    else:
        mean, std = np.zeros(obs.shape[1]), np.full(obs.shape[1], 1 - OBS_EPS)
    actor, critic = _networks(config, actions.shape[1])
    rng, actor_key, critic_key = jax.random.split(rng, 3)
    dummy_obs, dummy_action = jnp.zeros(obs.shape[1]), jnp.zeros(actions.shape[1])
    params = Params(
        actor=actor.init(actor_key, dummy_obs),
        critic=critic.init(critic_key, dummy_obs, dummy_action),
        obs_mean=jnp.asarray(mean, jnp.float32),
        obs_std=jnp.asarray(std, jnp.float32),
        action_dim=actions.shape[1],
    )
    return TrainState(
        params=params,
        target_actor=params.actor,
        target_critic=params.critic,
        actor_opt=optax.adam(config.actor_lr).init(params.actor),
        critic_opt=optax.adam(config.critic_lr).init(params.critic),
        rng=rng,
        update_step=jnp.zeros((), jnp.int32),
    )


def update_on_batch(config: Config, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    """One critic step; every policy_freq-th call also an actor step and the Polyak targets."""
    params = state.params
    actor, _ = _networks(config, batch["actions"].shape[-1])
    batch = dict(batch)
    batch.setdefault("next_action_mask", jnp.ones_like(batch["rewards"]))
    batch["observations"] = normalize(params, batch["observations"])
    batch["next_observations"] = normalize(params, batch["next_observations"])
    rng, noise_key = jax.random.split(state.rng)

    next_action = actor.apply(state.target_actor, batch["next_observations"])
    noise = jax.random.normal(noise_key, next_action.shape) * config.policy_noise
    next_action = jnp.clip(
        next_action + jnp.clip(noise, -config.noise_clip, config.noise_clip), -1, 1
    )
    target = critic_target(batch, next_action, state.target_critic, config)
    (loss_q, q_mean), critic_grads = jax.value_and_grad(critic_loss, has_aux=True)(
        params.critic, batch, target, config
    )
    updates, critic_opt = optax.adam(config.critic_lr).update(critic_grads, state.critic_opt)
    params = params.replace(critic=optax.apply_updates(params.critic, updates))
    state = state.replace(params=params, critic_opt=critic_opt, rng=rng)

    def actor_step(state: TrainState):
        params = state.params
        (loss_pi, aux), grads = jax.value_and_grad(actor_loss, has_aux=True)(
            params.actor, params.critic, batch, config
        )
        updates, actor_opt = optax.adam(config.actor_lr).update(grads, state.actor_opt)
        params = params.replace(actor=optax.apply_updates(params.actor, updates))
        state = state.replace(
            params=params,
            actor_opt=actor_opt,
            target_actor=optax.incremental_update(params.actor, state.target_actor, config.tau),
            target_critic=optax.incremental_update(params.critic, state.target_critic, config.tau),
        )
        return state, loss_pi, aux

    def critic_only(state: TrainState):  # the actor loss is still reported
        loss_pi, aux = actor_loss(state.params.actor, state.params.critic, batch, config)
        return state, loss_pi, aux

    actor_turn = state.update_step % config.policy_freq == 0
    state, loss_pi, aux = jax.lax.cond(actor_turn, actor_step, critic_only, state)
    state = state.replace(update_step=state.update_step + 1)
    metrics = {
        "critic_loss": loss_q,
        "actor_loss": loss_pi,
        "q_mean": q_mean,
        "target_mean": target.mean(),
        "grad_norm": optax.tree.norm(critic_grads),
        **aux,
    }
    return state, metrics


def update(config: Config, dataset, state: TrainState) -> tuple[TrainState, dict]:
    """One gradient step on a batch sampled inside jit."""
    rng, batch_key = jax.random.split(state.rng)
    return update_on_batch(config, state.replace(rng=rng), sample_batch(config, dataset, batch_key))


def train(config: Config, dataset, rng: jax.Array, num_updates: int | None = None):
    """init, then num_updates (default: total_updates) updates on uniform batches."""
    num_updates = config.num_updates if num_updates is None else num_updates
    state = init(config, dataset, rng)
    return jax.lax.scan(lambda state, _: update(config, dataset, state), state, None, num_updates)


def act(config: Config, params: Params, obs: jax.Array, rng: jax.Array, deterministic=False):
    """The deterministic policy pi(s); rng and deterministic are there for the common contract."""
    actor, _ = _networks(config, params.action_dim)
    return actor.apply(params.actor, normalize(params, obs))


if __name__ == "__main__":
    import time

    import gymnax

    env, env_params = gymnax.make("Pendulum-v1")
    max_torque = 2.0

    def rollouts(rng, num_episodes=20, noise=0.3):
        """A noisy energy-pumping controller on Pendulum; actions scaled to [-1, 1]."""

        def episode(key):
            key, reset_key = jax.random.split(key)
            obs, env_state = env.reset(reset_key, env_params)

            def step(carry, _):
                obs, env_state, key = carry
                key, noise_key, step_key = jax.random.split(key, 3)
                cos, sin, vel = obs
                # Upright: PD; elsewhere: push along the velocity to pump energy.
                upright = jnp.clip(-(10 * jnp.arctan2(sin, cos) + 2 * vel) / max_torque, -1, 1)
                action = jnp.where(cos > 0.8, upright, jnp.sign(vel + 1e-3))
                action = jnp.clip(action + noise * jax.random.normal(noise_key), -1, 1)[None]
                next_obs, env_state, reward, done, _ = env.step_env(  # no auto-reset
                    step_key, env_state, action * max_torque, env_params
                )
                return (next_obs, env_state, key), (obs, action, reward, next_obs, done)

            _, out = jax.lax.scan(
                step, (obs, env_state, key), None, env_params.max_steps_in_episode
            )
            return out

        obs, actions, rewards, next_obs, dones = jax.vmap(episode)(
            jax.random.split(rng, num_episodes)
        )
        flat = lambda x: np.asarray(x).reshape(-1, *x.shape[2:])  # noqa: E731
        timeouts = np.asarray(dones, np.float32)  # Pendulum only ends at its time limit
        return flat(obs), flat(actions), flat(rewards), flat(next_obs), flat(timeouts)

    @struct.dataclass
    class Data:  # the six fields of rljax.data.Dataset
        observations: jax.Array
        actions: jax.Array
        rewards: jax.Array
        terminals: jax.Array
        timeouts: jax.Array
        next_observations: jax.Array

    obs, actions, rewards, next_obs, timeouts = rollouts(jax.random.PRNGKey(0))
    # Device arrays: sample_batch indexes them with traced row numbers (numpy cannot).
    columns = (obs, actions, rewards, np.zeros_like(rewards), timeouts, next_obs)
    dataset = Data(*(jnp.asarray(x) for x in columns))
    print(f"dataset: {len(rewards)} transitions, mean episode return {rewards.sum() / 20:.1f}")

    def evaluate(params, rng, num_episodes=10):
        def episode(key):
            obs, env_state = env.reset(key, env_params)

            def step(carry, key):
                obs, env_state, total = carry
                action = act(config, params, obs, key, deterministic=True)
                obs, env_state, reward, _, _ = env.step_env(
                    key, env_state, action * max_torque, env_params
                )
                return (obs, env_state, total + reward), None

            keys = jax.random.split(key, env_params.max_steps_in_episode)
            return jax.lax.scan(step, (obs, env_state, 0.0), keys)[0][2]

        return jax.vmap(episode)(jax.random.split(rng, num_episodes)).mean()

    # Small networks and batches, so that it runs in about a minute on a laptop CPU.
    config = Config(batch_size=256, total_updates=10_000, hidden_sizes=(64, 64))
    start = time.time()
    state, metrics = jax.block_until_ready(
        jax.jit(lambda key: train(config, dataset, key))(jax.random.PRNGKey(1))
    )
    print(
        f"ReBRAC on Pendulum-v1 data: {config.total_updates} updates in {time.time() - start:.1f}s"
    )
    for i in np.linspace(999, config.total_updates - 1, 5).astype(int):
        window = slice(i - 999, i + 1)
        print(
            f"  update {i + 1:>6d}  critic_loss {np.mean(metrics['critic_loss'][window]):8.3f}"
            f"  actor_loss {np.mean(metrics['actor_loss'][window]):7.3f}"
            f"  q_mean {np.mean(metrics['q_mean'][window]):8.2f}"
        )
    print(f"greedy return: {float(evaluate(state.params, jax.random.PRNGKey(2))):.1f}")
