"""RAVL: reach-aware value learning, EDAC's critic ensemble on short rollouts of a learned model.

Sims, Lu, Foerster, Teh, "The Edge-of-Reach Problem in Offline Model-Based Reinforcement
Learning", NeurIPS 2024 (anyasims/edge-of-reach). Truncated k-step model rollouts leave
edge-of-reach states: next states s' that the policy's targets bootstrap from but that no
batch ever updates, so their values are never corrected. RAVL keeps MBPO's rollouts and
replaces MOPO's reward penalty with EDAC's value pessimism, the minimum over a large
Q-ensemble, which the ensemble's disagreement makes low exactly where the critics are never
trained. Two phases:

1. The dynamics ensemble (``update_model``, ``Config.model_updates`` steps): see its section.
2. The policy (``update``, ``Config.total_updates`` steps). Every ``rollout_freq`` steps
   (and once at ``begin_policy``), ``rollout_batch_size`` dataset states are rolled out
   ``rollout_length`` = k steps with the current STOCHASTIC policy (the authors' rollouts
   sample from pi) in the model: per row one elite drawn uniformly, (s' - s, r) drawn from
   its Gaussian, d from the termination function; a terminated row stops (its later steps
   are not stored). The transitions fill a ring buffer of ``model_retain_epochs`` rollouts'
   worth. Each gradient step takes floor(``dataset_ratio`` B) dataset rows and the rest
   from that buffer (the authors' ``int(dataset_ratio * batch_size)``: 12 and 244 for B =
   256 at 0.05), the model's rewards as they are (no penalty), and takes EDAC's step on
   them, in this order:

    L_alpha = -mean(log alpha (log pi(a~|s) - |A|)),   a~ ~ pi(.|s)
    L_pi    = mean(alpha log pi(a~|s) - min_j Q_j(s, a~))   (the new alpha)
    y       = r + gamma (1 - d) (min_j Qbar_j(s', a') - alpha log pi(a'|s')),  a' ~ pi(.|s')
    L_Q     = sum_j mean_B (Q_j(s, a) - y)^2 + eta ES(s, a),
    ES      = 1 / (N - 1) mean_B sum_{i != j} <g_i, g_j>,  g_j = grad_a Q_j / (|grad_a Q_j| + eps)
    Qbar   <- (1 - tau) Qbar + tau Q

Defaults as the authors' ``train_ravl_agent.py``: N = 10 critics, eta = 1, k = 5, 5% real
rows, 50,000 rollouts every 1000 steps kept for 5 rollouts, learning rates 3e-4, gamma 0.99,
tau 5e-3, three hidden layers of 256, batch 256, 3000 epochs of 1000 steps (3M updates). The
paper tunes (N, k, ratio, eta) per dataset; its table was not found. EDAC's pieces (networks,
initialization, losses, the exact tanh log density, the update order) are EDAC's file's,
held identical by tests/test_inlined_copies.py; see rljax/agents/edac.py for where EDAC's code
and CORL differ (the authors' agent is CORL's).

Where this file and the authors' code differ, and what it does:
* The dynamics model is the library's one ensemble section (OfflineRL-Kit's EnsembleDynamics,
  as MOPO's file; held identical by tests/test_inlined_copies.py): the authors' trainer
  (``train_dynamics_model.py``) has the same 7 models, 5 elites, 4x200 SiLU, learned
  log-variance bounds and per-layer decay, but trains in epochs with a StepLR schedule (gamma
  0.3), between 350 and 2000 epochs with its own stopping window, and normalizes its inputs
  with running filters. Here ``model_updates`` fixed steps (50,000 by default, about 13
  epochs of D4RL's 1M rows at batch 256; fewer than the authors' 350+ epochs, so raise it for
  D4RL-sized runs), a constant learning rate, holdout checks every ``holdout_interval`` steps
  with a patience per model, and the training rows' mean and std.
* Termination: ``TERMINATIONS`` holds brax's healthy ranges for hopper and walker2d (the
  authors' read the same two observation entries of D4RL's MuJoCo envs; their hopper rule
  also ends on a non-finite s'). A terminated row is stored with d = 1 and nothing after it.
* Batch composition: the dataset rows are the first floor(ratio B) of the batch, drawn with
  replacement, the model rows uniformly from the filled part of the replay.
* ``rollout_out_of_bounds`` (the fraction of kept model next-states outside the dataset's
  per-dimension [min, max]) is reported, never clipped; the authors report neither. The last
  rollout's statistics ride in the train state so every step reports them.
* Evaluation is the runner's (deterministic: tanh of the mean), as the authors' ``eval_actor``.

The paper's diagnostic (its Section 4): ``true_dynamics`` names an env of ``TRUE_DYNAMICS``
whose exact step replaces the model in the rollouts, so no model error is left and what
remains is the edge of reach: with it, SAC's two critics (``num_critics=2, eta=0``) against
RAVL's ensemble (experiments/model_based.py --diagnostic).
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
PAPER = (
    'Sims et al., "The Edge-of-Reach Problem in Offline Model-Based Reinforcement Learning", '
    "NeurIPS 2024"
)

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0  # EDAC's clip of log sigma (SAC's code: -20, 2)
GRAD_NORM_EPS = 1e-10  # added to |grad_a Q_j| in ES, as in both codes


def _field(default, *, static=False, bounds=None, choices=None, doc):
    """A config field. Static fields are shapes and switches (changing one recompiles); the
    rest are traced, so a sweep can vmap over them. bounds/choices let a runner validate; doc,
    the field's meaning in one line, is required so that no field goes unexplained."""
    metadata = {"bounds": bounds, "choices": choices, "doc": doc}
    return struct.field(pytree_node=not static, default=default, metadata=metadata)


