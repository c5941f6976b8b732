"""PGD: policy-guided diffusion, synthetic trajectories from a trajectory denoiser for offline RL.

Jackson, Matthews, Lu, Ellis, Whiteson, Foerster, "Policy-Guided Diffusion", arXiv 2404.06356,
2024 (EmptyJackson/policy-guided-diffusion@9da606c, pure JAX). A diffusion model learns the
dataset's distribution of whole sub-trajectories; sampling it with the target policy's score
added to the action block moves the samples towards the policy's own trajectories, and an
off-the-shelf offline learner (TD3+BC or IQL) trains on the synthetic transitions mixed with a
few real ones. Two phases:

1. The denoiser (``update_model``, ``Config.model_updates`` steps; the paper trains 10,000
   epochs of the windows, which is far more steps than any budget here: set it from the data).
   Episodes (cut on terminals | timeouts) give windows of ``trajectory_length`` rows, one
   starting every ``window_stride`` rows of an episode, plus the window ending in its last row
   when that is a terminal; windows ending in a timeout are dropped (the authors' rule). Each
   row is the vector x_t = [s_t, atanh(clip(a_t, +-0.999)), r_t, d_t], d_t the terminal flag,
   normalized per dimension by the windows' mean and std. EDM (Karras et al. 2022), sigma_d = 1:

    sigma = exp(P_mean + P_std n),  n ~ N(0, 1), one per window     (P_mean -1.2, P_std 1.2)
    D(x; sigma) = c_skip x + c_out F(c_in x, c_noise)
    c_skip = sigma_d^2 / (sigma^2 + sigma_d^2),   c_out = sigma sigma_d / sqrt(sigma^2 + sigma_d^2)
    c_in = 1 / sqrt(sigma^2 + sigma_d^2),         c_noise = ln(sigma) / 4
    L = mean lambda(sigma) (D(x + sigma eps; sigma) - x)^2
    lambda(sigma) = (sigma^2 + sigma_d^2) / (sigma sigma_d)^2

   F is the authors' 1-D convolutional U-Net over time (``unet_blocks`` levels of
   ``unet_features`` x 2^level channels, GroupNorm with ``unet_groups`` groups (8), a
   sinusoidal embedding of c_noise), run on one window at a time as their code runs it (so
   GroupNorm's statistics are per time step). Keep at least 8 channels a group: with 16
   channels in 8 groups each time step's pairs of channels are normalized on their own and the
   denoiser does not learn (Pendulum windows: EDM loss 0.97 after 1,500 steps, against 0.29
   with one group).
   Adam, its learning rate warmed up linearly from 0.1 ``model_lr`` to ``model_lr`` over the
   first 10% of ``model_updates`` and then cosine-decayed to 0; an EMA of the weights (decay
   0.995, every 10 steps) is what samples.
2. The policy (``update``, ``Config.total_updates`` steps). The synthetic pool holds
   ``num_synthetic_trajectories`` windows from the stochastic Heun sampler (Karras Algorithm 2,
   N = ``num_sampling_steps``), each giving its L - 1 transitions (s_t, tanh a_t, r_t, d_t > 0.5,
   s_{t+1}):

    sigma_i = (sigma_max^(1/rho) + i / (N - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho
    sigma_N = 0
    gamma_i = min(S_churn / N, sqrt 2 - 1) if S_tmin <= sigma_i <= S_tmax else 0
    (sigma_min 0.002, sigma_max 80, rho 7, S_churn 80, S_tmin 0.05, S_tmax 50, S_noise 1.003)
    a <- a + lambda_i g,   g = grad_a sum_t log pi(tanh(unnorm a_t) | unnorm s_t)
    g <- g / (|g| + 1e-8)   (per window, if normalize_guidance)
    lambda_i = c [(1 - i / N) + c_cos sin(pi (i + 1) / N)],  c = guidance_coef, c_cos = 0.3,
               lambda_{N-1} = 0 (no guidance before the last step)

   with pi(.|s) = N(mu(s), 1) for TD3+BC's deterministic actor and IQL's Gaussian for IQL. The
   first pool (``begin_policy``) is unguided; it is regenerated with the current policy every
   ``regenerate_every`` steps. Each gradient step takes ``synthetic_batch_size`` pool rows and
   the rest dataset rows (240 + 16 of 256), then the ``learner``'s step: TD3+BC (alpha 2.5,
   target noise 0.2 clipped at 0.5, ``critic_updates`` = 2 critic steps per step as the
   authors' code, the actor every step) or IQL (expectile 0.7, beta 3). Their losses are
   td3_bc.py's and iql.py's, held identical by tests/test_inlined_copies.py.

Where this file chooses between the paper, the authors' code and the spec:
* Guidance normalization: the code's ``g / |g| + 1e-8`` adds the epsilon after the division
  (NaN for a zero gradient); here ``g / (|g| + 1e-8)``, so a zero coefficient (or a flat
  policy) leaves the sampler exactly unguided. ``guidance_coef`` is traced (a sweep over it is
  one program); the code's default 0.0 (unguided) is the default. The paper's value was not
  found.
* Heun's correction is evaluated at x_hat + (sigma_{i+1} - sigma_hat) d (Karras Algorithm 2);
  the authors' code evaluates it at the Euler point taken from the un-churned x (its final
  update does start from x_hat).
* The done channel: at 9da606c the windows' done is the terminal flag (dataset.py
  ``_assemble_dataset``), not terminals | timeouts (which only cuts episodes), so generated
  dones mark termination only. The spec's pitfall 2 does not hold at that commit; same here.
* Generated windows are ``trajectory_length`` long, the length trained on; the code samples
  129 steps from a model trained on 32 (the spec's pitfall 3, UNVERIFIED for the paper).
* The stride runs from each episode's first row (the code strides over the list of valid
  starts of the whole dataset); no validation split (the code's only reports a loss).
* TD3+BC's order within a step is rljax's (critics, actor, targets; the code: targets, actor,
  critics); IQL's as iql.py, with no reward rescaling and a constant actor learning rate (the
  code's "constant" schedule). Observations normalized by the dataset's statistics.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

LEARNS_FROM = "model_then_dataset"  # what it learns from, as declared in rljax/agents/__init__.py
GOAL_CONDITIONED = False
WRAPS_ENV = False
RECURRENT = False
PAPER = 'Jackson et al., "Policy-Guided Diffusion", arXiv 2024'

# EDM (Karras et al. 2022) as the authors' DenoiserHyperparams and args.
P_MEAN, P_STD, SIGMA_DATA = -1.2, 1.2, 1.0
SIGMA_MIN, SIGMA_MAX, RHO = 0.002, 80.0, 7.0
S_CHURN, S_TMIN, S_TMAX, S_NOISE = 80.0, 0.05, 50.0, 1.003
GUIDANCE_COSINE = 0.3  # c_cos of the guidance schedule
EMA_EVERY = 10  # model steps between EMA updates
WARMUP_FRACTION = 0.1  # of model_updates, from 0.1 model_lr up to model_lr
ACTION_CLIP = 0.999  # atanh(clip(a, +-0.999))
LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0  # IQL's actor


def _field(default, *, static=False, bounds=None, choices=None, doc):
    """A config field. Static fields are shapes and switches (changing one recompiles); the
    rest are traced, so a sweep can vmap over them. bounds/choices let a runner validate; doc,
    the field's meaning in one line, is required so that no field goes unexplained."""
    metadata = {"bounds": bounds, "choices": choices, "doc": doc}
    return struct.field(pytree_node=not static, default=default, metadata=metadata)


