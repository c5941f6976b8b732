"""MBRCSL: return-conditioned supervised learning on the high-return rollouts of a learned model.

Zhou, Zhu, Zhou, Cui, Gupta, Du, "Free from Bellman Completeness: Trajectory Stitching via
Model-based Return-conditioned Supervised Learning", ICLR 2024 (zhaoyizhou1123/mbrcsl, the
PointMaze pipeline ``examples/pointmaze/run_mbrcsl_maze.py``, built on OfflineRL-Kit).

Model phase (``model_updates`` calls of ``update_model``, each one gradient step of both):
* the dynamics ensemble (the shared section below, as MOPO's): N Gaussian MLPs fit (s' - s, r)
  from normalized (s, a), with held-out early stopping and elites by held-out error;
* a diffusion behaviour policy mu(a|s), the authors' ``SimpleDiffusionPolicy``: DDPM with K =
  ``behavior_diffusion_steps`` (10) steps, the cosine schedule ("squaredcos_cap_v2" of
  diffusers: alpha_bar(u) = cos^2((u + 0.008) / 1.008 pi / 2), beta_k = min(1 - alpha_bar((k +
  1) / K) / alpha_bar(k / K), 0.999)), epsilon-parameterized and trained on every dataset row:

      L_mu = mean (eps_theta(sqrt(abar_k) a + sqrt(1 - abar_k) eps, k, s) - eps)^2,
             k ~ U{0..K-1}, eps ~ N(0, I),

  sampled by the DDPM posterior ("fixed_small" variance) with the predicted a_0 clipped to
  [-1, 1] (``clip_sample=True``), so sampled actions lie in [-1, 1].

``begin_policy`` (once, inside jit): the elites and best snapshots are fixed; then rounds of
``rollout_batch_size`` trajectories of ``horizon`` steps start from dataset initial states (row 0
and every row after a terminal or timeout), acting with mu and stepping one uniformly chosen
elite per row, until ``num_needed`` trajectories were kept or ``max_rounds`` rounds ran (a
``lax.while_loop``). A trajectory is kept only if its return R exceeds the dataset's best episode
return (computed on the host at init; episodes cut at terminals | timeouts, a trailing unfinished
one counting as an episode; set ``horizon`` to the episodes' length so that the two compare
like with like), and each kept step is labelled with its return-to-go

    rtg_t = R - sum_{t' < t} r_t'.

Model rollouts ignore terminals (the authors' "only serves for non-terminal cases"): the
termination rule is only reported (``rollout_terminal_fraction``), never applied. Next-states
outside the dataset's per-dimension observation range are reported (``rollout_out_of_bounds``),
never clipped.

Policy phase (``total_updates`` calls of ``update``): a deterministic MLP pi(s, rtg) -> a on
the kept rows only, L_pi = mean (pi(s, rtg) - a)^2, with Adam and coupled L2 (PyTorch's
``Adam(weight_decay=0.1)``: the decay is added to the gradient), learning rate 5e-5, batch 256,
ReLU layers (1024, 1024 in the paper) with PyTorch's default init and the last layer
Xavier-uniform with gain 1e-2, on raw (s, rtg) as the authors.

RCSL, the baseline MBRCSL is measured against (``rcsl_on="dataset"``): the same pi, trained on
every dataset episode (each must be ``horizon`` steps long) with its returns-to-go and aiming at
the best episode return; ``begin_policy`` then makes no rollouts and the model phase is unused.

Acting: pi conditions on the return still to collect, rtg = target - (return so far), with the
target the best kept rollout return (the authors' evaluation) stored in Params at
``begin_policy``. To keep ``act`` a function of the observation, ``wrap_env`` (``WRAPS_ENV``)
appends the episode's return so far to the env's observation; ``act`` reads it from the last
entry. Actions are clipped to [-1, 1] (the network's output is unbounded, as the authors').

No kept trajectory: the authors' code crashes on an empty list. Here ``begin_policy`` records
the count and ``check_begin_policy(config, state)``, which the runner calls on the host after
``begin_policy``, raises ``NoRolloutAboveThreshold`` with the numbers; ``train`` runs inside jit
and cannot raise, so call ``check_begin_policy`` on its state.

Where this file and the authors' code differ:
* Training lengths: the authors train the ensemble in OfflineRL-Kit's epochs (one pass over
  the training rows, ceil(rows / 256) steps) until 5 epochs pass without a 1 % improvement of
  any model, the diffusion policy 50 epochs and the RCSL policy 100 epochs with a 10 % held-out
  split and early stopping (after ``find_best_start`` epochs); here fixed step budgets: for
  the ensemble ``model_updates`` steps with a holdout check every ``holdout_interval`` steps and
  a per-model patience (so E epochs are about E ceil(rows / 256) steps), the same steps for mu,
  ``total_updates`` for pi, which has no held-out split.
* The denoiser: the authors' is a FiLM-conditioned residual "U-Net" of linear blocks (256,
  512, 1024) with a 256-wide time embedding, trained with AdamW (1e-4, weight decay 1e-6) and
  sampled with an EMA of its weights; here an MLP of ``behavior_hidden_sizes`` blocks (Dense,
  LayerNorm, Mish) on (a_k, a 32-wide sinusoidal embedding of k through a Mish MLP, normalized
  s), the same AdamW at a constant rate, no EMA. The authors' trainer steps a cosine schedule
  with 500 warmup steps once per epoch, so over its 50 epochs the rate only warms up, from 0 to
  1e-4 * 49 / 500 ~ 1e-5: read literally, mu trains at a tenth of the stated rate or less. They
  also condition mu on a feature that is 0 in training and sampling; it is left out.
* Kept trajectories: at most ``num_needed`` (the authors keep every valid one of the last round).
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
WRAPS_ENV = True  # appends the episode's return so far to the observation (wrap_env)
RECURRENT = False
PAPER = (
    'Zhou et al., "Free from Bellman Completeness: Trajectory Stitching via Model-based '
    'Return-conditioned Supervised Learning", ICLR 2024'
)

TIME_EMBED_DIM = 32  # width of the denoiser's sinusoidal step embedding


def _field(default, *, static=False, bounds=None, choices=None, doc):
    """A config field. Static fields are shapes and switches (changing one recompiles); the
    rest are traced, so a sweep can vmap over them. bounds/choices let a runner validate; doc,
    the field's meaning in one line, is required so that no field goes unexplained."""
    metadata = {"bounds": bounds, "choices": choices, "doc": doc}
    return struct.field(pytree_node=not static, default=default, metadata=metadata)


RCSL_SOURCES = ("rollouts", "dataset")
TERMINATION_CHOICES = ("none", "Pendulum-v1", "brax/halfcheetah", "brax/hopper", "brax/walker2d")


