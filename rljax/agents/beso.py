"""BESO: goal-conditioned imitation with a score-based diffusion policy (offline).

Reuss, Li, Jia, Lioutikov, "Goal-Conditioned Imitation Learning using Score-based Diffusion
Policies", RSS 2023 (intuitive-robots/beso: ``score_wrappers.py``, ``beso_agent.py``,
``gc_sampling.py``, ``utils.py``, ``classifier_free_sampler.py``). A denoiser learns the
distribution of a window of H future actions A = (a_i, ..., a_{i+H-1}) given the state s and a
goal g, with Karras et al.'s (EDM) preconditioning of a network F:

    c_skip = sd^2 / (sigma^2 + sd^2),  c_out = sigma sd / sqrt(sigma^2 + sd^2),
    c_in = 1 / sqrt(sigma^2 + sd^2),   c_noise = ln(sigma) / 4          (sd = sigma_data)
    D(x; sigma, s, g) = c_skip x + c_out F(c_in x, c_noise, s, g)
    L = mean ||F(c_in (A + sigma eps), c_noise, s, g~) - (A - c_skip (A + sigma eps)) / c_out||^2

with eps ~ N(0, I), g~ = 0 (the whole goal) with probability cond_mask_prob, else g, and sigma
from the truncated log-logistic, CDF(sigma) = sigmoid((ln sigma - ln sd) / noise_scale) on
[sigma_min, sigma_max] (drawn by inverting it: sigma = exp(ln sd + noise_scale logit(u)),
u ~ U[CDF(sigma_min), CDF(sigma_max)]). Acting draws x_0 ~ N(0, sigma_max^2 I) and takes N steps
(3 by default) down the exponential schedule sigma_k = exp(linspace(ln sigma_max, ln sigma_min,
N)), sigma_N = 0, with classifier-free guidance D~ = D(x; sigma, s, 0) + cond_lambda (D(x; sigma,
s, g) - D(x; sigma, s, 0)) and either sampler:

    DDIM:            x' = (sigma'/sigma) x + (1 - sigma'/sigma) D~
    Euler ancestral: up = min(sigma', sqrt(sigma'^2 (sigma^2 - sigma'^2) / sigma^2)),
                     down = sqrt(sigma'^2 - up^2),
                     x' = x + (down - sigma) (x - D~) / sigma + up z,  z ~ N(0, I)

and returns the first action of the window, clipped to [-1, 1]. The weights that act are an EMA
of the trained ones (decay min(ema_decay, (1 + n) / (10 + n)) at update n, as their
``ema.py``); the trained ones take AdamW steps (torch's defaults: betas 0.9, 0.999, weight decay
0.01). Goals come from OGBench's actor goal sampler (inlined, as every GC agent here).

Where this file and the authors' code differ, and why:
* F is an MLP on [s, c_in x, g, c_noise] (or ``network="residual"``: a Dense layer, pre-
  activation residual blocks of two Dense layers, a Dense output, Mish as in their MLP config):
  the GCTimeScoreNetwork of a fork's ``score_mlps.py`` (HongyiZhouCN/beso; upstream's HEAD keeps
  only the ResidualMLPNetwork it wraps). Their paper's denoiser, a GPT over a history window of
  observations and actions (``score_gpts.py``), is not built. c_noise = ln(sigma)/4 is what both
  their networks are fed; the GPT embeds it with a Linear layer (folded here into the first Dense
  layer), their MLP config with Gaussian Fourier features, which this file leaves out.
* The window is H *future* actions from one state (an action chunk), not their history window
  of past states (whose last action they return). Near a trajectory's end the window repeats its
  last action (indices clamped to the trajectory's last row); theirs slices only windows that fit
  inside a trajectory and drops trajectories shorter than the window.
* Goal dropout zeroes a row's whole goal; their ``mask_cond`` draws the Bernoulli mask per goal
  *element* (flagged "TODO Check which one is correct" there), which almost never shows the
  network the all-zeros goal that guidance asks it for. Like theirs, the null goal is zeros.
* Their StepLR (x0.99 every 100 steps, tuned to 40k steps) is left out: at OGBench's 1M steps it
  would scale the learning rate by 0.99^10000. No observation or action scaler (OGBench has
  none; actions are in [-1, 1]).
* deterministic=True (OGBench evaluates at temperature 0; their agent always samples) starts the
  sampler at x_0 = 0, the prior's mode, and adds no ancestral noise. A fixed noise draw instead
  would give every episode one constant bias: on noisy straight-line data it reached 13% of
  goals where x_0 = 0 reached 85% (tests/test_gc_beso.py's task, 1000 updates).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

LEARNS_FROM = "dataset"  # what it learns from, as declared in rljax/agents/__init__.py
GOAL_CONDITIONED = True
WRAPS_ENV = False
RECURRENT = False
PAPER = (
    'Reuss et al., "Goal-Conditioned Imitation Learning using Score-based Diffusion Policies", '
    "RSS 2023"
)


def _field(default, *, static=False, bounds=None, choices=None, doc):
    """A config field. Static fields are shapes and switches (changing one recompiles); the
    rest are traced, so a sweep can vmap over them. bounds/choices let a runner validate; doc,
    the field's meaning in one line, is required so that no field goes unexplained."""
    metadata = {"bounds": bounds, "choices": choices, "doc": doc}
    return struct.field(pytree_node=not static, default=default, metadata=metadata)