@struct.dataclass
class Config:
    # The denoiser.
    trajectory_length: int = _field(
        32, static=True, bounds="[2, inf)", doc="rows per window, trained on and generated"
    )
    window_stride: int = _field(
        8, static=True, bounds="[1, inf)", doc="rows between window starts within an episode"
    )
    unet_features: int = _field(
        1024, static=True, bounds="[16, inf)", doc="U-Net channels at the first level (x 8)"
    )
    unet_blocks: int = _field(
        3, static=True, bounds="[1, inf)", doc="U-Net levels (each halves the length)"
    )
    unet_groups: int = _field(
        8, static=True, bounds="[1, inf)", doc="GroupNorm groups of each U-Net layer (authors': 8)"
    )
    model_batch_size: int = _field(
        32, static=True, bounds="[1, inf)", doc="windows per denoiser step"
    )
    model_updates: int = _field(
        50_000, static=True, bounds="[1, inf)", doc="denoiser gradient steps (paper: 10k epochs)"
    )
    model_lr: float = _field(2e-3, bounds="(0, inf)", doc="peak Adam learning rate of the denoiser")
    ema_decay: float = _field(
        0.995, bounds="[0, 1]", doc="decay of the denoiser's EMA, applied every 10 steps"
    )
    # The sampler.
    num_sampling_steps: int = _field(
        256, static=True, bounds="[2, inf)", doc="Heun steps N of the stochastic sampler"
    )
    guidance_coef: float = _field(
        0.0, bounds="[0, inf)", doc="policy guidance coefficient c (0: unguided, the code's)"
    )
    normalize_guidance: bool = _field(
        True, static=True, doc="normalize the policy score per window before scaling it"
    )
    num_synthetic_trajectories: int = _field(
        8192, static=True, bounds="[1, inf)", doc="windows in the synthetic pool"
    )
    sampling_batch: int = _field(
        256, static=True, bounds="[1, inf)", doc="windows denoised at once (divides the pool)"
    )
    regenerate_every: int = _field(
        10_000, static=True, bounds="[1, inf)", doc="policy steps between pool regenerations"
    )
    # The policy.
    learner: str = _field(
        "td3_bc", static=True, choices=("td3_bc", "iql"), doc="the offline learner"
    )
    batch_size: int = _field(
        256, static=True, bounds="[1, inf)", doc="transitions per gradient step"
    )
    synthetic_batch_size: int = _field(
        240, static=True, bounds="[0, inf)", doc="synthetic transitions of each batch"
    )
    total_updates: int = _field(
        1_000_000, static=True, bounds="[1, inf)", doc="policy gradient steps (the budget)"
    )
    hidden_sizes: tuple = _field(
        (256, 256), static=True, doc="hidden-layer widths of the actor, critics and value"
    )
    normalize_obs: bool = _field(
        True, static=True, doc="normalize observations by the dataset's mean and std"
    )
    critic_updates: int = _field(
        2, static=True, bounds="[1, inf)", doc="TD3+BC critic steps per gradient step"
    )
    actor_lr: float = _field(3e-4, bounds="(0, inf)", doc="Adam learning rate of the actor")
    critic_lr: float = _field(3e-4, bounds="(0, inf)", doc="Adam learning rate of the critics")
    value_lr: float = _field(3e-4, bounds="(0, inf)", doc="Adam learning rate of IQL's value")
    gamma: float = _field(0.99, bounds="[0, 1]", doc="discount factor gamma")
    tau: float = _field(0.005, bounds="(0, 1]", doc="Polyak rate tau of the targets")
    alpha: float = _field(
        2.5, bounds="[0, inf)", doc="TD3+BC's alpha of the Q-term weight alpha / mean|Q|"
    )
    policy_noise: float = _field(
        0.2, bounds="[0, inf)", doc="TD3+BC's std of the noise on the target action"
    )
    noise_clip: float = _field(
        0.5, bounds="[0, inf)", doc="TD3+BC's clip of the noise on the target action"
    )
    expectile: float = _field(0.7, bounds="(0, 1)", doc="IQL's expectile of the value loss")
    beta: float = _field(3.0, bounds="[0, inf)", doc="IQL's inverse temperature of the weights")

    @property
    def num_updates(self) -> int:
        return self.total_updates


