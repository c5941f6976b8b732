"""A2PR: TD3+BC whose behaviour term pulls only towards high-advantage actions, found by a VAE.

Liu, Li, Lan, Gao, Pan, Xu, "Adaptive Advantage-Guided Policy Regularization for Offline
Reinforcement Learning", ICML 2024 (ltlhuuu/A2PR, ``A2PR.py``). Each gradient step, in this
order (m = 1 - terminal, Q_1 the first critic, V0 = V(s) before this step's value update):

    a' = clip(pibar(s') + clip(N(0, sigma^2), -c, c), -1, 1)
    L_Q   = sum_i mean((Q_i(s, a) - (r + gamma m min_i Qbar_i(s', a')))^2)      (TD3)
    t     = min(r + gamma m min_i Qbar_i(s', a'), r + gamma m min_i Q_i(s', a'))  (new Q)
    L_V   = mean((V(s) - t)^2)
    L_vae = mean(w 1[Q_1(s, a) > V0] (dec(s, z) - a)^2) + 0.5 KL(N(mu, sigma) || N(0, I)),
            (mu, log sigma) = enc(s, a), z = mu + sigma eps                   (w = vae_weight)
    every policy_freq steps, with the new Q and VAE:
    pi~   = dec(s, z), (mu, log sigma) = enc(s, pi(s)), z = mu + sigma eps   (pi(s) reconstructed)
    a_bar = pi~ if Q_1(s, pi~) - V0 >= Q_1(s, a) - V0 else a
    M     = mask (1[Q_1(s, pi~) >= V0] + 1[Q_1(s, a) > V0])
    L_pi  = -lambda mean Q_1(s, pi(s)) + mean(M (pi(s) - a_bar)^2),  lambda = alpha / mean|Q_1|
    Qbar <- (1 - tau) Qbar + tau Q,  pibar <- (1 - tau) pibar + tau pi

The VAE is BCQ's: encoder and decoder MLPs (``vae_hidden_sizes``, 750 x 750 in the paper),
latent 2 |A|, log sigma clipped to [-4, 15], a tanh decoder; ``vae_sample`` draws from it as
BCQ does, z ~ N(0, I) clipped to [-0.5, 0.5] (A2PR's update never samples the prior: pi~ is
the reconstruction of pi(s)). Squared errors are means over the batch and the action
dimensions, as the authors' ``F.mse_loss`` and ``.mean()``; so is the KL (over latent dims).

The actor's step (its loss, gradient and Adam step) and both Polyak updates run inside a
``lax.cond`` on whether any member is at its actor step (``_any_member``), so the other steps
skip them, under vmap (seeds, sweeps) too, where a plain batched cond would run both branches.
On those steps ``actor_loss``, ``bc_loss``, ``lambda``, ``pi_target_fraction`` and
``mask_mean`` repeat the last actor step's values (zeros before the first), carried in the
state as ``actor_metrics``.

Where the paper and the authors' code differ, or the paper is silent, this file follows the code:
the VAE's advantage threshold (the paper's epsilon_A) is 0; V0 in the VAE's and the actor's
comparisons is the value before its update on this batch; Q_1(s, pi~), Q_1(s, a), V0 and lambda
carry no gradient (the first three enter only through comparisons, lambda is detached), but
a_bar = pi~ does: the code does not detach the reconstruction, so the actor's gradient runs
through the VAE (encoder and decoder) back into pi(s), while the VAE's weights learn from L_vae
alone. The code's networks are 3 x
256 (actor) and 4 x 256 (critics, V); here ``hidden_sizes`` sets all three, (256, 256) by
default as in TD3+BC. Defaults are the README's (alpha 2.5, vae_weight 1.0, mask 1.0; hopper uses
mask 0.4 and gamma 0.995; the code's command-line default mask is 0.5), Adam at 3e-4 for the
actor, critics and V and Adam's default 1e-3 for the VAE. Observations are normalized by the
dataset's statistics, (s - mu) / (sigma + 1e-3), as the code does; rewards are not rescaled.
Actions are assumed in [-1, 1] (the D4RL convention). Timeouts are not terminals. The VAE sets
the cost: with 256 x 256 networks and batch 256 an update holds 1.65x IQL's arithmetic with a
256 x 256 VAE and 5.3x with the paper's 750 x 750, and took 1.8-2x and 5.3-6x its time on a CPU.
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
    'Liu et al., "Adaptive Advantage-Guided Policy Regularization for Offline Reinforcement '
    'Learning", ICML 2024'
)

LOG_STD_MIN, LOG_STD_MAX = -4.0, 15.0  # the VAE encoder's clip, as BCQ's
LATENT_CLIP = 0.5  # prior samples z ~ N(0, I) clipped to [-0.5, 0.5] (BCQ)


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
        (256, 256), static=True, doc="hidden-layer widths of the actor, both critics and V"
    )
    vae_hidden_sizes: tuple = _field(
        (750, 750), static=True, doc="hidden-layer widths of the VAE's encoder and decoder"
    )
    normalize_obs: bool = _field(
        True, static=True, doc="normalize observations by the dataset's mean and std"
    )
    policy_freq: int = _field(
        2, static=True, bounds="[1, inf)", doc="gradient steps per actor and target update"
    )
    actor_lr: float = _field(3e-4, bounds="(0, inf)", doc="Adam learning rate of the actor")
    critic_lr: float = _field(3e-4, bounds="(0, inf)", doc="Adam learning rate of the critics")
    value_lr: float = _field(3e-4, bounds="(0, inf)", doc="Adam learning rate of the value V")
    vae_lr: float = _field(1e-3, bounds="(0, inf)", doc="Adam learning rate of the VAE")
    gamma: float = _field(0.99, bounds="[0, 1]", doc="discount factor gamma")
    tau: float = _field(
        0.005, bounds="(0, 1]", doc="Polyak rate tau of the target actor and critics"
    )
    alpha: float = _field(
        2.5, bounds="[0, inf)", doc="alpha of the Q-term weight lambda = alpha / mean|Q|"
    )
    vae_weight: float = _field(
        1.0, bounds="[0, inf)", doc="weight w of the VAE's reconstruction of positive actions"
    )
    mask: float = _field(
        1.0, bounds="[0, inf)", doc="scale of the advantage mask M on the actor's bc term"
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
    value: Any
    vae: Any
    obs_mean: jax.Array  # normalized obs = (obs - obs_mean) / obs_std
    obs_std: jax.Array
    action_dim: int = struct.field(pytree_node=False, default=1)


ACTOR_METRICS = ("actor_loss", "bc_loss", "lambda", "pi_target_fraction", "mask_mean")


@struct.dataclass
class TrainState:
    params: Params
    target_actor: Any
    target_critic: Any
    actor_opt: Any
    critic_opt: Any
    value_opt: Any
    vae_opt: Any
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


class Value(nn.Module):
    hidden_sizes: tuple

    @nn.compact
    def __call__(self, obs):
        x = _mlp(obs, self.hidden_sizes)
        return jnp.squeeze(nn.Dense(1)(x), -1)


class VAE(nn.Module):
    """BCQ's conditional VAE: enc(s, a) -> (mu, log sigma) of z, dec(s, z) -> tanh action."""

    action_dim: int
    latent_dim: int
    hidden_sizes: tuple

    def setup(self):
        self.encoder = [nn.Dense(size) for size in self.hidden_sizes]
        self.mean = nn.Dense(self.latent_dim)
        self.log_std = nn.Dense(self.latent_dim)
        self.decoder = [nn.Dense(size) for size in self.hidden_sizes]
        self.out = nn.Dense(self.action_dim)

    def __call__(self, obs, action, noise):
        """The reconstruction dec(s, mu + sigma noise), mu and log sigma; noise ~ N(0, I)."""
        x = jnp.concatenate([obs, action], -1)
        for layer in self.encoder:
            x = nn.relu(layer(x))
        mean = self.mean(x)
        log_std = jnp.clip(self.log_std(x), LOG_STD_MIN, LOG_STD_MAX)
        return self.decode(obs, mean + jnp.exp(log_std) * noise), mean, log_std

    def decode(self, obs, z):
        x = jnp.concatenate([obs, z], -1)
        for layer in self.decoder:
            x = nn.relu(layer(x))
        return jnp.tanh(self.out(x))