TERMINATION_CHOICES = ("none", "Pendulum-v1", "brax/halfcheetah", "brax/hopper", "brax/walker2d")


@struct.dataclass
class Config:
    # The policy phase (EDAC's fields, the authors' defaults)
    batch_size: int = _field(
        256, static=True, bounds="[1, inf)", doc="transitions per gradient step"
    )
    total_updates: int = _field(
        3_000_000, static=True, bounds="[1, inf)", doc="the policy's gradient steps (the budget)"
    )
    hidden_sizes: tuple = _field(
        (256, 256, 256), static=True, doc="hidden-layer widths of the actor and every critic"
    )
    num_critics: int = _field(
        10, static=True, bounds="[2, inf)", doc="critics N in the ensemble (the min is over N)"
    )
    normalize_obs: bool = _field(
        False, static=True, doc="normalize the policy's observations by the dataset's mean and std"
    )
    actor_lr: float = _field(3e-4, bounds="(0, inf)", doc="Adam learning rate of the actor")
    critic_lr: float = _field(3e-4, bounds="(0, inf)", doc="Adam learning rate of the critics")
    alpha_lr: float = _field(
        3e-4, bounds="(0, inf)", doc="Adam learning rate of the temperature alpha"
    )
    gamma: float = _field(0.99, bounds="[0, 1]", doc="discount factor gamma")
    tau: float = _field(5e-3, bounds="(0, 1]", doc="Polyak rate tau of the target critics")
    eta: float = _field(
        1.0, bounds="[0, inf)", doc="weight eta of the gradient diversity term (0: SAC-N)"
    )
    # Model rollouts
    dataset_ratio: float = _field(
        0.05, bounds="[0, 1]", doc="fraction of each batch drawn from the dataset (floored)"
    )
    rollout_length: int = _field(
        5, static=True, bounds="[1, inf)", doc="steps k of each model rollout"
    )
    rollout_batch_size: int = _field(
        50_000, static=True, bounds="[1, inf)", doc="dataset states rolled out each time"
    )
    rollout_freq: int = _field(
        1000, static=True, bounds="[1, inf)", doc="policy steps between rollouts"
    )
    model_retain_epochs: int = _field(
        5, static=True, bounds="[1, inf)", doc="rollouts' worth of transitions the replay keeps"
    )
    # The dynamics ensemble (OfflineRL-Kit's, as MOPO's file)
    model_updates: int = _field(
        50_000, static=True, bounds="[1, inf)", doc="gradient steps of the dynamics ensemble"
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
        "none", static=True, choices=TERMINATION_CHOICES, doc="env whose rule ends rollouts"
    )
    model_lr: float = _field(1e-3, bounds="(0, inf)", doc="Adam learning rate of the models")
    true_dynamics: str = _field(
        "", static=True, choices=("", "Pendulum-v1"),
        doc="env whose exact step replaces the model in rollouts (the diagnostic); '': none",
    )  # fmt: skip

    @property
    def num_updates(self) -> int:
        return self.total_updates