@struct.dataclass
class Params:
    actor: Any
    critic: Any  # both critics, stacked on a leading axis of 2
    value: Any  # IQL's V; None for TD3+BC
    obs_mean: jax.Array  # normalized obs = (obs - obs_mean) / obs_std
    obs_std: jax.Array
    action_dim: int = struct.field(pytree_node=False, default=1)


# --- Windows of the dataset ---


def trajectory_windows(terminals, timeouts, length: int, stride: int) -> np.ndarray:
    """First rows of the windows of ``length`` rows, on the host: episodes end at terminals or
    timeouts (or the last row); in each, a window starts every ``stride`` rows from its first,
    the window ending in its last row is added when that row is a terminal, and a window ending
    in a timeout row (not a terminal) is dropped."""
    terminals = np.asarray(terminals) > 0
    timeouts = np.asarray(timeouts) > 0
    ends = np.flatnonzero(terminals | timeouts)
    if len(ends) == 0 or ends[-1] != len(terminals) - 1:
        ends = np.append(ends, len(terminals) - 1)
    starts, first = [], 0
    for end in ends:
        last = end - length + 1  # the last start whose window stays in the episode
        if last >= first:
            chosen = set(range(first, last + 1, stride))
            if terminals[end]:
                chosen.add(last)
            elif timeouts[end]:
                chosen.discard(last)
            starts.extend(sorted(chosen))
        first = end + 1
    return np.asarray(starts, np.int32)


def window_rows(dataset, starts, length: int):
    """The raw vectors [s, atanh(clip(a, +-0.999)), r, d] of the windows, (len(starts), L, D)."""
    rows = starts[:, None] + jnp.arange(length)
    action = jnp.arctanh(jnp.clip(dataset.actions[rows], -ACTION_CLIP, ACTION_CLIP))
    return jnp.concatenate(
        [
            dataset.observations[rows],
            action,
            dataset.rewards[rows][..., None],
            dataset.terminals[rows][..., None],
        ],
        -1,
    ).astype(jnp.float32)


# --- The denoiser: EDM ---


def c_skip(sigma):
    return SIGMA_DATA**2 / (sigma**2 + SIGMA_DATA**2)


def c_out(sigma):
    return sigma * SIGMA_DATA / jnp.sqrt(sigma**2 + SIGMA_DATA**2)


def c_in(sigma):
    return 1.0 / jnp.sqrt(sigma**2 + SIGMA_DATA**2)


def c_noise(sigma):
    return 0.25 * jnp.log(sigma)


def loss_weight(sigma):
    """lambda(sigma) = (sigma^2 + sigma_d^2) / (sigma sigma_d)^2."""
    return (sigma**2 + SIGMA_DATA**2) / (sigma * SIGMA_DATA) ** 2


class TimeEmbedding(nn.Module):
    """Sinusoids of the noise level (features / 8 frequencies), then two dense layers."""

    features: int

    @nn.compact
    def __call__(self, t):
        half = self.features // 8
        frequencies = jnp.exp(jnp.arange(half) * -(jnp.log(10000.0) / (half - 1)))
        emb = jnp.outer(t, frequencies)
        emb = jnp.concatenate([jnp.sin(emb), jnp.cos(emb)], -1)
        emb = nn.swish(nn.Dense(self.features)(emb))
        return nn.Dense(self.features)(emb)


class UNet(nn.Module):
    """The authors' 1-D U-Net over time on one window (L, D) -> (L, D): per level two kernel-3
    convolutions with GroupNorm and ReLU (the noise embedding added after the first), max
    pooling down; nearest-neighbour upsampling, a kernel-2 convolution, the skip concatenated
    and two kernel-3 convolutions up."""

    features: int
    blocks: int
    groups: int = 8

    @nn.compact
    def __call__(self, x, t):
        out_features = x.shape[-1]
        t = nn.swish(TimeEmbedding(self.features)(t))
        skips = []
        for i in range(self.blocks):
            width = self.features * 2**i
            x = nn.Conv(width, (3,))(x) + nn.Dense(width)(t)
            x = nn.relu(nn.GroupNorm(num_groups=self.groups)(x))
            x = nn.relu(nn.GroupNorm(num_groups=self.groups)(nn.Conv(width, (3,))(x)))
            skips.append(x)
            x = nn.max_pool(x, (2,), (2,))
        x = skips[-1]
        for i in range(self.blocks - 2, -1, -1):
            width, skip = self.features * 2**i, skips[i]
            x = jax.image.resize(x, (skip.shape[0], x.shape[-1]), "nearest")
            x = nn.Conv(width, (2,))(x) + nn.Dense(width)(t)
            x = nn.relu(nn.GroupNorm(num_groups=self.groups)(x))
            x = jnp.concatenate([x, skip], -1)
            x = nn.relu(nn.GroupNorm(num_groups=self.groups)(nn.Conv(width, (3,))(x)))
            x = nn.relu(nn.GroupNorm(num_groups=self.groups)(nn.Conv(width, (3,))(x)))
        return nn.Conv(out_features, (1,))(x)


def _unet(config: Config) -> UNet:
    return UNet(config.unet_features, config.unet_blocks, config.unet_groups)


def denoise(config: Config, denoiser, x, sigma):
    """D(x; sigma) for windows x (B, L, D) at noise levels sigma (B,)."""

    def one(x, sigma):
        f = _unet(config).apply(denoiser, c_in(sigma) * x, c_noise(sigma))
        return c_skip(sigma) * x + c_out(sigma) * f

    return jax.vmap(one)(x, sigma)


def edm_loss(denoiser, x, rng, config: Config):
    """mean lambda(sigma) (D(x + sigma eps; sigma) - x)^2 with ln sigma ~ N(P_mean, P_std^2),
    one sigma per window; x normalized windows (B, L, D)."""
    sigma_key, noise_key = jax.random.split(rng)
    sigma = jnp.exp(P_MEAN + P_STD * jax.random.normal(sigma_key, (x.shape[0],)))
    noised = x + sigma[:, None, None] * jax.random.normal(noise_key, x.shape)
    error = jnp.square(denoise(config, denoiser, noised, sigma) - x)
    return (loss_weight(sigma)[:, None, None] * error).mean()