@struct.dataclass
class Config:
    batch_size: int = _field(1024, static=True, bounds="[1, inf)", doc="rows per gradient step")
    total_updates: int = _field(
        1_000_000, static=True, bounds="[1, inf)", doc="gradient steps in all (the budget)"
    )
    hidden_sizes: tuple = _field(
        (512, 512, 512), static=True, doc="hidden-layer widths of the denoiser F"
    )
    network: str = _field(
        "mlp", static=True, choices=("mlp", "residual"), doc="F as an MLP or a residual MLP"
    )
    window: int = _field(
        1, static=True, bounds="[1, inf)", doc="future actions H the denoiser predicts at once"
    )
    sampler: str = _field(
        "ddim", static=True, choices=("ddim", "euler_ancestral"), doc="the denoising steps"
    )
    num_sampling_steps: int = _field(
        3, static=True, bounds="[1, inf)", doc="denoising steps N per action"
    )
    actor_geom_sample: bool = _field(
        False, static=True, doc="geometric future offsets for goals (else uniform)"
    )
    lr: float = _field(1e-4, bounds="(0, inf)", doc="AdamW learning rate")
    weight_decay: float = _field(0.01, bounds="[0, inf)", doc="AdamW's decoupled weight decay")
    ema_decay: float = _field(
        0.999, bounds="[0, 1]", doc="decay of the weights' EMA that acts (after its warm-up)"
    )
    sigma_data: float = _field(
        0.5, bounds="(0, inf)", doc="sigma_data of the preconditioning (the actions' scale)"
    )
    sigma_min: float = _field(
        0.005, bounds="(0, inf)", doc="smallest noise level, of training and the schedule"
    )
    sigma_max: float = _field(
        1.0, bounds="(0, inf)", doc="largest noise level, of training and the first step"
    )
    noise_scale: float = _field(
        0.5, bounds="(0, inf)", doc="scale of training's log-logistic over ln sigma"
    )
    cond_mask_prob: float = _field(
        0.1, bounds="[0, 1]", doc="probability a training row's goal is zeroed"
    )
    cond_lambda: float = _field(
        1.0, bounds="[0, inf)", doc="guidance weight (1 conditional, 0 unconditional)"
    )
    discount: float = _field(
        0.99, bounds="[0, 1)", doc="gamma, used only by geometric goal offsets"
    )
    actor_p_curgoal: float = _field(
        0.0, bounds="[0, 1]", doc="probability the goal is the current state"
    )
    actor_p_trajgoal: float = _field(
        1.0, bounds="[0, 1]", doc="probability the goal is a future state of its trajectory"
    )
    actor_p_randomgoal: float = _field(
        0.0, bounds="[0, 1]", doc="probability the goal is a random dataset state"
    )

    @property
    def num_updates(self) -> int:
        return self.total_updates


@struct.dataclass
class Params:
    online: Any  # the denoiser's weights that AdamW trains
    ema: Any  # their exponential moving average, which act samples with
    action_dim: int = struct.field(pytree_node=False, default=1)