def _networks(config: Config, action_dim: int) -> tuple[Actor, TwinCritic]:
    hidden = tuple(config.hidden_sizes)
    return Actor(action_dim, hidden), TwinCritic(hidden)


def _value_and_vae(config: Config, action_dim: int) -> tuple[Value, VAE]:
    vae = VAE(action_dim, 2 * action_dim, tuple(config.vae_hidden_sizes))
    return Value(tuple(config.hidden_sizes)), vae


def first_critic(config: Config, critic_params, obs, action):
    """Q_1(s, a) alone, at one critic's cost: the first slice of the twins' stacked weights."""
    first = jax.tree.map(lambda x: x[0], critic_params["params"]["VmapCritic_0"])
    return Critic(tuple(config.hidden_sizes)).apply({"params": first}, obs, action)


def _normalize(params: Params, obs):
    return (obs - params.obs_mean) / params.obs_std


# --- Data ---


BATCH_KEYS = ("observations", "actions", "rewards", "terminals", "next_observations")


def sample_batch(config: Config, dataset, rng: jax.Array) -> dict:
    """Rows drawn uniformly with replacement, as the dict ``update_on_batch`` takes."""
    idx = jax.random.randint(rng, (config.batch_size,), 0, dataset.rewards.shape[0])
    return {k: getattr(dataset, k)[idx] for k in BATCH_KEYS}