def denoiser_learning_rate(config: Config, step):
    """optax's warmup_cosine_decay_schedule(0.1 lr, lr, 10% warmup, model_updates), traced lr."""
    warmup = max(int(WARMUP_FRACTION * config.model_updates), 1)
    decay = max(config.model_updates - warmup, 1)
    rising = 0.1 + 0.9 * jnp.minimum(step, warmup) / warmup
    progress = jnp.clip((step - warmup) / decay, 0.0, 1.0)
    falling = 0.5 * (1 + jnp.cos(jnp.pi * progress))
    return config.model_lr * jnp.where(step < warmup, rising, falling)


# --- The sampler: stochastic Heun with policy guidance ---


def sigma_schedule(num_steps: int):
    """sigma_0 .. sigma_N, sigma_{N-1} = sigma_min, sigma_N = 0 (Karras eq. 5)."""
    i = jnp.arange(num_steps + 1)
    inv = 1.0 / RHO
    sigmas = (SIGMA_MAX**inv + i / (num_steps - 1) * (SIGMA_MIN**inv - SIGMA_MAX**inv)) ** RHO
    return sigmas.at[-1].set(0.0)


def churn(sigmas, num_steps: int):
    """gamma_i = min(S_churn / N, sqrt 2 - 1) where S_tmin <= sigma_i <= S_tmax, else 0."""
    inside = (sigmas >= S_TMIN) & (sigmas <= S_TMAX)
    return jnp.where(inside, min(S_CHURN / num_steps, np.sqrt(2.0) - 1.0), 0.0)


def guidance_scale(coef, i, num_steps: int):
    """lambda_i = c [(1 - i / N) + c_cos sin(pi (i + 1) / N)], 0 at the last step i = N - 1."""
    scale = (1.0 - i / num_steps) + GUIDANCE_COSINE * jnp.sin(jnp.pi * (i + 1) / num_steps)
    return jnp.where(i < num_steps - 1, coef * scale, 0.0)


def sample_windows(config: Config, denoiser, dim: int, rng, count: int, guide=None, coef=0.0):
    """``count`` normalized windows (count, L, dim) from the stochastic Heun sampler.

    ``guide(x)`` is the per-window policy score on the action block of normalized windows x
    (count, L, D); with it, before each step but the last, the action block moves by
    lambda_i guide(x), inside a cond that no member enters while its lambda_i is 0.
    """
    sigmas = sigma_schedule(config.num_sampling_steps)
    gammas = churn(sigmas, config.num_sampling_steps)
    start_key, rng = jax.random.split(rng)
    x = sigmas[0] * jax.random.normal(start_key, (count, config.trajectory_length, dim))
    ones = jnp.ones(count)

    def step(x, inputs):
        i, sigma, next_sigma, gamma, key = inputs
        if guide is not None:
            scale = guidance_scale(coef, i, config.num_sampling_steps)
            x = jax.lax.cond(
                _any_member(scale != 0), lambda x: x + scale * guide(x), lambda x: x, x
            )
        sigma_hat = sigma * (1.0 + gamma)
        eps = S_NOISE * jax.random.normal(key, x.shape)
        x_hat = x + sigma * jnp.sqrt(gamma * (2.0 + gamma)) * eps  # sqrt(sigma_hat^2 - sigma^2)
        d = (x_hat - denoise(config, denoiser, x_hat, sigma_hat * ones)) / sigma_hat
        euler = x_hat + (next_sigma - sigma_hat) * d
        safe = jnp.maximum(next_sigma, SIGMA_MIN)  # the last step (sigma_N = 0) stays Euler
        d_next = (euler - denoise(config, denoiser, euler, safe * ones)) / safe
        heun = x_hat + 0.5 * (next_sigma - sigma_hat) * (d + d_next)
        return jnp.where(next_sigma > 0, heun, euler), None

    n = config.num_sampling_steps
    keys = jax.random.split(rng, n)
    inputs = (jnp.arange(n), sigmas[:-1], sigmas[1:], gammas[:-1], keys)
    return jax.lax.scan(step, x, inputs)[0]


# --- Networks (TD3+BC's and IQL's) ---


def _mlp(x, hidden_sizes):
    for size in hidden_sizes:
        x = nn.relu(nn.Dense(size)(x))
    return x


class Actor(nn.Module):
    """TD3+BC's deterministic policy onto [-1, 1]."""

    action_dim: int
    hidden_sizes: tuple

    @nn.compact
    def __call__(self, obs):
        x = _mlp(obs, self.hidden_sizes)
        return jnp.tanh(nn.Dense(self.action_dim)(x))


class GaussianActor(nn.Module):
    """IQL's policy: mean (through tanh) and a state-independent log standard deviation."""

    action_dim: int
    hidden_sizes: tuple

    @nn.compact
    def __call__(self, obs):
        x = _mlp(obs, self.hidden_sizes)
        mean = jnp.tanh(nn.Dense(self.action_dim)(x))
        log_std = self.param("log_std", nn.initializers.zeros, (self.action_dim,))
        return mean, log_std


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


def _networks(config: Config, action_dim: int) -> tuple[Actor, TwinCritic]:
    hidden = tuple(config.hidden_sizes)
    return Actor(action_dim, hidden), TwinCritic(hidden)


def _iql_networks(config: Config, action_dim: int) -> tuple[GaussianActor, TwinCritic, Value]:
    hidden = tuple(config.hidden_sizes)
    return GaussianActor(action_dim, hidden), TwinCritic(hidden), Value(hidden)


def _normalize(params: Params, obs):
    return (obs - params.obs_mean) / params.obs_std


def gaussian_log_prob(mean, log_std, action):
    """log N(action; mean, diag(exp(log_std)^2)), summed over the action dimensions."""
    z = (action - mean) * jnp.exp(-log_std)
    return (-0.5 * z**2 - log_std - 0.5 * jnp.log(2 * jnp.pi)).sum(-1)