@struct.dataclass
class TrainState:
    params: Params
    opt: Any
    rng: jax.Array
    step: jax.Array  # gradient steps done so far


# --- The denoiser ---


class Denoiser(nn.Module):
    """F(c_in x, c_noise, s, g) for a window x of shape (..., H, A): an MLP, or a residual MLP
    (their IBC-style blocks h + W2 mish(W1 mish(h))), on the concatenated inputs."""

    hidden_sizes: tuple
    residual: bool

    @nn.compact
    def __call__(self, obs, x, goal, c_noise):
        h = jnp.concatenate([obs, x.reshape(*x.shape[:-2], -1), goal, c_noise[..., None]], -1)
        if self.residual:
            h = nn.Dense(self.hidden_sizes[0])(h)
            for width in self.hidden_sizes[::2]:
                h = h + nn.Dense(width)(jax.nn.mish(nn.Dense(width)(jax.nn.mish(h))))
        else:
            for size in self.hidden_sizes:
                h = jax.nn.mish(nn.Dense(size)(h))
        return nn.Dense(x.shape[-2] * x.shape[-1])(h).reshape(x.shape)


def _denoiser(config: Config) -> Denoiser:
    return Denoiser(tuple(config.hidden_sizes), config.network == "residual")


def scalings(sigma, sigma_data):
    """EDM's (c_skip, c_out, c_in) at noise level sigma."""
    c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
    c_out = sigma * sigma_data / jnp.sqrt(sigma**2 + sigma_data**2)
    c_in = 1 / jnp.sqrt(sigma**2 + sigma_data**2)
    return c_skip, c_out, c_in


def denoise(config: Config, weights, obs, x, goal, sigma):
    """D(x; sigma, s, g) = c_skip x + c_out F(c_in x, ln(sigma) / 4, s, g); sigma is a scalar or
    one level per window, broadcast over x's leading axes."""
    sigma = jnp.broadcast_to(sigma, x.shape[:-2])
    c_skip, c_out, c_in = (c[..., None, None] for c in scalings(sigma, config.sigma_data))
    out = _denoiser(config).apply(weights, obs, c_in * x, goal, jnp.log(sigma) / 4)
    return c_skip * x + c_out * out


def guided_denoise(config: Config, weights, obs, x, goal, sigma):
    """Classifier-free guidance: D_u + cond_lambda (D_c - D_u), D_u with the goal zeroed."""
    conditional = denoise(config, weights, obs, x, goal, sigma)
    unconditional = denoise(config, weights, obs, x, jnp.zeros_like(goal), sigma)
    return unconditional + config.cond_lambda * (conditional - unconditional)


# --- Noise levels and samplers ---


def sample_sigmas(rng, shape, sigma_data, scale, sigma_min, sigma_max):
    """Truncated log-logistic noise levels (their rand_log_logistic, loc = ln sigma_data): the
    CDF sigmoid((ln sigma - loc) / scale) inverted at u ~ U[CDF(sigma_min), CDF(sigma_max)]."""
    loc = jnp.log(sigma_data)
    low = jax.nn.sigmoid((jnp.log(sigma_min) - loc) / scale)
    high = jax.nn.sigmoid((jnp.log(sigma_max) - loc) / scale)
    u = jax.random.uniform(rng, shape, minval=low, maxval=high)
    sigma = jnp.exp(loc + scale * (jnp.log(u) - jnp.log1p(-u)))
    return jnp.clip(sigma, sigma_min, sigma_max)  # float32 rounding only, at the very ends


def exponential_sigmas(num_steps: int, sigma_min, sigma_max):
    """Their get_sigmas_exponential: num_steps levels evenly spaced in ln sigma from sigma_max
    down to sigma_min, then 0; shape (num_steps + 1,)."""
    ln_sigma = jnp.linspace(jnp.log(sigma_max), jnp.log(sigma_min), num_steps)
    return jnp.append(jnp.exp(ln_sigma), 0.0)


def ddim_step(x, denoised, sigma, sigma_next):
    """Their sample_ddim's step (DPM-Solver-1) in sigma: x' = (s'/s) x + (1 - s'/s) D."""
    ratio = sigma_next / sigma
    return ratio * x + (1 - ratio) * denoised