@struct.dataclass
class Config:
    batch_size: int = _field(256, static=True, bounds="[1, inf)", doc="rows per policy step")
    total_updates: int = _field(
        10_000, static=True, bounds="[1, inf)", doc="gradient steps of the RCSL policy"
    )
    hidden_sizes: tuple = _field(
        (1024, 1024), static=True, doc="hidden-layer widths of the RCSL policy pi(s, rtg)"
    )
    lr: float = _field(5e-5, bounds="(0, inf)", doc="Adam learning rate of the RCSL policy")
    weight_decay: float = _field(
        0.1, bounds="[0, inf)", doc="L2 coefficient added to the RCSL policy's gradient"
    )
    model_updates: int = _field(
        50_000, static=True, bounds="[1, inf)", doc="gradient steps of the ensemble and mu"
    )
    num_models: int = _field(
        7, static=True, bounds="[1, inf)", doc="Gaussian MLPs N in the dynamics ensemble"
    )
    num_elites: int = _field(
        5, static=True, bounds="[1, inf)", doc="models with the best holdout error that roll out"
    )
    model_hidden_sizes: tuple = _field(
        (200, 200, 200, 200), static=True, doc="hidden-layer widths of each model (SiLU)"
    )
    model_weight_decay: tuple = _field(
        (2.5e-5, 5e-5, 7.5e-5, 7.5e-5, 1e-4),
        static=True,
        doc="L2 decay of each model layer's kernel, one per hidden layer and the output",
    )
    model_batch_size: int = _field(
        256, static=True, bounds="[1, inf)", doc="rows per model per model gradient step"
    )
    holdout_fraction: float = _field(
        0.2, static=True, bounds="(0, 1)", doc="share of rows held out (at most 1000)"
    )
    holdout_interval: int = _field(
        1000, static=True, bounds="[1, inf)", doc="model steps between holdout evaluations"
    )
    patience: int = _field(
        5, static=True, bounds="[1, inf)", doc="evaluations without improvement that stop a model"
    )
    termination: str = _field(
        "none", static=True, choices=TERMINATION_CHOICES, doc="env whose rule is reported"
    )
    model_lr: float = _field(1e-3, bounds="(0, inf)", doc="Adam learning rate of the models")
    behavior_diffusion_steps: int = _field(
        10, static=True, bounds="[1, inf)", doc="denoising steps K of the behaviour policy"
    )
    behavior_hidden_sizes: tuple = _field(
        (256, 256, 256), static=True, doc="hidden-layer widths of the behaviour denoiser"
    )
    behavior_batch_size: int = _field(
        256, static=True, bounds="[1, inf)", doc="rows per behaviour gradient step"
    )
    behavior_lr: float = _field(1e-4, bounds="(0, inf)", doc="AdamW learning rate of mu")
    behavior_weight_decay: float = _field(
        1e-6, bounds="[0, inf)", doc="AdamW weight decay of the behaviour denoiser"
    )
    horizon: int = _field(
        200,
        static=True,
        bounds="[1, inf)",
        doc="steps H of each rollout (the data's episode length)",
    )
    rollout_batch_size: int = _field(
        200, static=True, bounds="[1, inf)", doc="trajectories rolled out per round"
    )
    num_needed: int = _field(
        100, static=True, bounds="[1, inf)", doc="kept trajectories that end the rollouts"
    )
    max_rounds: int = _field(1000, static=True, bounds="[1, inf)", doc="rollout rounds at most")
    rcsl_on: str = _field(
        "rollouts",
        static=True,
        choices=RCSL_SOURCES,
        doc="pi learns from the kept rollouts (MBRCSL) or the data's episodes (RCSL)",
    )

    @property
    def num_updates(self) -> int:
        return self.total_updates


# --- Dynamics ensemble ---
# Shared by the model-based agents (mopo.py holds the reference; tests/test_inlined_copies.py
# keeps the copies identical). It reads Config's num_models, num_elites, model_hidden_sizes,
# model_weight_decay, model_lr, model_batch_size, holdout_fraction, holdout_interval, patience
# and termination, and uses the file's _adam_step and _any_member.

MAX_HOLDOUT = 1000  # OfflineRL-Kit's held-out rows: min(int(0.2 N), 1000)
MIN_IMPROVEMENT = 0.01  # relative drop of the holdout error that snapshots a model
LOGVAR_BOUND_COEF = 0.01  # weight of sum(max_logvar) - sum(min_logvar) in the loss
INIT_MAX_LOGVAR, INIT_MIN_LOGVAR = 0.5, -10.0


def _never_terminates(obs, action, next_obs):
    return jnp.zeros(next_obs.shape[:-1], bool)


def _hopper_terminates(obs, action, next_obs):
    """brax Hopper (11-d observation: 0 torso height z, 1 torso angle, 2-4 joint angles, 5-10
    velocities clipped to +-10): healthy while 0.7 < z < inf, -0.2 < angle < 0.2 and every
    entry 1-10 in (-100, 100). brax checks the unclipped velocities; the clipped ones never
    reach 100."""
    z, angle = next_obs[..., 0], next_obs[..., 1]
    in_range = (jnp.abs(next_obs[..., 1:]) < 100).all(-1)
    healthy = (z > 0.7) & (z < jnp.inf) & (jnp.abs(angle) < 0.2) & in_range
    return ~healthy


def _walker2d_terminates(obs, action, next_obs):
    """brax Walker2d (17-d observation: 0 torso height z, 1 torso angle, 2-7 joint angles, 8-16
    velocities): healthy while 0.8 < z < 2 and -1 < angle < 1."""
    z, angle = next_obs[..., 0], next_obs[..., 1]
    return ~((z > 0.8) & (z < 2.0) & (angle > -1.0) & (angle < 1.0))


# Env name -> done(obs, action, next_obs) of a model transition; "none" never terminates.
TERMINATIONS = {
    "Pendulum-v1": _never_terminates,
    "brax/halfcheetah": _never_terminates,
    "brax/hopper": _hopper_terminates,
    "brax/walker2d": _walker2d_terminates,
}


def terminates(config, obs, action, next_obs):
    """The done flag of ``config.termination``'s rule (never for "none")."""
    return TERMINATIONS.get(config.termination, _never_terminates)(obs, action, next_obs)


@struct.dataclass
class Ensemble:
    """A fitted ensemble as rollouts use it: layers stacked on a leading axis num_models, the
    shared log-variance bounds, the input statistics and the elites' indices."""

    weights: Any
    input_mean: jax.Array
    input_std: jax.Array
    elites: jax.Array  # (num_elites,)


@struct.dataclass
class EnsembleTraining:
    """The ensemble while it trains: weights, Adam, each model's best snapshot and holdout
    error, evaluations since its last improvement, and the split of the dataset's rows."""

    weights: Any
    opt: Any
    best_layers: Any
    best_loss: jax.Array  # (num_models,) best holdout mean squared error, inf before the first
    since_best: jax.Array  # (num_models,) evaluations without improvement; patience stops it
    holdout_mse: jax.Array  # (num_models,) the latest holdout mean squared error
    input_mean: jax.Array
    input_std: jax.Array
    train_rows: jax.Array
    holdout_rows: jax.Array
    step: jax.Array