def policy_log_prob(config: Config, params: Params, obs, action):
    """log pi(action | obs) on raw observations: N(mu(s), 1) for TD3+BC's deterministic actor,
    IQL's Gaussian (log std clipped) for IQL."""
    obs = _normalize(params, obs)
    if config.learner == "td3_bc":
        mean = _networks(config, params.action_dim)[0].apply(params.actor, obs)
        return gaussian_log_prob(mean, jnp.zeros_like(mean), action)
    mean, log_std = _iql_networks(config, params.action_dim)[0].apply(params.actor, obs)
    log_std = jnp.clip(log_std, LOG_STD_MIN, LOG_STD_MAX)
    return gaussian_log_prob(mean, log_std, action)


def policy_guidance(config: Config, params: Params, norm, obs_dim: int, action_dim: int):
    """x -> the score grad_a sum_t log pi(tanh(unnorm a_t) | unnorm s_t) of each normalized
    window, over its action block (zeros elsewhere), divided by its norm + 1e-8 if
    ``normalize_guidance``."""
    mean, std = norm
    block = slice(obs_dim, obs_dim + action_dim)

    def score(window):
        obs = window[:, :obs_dim] * std[:obs_dim] + mean[:obs_dim]

        def log_prob(action):
            action = jnp.tanh(action * std[block] + mean[block])
            return policy_log_prob(config, params, obs, action).sum()

        g = jax.grad(log_prob)(window[:, block])
        if config.normalize_guidance:
            g = g / (jnp.linalg.norm(g) + 1e-8)
        return jnp.zeros_like(window).at[:, block].set(g)

    return jax.vmap(score)


def generate(config: Config, denoiser, norm, obs_dim: int, action_dim: int, rng, guide, coef):
    """The synthetic pool: ``num_synthetic_trajectories`` windows sampled ``sampling_batch`` at
    a time, unnormalized and cut into their L - 1 transitions each (flat rows)."""
    chunks = config.num_synthetic_trajectories // config.sampling_batch
    keys = jax.random.split(rng, chunks)
    mean, std = norm
    windows = jax.lax.map(
        lambda key: sample_windows(
            config, denoiser, mean.shape[-1], key, config.sampling_batch, guide, coef
        ),
        keys,
    )
    windows = windows.reshape(-1, *windows.shape[2:]) * std + mean
    obs = windows[:, :, :obs_dim]
    action = jnp.tanh(windows[:, :-1, obs_dim : obs_dim + action_dim])
    rows = {
        "observations": obs[:, :-1],
        "actions": action,
        "rewards": windows[:, :-1, obs_dim + action_dim],
        "terminals": (windows[:, :-1, obs_dim + action_dim + 1] > 0.5).astype(jnp.float32),
        "next_observations": obs[:, 1:],
    }
    return jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), rows)


def pool_statistics(pool: dict, obs_bounds) -> dict:
    """The pool's mean reward and terminal rate, and the fraction of its next-states outside
    the dataset's per-dimension [min, max] (reported, never clipped)."""
    low, high = obs_bounds
    next_obs = pool["next_observations"]
    outside = ((next_obs < low) | (next_obs > high)).any(-1)
    return {
        "synthetic_out_of_bounds": outside.mean(),
        "synthetic_reward_mean": pool["rewards"].mean(),
        "synthetic_terminal_rate": pool["terminals"].mean(),
    }


def composed_batch(dataset, pool: dict, synthetic_batch_size: int, batch_size: int, rng) -> dict:
    """``batch_size`` rows: the first ``synthetic_batch_size`` from the synthetic pool, the rest
    from the dataset, each uniformly with replacement."""
    pool_key, data_key = jax.random.split(rng)
    size = pool["rewards"].shape[0]
    synthetic = jax.random.randint(pool_key, (synthetic_batch_size,), 0, size)
    real = jax.random.randint(
        data_key, (batch_size - synthetic_batch_size,), 0, dataset.rewards.shape[0]
    )
    return {
        k: jnp.concatenate([pool[k][synthetic], getattr(dataset, k)[real].astype(jnp.float32)])
        for k in BATCH_KEYS
    }


BATCH_KEYS = ("observations", "actions", "rewards", "terminals", "next_observations")


# --- TD3+BC's losses (batch normalized) ---


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


# --- IQL's losses (batch normalized) ---


def expectile_loss(diff, expectile):
    """Asymmetric squared error: weight expectile where diff >= 0, 1 - expectile below."""
    weight = jnp.where(diff < 0, 1 - expectile, expectile)
    return (weight * diff**2).mean()


def iql_value_loss(value_params, params: Params, target_critic, batch, config: Config):
    """Expectile regression of V(s) on the smaller *target* critic."""
    _, critic, value = _iql_networks(config, params.action_dim)
    q = critic.apply(target_critic, batch["observations"], batch["actions"]).min(0)
    v = value.apply(value_params, batch["observations"])
    return expectile_loss(q - v, config.expectile), v.mean()


def iql_actor_loss(actor_params, params: Params, target_critic, batch, config: Config):
    """Advantage-weighted regression with weights exp(beta A) clipped at 100."""
    actor, critic, value = _iql_networks(config, params.action_dim)
    q = critic.apply(target_critic, batch["observations"], batch["actions"]).min(0)
    advantage = q - value.apply(params.value, batch["observations"])
    weight = jnp.minimum(jnp.exp(config.beta * advantage), 100.0)
    mean, log_std = actor.apply(actor_params, batch["observations"])
    log_std = jnp.clip(log_std, LOG_STD_MIN, LOG_STD_MAX)
    log_prob = gaussian_log_prob(mean, log_std, batch["actions"])
    return -(weight * log_prob).mean(), {"advantage": advantage.mean(), "weight": weight.mean()}