def euler_ancestral_step(x, denoised, sigma, sigma_next, noise):
    """Their sample_euler_ancestral's step (eta 1): an Euler step of the ODE down to sigma_down,
    then fresh noise of scale sigma_up, with sigma_down^2 + sigma_up^2 = sigma_next^2."""
    up = jnp.minimum(sigma_next, jnp.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
    down = jnp.sqrt(sigma_next**2 - up**2)
    x = x + (down - sigma) * (x - denoised) / sigma
    return jnp.where(down > 0, x + up * noise, x)


def sample_windows(config: Config, weights, obs, goal, x, rng):
    """Denoises the windows x (..., H, A), given at sigma_max, down the exponential schedule with
    guidance and the configured sampler; rng draws Euler-ancestral's fresh noise (None: none)."""
    steps = config.num_sampling_steps
    sigmas = exponential_sigmas(steps, config.sigma_min, config.sigma_max)
    if config.sampler == "euler_ancestral" and rng is not None:
        noises = jax.random.normal(rng, (steps, *x.shape))
    else:
        noises = jnp.zeros((steps, *x.shape))

    def step(x, inputs):
        sigma, sigma_next, noise = inputs
        denoised = guided_denoise(config, weights, obs, x, goal, sigma)
        if config.sampler == "ddim":
            return ddim_step(x, denoised, sigma, sigma_next), None
        return euler_ancestral_step(x, denoised, sigma, sigma_next, noise), None

    return jax.lax.scan(step, x, (sigmas[:-1], sigmas[1:], noises))[0]


# --- Goal relabelling (identical in every GC agent; tests/test_goal_relabelling.py checks) ---


def trajectory_ends(dataset) -> np.ndarray:
    """Index of each row's trajectory's last transition, on the host (the dataset is concrete)."""
    if isinstance(dataset.observations, jax.core.Tracer):
        raise ValueError("goal sampling reads trajectory ends on the host: close over the dataset")
    ends = np.flatnonzero((np.asarray(dataset.terminals) > 0) | (np.asarray(dataset.timeouts) > 0))
    if len(ends) == 0 or ends[-1] != len(dataset.timeouts) - 1:
        raise ValueError("the dataset's last row must end a trajectory (terminals or timeouts = 1)")
    return ends[np.searchsorted(ends, np.arange(len(dataset.timeouts)))]


def sample_goals(rng, idx, final, size, p_cur, p_traj, p_rand, geom_sample: bool, discount):
    """Goal row per index, as OGBench's GCDataset.sample_goals: the current row with probability
    p_cur, else a future row of the same trajectory with probability p_traj / (1 - p_cur) (offset
    k ~ Geometric(1 - discount), k >= 1, or uniform over [i + 1, F]), else a uniform random row.
    p_rand is implied (= 1 - p_cur - p_traj); it is an argument so call sites read like OGBench."""
    del p_rand
    random_key, offset_key, mix_key, cur_key = jax.random.split(rng, 4)
    random_goal = jax.random.randint(random_key, idx.shape, 0, size)
    if geom_sample:
        offset = jax.random.geometric(offset_key, 1 - discount, idx.shape)
        future_goal = jnp.minimum(idx + offset, final)
    else:
        u = jax.random.uniform(offset_key, idx.shape)
        future_goal = jnp.round(jnp.minimum(idx + 1, final) * u + final * (1 - u)).astype(idx.dtype)
    p_future = p_traj / jnp.maximum(1 - p_cur, 1e-12)
    goal = jnp.where(jax.random.uniform(mix_key, idx.shape) < p_future, future_goal, random_goal)
    return jnp.where(jax.random.uniform(cur_key, idx.shape) < p_cur, idx, goal)


def sample_batch(config: Config, dataset, rng: jax.Array) -> dict:
    """Uniform rows, each with its window of H actions (rows clamped to the trajectory's last,
    so a window that would cross the end repeats the last action) and a relabelled goal."""
    ends = jnp.asarray(trajectory_ends(dataset))
    size = dataset.observations.shape[0]
    idx_key, goal_key = jax.random.split(rng)
    idx = jax.random.randint(idx_key, (config.batch_size,), 0, size)
    final = ends[idx]
    goal = sample_goals(
        goal_key, idx, final, size, config.actor_p_curgoal, config.actor_p_trajgoal,
        config.actor_p_randomgoal, config.actor_geom_sample, config.discount,
    )  # fmt: skip
    rows = jnp.minimum(idx[:, None] + jnp.arange(config.window), final[:, None])
    return {
        "observations": dataset.observations[idx],
        "actions": dataset.actions[rows],  # (B, H, A)
        "actor_goals": dataset.observations[goal],
    }


# --- Loss ---


def denoising_loss(weights, batch, sigma, noise, keep_goal, config: Config):
    """Their GCDenoiser.loss: the mean squared error of F against the preconditioned target,
    over rows, window and action dimensions, at per-row noise levels sigma (B,), noise (B, H, A)
    and goals kept where keep_goal (B,) is 1 (zeroed otherwise)."""
    actions = batch["actions"]
    goal = batch["actor_goals"] * keep_goal[:, None]
    noised = actions + sigma[:, None, None] * noise
    c_skip, c_out, c_in = (c[:, None, None] for c in scalings(sigma, config.sigma_data))
    out = _denoiser(config).apply(
        weights, batch["observations"], c_in * noised, goal, jnp.log(sigma) / 4
    )
    target = (actions - c_skip * noised) / c_out
    loss = jnp.square(out - target).mean()
    # D's own error on the clean window; the loss is this error weighted by 1 / c_out^2.
    denoised = c_skip * noised + c_out * out
    return loss, {"denoised_mse": jnp.square(denoised - actions).mean(), "sigma": sigma.mean()}


def ema_update(ema, online, decay, step):
    """Their ExponentialMovingAverage.update with use_num_updates: at update n (= step + 1) the
    decay is min(decay, (1 + n) / (10 + n)), so early averages follow the weights closely."""
    n = step + 1
    rate = jnp.minimum(decay, (1.0 + n) / (10.0 + n))
    return jax.tree.map(lambda e, w: rate * e + (1 - rate) * w, ema, online)


def _optimizer(config: Config):
    return optax.adamw(config.lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=config.weight_decay)


# --- The contract ---


def check(config: Config) -> None:
    """Rules across fields: the goal mixture sums to 1, 0 < sigma_min < sigma_max, a guidance
    weight >= 0 and, away from 1, goal dropout to train the unconditional denoiser it mixes in;
    residual networks have pairs of equal widths. Traced values (init under jit, vmap or
    lax.map) are skipped; the runner calls this on every concrete config."""

    def concrete(*values):
        return not any(isinstance(v, jax.core.Tracer) for v in values)

    names = [f"actor_p_{kind}goal" for kind in ("cur", "traj", "random")]
    values = [getattr(config, name) for name in names]
    total = sum(float(v) for v in values) if concrete(*values) else 1.0
    if abs(total - 1) > 1e-6:
        raise ValueError(f"{' + '.join(names)} = {total:.6g}; they must sum to 1")
    low, high = config.sigma_min, config.sigma_max
    if concrete(low, high) and not 0 < float(low) < float(high):
        raise ValueError(
            f"sigma_min={float(low):g}, sigma_max={float(high):g}: the noise range needs "
            "0 < sigma_min < sigma_max"
        )
    weight, dropout = config.cond_lambda, config.cond_mask_prob
    if concrete(weight) and float(weight) < 0:
        raise ValueError(
            f"cond_lambda={float(weight):g} is out of range: the guidance weight must be >= 0 "
            "(1 conditional, 0 unconditional, > 1 guided toward the goal)"
        )
    if concrete(weight, dropout) and float(weight) != 1 and float(dropout) == 0:
        raise ValueError(
            f"cond_lambda={float(weight):g} mixes in the unconditional denoiser, which "
            "cond_mask_prob=0 never trains: set cond_mask_prob > 0 (theirs: 0.1) or cond_lambda=1"
        )
    sizes = tuple(config.hidden_sizes)
    if config.network == "residual" and (len(sizes) % 2 or len(set(sizes)) != 1):
        raise ValueError(
            f"network='residual' takes hidden_sizes as pairs of equal widths (one residual "
            f"block per pair), got {list(sizes)}"
        )


def _check_dataset(config: Config, dataset) -> None:
    """The dataset is concrete, ends its last trajectory, holds continuous actions in [-1, 1],
    and has a trajectory as long as the window."""
    ends = trajectory_ends(dataset)
    actions = np.asarray(dataset.actions)
    if actions.ndim != 2 or not np.issubdtype(actions.dtype, np.floating):
        raise ValueError(
            f"BESO denoises continuous actions of shape (N, action_dim), got {actions.dtype} "
            f"actions of shape {actions.shape}"
        )
    if np.abs(actions).max() > 1 + 1e-4:
        raise ValueError(
            f"BESO takes actions in [-1, 1] (sigma_data and the clipping assume it), got actions "
            f"reaching {np.abs(actions).max():.4g}: rescale them"
        )
    longest = int(np.max(np.diff(np.unique(ends), prepend=-1)))
    if config.window > longest:
        raise ValueError(
            f"window={config.window} does not fit: the longest trajectory has {longest} "
            "actions, so every window would pad with repeated actions"
        )


def init(config: Config, dataset, rng: jax.Array) -> TrainState:
    """The denoiser, its EMA and AdamW for ``dataset`` (an rljax Dataset, closed over rather than
    traced: goal sampling reads its trajectory ends on the host)."""
    check(config)
    _check_dataset(config, dataset)
    net_key, rng = jax.random.split(rng)
    obs = jnp.zeros(dataset.observations.shape[1:])
    action_dim = dataset.actions.shape[-1]
    x = jnp.zeros((config.window, action_dim))
    weights = _denoiser(config).init(net_key, obs, x, obs, jnp.zeros(()))
    return TrainState(
        params=Params(online=weights, ema=weights, action_dim=action_dim),
        opt=_optimizer(config).init(weights),
        rng=rng,
        step=jnp.zeros((), jnp.int32),
    )


def update_on_batch(config: Config, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    """One AdamW step on the denoising loss (noise levels, noise and goal dropout drawn from
    state.rng), then the EMA moves toward the new weights."""
    rng, sigma_key, noise_key, mask_key = jax.random.split(state.rng, 4)
    rows = batch["actions"].shape[0]
    sigma = sample_sigmas(
        sigma_key, (rows,), config.sigma_data, config.noise_scale, config.sigma_min,
        config.sigma_max,
    )  # fmt: skip
    noise = jax.random.normal(noise_key, batch["actions"].shape)
    keep_goal = jax.random.bernoulli(mask_key, 1 - config.cond_mask_prob, (rows,))
    params = state.params
    (loss, info), grads = jax.value_and_grad(denoising_loss, has_aux=True)(
        params.online, batch, sigma, noise, keep_goal.astype(jnp.float32), config
    )
    updates, opt = _optimizer(config).update(grads, state.opt, params.online)
    online = optax.apply_updates(params.online, updates)
    ema = ema_update(params.ema, online, config.ema_decay, state.step)
    state = state.replace(
        params=params.replace(online=online, ema=ema), opt=opt, rng=rng, step=state.step + 1
    )
    return state, {"denoising_loss": loss, **info, "grad_norm": optax.tree.norm(grads)}


def update(config: Config, dataset, state: TrainState) -> tuple[TrainState, dict]:
    """One gradient step on a batch sampled inside jit."""
    rng, batch_key = jax.random.split(state.rng)
    return update_on_batch(config, state.replace(rng=rng), sample_batch(config, dataset, batch_key))


def train(config: Config, dataset, rng: jax.Array, num_updates: int | None = None):
    """init, then a lax.scan of num_updates (default: total_updates) ``update`` steps (what the
    runner's chunk runs), each on a relabelled batch sampled inside jit. The dataset is closed
    over, not carried in the state, so seeds vmapped over ``train`` share one copy of it."""
    num_updates = config.num_updates if num_updates is None else num_updates
    state = init(config, dataset, rng)
    return jax.lax.scan(lambda state, _: update(config, dataset, state), state, None, num_updates)


def act(config: Config, params: Params, obs, goal, rng: jax.Array, deterministic: bool = False):
    """The first action of a window denoised toward ``goal`` from raw ``obs``, (d,) or (B, d),
    with the EMA weights, clipped to [-1, 1]. Sampled: from x_0 ~ N(0, sigma_max^2 I) (and fresh
    ancestral noise); deterministic: from x_0 = 0, the prior's mode, without fresh noise."""
    shape = (*obs.shape[:-1], config.window, params.action_dim)
    if deterministic:
        windows = sample_windows(config, params.ema, obs, goal, jnp.zeros(shape), None)
    else:
        start_key, step_key = jax.random.split(rng)
        x = config.sigma_max * jax.random.normal(start_key, shape)
        windows = sample_windows(config, params.ema, obs, goal, x, step_key)
    return jnp.clip(windows[..., 0, :], -1.0, 1.0)


if __name__ == "__main__":
    import time

    # A small dataset in the open square [0, 1]^2: a point moves by 0.05 a per step along a
    # noisy straight line toward one random target per trajectory (Gaussian action noise 0.5,
    # as OGBench's pointmaze data); each trajectory ends in a time limit.
    episodes, horizon, speed = 400, 40, 0.05

    def step_point(x, a):
        return jnp.clip(x + speed * a, 0.0, 1.0)

    def navigate(rng):
        start_key, target_key, rng = jax.random.split(rng, 3)
        x0, target = jax.random.uniform(start_key, (2,)), jax.random.uniform(target_key, (2,))

        def step(x, key):
            direction = (target - x) / (jnp.linalg.norm(target - x) + 1e-6)
            a = jnp.clip(direction + 0.5 * jax.random.normal(key, (2,)), -1, 1)
            return step_point(x, a), (x, a, step_point(x, a))

        return jax.lax.scan(step, x0, jax.random.split(rng, horizon))[1]

    @struct.dataclass
    class Transitions:  # the rljax.data.Dataset fields, without importing rljax
        observations: jax.Array
        actions: jax.Array
        rewards: jax.Array
        terminals: jax.Array
        timeouts: jax.Array
        next_observations: jax.Array

    obs, actions, next_obs = jax.vmap(navigate)(jax.random.split(jax.random.PRNGKey(0), episodes))
    timeouts = jnp.zeros((episodes, horizon)).at[:, -1].set(1).reshape(-1)
    n = episodes * horizon
    dataset = Transitions(
        obs.reshape(n, 2), actions.reshape(n, 2), jnp.zeros(n), jnp.zeros(n), timeouts,
        next_obs.reshape(n, 2),
    )  # fmt: skip

    def success_rate(params, rng, episodes=200, steps=60):
        """Rollouts from random starts to random goals; success within 0.05 of the goal."""
        start_key, goal_key, act_key = jax.random.split(rng, 3)
        x = jax.random.uniform(start_key, (episodes, 2))
        goal = jax.random.uniform(goal_key, (episodes, 2))

        def step(carry, key):
            x, done = carry
            x = step_point(x, act(config, params, x, goal, key))
            return (x, done | (jnp.linalg.norm(x - goal, axis=-1) < speed)), None

        keys = jax.random.split(act_key, steps)
        return jax.lax.scan(step, (x, jnp.zeros(episodes, bool)), keys)[0][1].mean()

    config = Config(total_updates=3_000, batch_size=256, hidden_sizes=(256, 256))
    start = time.time()
    state, metrics = jax.jit(lambda key: train(config, dataset, key))(jax.random.PRNGKey(1))
    print(f"BESO on {episodes} noisy straight-line trajectories in the unit square: "
          f"{config.total_updates} updates in {time.time() - start:.1f}s")  # fmt: skip
    for i in np.linspace(0, config.total_updates - 1, 5).astype(int):
        losses = {k: float(metrics[k][i]) for k in ("denoising_loss", "denoised_mse")}
        print(f"  update {i + 1:>6d}  " + "  ".join(f"{k} {v:.3f}" for k, v in losses.items()))
    untrained = init(config, dataset, jax.random.PRNGKey(1)).params
    trained_rate, untrained_rate = (
        float(success_rate(p, jax.random.PRNGKey(2))) for p in (state.params, untrained)
    )
    print(
        f"  success rate over 200 random goals: {trained_rate:.2f} (untrained {untrained_rate:.2f})"
    )