@struct.dataclass
class Params:
    actor: Any
    critic: Any  # the N critics' weights, stacked on a leading axis of num_critics
    log_alpha: jax.Array
    obs_mean: jax.Array  # normalized obs = (obs - obs_mean) / obs_std
    obs_std: jax.Array
    action_dim: int = struct.field(pytree_node=False, default=1)


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


# --- Networks (EDAC's initialization) ---


def _torch_init():
    return nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def _uniform(scale):
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(
        key, shape, dtype, -scale, scale
    )


def _edac_trunk(x, hidden_sizes):
    """ReLU layers with PyTorch's default weights and biases 0.1."""
    for size in hidden_sizes:
        dense = nn.Dense(size, kernel_init=_torch_init(), bias_init=nn.initializers.constant(0.1))
        x = nn.relu(dense(x))
    return x


class Actor(nn.Module):
    """Mean and clipped log standard deviation of the Gaussian before the tanh."""

    action_dim: int
    hidden_sizes: tuple

    @nn.compact
    def __call__(self, obs):
        x = _edac_trunk(obs, self.hidden_sizes)
        small = dict(kernel_init=_uniform(1e-3), bias_init=_uniform(1e-3))
        mean = nn.Dense(self.action_dim, name="mean", **small)(x)
        log_std = nn.Dense(self.action_dim, name="log_std", **small)(x)
        return mean, jnp.clip(log_std, LOG_STD_MIN, LOG_STD_MAX)


class Critic(nn.Module):
    """One critic; the ensemble is this network vmapped over stacked weights."""

    hidden_sizes: tuple

    @nn.compact
    def __call__(self, obs, action):
        x = _edac_trunk(jnp.concatenate([obs, action], -1), self.hidden_sizes)
        out = nn.Dense(1, kernel_init=_uniform(3e-3), bias_init=_uniform(3e-3))
        return jnp.squeeze(out(x), -1)


def _actor(config: Config, action_dim: int) -> Actor:
    return Actor(action_dim, tuple(config.hidden_sizes))


def _ensemble(config: Config, critic_params, obs, actions):
    """Q_j(s, a) for every critic j: (N, ...), from weights stacked on a leading axis N."""
    critic = Critic(tuple(config.hidden_sizes))
    return jax.vmap(critic.apply, in_axes=(0, None, None))(critic_params, obs, actions)


def _normalize(params: Params, obs):
    return (obs - params.obs_mean) / params.obs_std


def sample_action(mean, log_std, rng):
    """A tanh-Gaussian action on [-1, 1] and its log density there (exact tanh Jacobian)."""
    pre_tanh = mean + jnp.exp(log_std) * jax.random.normal(rng, mean.shape)
    gaussian_log_prob = -0.5 * ((pre_tanh - mean) / jnp.exp(log_std)) ** 2 - log_std
    gaussian_log_prob -= 0.5 * jnp.log(2 * jnp.pi)
    # log(1 - tanh(x)^2) = 2 (log 2 - x - softplus(-2x)), stable for large |x|
    log_det = 2 * (jnp.log(2.0) - pre_tanh - jax.nn.softplus(-2 * pre_tanh))
    return jnp.tanh(pre_tanh), (gaussian_log_prob - log_det).sum(-1)


def q_values(config: Config, params: Params, observations, actions):
    """Every critic's Q(s, a), shape (N, ...), on raw observations (normalized here, as in
    training) and actions in [-1, 1]; pure and differentiable in both (e.g. for attacks)."""
    return _ensemble(config, params.critic, _normalize(params, observations), actions)


# --- Losses (observations already normalized) ---