def holdout_sizes(config, num_rows: int) -> tuple[int, int]:
    """(training rows, held-out rows); ValueError if either is too few."""
    holdout = min(int(config.holdout_fraction * num_rows), MAX_HOLDOUT)
    if holdout < 1 or num_rows - holdout < config.model_batch_size:
        raise ValueError(
            f"the dataset's {num_rows} rows are too few for the model's held-out split: "
            f"holdout_fraction={config.holdout_fraction} holds out {holdout} (at least 1 is "
            f"needed) and leaves {num_rows - holdout} to train on (at least model_batch_size="
            f"{config.model_batch_size})"
        )
    return num_rows - holdout, holdout


def check_ensemble(config) -> None:
    """The ensemble's rules on Config's static fields."""
    if config.num_elites > config.num_models:
        raise ValueError(
            f"num_elites={config.num_elites} exceeds num_models={config.num_models}: the elites "
            f"are chosen among the models, so num_elites must be in [1, {config.num_models}]"
        )
    if len(config.model_weight_decay) != len(config.model_hidden_sizes) + 1:
        raise ValueError(
            f"model_weight_decay has {len(config.model_weight_decay)} entries; it needs one per "
            f"hidden layer and one for the output layer: {len(config.model_hidden_sizes) + 1}"
        )
    choices = ("none", *TERMINATIONS)
    if config.termination not in choices:
        raise ValueError(f"termination={config.termination!r}; choose one of {choices}")


def check_model_dataset(config, dataset) -> None:
    """Named errors for a dataset the ensemble cannot fit (read on the host)."""
    if isinstance(dataset.actions, jax.core.Tracer):
        raise ValueError(
            "the model's init reads the dataset on the host (its split and statistics): close "
            "over the dataset instead of passing it through jit or vmap"
        )
    obs, actions = np.asarray(dataset.observations), np.asarray(dataset.actions)
    if obs.ndim != 2 or actions.ndim != 2:
        raise ValueError(
            f"the dynamics model takes vector observations and actions, got observations "
            f"{obs.shape} and actions {actions.shape}"
        )
    if not np.issubdtype(actions.dtype, np.floating):
        raise ValueError(
            f"the dataset's actions are {actions.dtype}: the model and the tanh actor take "
            "continuous actions in [-1, 1]"
        )
    if not (np.isfinite(obs).all() and np.isfinite(actions).all()):
        raise ValueError("the dataset's observations or actions hold NaN or infinite values")
    if len(actions) and np.abs(actions).max() > 1 + 1e-4:
        raise ValueError(
            f"the tanh actor needs dataset actions in [-1, 1], found |a| up to "
            f"{np.abs(actions).max():.4g}: rescale them (D4RL convention)"
        )
    holdout_sizes(config, len(actions))
    if config.termination == "none" and np.asarray(dataset.terminals).any():
        raise ValueError(
            f"termination='none' but the dataset holds {int(np.asarray(dataset.terminals).sum())}"
            f" terminal transitions: model rollouts would never end; set termination to the "
            f"dataset's env, one of {tuple(TERMINATIONS)}"
        )


def _model_rows(dataset, rows):
    """Inputs (s, a) and targets (s' - s, r) of the dataset's rows."""
    obs = dataset.observations[rows]
    inputs = jnp.concatenate([obs, dataset.actions[rows]], -1)
    targets = jnp.concatenate(
        [dataset.next_observations[rows] - obs, dataset.rewards[rows, None]], -1
    )
    return inputs, targets


def _init_layers(config, key, in_dim: int, out_dim: int):
    """Every model's layers: kernels N(0, 1 / (2 sqrt(fan_in))) (OfflineRL-Kit's truncation at
    +-2 is beyond 4 deviations), biases 0; stacked on a leading axis num_models."""
    sizes = (in_dim, *config.model_hidden_sizes, 2 * out_dim)
    kernels, biases = [], []
    keys = jax.random.split(key, len(sizes) - 1)
    for layer_key, fan_in, fan_out in zip(keys, sizes[:-1], sizes[1:], strict=True):
        std = 1 / (2 * np.sqrt(fan_in))
        shape = (config.num_models, fan_in, fan_out)
        kernels.append(std * jax.random.truncated_normal(layer_key, -2 / std, 2 / std, shape))
        biases.append(jnp.zeros((config.num_models, fan_out)))
    return {"kernels": tuple(kernels), "biases": tuple(biases)}


def model_forward(layers, bounds, inputs):
    """One model's mean and log-variance of (s' - s, r) from normalized inputs; the log-variance
    soft-clamped into [min_logvar, max_logvar] by softplus (OfflineRL-Kit's soft_clamp)."""
    x = inputs
    for kernel, bias in zip(layers["kernels"][:-1], layers["biases"][:-1], strict=True):
        x = jax.nn.silu(x @ kernel + bias)
    mean, logvar = jnp.split(x @ layers["kernels"][-1] + layers["biases"][-1], 2, -1)
    logvar = bounds["max_logvar"] - jax.nn.softplus(bounds["max_logvar"] - logvar)
    logvar = bounds["min_logvar"] + jax.nn.softplus(logvar - bounds["min_logvar"])
    return mean, logvar


def ensemble_forward(weights, inputs):
    """Every model's (mean, log-variance), (N, ..., S + 1); inputs normalized, either shared
    (...) or one batch per model (N, ...)."""
    in_axes = (0, None, 0 if inputs.ndim == 3 else None)
    return jax.vmap(model_forward, in_axes=in_axes)(weights["layers"], weights["bounds"], inputs)


def ensemble_loss(weights, inputs, targets, active, config):
    """sum over the active models of [mean (mu - y)^2 exp(-logvar) + logvar + decay] + 0.01
    (sum max_logvar - sum min_logvar); inputs (N, B, S + A) normalized, targets (N, B, S + 1)."""
    mean, logvar = ensemble_forward(weights, inputs)
    mse = jnp.square(mean - targets)
    nll = (mse * jnp.exp(-logvar) + logvar).mean((1, 2))
    decay = sum(
        w * 0.5 * jnp.square(kernel).sum((1, 2))
        for w, kernel in zip(config.model_weight_decay, weights["layers"]["kernels"], strict=True)
    )
    bounds = weights["bounds"]
    bound_term = bounds["max_logvar"].sum() - bounds["min_logvar"].sum()
    loss = jnp.where(active, nll + decay, 0.0).sum() + LOGVAR_BOUND_COEF * bound_term
    return loss, {"nll": nll, "mse": mse.mean((1, 2)), "decay": decay}


def _per_model(active, new, old):
    """Leaves of ``new`` for the active models, of ``old`` for the stopped (leading axis N);
    scalars (Adam's count) from ``new``."""

    def pick(n, o):
        return n if n.ndim == 0 else jnp.where(active.reshape(-1, *[1] * (n.ndim - 1)), n, o)

    return jax.tree.map(pick, new, old)