# --- Losses (observations already normalized) ---


def critic_loss(critic_params, batch, next_action, target_critic, config: Config):
    """Both critics regress on r + gamma (1 - terminal) min_i Qbar_i(s', a'); batch normalized."""
    _, critic = _networks(config, batch["actions"].shape[-1])
    q_next = critic.apply(target_critic, batch["next_observations"], next_action).min(0)
    target = batch["rewards"] + config.gamma * (1.0 - batch["terminals"]) * q_next
    q = critic.apply(critic_params, batch["observations"], batch["actions"])
    loss = jnp.square(q - jax.lax.stop_gradient(target)).mean(-1).sum()
    return loss, q.mean()


def value_target(critic_params, target_critic, batch, next_action, config: Config):
    """t = min(r + gamma m min_i Qbar_i(s', a'), r + gamma m min_i Q_i(s', a')), m = 1 - terminal:
    the smaller of the target critics' and the (just updated) online critics' TD3 targets."""
    _, critic = _networks(config, batch["actions"].shape[-1])
    discount = config.gamma * (1.0 - batch["terminals"])
    obs = batch["next_observations"]
    from_target = batch["rewards"] + discount * critic.apply(target_critic, obs, next_action).min(0)
    from_online = batch["rewards"] + discount * critic.apply(critic_params, obs, next_action).min(0)
    return jax.lax.stop_gradient(jnp.minimum(from_target, from_online))


def value_loss(value_params, batch, target, config: Config):
    """mean((V(s) - t)^2); also returns V(s), the V0 of the VAE's and the actor's comparisons."""
    value, _ = _value_and_vae(config, batch["actions"].shape[-1])
    v = value.apply(value_params, batch["observations"])
    return jnp.square(v - target).mean(), v


def vae_loss(vae_params, batch, q_data, v, noise, config: Config):
    """Reconstruction of the advantage-positive actions only (Q_1(s, a) > V0, weight w) plus
    half the KL to N(0, I). q_data = Q_1(s, a) and v = V0 are (B,) and held fixed; noise (B, 2|A|)
    draws the latent z = mu + sigma noise."""
    _, vae = _value_and_vae(config, batch["actions"].shape[-1])
    recon, mean, log_std = vae.apply(vae_params, batch["observations"], batch["actions"], noise)
    positive = jax.lax.stop_gradient(q_data > v).astype(recon.dtype)
    error = jnp.square(recon - batch["actions"])
    recon_loss = (config.vae_weight * positive[:, None] * error).mean()
    kl = -0.5 * (1 + 2 * log_std - jnp.square(mean) - jnp.exp(2 * log_std)).mean()
    aux = {"recon_loss": recon_loss, "kl_loss": kl, "positive_fraction": positive.mean()}
    return recon_loss + 0.5 * kl, aux