def values_and_action_grads(critic_params, obs, actions, config: Config):
    """Q_j(s, a) (N, B) and grad_a Q_j(s, a) (N, B, |A|), one forward and one backward pass
    per critic; differentiable in the weights (the action gradients to second order)."""
    critic = Critic(tuple(config.hidden_sizes))

    def one(weights):
        q, pullback = jax.vjp(lambda a: critic.apply(weights, obs, a), actions)
        return q, pullback(jnp.ones_like(q))[0]  # rows are independent: d(sum q)/da per row

    return jax.vmap(one)(critic_params)


def diversity_loss(action_grads):
    """ES = 1 / (N - 1) mean_B sum_{i != j} <g_i, g_j> of the normalized action gradients
    g_j = grad_j / (|grad_j| + 1e-10); action_grads (N, B, |A|). A zero gradient stays zero."""
    squares = jnp.square(action_grads).sum(-1, keepdims=True)
    positive = squares > 0
    norms = jnp.where(positive, jnp.sqrt(jnp.where(positive, squares, 1.0)), 0.0)
    g = action_grads / (norms + GRAD_NORM_EPS)
    # sum_{i != j} <g_i, g_j> = |sum_i g_i|^2 - sum_i |g_i|^2: O(N), not O(N^2), per row
    pairs = jnp.square(g.sum(0)).sum(-1) - jnp.square(g).sum((0, -1))
    return pairs.mean() / (g.shape[0] - 1)


def critic_target(batch, next_action, next_log_prob, target_critic, alpha, config: Config):
    """y = r + gamma (1 - d) (min_j Qbar_j(s', a') - alpha log pi(a'|s'))."""
    q_next = _ensemble(config, target_critic, batch["next_observations"], next_action).min(0)
    soft_value = q_next - alpha * next_log_prob
    return batch["rewards"] + config.gamma * (1.0 - batch["terminals"]) * soft_value


def critic_loss(critic_params, batch, target, config: Config):
    """sum_j mean_B (Q_j(s, a) - y)^2 + eta ES(s, a), y held constant."""
    q, action_grads = values_and_action_grads(
        critic_params, batch["observations"], batch["actions"], config
    )
    bellman = jnp.square(q - jax.lax.stop_gradient(target)).mean(-1).sum()
    diversity = diversity_loss(action_grads)
    loss = bellman + config.eta * diversity
    return loss, {"bellman": bellman, "diversity": diversity, "q_mean": q.mean()}


def policy_terms(actor_params, params: Params, obs, rng, config: Config):
    """(log pi(a~|s), min_j Q_j(s, a~)) for a~ reparameterized from pi(.|s), and diagnostics;
    the critics are constants here."""
    mean, log_std = _actor(config, params.action_dim).apply(actor_params, obs)
    action, log_prob = sample_action(mean, log_std, rng)
    q = _ensemble(config, params.critic, obs, action)
    return (log_prob, q.min(0)), {"entropy": -log_prob.mean(), "q_policy_std": q.std(0).mean()}


def actor_loss(actor_params, params: Params, obs, rng, alpha, config: Config):
    """mean(alpha log pi(a~|s) - min_j Q_j(s, a~)); alpha is a constant here."""
    (log_prob, q_min), aux = policy_terms(actor_params, params, obs, rng, config)
    return (alpha * log_prob - q_min).mean(), aux


def alpha_loss(log_alpha, log_prob, target_entropy):
    return -(log_alpha * (jax.lax.stop_gradient(log_prob) + target_entropy)).mean()


def _adam_step(lr, grads, opt_state, value):
    updates, opt_state = optax.adam(lr).update(grads, opt_state)
    return optax.apply_updates(value, updates), opt_state


# --- Model rollouts ---

BATCH_KEYS = ("observations", "actions", "rewards", "terminals", "next_observations")
ROLLOUT_METRICS = ("rollout_out_of_bounds", "rollout_reward_mean", "rollout_length_mean")


@struct.dataclass
class ModelReplay:
    """A ring buffer of model transitions (the ``BATCH_KEYS`` arrays, ``capacity`` rows)."""

    data: dict
    size: jax.Array  # rows filled
    pointer: jax.Array  # the next row written