def ensemble_init(config, dataset, rng) -> EnsembleTraining:
    """Untrained models, the held-out split (a permutation from ``rng``) and the training
    rows' input statistics; the dataset must be concrete (check_model_dataset)."""
    check_ensemble(config)
    check_model_dataset(config, dataset)
    num_rows = dataset.actions.shape[0]
    num_train, _ = holdout_sizes(config, num_rows)
    split_key, init_key = jax.random.split(rng)
    order = jax.random.permutation(split_key, num_rows)
    train_rows, holdout_rows = order[:num_train], order[num_train:]
    inputs, targets = _model_rows(dataset, train_rows)
    input_std = inputs.std(0)
    input_std = jnp.where(input_std < 1e-12, 1.0, input_std)
    out_dim = targets.shape[-1]
    weights = {
        "layers": _init_layers(config, init_key, inputs.shape[-1], out_dim),
        "bounds": {
            "max_logvar": jnp.full(out_dim, INIT_MAX_LOGVAR),
            "min_logvar": jnp.full(out_dim, INIT_MIN_LOGVAR),
        },
    }
    training = EnsembleTraining(
        weights=weights,
        opt={name: optax.adam(config.model_lr).init(part) for name, part in weights.items()},
        best_layers=weights["layers"],
        best_loss=jnp.full(config.num_models, jnp.inf),
        since_best=jnp.zeros(config.num_models, jnp.int32),
        holdout_mse=jnp.zeros(config.num_models),
        input_mean=inputs.mean(0),
        input_std=input_std,
        train_rows=train_rows,
        holdout_rows=holdout_rows,
        step=jnp.zeros((), jnp.int32),
    )
    return training.replace(holdout_mse=holdout_errors(dataset, training))


def holdout_errors(dataset, training: EnsembleTraining):
    """Each model's mean squared error of its mean on the held-out rows, (num_models,)."""
    inputs, targets = _model_rows(dataset, training.holdout_rows)
    inputs = (inputs - training.input_mean) / training.input_std
    mean, _ = ensemble_forward(training.weights, inputs)
    return jnp.square(mean - targets).mean((1, 2))


def ensemble_evaluate(config, dataset, training: EnsembleTraining) -> EnsembleTraining:
    """The holdout check: a model improving on its best by more than 1 % is snapshotted and
    its patience reset; the others count one more evaluation without improvement."""
    errors = holdout_errors(dataset, training)  # a stopped model's: as when it last failed
    improved = errors < (1 - MIN_IMPROVEMENT) * training.best_loss
    return training.replace(
        best_layers=_per_model(improved, training.weights["layers"], training.best_layers),
        best_loss=jnp.where(improved, errors, training.best_loss),
        since_best=jnp.where(improved, 0, training.since_best + 1),
        holdout_mse=errors,
    )


def ensemble_update(config, dataset, training: EnsembleTraining, rng):
    """One gradient step of the models still training (skipped when none is, under vmap when
    no member's is), then the holdout check when due. Returns (training, metrics)."""
    active = training.since_best < config.patience

    def step(training):
        shape = (config.num_models, config.model_batch_size)
        rows = training.train_rows[jax.random.randint(rng, shape, 0, training.train_rows.size)]
        inputs, targets = _model_rows(dataset, rows)
        inputs = (inputs - training.input_mean) / training.input_std
        (loss, aux), grads = jax.value_and_grad(ensemble_loss, has_aux=True)(
            training.weights, inputs, targets, active, config
        )
        layers, layers_opt = _adam_step(
            config.model_lr, grads["layers"], training.opt["layers"], training.weights["layers"]
        )
        bounds, bounds_opt = _adam_step(
            config.model_lr, grads["bounds"], training.opt["bounds"], training.weights["bounds"]
        )
        # A stopped model keeps its weights and its Adam moments: its step is a no-op; the
        # shared bounds move while any model trains (under vmap another member's may not).
        any_active = jnp.broadcast_to(active.any(), (1,))
        training = training.replace(
            weights={
                "layers": _per_model(active, layers, training.weights["layers"]),
                "bounds": _per_model(any_active, bounds, training.weights["bounds"]),
            },
            opt={
                "layers": _per_model(active, layers_opt, training.opt["layers"]),
                "bounds": _per_model(any_active, bounds_opt, training.opt["bounds"]),
            },
        )
        return training, (loss, aux["mse"])

    def skip(training):
        return training, (jnp.zeros(()), jnp.zeros(config.num_models))

    training, (loss, mse) = jax.lax.cond(_any_member(active.any()), step, skip, training)
    training = training.replace(step=training.step + 1)
    due = training.step % config.holdout_interval == 0
    training = jax.lax.cond(
        _any_member(due),
        lambda t: jax.tree.map(
            lambda a, b: jnp.where(due, a, b), ensemble_evaluate(config, dataset, t), t
        ),
        lambda t: t,
        training,
    )
    elite_errors = jnp.sort(training.holdout_mse)[: config.num_elites]
    bounds = training.weights["bounds"]
    metrics = {
        "model_loss": loss,
        "model_mse": jnp.where(active, mse, 0.0).sum() / jnp.maximum(active.sum(), 1),
        "model_holdout_mse": elite_errors.mean(),
        "models_training": (training.since_best < config.patience).sum(),
        "model_max_logvar": bounds["max_logvar"].mean(),
        "model_min_logvar": bounds["min_logvar"].mean(),
    }
    return training, metrics


def ensemble_fitted(config, dataset, training: EnsembleTraining) -> Ensemble:
    """A last holdout check, then every model's best snapshot and the num_elites models with the
    lowest best holdout errors as the elites."""
    training = ensemble_evaluate(config, dataset, training)
    return Ensemble(
        weights=training.weights | {"layers": training.best_layers},
        input_mean=training.input_mean,
        input_std=training.input_std,
        elites=jnp.argsort(training.best_loss)[: config.num_elites],
    )


def ensemble_predict(ensemble: Ensemble, obs, action):
    """Every model's mean and standard deviation of (s' - s, r): (N, B, S + 1) each."""
    inputs = (jnp.concatenate([obs, action], -1) - ensemble.input_mean) / ensemble.input_std
    mean, logvar = ensemble_forward(ensemble.weights, inputs)
    return mean, jnp.exp(0.5 * logvar)


def ensemble_sample(ensemble: Ensemble, obs, action, rng):
    """(next_obs, reward) sampled from one elite per row, chosen uniformly, and every model's
    (mean, std) of (s' - s, r) (N, B, S + 1)."""
    mean, std = ensemble_predict(ensemble, obs, action)
    pick_key, noise_key = jax.random.split(rng)
    rows = jnp.arange(obs.shape[0])
    chosen = ensemble.elites[jax.random.randint(pick_key, rows.shape, 0, ensemble.elites.size)]
    sample = mean[chosen, rows] + std[chosen, rows] * jax.random.normal(
        noise_key, obs.shape[:1] + mean.shape[-1:]
    )
    return obs + sample[:, :-1], sample[:, -1], (mean, std)