def advantage_target(recon_pi, actions, q_recon, q_data, v, mask):
    """The actor's regression target a_bar and its weight M, per row.

    a_bar = pi~ where Q_1(s, pi~) - V0 >= Q_1(s, a) - V0 (a tie goes to pi~), else a;
    M = mask (1[Q_1(s, pi~) >= V0] + 1[Q_1(s, a) > V0]), so 0, mask or 2 mask. Q and V enter
    through comparisons only and are held fixed; a_bar keeps pi~'s gradient, as the code does.
    """
    q_recon, q_data, v = (jax.lax.stop_gradient(x) for x in (q_recon, q_data, v))
    take_pi = q_recon - v >= q_data - v
    target = jnp.where(take_pi[:, None], recon_pi, actions)
    weight = mask * ((q_recon >= v).astype(recon_pi.dtype) + (q_data > v).astype(recon_pi.dtype))
    return target, weight, take_pi


def actor_loss(actor_params, params: Params, batch, q_data, v, noise, config: Config):
    """-lambda mean Q_1(s, pi(s)) + mean(M (pi(s) - a_bar)^2), lambda = alpha / mean|Q_1| held
    fixed; pi~ is the VAE's reconstruction of pi(s) (its weights held fixed here)."""
    actor, _ = _networks(config, batch["actions"].shape[-1])
    _, vae = _value_and_vae(config, batch["actions"].shape[-1])
    obs = batch["observations"]
    pi = actor.apply(actor_params, obs)
    q_pi = first_critic(config, params.critic, obs, pi)
    lmbda = jax.lax.stop_gradient(config.alpha / jnp.abs(q_pi).mean())
    recon_pi, _, _ = vae.apply(params.vae, obs, pi, noise)
    q_recon = first_critic(config, params.critic, obs, recon_pi)
    target, weight, take_pi = advantage_target(
        recon_pi, batch["actions"], q_recon, q_data, v, config.mask
    )
    bc = (weight[:, None] * jnp.square(pi - target)).mean()
    aux = {
        "bc_loss": bc,
        "lambda": lmbda,
        "pi_target_fraction": take_pi.mean(),
        "mask_mean": weight.mean(),
    }
    return -lmbda * q_pi.mean() + bc, aux


# --- The contract ---


def _observation_stats(observations, normalize: bool):
    if not normalize:
        return jnp.zeros(observations.shape[1:]), jnp.ones(observations.shape[1:])
    return observations.mean(0), observations.std(0) + 1e-3


def _check_dataset(dataset) -> None:
    if dataset.observations.ndim != 2 or dataset.actions.ndim != 2:
        raise ValueError(
            f"A2PR takes vector observations and actions, got shapes "
            f"{dataset.observations.shape[1:]} and {dataset.actions.shape[1:]}"
        )
    if isinstance(dataset.actions, jax.core.Tracer):
        return  # a dataset passed through jit as an argument: close over it to get this check
    largest = float(np.abs(np.asarray(dataset.actions)).max())
    if largest > 1 + 1e-4:
        raise ValueError(
            f"dataset actions reach {largest:.4g} but the tanh actor and the VAE's tanh decoder "
            "act in [-1, 1]: rescale the dataset's actions into [-1, 1] (the D4RL convention)"
        )