def model_replay_init(capacity: int, obs_dim: int, action_dim: int) -> ModelReplay:
    shapes = {
        "observations": (obs_dim,), "actions": (action_dim,), "rewards": (),
        "terminals": (), "next_observations": (obs_dim,),
    }  # fmt: skip
    data = {k: jnp.zeros((capacity, *shape), jnp.float32) for k, shape in shapes.items()}
    return ModelReplay(data, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))


def model_replay_add(replay: ModelReplay, rows: dict, keep: jax.Array) -> ModelReplay:
    """Appends the ``rows`` whose ``keep`` is set, in order, overwriting the oldest; at most
    ``capacity`` rows at once (a rollout's are)."""
    capacity = replay.data["rewards"].shape[0]
    offsets = jnp.cumsum(keep) - 1
    index = jnp.where(keep, (replay.pointer + offsets) % capacity, capacity)  # capacity: dropped
    data = {k: v.at[index].set(rows[k], mode="drop") for k, v in replay.data.items()}
    added = keep.sum().astype(jnp.int32)
    size = jnp.minimum(replay.size + added, capacity)
    return ModelReplay(data, size, (replay.pointer + added) % capacity)


def composed_batch(dataset, replay: ModelReplay, dataset_ratio, batch_size: int, rng) -> dict:
    """``batch_size`` rows: the first floor(``dataset_ratio`` batch_size) drawn from the dataset,
    the rest from the model replay's filled rows (both uniformly, with replacement), as the
    authors' ``int(dataset_ratio * batch_size)``; ``dataset_ratio`` may be traced."""
    dataset_key, model_key = jax.random.split(rng)
    dataset_rows = jax.random.randint(dataset_key, (batch_size,), 0, dataset.rewards.shape[0])
    model_rows = jax.random.randint(model_key, (batch_size,), 0, jnp.maximum(replay.size, 1))
    # 1e-3: a float32 product just under an integer (0.7 * 10) floors as Python's double does
    from_dataset = jnp.arange(batch_size) < jnp.floor(dataset_ratio * batch_size + 1e-3)

    def pick(key):
        a, b = getattr(dataset, key)[dataset_rows], replay.data[key][model_rows]
        return jnp.where(from_dataset.reshape(-1, *[1] * (a.ndim - 1)), a, b.astype(a.dtype))

    return {k: pick(k) for k in BATCH_KEYS}


def rollout(config: Config, model, params: Params, dataset, obs_bounds, rng):
    """``rollout_length`` steps of the policy (sampling) in the model from
    ``rollout_batch_size`` dataset states drawn uniformly.

    Returns the transitions, time-major and flattened to (k R, ...), which of them to keep (a
    row's steps up to and including its termination), and the rollout's statistics: the
    fraction of kept next-states outside the dataset's per-dimension [min, max]
    (``obs_bounds``; reported, not clipped), the mean kept reward and the mean rollout length.
    """
    start_key, rng = jax.random.split(rng)
    rows = jax.random.randint(
        start_key, (config.rollout_batch_size,), 0, dataset.observations.shape[0]
    )
    obs = dataset.observations[rows]
    low, high = obs_bounds

    def step(carry, key):
        obs, alive = carry
        action_key, model_key = jax.random.split(key)
        action = act(config, params, obs, action_key)
        if config.true_dynamics:  # the diagnostic: the env's own step, no model error
            next_obs, reward = TRUE_DYNAMICS[config.true_dynamics](obs, action)
        else:
            next_obs, reward, _ = ensemble_sample(model, obs, action, model_key)
        done = terminates(config, obs, action, next_obs)
        outside = ((next_obs < low) | (next_obs > high)).any(-1)
        row = {
            "observations": obs, "actions": action, "rewards": reward,
            "terminals": done.astype(jnp.float32), "next_observations": next_obs,
        }  # fmt: skip
        return (next_obs, alive & ~done), (row, alive, outside)

    alive = jnp.ones(config.rollout_batch_size, bool)
    keys = jax.random.split(rng, config.rollout_length)
    _, (rows, keep, outside) = jax.lax.scan(step, (obs, alive), keys)
    flat = lambda x: x.reshape(-1, *x.shape[2:])  # noqa: E731
    rows, keep, outside = jax.tree.map(flat, rows), flat(keep), flat(outside)
    kept = jnp.maximum(keep.sum(), 1)
    stats = {
        "rollout_out_of_bounds": (outside & keep).sum() / kept,
        "rollout_reward_mean": jnp.where(keep, rows["rewards"], 0.0).sum() / kept,
        "rollout_length_mean": keep.sum() / config.rollout_batch_size,
    }
    return rows, keep, stats