def iql_critic_loss(critic_params, params: Params, batch, config: Config):
    """Both critics regress on r + gamma (1 - terminal) V(s')."""
    _, critic, value = _iql_networks(config, params.action_dim)
    v_next = value.apply(params.value, batch["next_observations"])
    target = batch["rewards"] + config.gamma * (1.0 - batch["terminals"]) * v_next
    q = critic.apply(critic_params, batch["observations"], batch["actions"])
    return jnp.square(q - target).mean(-1).sum(), q.mean()


# --- The contract ---


@struct.dataclass
class ModelState:
    """The model phase: the denoiser, its EMA and optimizer, the windows and their
    normalization, and the policy's untrained parameters."""

    params: Params
    denoiser: Any
    ema: Any  # the EMA of the denoiser's weights, which samples
    denoiser_opt: Any
    windows: jax.Array  # (num_windows,) first rows of the windows
    norm: tuple  # per-dimension (mean, std) of the window rows [s, atanh a, r, d]
    rng: jax.Array
    step: jax.Array  # denoiser gradient steps done so far


@struct.dataclass
class TrainState:
    """The policy phase: the learner's state, the denoiser (EMA) and the synthetic pool."""

    params: Params
    target_actor: Any  # TD3+BC's; None for IQL
    target_critic: Any
    actor_opt: Any
    critic_opt: Any
    value_opt: Any  # IQL's; None for TD3+BC
    denoiser: Any
    norm: tuple
    pool: dict  # the synthetic transitions, flat rows under BATCH_KEYS
    pool_stats: dict  # pool_statistics of the current pool
    obs_bounds: tuple  # the dataset's per-dimension (min, max) of the observations
    rng: jax.Array
    step: jax.Array  # policy gradient steps done so far


def check(config: Config) -> None:
    """The rules across Config fields; the runner calls it on each concrete config."""
    if config.unet_features % config.unet_groups or config.unet_features < 16:
        raise ValueError(
            f"unet_features={config.unet_features} must be a multiple of unet_groups="
            f"{config.unet_groups} (GroupNorm's groups) and at least 16 (the time embedding's "
            "features / 8 >= 2 frequencies)"
        )
    if config.trajectory_length < 2 ** (config.unet_blocks - 1):
        raise ValueError(
            f"trajectory_length={config.trajectory_length} is shorter than the U-Net's "
            f"{config.unet_blocks} levels halve it: it must be at least "
            f"2^(unet_blocks - 1) = {2 ** (config.unet_blocks - 1)}"
        )
    if config.synthetic_batch_size > config.batch_size:
        raise ValueError(
            f"synthetic_batch_size={config.synthetic_batch_size} must be at most "
            f"batch_size={config.batch_size}"
        )
    if config.num_synthetic_trajectories % config.sampling_batch:
        raise ValueError(
            f"num_synthetic_trajectories={config.num_synthetic_trajectories} must be a "
            f"multiple of sampling_batch={config.sampling_batch}"
        )


def _check_dataset(dataset) -> None:
    if dataset.observations.ndim != 2 or dataset.actions.ndim != 2:
        raise ValueError(
            f"PGD takes vector observations and actions, got shapes "
            f"{dataset.observations.shape[1:]} and {dataset.actions.shape[1:]}"
        )
    if isinstance(dataset.actions, jax.core.Tracer):
        raise ValueError(
            "PGD's init cuts the dataset into windows on the host: close over the dataset "
            "instead of passing it through jit or vmap"
        )
    largest = float(np.abs(np.asarray(dataset.actions)).max())
    if largest > 1 + 1e-4:
        raise ValueError(
            f"dataset actions reach {largest:.4g} but the actors act in [-1, 1]: rescale the "
            "dataset's actions into [-1, 1] (the D4RL convention)"
        )


def init(config: Config, dataset, rng: jax.Array) -> ModelState:
    """The model phase's state for ``dataset`` (an rljax Dataset, concrete: closed over, not
    passed through jit): the windows and their statistics, the denoiser, the untrained policy."""
    check(config)
    _check_dataset(dataset)
    starts = trajectory_windows(
        dataset.terminals, dataset.timeouts, config.trajectory_length, config.window_stride
    )
    if len(starts) == 0:
        raise ValueError(
            f"the dataset has no window of trajectory_length={config.trajectory_length} rows "
            "inside one episode (episodes end at terminals or timeouts): shorten "
            "trajectory_length"
        )
    rows = window_rows(dataset, jnp.asarray(starts), config.trajectory_length)
    rows = rows.reshape(-1, rows.shape[-1])
    std = rows.std(0)
    norm = (rows.mean(0), jnp.where(std == 0, 1.0, std))  # a constant channel stays as it is
    rng, unet_key, actor_key, critic_key, value_key = jax.random.split(rng, 5)
    obs = np.asarray(dataset.observations)
    obs_dim, action_dim = obs.shape[1], dataset.actions.shape[1]
    window = jnp.zeros((config.trajectory_length, rows.shape[-1]))
    denoiser = _unet(config).init(unet_key, window, jnp.zeros(()))
    if config.normalize_obs:
        obs_mean, obs_std = obs.mean(0), obs.std(0) + 1e-3
    else:
        obs_mean, obs_std = np.zeros(obs_dim), np.ones(obs_dim)
    dummy_obs, dummy_action = jnp.zeros(obs_dim), jnp.zeros(action_dim)
    if config.learner == "td3_bc":
        actor, critic = _networks(config, action_dim)
        value = None
    else:
        actor, critic, value_net = _iql_networks(config, action_dim)
        value = value_net.init(value_key, dummy_obs)
    params = Params(
        actor=actor.init(actor_key, dummy_obs),
        critic=critic.init(critic_key, dummy_obs, dummy_action),
        value=value,
        obs_mean=jnp.asarray(obs_mean, jnp.float32),
        obs_std=jnp.asarray(obs_std, jnp.float32),
        action_dim=action_dim,
    )
    return ModelState(
        params=params,
        denoiser=denoiser,
        ema=denoiser,
        denoiser_opt=optax.scale_by_adam().init(denoiser),
        windows=jnp.asarray(starts),
        norm=norm,
        rng=rng,
        step=jnp.zeros((), jnp.int32),
    )