def observation_bounds(dataset) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension (min, max) over the dataset's observations and next observations, read on
    the host (the dataset is closed over: inside jit, XLA would fold the reduction over every
    row at compile time). A model rollout that leaves them is reported, never clipped."""
    every = np.concatenate(
        [np.asarray(dataset.observations), np.asarray(dataset.next_observations)]
    )
    return every.min(0), every.max(0)


# --- Networks ---


def _torch_init():
    return nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


class Policy(nn.Module):
    """pi(s, rtg): ReLU layers with PyTorch's default weights, the last Xavier-uniform with gain
    1e-2 and bias 0 (the authors' ``MLP(init_last=True)``)."""

    action_dim: int
    hidden_sizes: tuple

    @nn.compact
    def __call__(self, obs, rtg):
        x = jnp.concatenate([obs, rtg[..., None]], -1)
        for size in self.hidden_sizes:
            x = nn.relu(nn.Dense(size, kernel_init=_torch_init())(x))
        last = nn.initializers.variance_scaling(1e-4, "fan_avg", "uniform")  # gain^2 = 1e-4
        return nn.Dense(self.action_dim, kernel_init=last)(x)


def step_embedding(k, dim: int = TIME_EMBED_DIM):
    """The sinusoidal embedding of the denoising step k, (..., dim)."""
    half = dim // 2
    freqs = jnp.exp(-np.log(10000.0) / (half - 1) * jnp.arange(half))
    angle = jnp.asarray(k, jnp.float32)[..., None] * freqs
    return jnp.concatenate([jnp.sin(angle), jnp.cos(angle)], -1)


class Denoiser(nn.Module):
    """eps_theta(a_k, k, s): the step's embedding through a Mish MLP, then Dense-LayerNorm-Mish
    blocks on (a_k, embedding, normalized s); k has the batch shape of s."""

    action_dim: int
    hidden_sizes: tuple

    @nn.compact
    def __call__(self, noisy_action, k, obs):
        embed = jax.nn.mish(nn.Dense(4 * TIME_EMBED_DIM)(step_embedding(k)))
        embed = nn.Dense(TIME_EMBED_DIM)(embed)
        x = jnp.concatenate([noisy_action, embed, obs], -1)
        for size in self.hidden_sizes:
            x = jax.nn.mish(nn.LayerNorm()(nn.Dense(size)(x)))
        return nn.Dense(self.action_dim)(x)


@struct.dataclass
class Params:
    """The RCSL policy's weights, the return it aims for, and the action dimension."""

    policy: Any
    target_return: jax.Array  # the best kept rollout return (the threshold before begin_policy)
    action_dim: int = struct.field(pytree_node=False, default=1)


def _policy(config: Config, action_dim: int) -> Policy:
    return Policy(action_dim, tuple(config.hidden_sizes))


def _denoiser(config: Config, action_dim: int) -> Denoiser:
    return Denoiser(action_dim, tuple(config.behavior_hidden_sizes))


# --- The diffusion behaviour policy ---


def diffusion_schedule(num_steps: int) -> np.ndarray:
    """beta_k, k = 0..K-1, of diffusers' "squaredcos_cap_v2" (Nichol and Dhariwal's cosine)."""
    alpha_bar = lambda u: np.cos((u + 0.008) / 1.008 * np.pi / 2) ** 2  # noqa: E731
    k = np.arange(num_steps)
    return np.minimum(1 - alpha_bar((k + 1) / num_steps) / alpha_bar(k / num_steps), 0.999)


@struct.dataclass
class Behavior:
    """The diffusion behaviour policy: weights, AdamW, and the observation statistics."""

    weights: Any
    opt: Any
    obs_mean: jax.Array
    obs_std: jax.Array


def diffusion_loss(weights, config: Config, actions, obs, k, noise):
    """mean (eps_theta(sqrt(abar_k) a + sqrt(1 - abar_k) eps, k, s) - eps)^2, obs normalized."""
    alpha_bar = jnp.asarray(np.cumprod(1 - diffusion_schedule(config.behavior_diffusion_steps)))
    ab = alpha_bar[k][:, None]
    noisy = jnp.sqrt(ab) * actions + jnp.sqrt(1 - ab) * noise
    pred = _denoiser(config, actions.shape[-1]).apply(weights, noisy, k, obs)
    return jnp.square(pred - noise).mean()


def denoise_step(eps, k, noisy, z, betas):
    """One DDPM posterior step from a_k to a_{k-1} (diffusers' DDPMScheduler.step with
    epsilon prediction, "fixed_small" variance and the predicted a_0 clipped to [-1, 1]); no
    noise at k = 0. betas: the schedule as a constant array; k may be traced."""
    alpha_bar = jnp.cumprod(1 - betas)
    ab = alpha_bar[k]
    ab_prev = jnp.where(k > 0, alpha_bar[jnp.maximum(k - 1, 0)], 1.0)
    alpha, beta = ab / ab_prev, 1 - ab / ab_prev
    a0 = jnp.clip((noisy - jnp.sqrt(1 - ab) * eps) / jnp.sqrt(ab), -1.0, 1.0)
    mean = (jnp.sqrt(ab_prev) * beta * a0 + jnp.sqrt(alpha) * (1 - ab_prev) * noisy) / (1 - ab)
    variance = jnp.maximum((1 - ab_prev) / (1 - ab) * beta, 1e-20)
    return mean + jnp.where(k > 0, jnp.sqrt(variance), 0.0) * z


def behavior_sample(config: Config, behavior: Behavior, obs, rng, action_dim: int):
    """Actions a ~ mu(.|s) for a batch of raw observations (B, S): K denoising steps from
    N(0, I); in [-1, 1]."""
    betas = jnp.asarray(diffusion_schedule(config.behavior_diffusion_steps), jnp.float32)
    denoiser = _denoiser(config, action_dim)
    obs = (obs - behavior.obs_mean) / behavior.obs_std
    start_key, key = jax.random.split(rng)
    noisy = jax.random.normal(start_key, (*obs.shape[:-1], action_dim))

    def step(noisy, inputs):
        k, key = inputs
        eps = denoiser.apply(behavior.weights, noisy, jnp.full(obs.shape[:-1], k), obs)
        return denoise_step(eps, k, noisy, jax.random.normal(key, noisy.shape), betas), None

    steps = jnp.arange(config.behavior_diffusion_steps)[::-1]
    keys = jax.random.split(key, config.behavior_diffusion_steps)
    return jax.lax.scan(step, noisy, (steps, keys))[0]


def behavior_init(config: Config, dataset, rng) -> Behavior:
    obs = dataset.observations
    obs_std = obs.std(0)
    action_dim = dataset.actions.shape[1]
    weights = _denoiser(config, action_dim).init(
        rng, jnp.zeros((1, action_dim)), jnp.zeros(1, jnp.int32), jnp.zeros((1, obs.shape[1]))
    )
    return Behavior(
        weights=weights,
        opt=optax.adamw(config.behavior_lr).init(weights),
        obs_mean=obs.mean(0),
        obs_std=jnp.where(obs_std < 1e-12, 1.0, obs_std),
    )


def behavior_update(config: Config, dataset, behavior: Behavior, rng):
    """One AdamW step of the denoiser on ``behavior_batch_size`` dataset rows."""
    row_key, step_key, noise_key = jax.random.split(rng, 3)
    rows = jax.random.randint(row_key, (config.behavior_batch_size,), 0, dataset.rewards.size)
    actions = dataset.actions[rows]
    obs = (dataset.observations[rows] - behavior.obs_mean) / behavior.obs_std
    k = jax.random.randint(step_key, rows.shape, 0, config.behavior_diffusion_steps)
    noise = jax.random.normal(noise_key, actions.shape)
    loss, grads = jax.value_and_grad(diffusion_loss)(
        behavior.weights, config, actions, obs, k, noise
    )
    adamw = optax.adamw(config.behavior_lr, weight_decay=config.behavior_weight_decay)
    updates, opt = adamw.update(grads, behavior.opt, behavior.weights)
    weights = optax.apply_updates(behavior.weights, updates)
    return behavior.replace(weights=weights, opt=opt), {"behavior_loss": loss}


def _adam_step(lr, grads, opt_state, value):
    updates, opt_state = optax.adam(lr).update(grads, opt_state)
    return optax.apply_updates(value, updates), opt_state


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


# --- The dataset's episodes ---


def episode_starts(dataset) -> np.ndarray:
    """The rows that begin an episode: row 0 and every row after a terminal or timeout."""
    ends = np.asarray(dataset.terminals, bool) | np.asarray(dataset.timeouts, bool)
    return np.flatnonzero(np.concatenate([[True], ends[:-1]]))


def max_episode_return(dataset) -> float:
    """The best return of the dataset's episodes, cut at terminals | timeouts (a trailing
    episode without either counts too)."""
    return float(
        np.add.reduceat(np.asarray(dataset.rewards, np.float64), episode_starts(dataset)).max()
    )


# --- Model rollouts and the kept trajectories ---


@struct.dataclass
class Rollouts:
    """The kept trajectories, ``num_needed`` slots of ``horizon`` steps; the first ``count``
    slots are filled."""

    observations: jax.Array  # (num_needed, H, S)
    actions: jax.Array  # (num_needed, H, A)
    rtgs: jax.Array  # (num_needed, H)
    returns: jax.Array  # (num_needed,)
    count: jax.Array


def rollouts_init(config: Config, obs_dim: int, action_dim: int) -> Rollouts:
    n, h = config.num_needed, config.horizon
    return Rollouts(
        observations=jnp.zeros((n, h, obs_dim)),
        actions=jnp.zeros((n, h, action_dim)),
        rtgs=jnp.zeros((n, h)),
        returns=jnp.zeros(n),
        count=jnp.zeros((), jnp.int32),
    )


def returns_to_go(rewards):
    """rtg_t = R - sum_{t' < t} r_t' for time-major rewards (H, B)."""
    return rewards.sum(0) - (jnp.cumsum(rewards, 0) - rewards)


def keep_rollouts(rollouts: Rollouts, obs, actions, rewards, threshold):
    """Stores, in order into the free slots, the trajectories whose return exceeds
    ``threshold``, labelled with their returns-to-go; those beyond the last slot are dropped.
    obs (H, B, S), actions (H, B, A), rewards (H, B) time-major. Returns (rollouts, kept (B,))."""
    capacity = rollouts.returns.shape[0]
    returns = rewards.sum(0)
    above = returns > threshold
    slot = rollouts.count + jnp.cumsum(above) - 1
    kept = above & (slot < capacity)
    index = jnp.where(kept, slot, capacity)  # out of range: dropped
    put = lambda buffer, x: buffer.at[index].set(jnp.swapaxes(x, 0, 1), mode="drop")  # noqa: E731
    rollouts = Rollouts(
        observations=put(rollouts.observations, obs),
        actions=put(rollouts.actions, actions),
        rtgs=put(rollouts.rtgs, returns_to_go(rewards)),
        returns=rollouts.returns.at[index].set(returns, mode="drop"),
        count=rollouts.count + kept.sum(),
    )
    return rollouts, kept


def check_episode_lengths(config, dataset) -> None:
    """RCSL on the dataset takes its episodes as ``horizon``-step trajectories: a named error
    for any other length."""
    lengths = np.diff(np.append(episode_starts(dataset), len(dataset.rewards)))
    if (lengths != config.horizon).any():
        raise ValueError(
            f"rcsl_on='dataset' needs every episode to be horizon={config.horizon} steps long; "
            f"the dataset's run from {lengths.min()} to {lengths.max()} steps: set horizon to "
            "their length"
        )


def dataset_episodes(config: Config, dataset) -> Rollouts:
    """The dataset's episodes as kept trajectories (every one), with their returns-to-go."""
    h = config.horizon
    episodes = lambda x: x.reshape(-1, h, *x.shape[1:])  # noqa: E731
    rewards = episodes(dataset.rewards)
    return Rollouts(
        observations=episodes(dataset.observations),
        actions=episodes(dataset.actions),
        rtgs=returns_to_go(rewards.T).T,
        returns=rewards.sum(1),
        count=jnp.asarray(rewards.shape[0], jnp.int32),
    )


def model_rollout(config: Config, ensemble: Ensemble, behavior: Behavior, starts, rng, action_dim):
    """``horizon`` steps from ``starts`` (B, S) with mu and one elite per row; time-major
    (obs, actions, rewards, next_obs, the termination rule's flags), terminals ignored."""

    def step(obs, key):
        act_key, model_key = jax.random.split(key)
        action = behavior_sample(config, behavior, obs, act_key, action_dim)
        next_obs, reward, _ = ensemble_sample(ensemble, obs, action, model_key)
        done = terminates(config, obs, action, next_obs)
        return next_obs, (obs, action, reward, next_obs, done)

    return jax.lax.scan(step, starts, jax.random.split(rng, config.horizon))[1]


# --- Acting: the return so far in the observation ---


@struct.dataclass
class ReturnState:
    env_state: Any
    return_so_far: jax.Array


def _augment(obs, return_so_far):
    return jnp.concatenate(
        [obs.astype(jnp.float32), jnp.asarray(return_so_far, jnp.float32)[..., None]], -1
    )


class ReturnSoFar:
    """Appends the reward collected so far in the episode to a gymnax-style env's vector
    observation (0 at reset); ``info["final_observation"]`` carries the episode's return."""

    def __init__(self, env):
        self._env = env

    def __getattr__(self, name):
        if name == "_env":
            raise AttributeError(name)
        return getattr(self._env, name)

    def observation_space(self, params):
        inner = self._env.observation_space(params)
        return type(inner)(-jnp.inf, jnp.inf, (inner.shape[0] + 1,), jnp.float32)

    def reset(self, key, params=None):
        obs, env_state = self._env.reset(key, params)
        return _augment(obs, 0.0), ReturnState(env_state, jnp.zeros((), jnp.float32))

    def step(self, key, state, action, params=None):
        obs, env_state, reward, terminated, truncated, info = self._env.step(
            key, state.env_state, action, params
        )
        total = state.return_so_far + reward
        info = {**info, "final_observation": _augment(info["final_observation"], total)}
        after = jnp.where(terminated | truncated, 0.0, total)  # obs is the next episode's first
        state = ReturnState(env_state, after.astype(jnp.float32))
        return _augment(obs, after), state, reward, terminated, truncated, info


def wrap_env(config: Config, env, env_params, params=None):
    """The runner's hook: ``env`` with the return so far appended to its observation (the same
    in training and evaluation), and its params unchanged."""
    return ReturnSoFar(env), env_params


# --- The contract ---


class NoRolloutAboveThreshold(ValueError):
    """Raised by check_begin_policy when a member kept no model rollout above the dataset's
    best episode return: the RCSL policy would have nothing to learn from."""


def check(config: Config) -> None:
    """The rules on Config's static fields; the runner calls it on each concrete config."""
    check_ensemble(config)
    if config.num_needed > config.rollout_batch_size * config.max_rounds:
        raise ValueError(
            f"num_needed={config.num_needed} exceeds the rollouts' rollout_batch_size * "
            f"max_rounds = {config.rollout_batch_size * config.max_rounds}: it can never be "
            f"met; num_needed must be in [1, {config.rollout_batch_size * config.max_rounds}]"
        )


@struct.dataclass
class ModelState:
    """The model phase: the ensemble and the behaviour policy training, the dataset's episode
    starts and best episode return, and the untrained RCSL policy's params."""

    params: Params
    training: EnsembleTraining
    behavior: Behavior
    initial_rows: jax.Array  # rows that begin an episode
    threshold: jax.Array  # the dataset's best episode return
    rng: jax.Array


@struct.dataclass
class TrainState:
    """The policy phase: pi's training on the kept rollouts."""

    params: Params
    opt: Any
    rollouts: Rollouts
    rollout_stats: dict  # begin_policy's rollout statistics, reported with every update
    rng: jax.Array
    step: jax.Array  # policy gradient steps done so far


def init(config: Config, dataset, rng: jax.Array) -> ModelState:
    """The model phase's state: untrained ensemble (its held-out split drawn from ``rng``),
    behaviour denoiser and RCSL policy; ``dataset`` (an rljax Dataset) must be concrete (closed
    over, not passed through jit)."""
    check(config)
    check_model_dataset(config, dataset)
    if config.rcsl_on == "dataset":
        check_episode_lengths(config, dataset)
    rng, model_key, behavior_key, policy_key = jax.random.split(rng, 4)
    obs_dim, action_dim = dataset.observations.shape[1], dataset.actions.shape[1]
    threshold = jnp.asarray(max_episode_return(dataset), jnp.float32)
    weights = _policy(config, action_dim).init(policy_key, jnp.zeros(obs_dim), jnp.zeros(()))
    return ModelState(
        params=Params(weights, threshold, action_dim),
        training=ensemble_init(config, dataset, model_key),
        behavior=behavior_init(config, dataset, behavior_key),
        initial_rows=jnp.asarray(episode_starts(dataset)),
        threshold=threshold,
        rng=rng,
    )


def update_model(config: Config, dataset, state: ModelState) -> tuple[ModelState, dict]:
    """One gradient step of the ensemble (and its holdout check when due) and one of mu."""
    rng, model_key, behavior_key = jax.random.split(state.rng, 3)
    training, metrics = ensemble_update(config, dataset, state.training, model_key)
    behavior, behavior_metrics = behavior_update(config, dataset, state.behavior, behavior_key)
    state = state.replace(training=training, behavior=behavior, rng=rng)
    return state, metrics | behavior_metrics


def begin_policy(config: Config, dataset, state: ModelState) -> TrainState:
    """The fitted ensemble (best snapshots, elites), then rounds of model rollouts from the
    dataset's episode starts until ``num_needed`` trajectories above the threshold were kept or
    ``max_rounds`` ran; pi aims at the best kept return. Check the result on the host with
    check_begin_policy. With ``rcsl_on="dataset"``: no rollouts, pi learns from every dataset
    episode and aims at the best episode return (RCSL)."""
    if config.rcsl_on == "dataset":
        episodes = dataset_episodes(config, dataset)
        return _policy_start(config, state, episodes, state.threshold, {
            "rollout_trajectories": episodes.count.astype(jnp.float32),
            "rollout_rounds": jnp.zeros(()),
            "rollout_best_return": state.threshold,
            "rollout_out_of_bounds": jnp.zeros(()),
            "rollout_terminal_fraction": jnp.zeros(()),
        })  # fmt: skip
    ensemble = ensemble_fitted(config, dataset, state.training)
    action_dim = state.params.action_dim
    low, high = map(jnp.asarray, observation_bounds(dataset))
    rng, key = jax.random.split(state.rng)

    def more(carry):
        rollouts, rounds = carry[0], carry[1]
        return (rollouts.count < config.num_needed) & (rounds < config.max_rounds)

    def round_(carry):
        rollouts, rounds, best, outside, terminal, key = carry
        key, start_key, rollout_key = jax.random.split(key, 3)
        pick = jax.random.randint(
            start_key, (config.rollout_batch_size,), 0, state.initial_rows.size
        )
        starts = dataset.observations[state.initial_rows[pick]]
        obs, actions, rewards, next_obs, done = model_rollout(
            config, ensemble, state.behavior, starts, rollout_key, action_dim
        )
        rollouts, _ = keep_rollouts(rollouts, obs, actions, rewards, state.threshold)
        out = ((next_obs < low) | (next_obs > high)).any(-1).mean()
        return (
            rollouts,
            rounds + 1,
            jnp.maximum(best, rewards.sum(0).max()),
            outside + out,
            terminal + done.mean(),
            key,
        )

    start = (
        rollouts_init(config, dataset.observations.shape[1], action_dim),
        0,
        -jnp.inf,
        0.0,
        0.0,
        key,
    )
    rollouts, rounds, best, outside, terminal, _ = jax.lax.while_loop(more, round_, start)
    filled = jnp.arange(config.num_needed) < rollouts.count
    target = jnp.where(
        rollouts.count > 0, jnp.where(filled, rollouts.returns, -jnp.inf).max(), state.threshold
    )
    return _policy_start(config, state.replace(rng=rng), rollouts, target, {
        "rollout_trajectories": rollouts.count.astype(jnp.float32),
        "rollout_rounds": jnp.asarray(rounds, jnp.float32),
        "rollout_best_return": best,
        "rollout_out_of_bounds": outside / rounds,
        "rollout_terminal_fraction": terminal / rounds,
    })  # fmt: skip


def _policy_start(config: Config, state: ModelState, rollouts: Rollouts, target, stats):
    """The policy phase's state: pi learns from ``rollouts`` and aims at ``target``."""
    params = state.params.replace(target_return=target)
    return TrainState(
        params=params,
        opt=optax.adam(config.lr).init(params.policy),
        rollouts=rollouts,
        rollout_stats=stats | {"rollout_threshold": state.threshold, "rollout_target": target},
        rng=state.rng,
        step=jnp.zeros((), jnp.int32),
    )


def check_begin_policy(config: Config, state: TrainState) -> None:
    """NoRolloutAboveThreshold, with the numbers, if a member (members stacked or one state)
    kept no rollout; the runner calls it on the host after begin_policy."""
    stats = {k: np.atleast_1d(np.asarray(v)) for k, v in state.rollout_stats.items()}
    empty = np.flatnonzero(stats["rollout_trajectories"] == 0)
    if empty.size:
        i = int(empty[0])
        tried = int(stats["rollout_rounds"][i]) * config.rollout_batch_size
        raise NoRolloutAboveThreshold(
            f"{empty.size} member(s) (first: member {i}) kept no model rollout: of {tried} "
            f"trajectories of horizon={config.horizon} tried, the best return was "
            f"{stats['rollout_best_return'][i]:.4g}, not above the dataset's best episode "
            f"return {stats['rollout_threshold'][i]:.4g}. Raise max_rounds or "
            "rollout_batch_size, fit the model longer (model_updates), or use a dataset whose "
            "episodes can be stitched into better ones"
        )


def policy_loss(weights, config: Config, batch: dict, action_dim: int):
    """mean (pi(s, rtg) - a)^2."""
    pred = _policy(config, action_dim).apply(weights, batch["observations"], batch["rtgs"])
    return jnp.square(pred - batch["actions"]).mean()


def update_on_batch(config: Config, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    """One Adam step of pi on ``batch`` (observations, rtgs, actions), with the L2 term
    weight_decay * theta added to the gradient (PyTorch's coupled weight decay)."""
    params = state.params
    loss, grads = jax.value_and_grad(policy_loss)(params.policy, config, batch, params.action_dim)
    grads = jax.tree.map(lambda g, w: g + config.weight_decay * w, grads, params.policy)
    weights, opt = _adam_step(config.lr, grads, state.opt, params.policy)
    state = state.replace(params=params.replace(policy=weights), opt=opt, step=state.step + 1)
    return state, {"policy_loss": loss}


def sample_batch(config: Config, rollouts: Rollouts, rng: jax.Array) -> dict:
    """Kept steps drawn uniformly with replacement."""
    horizon = rollouts.rtgs.shape[1]
    rows = jax.random.randint(rng, (config.batch_size,), 0, rollouts.count * horizon)
    traj, t = rows // horizon, rows % horizon
    return {
        "observations": rollouts.observations[traj, t],
        "rtgs": rollouts.rtgs[traj, t],
        "actions": rollouts.actions[traj, t],
    }


def update(config: Config, dataset, state: TrainState) -> tuple[TrainState, dict]:
    """One step of pi on a batch of kept rollout steps sampled inside jit (the rollouts were
    all made in begin_policy; the dataset is not read)."""
    rng, key = jax.random.split(state.rng)
    batch = sample_batch(config, state.rollouts, key)
    state, metrics = update_on_batch(config, state.replace(rng=rng), batch)
    return state, metrics | state.rollout_stats


def train(config: Config, dataset, rng: jax.Array, num_updates: int | None = None):
    """init, ``model_updates`` steps of update_model, begin_policy, then num_updates (default:
    total_updates) steps of update. Returns (policy state, (model metrics, policy metrics)).
    Inside jit nothing can raise: call check_begin_policy on the returned state.

    The dataset is closed over, not carried in the state, so seeds vmapped over ``train`` share
    one copy of it.
    """
    num_updates = config.num_updates if num_updates is None else num_updates
    state = init(config, dataset, rng)
    state, model_metrics = jax.lax.scan(
        lambda s, _: update_model(config, dataset, s), state, None, config.model_updates
    )
    state = begin_policy(config, dataset, state)
    state, metrics = jax.lax.scan(lambda s, _: update(config, dataset, s), state, None, num_updates)
    return state, (model_metrics, metrics)


def act(config: Config, params: Params, obs: jax.Array, rng: jax.Array, deterministic=False):
    """pi(s, target - return so far), clipped to [-1, 1]; ``obs`` is the wrapped env's, its
    last entry the return so far (wrap_env). pi is deterministic: ``rng`` is not used."""
    rtg = params.target_return - obs[..., -1]
    action = _policy(config, params.action_dim).apply(params.policy, obs[..., :-1], rtg)
    return jnp.clip(action, -1.0, 1.0)


if __name__ == "__main__":
    import time

    # A point on a line, x' = x + 0.1 a, reward a, 10-step episodes of uniform random actions:
    # no episode of the data pushes right all the way, and the kept model rollouts do more so.
    @struct.dataclass
    class Data:  # the six fields of rljax.data.Dataset
        observations: jax.Array
        actions: jax.Array
        rewards: jax.Array
        terminals: jax.Array
        timeouts: jax.Array
        next_observations: jax.Array

    episodes, horizon = 40, 10
    rng = np.random.default_rng(0)
    a = rng.uniform(-1, 1, (episodes, horizon, 1))
    x = rng.uniform(-0.5, 0.5, (episodes, 1, 1))
    x = x + 0.1 * np.concatenate([np.zeros((episodes, 1, 1)), np.cumsum(a, 1)], 1)
    timeouts = np.zeros((episodes, horizon), np.float32)
    timeouts[:, -1] = 1
    columns = (
        x[:, :-1].reshape(-1, 1), a.reshape(-1, 1), a.reshape(-1), np.zeros(episodes * horizon),
        timeouts.reshape(-1), x[:, 1:].reshape(-1, 1),
    )  # fmt: skip
    dataset = Data(*(jnp.asarray(c, jnp.float32) for c in columns))
    print(f"dataset: {episodes} episodes, best return {max_episode_return(dataset):.2f}")

    config = Config(
        total_updates=1000, hidden_sizes=(64, 64), lr=1e-3, model_updates=2000,
        model_hidden_sizes=(64, 64), model_weight_decay=(2.5e-5, 5e-5, 1e-4),
        holdout_interval=200, model_batch_size=64, behavior_hidden_sizes=(64, 64),
        behavior_lr=1e-3, horizon=horizon, num_needed=50, max_rounds=50,
    )  # fmt: skip
    start = time.time()
    state, (model_metrics, metrics) = jax.block_until_ready(
        jax.jit(lambda key: train(config, dataset, key))(jax.random.PRNGKey(1))
    )
    check_begin_policy(config, state)
    print(f"MBRCSL: {config.model_updates} model steps, rollouts, {config.total_updates} policy "
          f"steps in {time.time() - start:.1f}s")  # fmt: skip
    print(
        f"  ensemble holdout mse {float(model_metrics['model_holdout_mse'][-1]):.2e}, "
        f"behaviour loss {float(model_metrics['behavior_loss'][-100:].mean()):.3f}"
    )
    print(
        f"  kept {int(state.rollouts.count)} rollouts in {int(metrics['rollout_rounds'][-1])} "
        f"rounds, target return {float(state.params.target_return):.2f}, policy loss "
        f"{float(metrics['policy_loss'][-100:].mean()):.3f}"
    )

    def true_return(x0):
        """pi in the true system from x0, conditioning on the return still to collect."""

        def step(carry, _):
            x, total = carry
            action = act(config, state.params, jnp.concatenate([x, total[None]]), None)
            return (x + 0.1 * action, total + action[0]), None

        return jax.lax.scan(step, (x0, jnp.zeros(())), None, horizon)[0][1]

    starts = dataset.observations[episode_starts(dataset)]
    print(f"  pi's return in the true system: {float(jax.vmap(true_return)(starts).mean()):.2f}")