def _pendulum_step(obs, action):
    """Pendulum-v1's step (gymnax's and gym's equations: g 10, m 1, l 1, dt 0.05, speed
    clipped to 8) from its observation (cos, sin, angular velocity), actions in [-1, 1] as
    torques in [-2, 2] (rljax's unit_actions): (next observation, reward)."""
    theta, speed = jnp.arctan2(obs[:, 1], obs[:, 0]), obs[:, 2]
    torque = 2.0 * jnp.clip(action[:, 0], -1.0, 1.0)
    angle = (theta + jnp.pi) % (2 * jnp.pi) - jnp.pi
    reward = -(angle**2 + 0.1 * speed**2 + 0.001 * torque**2)
    speed = jnp.clip(speed + (15.0 * jnp.sin(theta) + 3.0 * torque) * 0.05, -8.0, 8.0)
    theta = theta + speed * 0.05
    return jnp.stack([jnp.cos(theta), jnp.sin(theta), speed], axis=-1), reward


TRUE_DYNAMICS = {"Pendulum-v1": _pendulum_step}


# --- The contract ---


@struct.dataclass
class ModelState:
    """The model phase: the ensemble being fitted, and the policy's untrained parameters."""

    params: Params
    model: Any  # the dynamics ensemble's training state
    rng: jax.Array
    step: jax.Array  # model gradient steps done so far


@struct.dataclass
class TrainState:
    """The policy phase: EDAC's state, the fitted model and the replay of its rollouts."""

    params: Params
    target_critic: Any
    actor_opt: Any
    critic_opt: Any
    alpha_opt: Any
    model: Any  # the fitted ensemble (best snapshots, elites)
    replay: ModelReplay
    obs_bounds: tuple  # the dataset's per-dimension (min, max) of the observations
    rollout_stats: dict  # the last rollout's ROLLOUT_METRICS
    rng: jax.Array
    step: jax.Array  # policy gradient steps done so far


def check(config: Config) -> None:
    """The rules on Config's static fields; the runner calls it on each concrete config."""
    if config.num_critics < 2:
        raise ValueError(
            f"num_critics={config.num_critics}: RAVL takes the min over an ensemble and its "
            "diversity term compares pairs of critics, so it needs at least 2"
        )
    check_ensemble(config)


def init(config: Config, dataset, rng: jax.Array) -> ModelState:
    """The model phase's state for ``dataset`` (an rljax Dataset, concrete: closed over, not
    passed through jit): the ensemble and its held-out split, and the untrained policy."""
    check(config)
    rng, model_key, actor_key, critic_key = jax.random.split(rng, 4)
    model = ensemble_init(config, dataset, model_key)  # checks the dataset (named errors)
    obs = np.asarray(dataset.observations)
    obs_dim, action_dim = obs.shape[1], dataset.actions.shape[1]
    if config.true_dynamics == "Pendulum-v1" and (obs_dim, action_dim) != (3, 1):
        raise ValueError(
            f"true_dynamics='Pendulum-v1' steps Pendulum's observations (3) and actions (1); "
            f"the dataset has {obs_dim} and {action_dim}"
        )
    if config.normalize_obs:
        obs_mean, obs_std = obs.mean(0), obs.std(0) + 1e-3
    else:
        obs_mean, obs_std = np.zeros(obs_dim), np.ones(obs_dim)
    dummy_obs, dummy_action = jnp.zeros(obs_dim), jnp.zeros(action_dim)
    critic_keys = jax.random.split(critic_key, config.num_critics)
    critic = Critic(tuple(config.hidden_sizes))
    params = Params(
        actor=_actor(config, action_dim).init(actor_key, dummy_obs),
        critic=jax.vmap(critic.init, in_axes=(0, None, None))(critic_keys, dummy_obs, dummy_action),
        log_alpha=jnp.zeros(()),
        obs_mean=jnp.asarray(obs_mean, jnp.float32),
        obs_std=jnp.asarray(obs_std, jnp.float32),
        action_dim=action_dim,
    )
    return ModelState(params=params, model=model, rng=rng, step=jnp.zeros((), jnp.int32))