def update_model(config: Config, dataset, state: ModelState) -> tuple[ModelState, dict]:
    """One EDM step of the denoiser on ``model_batch_size`` windows drawn uniformly, then the
    EMA on every 10th step."""
    rng, pick_key, loss_key = jax.random.split(state.rng, 3)
    picked = jax.random.randint(pick_key, (config.model_batch_size,), 0, state.windows.shape[0])
    mean, std = state.norm
    x = (window_rows(dataset, state.windows[picked], config.trajectory_length) - mean) / std
    loss, grads = jax.value_and_grad(edm_loss)(state.denoiser, x, loss_key, config)
    lr = denoiser_learning_rate(config, state.step)
    updates, denoiser_opt = optax.scale_by_adam().update(grads, state.denoiser_opt)
    denoiser = jax.tree.map(lambda p, u: p - lr * u, state.denoiser, updates)
    step = state.step + 1
    decay = jnp.where(step % EMA_EVERY == 0, config.ema_decay, 1.0)
    ema = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, state.ema, denoiser)
    state = state.replace(denoiser=denoiser, ema=ema, denoiser_opt=denoiser_opt, rng=rng, step=step)
    return state, {
        "denoiser_loss": loss,
        "denoiser_lr": lr,
        "denoiser_grad_norm": optax.tree.norm(grads),
    }


def _regenerate(config: Config, state: TrainState, rng, coef) -> TrainState:
    """A new pool from the denoiser, guided by the current policy with coefficient ``coef``."""
    obs_dim = state.obs_bounds[0].shape[0]
    action_dim = state.params.action_dim
    guide = policy_guidance(config, state.params, state.norm, obs_dim, action_dim)
    pool = generate(config, state.denoiser, state.norm, obs_dim, action_dim, rng, guide, coef)
    return state.replace(pool=pool, pool_stats=pool_statistics(pool, state.obs_bounds))


def begin_policy(config: Config, dataset, state: ModelState) -> TrainState:
    """The policy phase's state: the EMA denoiser, the learner's optimizers and the first
    synthetic pool, unguided."""
    params = state.params
    obs = np.asarray(dataset.observations)
    obs_bounds = (jnp.asarray(obs.min(0)), jnp.asarray(obs.max(0)))
    td3_bc = config.learner == "td3_bc"
    rng, key = jax.random.split(state.rng)
    empty = {k: jnp.zeros((0,)) for k in BATCH_KEYS}
    policy = TrainState(
        params=params,
        target_actor=params.actor if td3_bc else None,
        target_critic=params.critic,
        actor_opt=optax.adam(config.actor_lr).init(params.actor),
        critic_opt=optax.adam(config.critic_lr).init(params.critic),
        value_opt=None if td3_bc else optax.adam(config.value_lr).init(params.value),
        denoiser=state.ema,
        norm=state.norm,
        pool=empty,
        pool_stats={},
        obs_bounds=obs_bounds,
        rng=rng,
        step=jnp.zeros((), jnp.int32),
    )
    return _regenerate(config, policy, key, 0.0)


def _td3_bc_step(config: Config, state: TrainState, batch: dict):
    """``critic_updates`` critic steps on the batch, then the actor, then both targets."""
    params = state.params
    actor, _ = _networks(config, params.action_dim)
    rng, noise_key = jax.random.split(state.rng)
    next_pi = actor.apply(state.target_actor, batch["next_observations"])

    def critic_step(carry, key):
        critic_params, opt = carry
        # Target policy smoothing, fresh noise for each critic step.
        noise = config.policy_noise * jax.random.normal(key, batch["actions"].shape)
        noise = jnp.clip(noise, -config.noise_clip, config.noise_clip)
        next_action = jnp.clip(next_pi + noise, -1.0, 1.0)
        (loss_q, q_mean), grads = jax.value_and_grad(critic_loss, has_aux=True)(
            critic_params, batch, next_action, state.target_critic, config
        )
        updates, opt = optax.adam(config.critic_lr).update(grads, opt)
        return (optax.apply_updates(critic_params, updates), opt), (
            loss_q, q_mean, optax.tree.norm(grads),
        )  # fmt: skip

    keys = jax.random.split(noise_key, config.critic_updates)
    (critic_params, critic_opt), (loss_q, q_mean, grad_norm) = jax.lax.scan(
        critic_step, (params.critic, state.critic_opt), keys
    )
    (loss_pi, aux), actor_grads = jax.value_and_grad(actor_loss, has_aux=True)(
        params.actor, critic_params, batch, config
    )
    updates, actor_opt = optax.adam(config.actor_lr).update(actor_grads, state.actor_opt)
    actor_params = optax.apply_updates(params.actor, updates)
    state = state.replace(
        params=params.replace(actor=actor_params, critic=critic_params),
        target_actor=optax.incremental_update(actor_params, state.target_actor, config.tau),
        target_critic=optax.incremental_update(critic_params, state.target_critic, config.tau),
        actor_opt=actor_opt,
        critic_opt=critic_opt,
        rng=rng,
        step=state.step + 1,
    )
    metrics = {
        "critic_loss": loss_q.mean(),
        "q_mean": q_mean[-1],
        "grad_norm": grad_norm[-1],
        "actor_loss": loss_pi,
        "bc_loss": aux["bc_loss"],
        "lambda": aux["lambda"],
        "actor_grad_norm": optax.tree.norm(actor_grads),
    }
    return state, metrics