def check(config: Config) -> None:
    """The rules across Config fields; the runner calls it on each concrete config (traced
    values, as in a config passed through jit, are skipped)."""
    if config.total_updates < config.policy_freq:
        raise ValueError(
            f"total_updates={config.total_updates} < policy_freq={config.policy_freq}: the "
            "actor would never be updated"
        )
    if any(isinstance(x, jax.core.Tracer) for x in (config.alpha, config.mask)):
        return
    if float(config.alpha) == 0 and float(config.mask) == 0:
        raise ValueError(
            "alpha=0 and mask=0 leave the actor no loss (neither the Q-term nor the bc term): "
            "set one of them above 0"
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
    actor_key, critic_key, value_key, vae_key, rng = jax.random.split(rng, 5)
    obs_dim, action_dim = dataset.observations.shape[-1], dataset.actions.shape[-1]
    actor, critic = _networks(config, action_dim)
    value, vae = _value_and_vae(config, action_dim)
    dummy_obs, dummy_action = jnp.zeros(obs_dim), jnp.zeros(action_dim)
    obs_mean, obs_std = _observation_stats(dataset.observations, config.normalize_obs)
    params = Params(
        actor=actor.init(actor_key, dummy_obs),
        critic=critic.init(critic_key, dummy_obs, dummy_action),
        value=value.init(value_key, dummy_obs),
        vae=vae.init(vae_key, dummy_obs, dummy_action, jnp.zeros(2 * action_dim)),
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
        value_opt=optax.adam(config.value_lr).init(params.value),
        vae_opt=optax.adam(config.vae_lr).init(params.vae),
        actor_metrics={name: jnp.zeros(()) for name in ACTOR_METRICS},
        rng=rng,
        step=jnp.zeros((), jnp.int32),
    )


def update_on_batch(config: Config, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    """Critics, then V, then the VAE; the actor and both targets on every policy_freq-th step
    (the actor's metrics on the other steps are the last actor step's)."""
    params = state.params
    action_dim = batch["actions"].shape[-1]
    actor, _ = _networks(config, action_dim)
    batch = batch | {
        "observations": _normalize(params, batch["observations"]),
        "next_observations": _normalize(params, batch["next_observations"]),
    }
    rng, noise_key, vae_key, actor_key = jax.random.split(state.rng, 4)
    latent_shape = (batch["actions"].shape[0], 2 * action_dim)

    # Critics: TD3 with target policy smoothing.
    noise = config.policy_noise * jax.random.normal(noise_key, batch["actions"].shape)
    noise = jnp.clip(noise, -config.noise_clip, config.noise_clip)
    next_pi = actor.apply(state.target_actor, batch["next_observations"])
    next_action = jnp.clip(next_pi + noise, -1.0, 1.0)
    (loss_q, q_mean), critic_grads = jax.value_and_grad(critic_loss, has_aux=True)(
        params.critic, batch, next_action, state.target_critic, config
    )
    updates, critic_opt = optax.adam(config.critic_lr).update(critic_grads, state.critic_opt)
    params = params.replace(critic=optax.apply_updates(params.critic, updates))

    # V, on the smaller of the target and the new online critics' targets.
    target_v = value_target(params.critic, state.target_critic, batch, next_action, config)
    (loss_v, v), value_grads = jax.value_and_grad(value_loss, has_aux=True)(
        params.value, batch, target_v, config
    )
    updates, value_opt = optax.adam(config.value_lr).update(value_grads, state.value_opt)
    params = params.replace(value=optax.apply_updates(params.value, updates))

    # The VAE, on the dataset actions with Q_1(s, a) > V0 (V0 = v: V before its update).
    q_data = first_critic(config, params.critic, batch["observations"], batch["actions"])
    vae_noise = jax.random.normal(vae_key, latent_shape)
    (loss_vae, vae_aux), vae_grads = jax.value_and_grad(vae_loss, has_aux=True)(
        params.vae, batch, q_data, v, vae_noise, config
    )
    updates, vae_opt = optax.adam(config.vae_lr).update(vae_grads, state.vae_opt)
    params = params.replace(vae=optax.apply_updates(params.vae, updates))

    # Delayed actor and targets (TD3 counts steps from 1: the actor moves on steps 2, 4, ...).
    actor_noise = jax.random.normal(actor_key, latent_shape)
    kept = {
        "actor": params.actor,
        "actor_opt": state.actor_opt,
        "target_actor": state.target_actor,
        "target_critic": state.target_critic,
        "actor_metrics": state.actor_metrics,
    }
    actor_turn = (state.step + 1) % config.policy_freq == 0

    def move(kept):
        (loss_pi, aux), grads = jax.value_and_grad(actor_loss, has_aux=True)(
            params.actor, params, batch, q_data, v, actor_noise, config
        )
        updates, actor_opt = optax.adam(config.actor_lr).update(grads, state.actor_opt)
        new_actor = optax.apply_updates(params.actor, updates)
        moved = {
            "actor": new_actor,
            "actor_opt": actor_opt,
            "target_actor": optax.incremental_update(new_actor, state.target_actor, config.tau),
            "target_critic": optax.incremental_update(
                params.critic, state.target_critic, config.tau
            ),
            "actor_metrics": {"actor_loss": loss_pi, **aux},
        }
        # Under vmap another member's actor step may bring a member here: it keeps its own.
        return jax.tree.map(lambda m, k: jnp.where(actor_turn, m, k), moved, kept)

    new = jax.lax.cond(_any_member(actor_turn), move, lambda kept: kept, kept)
    state = state.replace(
        params=params.replace(actor=new["actor"]),
        target_actor=new["target_actor"],
        target_critic=new["target_critic"],
        actor_opt=new["actor_opt"],
        critic_opt=critic_opt,
        value_opt=value_opt,
        vae_opt=vae_opt,
        actor_metrics=new["actor_metrics"],
        rng=rng,
        step=state.step + 1,
    )
    metrics = {
        "critic_loss": loss_q,
        "value_loss": loss_v,
        "vae_loss": loss_vae,
        "q_mean": q_mean,
        "v_mean": v.mean(),
        "grad_norm": optax.tree.norm(critic_grads),
        "value_grad_norm": optax.tree.norm(value_grads),
        "vae_grad_norm": optax.tree.norm(vae_grads),
        **vae_aux,
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
    """The actor's action on raw observations; deterministic either way, as A2PR evaluates."""
    actor, _ = _networks(config, params.action_dim)
    return actor.apply(params.actor, _normalize(params, obs))


def vae_sample(config: Config, params: Params, obs: jax.Array, rng: jax.Array):
    """Actions drawn from the VAE as BCQ does, dec(s, z) with z ~ N(0, I) clipped to [-0.5,
    0.5]; raw observations (..., obs_dim). Not used by the update; for inspecting the VAE."""
    _, vae = _value_and_vae(config, params.action_dim)
    obs = _normalize(params, obs)
    z = jax.random.normal(rng, (*obs.shape[:-1], 2 * params.action_dim))
    z = jnp.clip(z, -LATENT_CLIP, LATENT_CLIP)
    return vae.apply(params.vae, obs, z, method=VAE.decode)


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
    # Small networks (the VAE too) so that it runs in a minute or two on a laptop CPU.
    config = Config(
        total_updates=20_000, hidden_sizes=(64, 64), vae_hidden_sizes=(128, 128),
        actor_lr=1e-3, critic_lr=1e-3, value_lr=1e-3,
    )  # fmt: skip
    start = time.time()
    state, metrics = jax.jit(lambda key: train(config, dataset, key))(jax.random.PRNGKey(1))
    print(f"A2PR on {episodes} noisy swing-up episodes of Pendulum-v1: "
          f"{config.total_updates} updates in {time.time() - start:.1f}s")  # fmt: skip
    names = ("critic_loss", "value_loss", "recon_loss", "bc_loss", "positive_fraction")
    for i in np.linspace(1, config.total_updates - 1, 5).astype(int):
        print(
            f"  update {i + 1:>6d}  " + "  ".join(f"{k} {float(metrics[k][i]):.3f}" for k in names)
        )
    # The VAE learned the advantage-positive actions: the mean advantage Q_1 - V of its samples
    # beside that of the dataset's own actions and of the policy's, on the dataset's states.
    params, states = state.params, dataset.observations
    normalized = _normalize(params, states)
    value, _ = _value_and_vae(config, params.action_dim)
    v = value.apply(params.value, normalized)

    def advantage(a):
        return float((first_critic(config, params.critic, normalized, a) - v).mean())

    candidates = {
        "dataset actions": dataset.actions,
        "VAE samples": vae_sample(config, params, states, jax.random.PRNGKey(2)),
        "policy": act(config, params, states, None, deterministic=True),
    }
    print("  mean advantage Q_1 - V: " + ", ".join(
        f"{name} {advantage(a):.2f}" for name, a in candidates.items()
    ))  # fmt: skip
    greedy = lambda o, _: act(config, state.params, o, None, deterministic=True)  # noqa: E731
    eval_rewards = jax.jit(jax.vmap(lambda k: rollout(k, greedy)[2]))(jax.random.split(keys[0], 10))
    print(f"  dataset return {float(rewards.sum(1).mean()):.1f}, greedy policy return "
          f"{float(eval_rewards.sum(1).mean()):.1f} over 10 episodes")  # fmt: skip