def update_model(config: Config, dataset, state: ModelState) -> tuple[ModelState, dict]:
    """One gradient step of the ensemble (its held-out evaluation and early stopping inside)."""
    rng, key = jax.random.split(state.rng)
    model, metrics = ensemble_update(config, dataset, state.model, key)
    return state.replace(model=model, rng=rng, step=state.step + 1), metrics


def begin_policy(config: Config, dataset, state: ModelState) -> TrainState:
    """The policy phase's state: the elites and their best snapshots, EDAC's optimizers, and the
    replay of model rollouts, filled by a first rollout."""
    params = state.params
    model = ensemble_fitted(config, dataset, state.model)
    obs = dataset.observations
    obs_bounds = tuple(map(jnp.asarray, observation_bounds(dataset)))
    capacity = config.rollout_batch_size * config.rollout_length * config.model_retain_epochs
    replay = model_replay_init(capacity, obs.shape[1], params.action_dim)
    rng, key = jax.random.split(state.rng)
    rows, keep, stats = rollout(config, model, params, dataset, obs_bounds, key)
    return TrainState(
        params=params,
        target_critic=params.critic,
        actor_opt=optax.adam(config.actor_lr).init(params.actor),
        critic_opt=optax.adam(config.critic_lr).init(params.critic),
        alpha_opt=optax.adam(config.alpha_lr).init(params.log_alpha),
        model=model,
        replay=model_replay_add(replay, rows, keep),
        obs_bounds=obs_bounds,
        rollout_stats=stats,
        rng=rng,
        step=jnp.zeros((), jnp.int32),
    )