def _iql_step(config: Config, state: TrainState, batch: dict):
    """IQL's step as iql.py: V, then the actor, then Q, then the target critics."""
    params = state.params
    (loss_v, v_mean), value_grads = jax.value_and_grad(iql_value_loss, has_aux=True)(
        params.value, params, state.target_critic, batch, config
    )
    updates, value_opt = optax.adam(config.value_lr).update(value_grads, state.value_opt)
    params = params.replace(value=optax.apply_updates(params.value, updates))

    (loss_pi, aux), actor_grads = jax.value_and_grad(iql_actor_loss, has_aux=True)(
        params.actor, params, state.target_critic, batch, config
    )
    updates, actor_opt = optax.adam(config.actor_lr).update(actor_grads, state.actor_opt)
    params = params.replace(actor=optax.apply_updates(params.actor, updates))

    (loss_q, q_mean), critic_grads = jax.value_and_grad(iql_critic_loss, has_aux=True)(
        params.critic, params, batch, config
    )
    updates, critic_opt = optax.adam(config.critic_lr).update(critic_grads, state.critic_opt)
    params = params.replace(critic=optax.apply_updates(params.critic, updates))

    state = state.replace(
        params=params,
        target_critic=optax.incremental_update(params.critic, state.target_critic, config.tau),
        actor_opt=actor_opt,
        critic_opt=critic_opt,
        value_opt=value_opt,
        step=state.step + 1,
    )
    metrics = {
        "value_loss": loss_v,
        "actor_loss": loss_pi,
        "critic_loss": loss_q,
        "v_mean": v_mean,
        "q_mean": q_mean,
        "advantage_mean": aux["advantage"],
        "awr_weight_mean": aux["weight"],
        "grad_norm": optax.tree.norm(critic_grads),
        "actor_grad_norm": optax.tree.norm(actor_grads),
        "value_grad_norm": optax.tree.norm(value_grads),
    }
    return state, metrics


def update_on_batch(config: Config, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    """The learner's gradient step on a batch of raw rows (observations normalized here)."""
    batch = batch | {
        "observations": _normalize(state.params, batch["observations"]),
        "next_observations": _normalize(state.params, batch["next_observations"]),
    }
    if config.learner == "td3_bc":
        return _td3_bc_step(config, state, batch)
    return _iql_step(config, state, batch)


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


def update(config: Config, dataset, state: TrainState) -> tuple[TrainState, dict]:
    """One policy iteration: a new pool guided by the current policy when one is due (every
    ``regenerate_every`` steps; begin_policy made step 0's, unguided), then one gradient step on
    a batch of synthetic and dataset rows sampled inside jit."""
    rng, generate_key, batch_key = jax.random.split(state.rng, 3)
    due = (state.step > 0) & (state.step % config.regenerate_every == 0)

    def regenerate(state):
        new = _regenerate(config, state, generate_key, config.guidance_coef)
        # Under vmap another member's regeneration may bring a member here: it keeps its own.
        return jax.tree.map(lambda n, o: jnp.where(due, n, o), new, state)

    state = jax.lax.cond(_any_member(due), regenerate, lambda state: state, state)
    synthetic, batch_size = config.synthetic_batch_size, config.batch_size
    batch = composed_batch(dataset, state.pool, synthetic, batch_size, batch_key)
    state, metrics = update_on_batch(config, state.replace(rng=rng), batch)
    return state, metrics | state.pool_stats


def train(config: Config, dataset, rng: jax.Array, num_updates: int | None = None):
    """init, ``model_updates`` denoiser steps, begin_policy, then num_updates (default:
    total_updates) policy iterations; returns the policy's state and (the model phase's
    metrics, the policy phase's).

    The dataset is closed over, not carried in the state, so seeds vmapped over ``train`` share
    one copy of it.
    """
    num_updates = config.num_updates if num_updates is None else num_updates
    state = init(config, dataset, rng)
    state, model_metrics = jax.lax.scan(
        lambda state, _: update_model(config, dataset, state), state, None, config.model_updates
    )
    state = begin_policy(config, dataset, state)
    state, metrics = jax.lax.scan(
        lambda state, _: update(config, dataset, state), state, None, num_updates
    )
    return state, (model_metrics, metrics)


def act(config: Config, params: Params, obs: jax.Array, rng: jax.Array, deterministic=False):
    """TD3+BC: the actor's action (deterministic either way). IQL: the Gaussian's mean when
    deterministic, else a sample clipped to [-1, 1]."""
    obs = _normalize(params, obs)
    if config.learner == "td3_bc":
        return _networks(config, params.action_dim)[0].apply(params.actor, obs)
    mean, log_std = _iql_networks(config, params.action_dim)[0].apply(params.actor, obs)
    if deterministic:
        return mean
    log_std = jnp.clip(log_std, LOG_STD_MIN, LOG_STD_MAX)
    return jnp.clip(mean + jnp.exp(log_std) * jax.random.normal(rng, mean.shape), -1.0, 1.0)


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
    config = Config(
        unet_features=64, unet_blocks=2, model_updates=3000, num_sampling_steps=64,
        num_synthetic_trajectories=1024, regenerate_every=5000, total_updates=10_000,
        hidden_sizes=(64, 64), actor_lr=1e-3, critic_lr=1e-3, guidance_coef=1.0,
    )  # fmt: skip
    start = time.time()
    state, (model_metrics, metrics) = jax.jit(lambda key: train(config, dataset, key))(
        jax.random.PRNGKey(1)
    )
    print(f"PGD (TD3+BC, guidance {config.guidance_coef}) on {episodes} noisy swing-up episodes "
          f"of Pendulum-v1: {config.model_updates} denoiser steps and {config.total_updates} "
          f"updates in {time.time() - start:.1f}s")  # fmt: skip
    losses = model_metrics["denoiser_loss"]
    print(f"  denoiser loss {float(losses[:100].mean()):.3f} -> {float(losses[-100:].mean()):.3f}; "
          f"synthetic next-states out of the data's bounds "
          f"{float(metrics['synthetic_out_of_bounds'][-1]):.3f}")  # fmt: skip
    greedy = lambda o, _: act(config, state.params, o, None, deterministic=True)  # noqa: E731
    eval_rewards = jax.jit(jax.vmap(lambda k: rollout(k, greedy)[2]))(jax.random.split(keys[0], 10))
    print(f"  dataset return {float(rewards.sum(1).mean()):.1f}, greedy policy return "
          f"{float(eval_rewards.sum(1).mean()):.1f} over 10 episodes")  # fmt: skip