def update_on_batch(config: Config, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    """One gradient step: the temperature, then the actor, then the critics, then the targets."""
    params = state.params
    actor = _actor(config, params.action_dim)
    obs = _normalize(params, batch["observations"])
    next_obs = _normalize(params, batch["next_observations"])
    batch = batch | {"observations": obs, "next_observations": next_obs}
    rng, actor_key, next_key = jax.random.split(state.rng, 3)

    # One sample a~ ~ pi(.|s) serves the temperature and the actor (as EDAC's code; CORL draws
    # one for each): the forward pass runs once, its backward pass after alpha has stepped.
    (log_prob, q_min), pullback, actor_aux = jax.vjp(
        lambda p: policy_terms(p, params, obs, actor_key, config), params.actor, has_aux=True
    )
    loss_alpha, alpha_grad = jax.value_and_grad(alpha_loss)(
        params.log_alpha, log_prob, -float(params.action_dim)
    )
    log_alpha, alpha_opt = _adam_step(
        config.alpha_lr, alpha_grad, state.alpha_opt, params.log_alpha
    )
    alpha = jnp.exp(log_alpha)

    # d/dtheta of actor_loss = mean(alpha log pi - min_j Q_j), with the new alpha
    loss_pi = (alpha * log_prob - q_min).mean()
    weights = (jnp.full_like(log_prob, alpha), jnp.full_like(q_min, -1.0))
    (actor_grads,) = pullback(jax.tree.map(lambda w: w / log_prob.shape[0], weights))
    actor_params, actor_opt = _adam_step(
        config.actor_lr, actor_grads, state.actor_opt, params.actor
    )

    next_action, next_log_prob = sample_action(*actor.apply(actor_params, next_obs), next_key)
    target = critic_target(batch, next_action, next_log_prob, state.target_critic, alpha, config)
    (loss_q, critic_aux), critic_grads = jax.value_and_grad(critic_loss, has_aux=True)(
        params.critic, batch, target, config
    )
    critic_params, critic_opt = _adam_step(
        config.critic_lr, critic_grads, state.critic_opt, params.critic
    )

    state = state.replace(
        params=params.replace(actor=actor_params, critic=critic_params, log_alpha=log_alpha),
        target_critic=optax.incremental_update(critic_params, state.target_critic, config.tau),
        actor_opt=actor_opt,
        critic_opt=critic_opt,
        alpha_opt=alpha_opt,
        rng=rng,
        step=state.step + 1,
    )
    metrics = {
        "critic_loss": loss_q,
        "bellman_loss": critic_aux["bellman"],
        "diversity": critic_aux["diversity"],
        "actor_loss": loss_pi,
        "alpha_loss": loss_alpha,
        "alpha": alpha,
        "entropy": actor_aux["entropy"],
        "q_mean": critic_aux["q_mean"],
        "q_policy_std": actor_aux["q_policy_std"],
        "target_mean": target.mean(),
        "grad_norm": optax.tree.norm(critic_grads),
        "actor_grad_norm": optax.tree.norm(actor_grads),
    }
    return state, metrics


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
    """One policy iteration: a rollout into the replay when one is due (every
    ``rollout_freq`` steps; begin_policy did step 0's), then one gradient step on a batch of
    dataset and model rows sampled inside jit."""
    rng, rollout_key, batch_key = jax.random.split(state.rng, 3)
    due = (state.step > 0) & (state.step % config.rollout_freq == 0)

    def roll(state):
        model, params, bounds = state.model, state.params, state.obs_bounds
        rows, keep, stats = rollout(config, model, params, dataset, bounds, rollout_key)
        rolled = state.replace(
            replay=model_replay_add(state.replay, rows, keep), rollout_stats=stats
        )
        # Under vmap another member's rollout may bring a member here: it keeps its own.
        return jax.tree.map(lambda new, old: jnp.where(due, new, old), rolled, state)

    state = jax.lax.cond(_any_member(due), roll, lambda state: state, state)
    ratio, batch_size = config.dataset_ratio, config.batch_size
    batch = composed_batch(dataset, state.replay, ratio, batch_size, batch_key)
    state, metrics = update_on_batch(config, state.replace(rng=rng), batch)
    return state, metrics | state.rollout_stats


def train(config: Config, dataset, rng: jax.Array, num_updates: int | None = None):
    """init, ``model_updates`` steps of the model, begin_policy, then num_updates (default:
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
    """tanh of the Gaussian's mean when deterministic, else a tanh-Gaussian sample; in [-1, 1]."""
    mean, log_std = _actor(config, params.action_dim).apply(params.actor, _normalize(params, obs))
    if deterministic:
        return jnp.tanh(mean)
    return sample_action(mean, log_std, rng)[0]


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

    def evaluate(config, params, rng, num_episodes=10):
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

    # EDAC's Pendulum sizes (configs/edac/pendulum.yaml: 64x64, learning rates 1e-3) on model
    # rollouts; a smaller model and fewer, smaller rollouts than the paper's for a CPU run.
    config = Config(
        total_updates=5_000, hidden_sizes=(64, 64), normalize_obs=True, actor_lr=1e-3,
        critic_lr=1e-3, alpha_lr=1e-3, model_updates=2_000, model_hidden_sizes=(128, 128),
        model_weight_decay=(2.5e-5, 5e-5, 1e-4), holdout_interval=250, rollout_batch_size=2_000,
        rollout_freq=250, termination="Pendulum-v1",
    )  # fmt: skip
    start = time.time()
    state, (model_metrics, metrics) = jax.block_until_ready(
        jax.jit(lambda key: train(config, dataset, key))(jax.random.PRNGKey(1))
    )
    print(
        f"RAVL on Pendulum-v1 data: {config.model_updates} model and {config.total_updates} "
        f"policy updates in {time.time() - start:.1f}s; elites' holdout mse "
        f"{float(model_metrics['model_holdout_mse'][-1]):.4f}"
    )
    for i in np.linspace(999, config.total_updates - 1, 5).astype(int):
        window = slice(i - 999, i + 1)
        print(
            f"  update {i + 1:>6d}  bellman_loss {np.mean(metrics['bellman_loss'][window]):8.3f}"
            f"  alpha {np.mean(metrics['alpha'][window]):5.3f}"
            f"  q_mean {np.mean(metrics['q_mean'][window]):8.2f}"
            f"  out_of_bounds {np.mean(metrics['rollout_out_of_bounds'][window]):5.3f}"
        )
    print(f"greedy return: {float(evaluate(config, state.params, jax.random.PRNGKey(2))):.1f}")
