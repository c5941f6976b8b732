"""MOPO: soft actor-critic on dataset rows and penalized rollouts of a learned dynamics ensemble.

Yu, Thomas, Yu, Ermon, Zou, Levine, Finn, Ma, "MOPO: Model-based Offline Policy Optimization",
NeurIPS 2020 (tianheyu927/mopo), as OfflineRL-Kit implements it (``policy/model_based/mopo.py``,
``dynamics/ensemble_dynamics.py``, ``run_example/run_mopo.py``, whose defaults these are).

Model phase (``model_updates`` gradient steps of ``update_model``): N Gaussian MLPs, one network
vmapped over weights stacked on a leading axis N, fit (s' - s, r) from normalized (s, a):

    (mu_i, log var_i) = f_i(((s, a) - m) / sd),  log var soft-clamped to [min_lv, max_lv]
    L = sum_i [mean_{B,D} (mu_i - y)^2 exp(-log var_i) + log var_i + sum_l w_l |W_il|^2 / 2]
        + 0.01 (sum max_lv - sum min_lv)

with each model's own batch, per-layer decay w_l, Adam. Every ``holdout_interval`` steps each
model's mean squared error on held-out rows is measured; one that improves on its best by more
than 1 % is snapshotted; ``patience`` evaluations without that and it stops. ``begin_policy``
restores the snapshots and takes the ``num_elites`` lowest holdout errors as the elites.

Policy phase (``total_updates`` gradient steps of ``update``): every ``rollout_freq`` steps
(and once in ``begin_policy``), ``rollout_batch_size`` dataset states are rolled
``rollout_length`` steps with the current stochastic policy; each step every model predicts,
one elite per row is sampled, and the stored reward is the penalized

    r~(s, a) = r^(s, a) - lambda u(s, a),   u(s, a) = max_{i = 1..N} |sigma_i(s, a)|_2

(all N models, not only the elites, and the 2-norm over the S + 1 outputs, next-state change
and reward, in their raw units: OfflineRL-Kit's ``amax(norm(std, axis=2), axis=0)``). A row
that terminates (``termination``) is stored with its terminal step and nothing after it. The
model rows live in a ring buffer of ``model_retain_epochs`` rollouts' worth. SAC then steps on a
batch of floor(``real_ratio`` B) dataset rows and the rest model rows, in OfflineRL-Kit's order:

    y    = r + gamma (1 - d) (min_j Qbar_j(s', a') - alpha log pi(a'|s')),  a' ~ pi(.|s')
    L_Q  = sum_{j=1,2} mean (Q_j(s, a) - y)^2
    L_pi = mean(alpha log pi(a~|s) - min_j Q_j(s, a~))   (the new critics)
    L_alpha = -mean(log alpha (log pi(a~|s) - |A|)),     Qbar <- (1 - tau) Qbar + tau Q

pi is a tanh-squashed Gaussian (log sigma clipped to [-5, 2]), actions in [-1, 1]; neither
the policy's observations nor the rewards are normalized (as OfflineRL-Kit). The defaults are
``run_mopo.py``'s: 7 models of 4x200 (5 elites), model learning rate 1e-3, lambda 0.5, h = 5,
50000 rollout states every 1000 steps kept for 5 rollouts, real ratio 0.05, actor and critics
256x256 with learning rates 1e-4 and 3e-4 (alpha 1e-4), batch 256, 3M updates (its 3000
epochs of 1000); the paper tunes h and lambda per dataset.

Where this file and OfflineRL-Kit (or the paper) differ:
* Training length: OfflineRL-Kit trains the model in epochs (one pass of the training rows,
  ~3900 steps of 256 on D4RL's 1M rows) until 5 epochs pass without any model improving; here
  ``model_updates`` fixed steps, evaluated every ``holdout_interval`` steps (1000 by default,
  about a quarter epoch on 1M rows), with a patience per model: a model that stops improving
  stops training (its steps are no-ops) while the others go on. A last evaluation runs in
  ``begin_policy``, so the final weights count too.
* Batches: each model draws its own rows uniformly with replacement each step (OfflineRL-Kit:
  one bootstrap resample per model, shuffled each epoch).
* Held-out rows: OfflineRL-Kit's min(int(0.2 N), 1000) (``holdout_fraction``, ``MAX_HOLDOUT``),
  chosen by a permutation from the run's key; inputs normalized by the training rows' mean and
  standard deviation (a deviation under 1e-12 counts as 1).
* Elite sampling: as the authors' MOPO (``fake_env.py``) and later OfflineRL-Kit; the
  OfflineRL-Kit version read here samples among all N models.
* The actor's learning rate is constant (OfflineRL-Kit anneals it by a cosine over the epochs).
* Rollouts that leave the dataset's per-dimension observation range are counted
  (``rollout_out_of_bounds``), never clipped.
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
PAPER = 'Yu et al., "MOPO: Model-based Offline Policy Optimization", NeurIPS 2020'

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0  # OfflineRL-Kit's clip of the actor's log sigma


def _field(default, *, static=False, bounds=None, choices=None, doc):
    """A config field. Static fields are shapes and switches (changing one recompiles); the
    rest are traced, so a sweep can vmap over them. bounds/choices let a runner validate; doc,
    the field's meaning in one line, is required so that no field goes unexplained."""
    metadata = {"bounds": bounds, "choices": choices, "doc": doc}
    return struct.field(pytree_node=not static, default=default, metadata=metadata)


TERMINATION_CHOICES = ("none", "Pendulum-v1", "brax/halfcheetah", "brax/hopper", "brax/walker2d")


@struct.dataclass
class Config:
    batch_size: int = _field(
        256, static=True, bounds="[1, inf)", doc="transitions per policy gradient step"
    )
    total_updates: int = _field(
        3_000_000, static=True, bounds="[1, inf)", doc="policy gradient steps (the budget)"
    )
    hidden_sizes: tuple = _field(
        (256, 256), static=True, doc="hidden-layer widths of the actor and both critics"
    )
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
    rollout_freq: int = _field(
        1000, static=True, bounds="[1, inf)", doc="policy steps between model rollouts"
    )
    rollout_batch_size: int = _field(
        50_000, static=True, bounds="[1, inf)", doc="dataset states each rollout starts from"
    )
    rollout_length: int = _field(5, static=True, bounds="[1, inf)", doc="model steps h per rollout")
    model_retain_epochs: int = _field(
        5, static=True, bounds="[1, inf)", doc="rollouts' worth of rows the model replay keeps"
    )
    actor_lr: float = _field(1e-4, bounds="(0, inf)", doc="Adam learning rate of the actor")
    critic_lr: float = _field(3e-4, bounds="(0, inf)", doc="Adam learning rate of the critics")
    alpha_lr: float = _field(
        1e-4, bounds="(0, inf)", doc="Adam learning rate of the temperature alpha"
    )
    model_lr: float = _field(1e-3, bounds="(0, inf)", doc="Adam learning rate of the models")
    gamma: float = _field(0.99, bounds="[0, 1]", doc="discount factor gamma")
    tau: float = _field(5e-3, bounds="(0, 1]", doc="Polyak rate tau of the target critics")
    penalty_coef: float = _field(
        0.5, bounds="[0, inf)", doc="lambda of the uncertainty penalty r - lambda u"
    )
    real_ratio: float = _field(
        0.05, bounds="[0, 1]", doc="share of dataset rows in each batch (the rest model rows)"
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


class Actor(nn.Module):
    """Mean and clipped log standard deviation of the Gaussian before the tanh."""

    action_dim: int
    hidden_sizes: tuple

    @nn.compact
    def __call__(self, obs):
        x = obs
        for size in self.hidden_sizes:
            x = nn.relu(nn.Dense(size)(x))
        mean = nn.Dense(self.action_dim, name="mean")(x)
        log_std = nn.Dense(self.action_dim, name="log_std")(x)
        return mean, jnp.clip(log_std, LOG_STD_MIN, LOG_STD_MAX)


class Critic(nn.Module):
    """One critic; the two are this network vmapped over weights stacked on a leading axis."""

    hidden_sizes: tuple

    @nn.compact
    def __call__(self, obs, action):
        x = jnp.concatenate([obs, action], -1)
        for size in self.hidden_sizes:
            x = nn.relu(nn.Dense(size)(x))
        return jnp.squeeze(nn.Dense(1)(x), -1)


@struct.dataclass
class Params:
    actor: Any
    critic: Any  # the two critics' weights, stacked on a leading axis of 2
    log_alpha: jax.Array
    action_dim: int = struct.field(pytree_node=False, default=1)


def _actor(config: Config, action_dim: int) -> Actor:
    return Actor(action_dim, tuple(config.hidden_sizes))


def _critics(config: Config, critic_params, obs, actions):
    """Q_1(s, a) and Q_2(s, a), (2, ...), from weights stacked on a leading axis."""
    critic = Critic(tuple(config.hidden_sizes))
    return jax.vmap(critic.apply, in_axes=(0, None, None))(critic_params, obs, actions)


def sample_action(mean, log_std, rng):
    """A tanh-Gaussian action on [-1, 1] and its log density there (exact tanh Jacobian)."""
    pre_tanh = mean + jnp.exp(log_std) * jax.random.normal(rng, mean.shape)
    gaussian_log_prob = -0.5 * ((pre_tanh - mean) / jnp.exp(log_std)) ** 2 - log_std
    gaussian_log_prob -= 0.5 * jnp.log(2 * jnp.pi)
    # log(1 - tanh(x)^2) = 2 (log 2 - x - softplus(-2x)), stable for large |x|
    log_det = 2 * (jnp.log(2.0) - pre_tanh - jax.nn.softplus(-2 * pre_tanh))
    return jnp.tanh(pre_tanh), (gaussian_log_prob - log_det).sum(-1)


# --- MOPO's penalty and the SAC losses ---


def uncertainty_penalty(std):
    """u(s, a) = max over the N models of the 2-norm of sigma_i(s, a) over the S + 1 outputs
    (OfflineRL-Kit's amax(norm(std, axis=2), axis=0)); std (N, B, S + 1) -> (B,)."""
    return jnp.sqrt(jnp.square(std).sum(-1)).max(0)


def penalized_reward(reward, std, penalty_coef):
    """r~ = r^ - lambda u(s, a)."""
    return reward - penalty_coef * uncertainty_penalty(std)


def soft_target(batch, next_action, next_log_prob, target_critic, alpha, config: Config):
    """y = r + gamma (1 - d) (min_j Qbar_j(s', a') - alpha log pi(a'|s')), j over both critics."""
    q_next = _critics(config, target_critic, batch["next_observations"], next_action).min(0)
    soft_value = q_next - alpha * next_log_prob
    return batch["rewards"] + config.gamma * (1.0 - batch["terminals"]) * soft_value


def twin_critic_loss(critic_params, batch, target, config: Config):
    """sum_j mean_B (Q_j(s, a) - y)^2 over the two critics, y held constant."""
    q = _critics(config, critic_params, batch["observations"], batch["actions"])
    loss = jnp.square(q - jax.lax.stop_gradient(target)).mean(-1).sum()
    return loss, {"q_mean": q.mean()}


def policy_loss(actor_params, critic_params, obs, rng, alpha, action_dim: int, config: Config):
    """mean(alpha log pi(a~|s) - min_j Q_j(s, a~)), a~ reparameterized; alpha and the critics
    constants. Returns the loss and (log pi(a~|s), diagnostics)."""
    mean, log_std = _actor(config, action_dim).apply(actor_params, obs)
    action, log_prob = sample_action(mean, log_std, rng)
    q_min = _critics(config, critic_params, obs, action).min(0)
    return (alpha * log_prob - q_min).mean(), (log_prob, {"entropy": -log_prob.mean()})


def alpha_loss(log_alpha, log_prob, target_entropy):
    return -(log_alpha * (jax.lax.stop_gradient(log_prob) + target_entropy)).mean()


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


# --- The model replay and rollouts ---

BATCH_KEYS = ("observations", "actions", "rewards", "terminals", "next_observations")


@struct.dataclass
class Replay:
    """A ring buffer of model transitions: ``data`` holds BATCH_KEYS, capacity rows each."""

    data: dict
    ptr: jax.Array  # where the next row goes
    size: jax.Array  # rows held, at most capacity


def replay_capacity(config: Config) -> int:
    return config.rollout_batch_size * config.rollout_length * config.model_retain_epochs


def replay_store(replay: Replay, rows: dict, stored) -> Replay:
    """Writes the rows where ``stored`` is set, in order, from ``ptr`` on (wrapping); the rest
    are dropped, not written."""
    capacity = replay.data["rewards"].shape[0]
    rank = jnp.cumsum(stored) - 1
    index = jnp.where(stored, (replay.ptr + rank) % capacity, capacity)  # out of range: dropped
    data = {k: replay.data[k].at[index].set(rows[k], mode="drop") for k in BATCH_KEYS}
    count = stored.sum()
    return Replay(data, (replay.ptr + count) % capacity, jnp.minimum(replay.size + count, capacity))


def rollout(config: Config, dataset, state, rng):
    """``rollout_batch_size`` dataset states rolled ``rollout_length`` steps through the model
    with the stochastic policy; returns the replay with the stored rows and the rollout's
    statistics. Rows after a row's terminal step are not stored."""
    start_key, key = jax.random.split(rng)
    starts = jax.random.randint(start_key, (config.rollout_batch_size,), 0, dataset.rewards.size)

    def step(carry, key):
        obs, alive = carry
        act_key, model_key = jax.random.split(key)
        action = act(config, state.params, obs, act_key)
        next_obs, reward, (_, std) = ensemble_sample(state.ensemble, obs, action, model_key)
        penalty = uncertainty_penalty(std)
        done = terminates(config, obs, action, next_obs)
        row = {
            "observations": obs,
            "actions": action,
            "rewards": reward - config.penalty_coef * penalty,
            "terminals": done.astype(jnp.float32),
            "next_observations": next_obs,
        }
        outside = ((next_obs < state.obs_low) | (next_obs > state.obs_high)).any(-1)
        return (next_obs, alive & ~done), (row, alive, reward, penalty, outside)

    carry = (dataset.observations[starts], jnp.ones(config.rollout_batch_size, bool))
    keys = jax.random.split(key, config.rollout_length)
    _, (rows, stored, reward, penalty, outside) = jax.lax.scan(step, carry, keys)
    flat = lambda x: x.reshape(-1, *x.shape[2:])  # noqa: E731  (time-major rows)
    rows, stored = jax.tree.map(flat, rows), flat(stored)
    replay = replay_store(state.replay, rows, stored)
    count = stored.sum()
    mean_stored = lambda x: jnp.where(stored, flat(x), 0.0).sum() / count  # noqa: E731
    stats = {
        "rollout_reward": mean_stored(reward),
        "rollout_penalty": mean_stored(penalty),
        "rollout_out_of_bounds": mean_stored(outside.astype(jnp.float32)),
        "rollout_transitions": count.astype(jnp.float32),
    }
    return replay, stats


# --- The contract ---


def check(config: Config) -> None:
    """The rules on Config's static fields; the runner calls it on each concrete config."""
    check_ensemble(config)


@struct.dataclass
class ModelState:
    """The model phase: the ensemble training, and the untrained policy's params."""

    params: Params
    training: EnsembleTraining
    rng: jax.Array


@struct.dataclass
class TrainState:
    """The policy phase."""

    params: Params
    target_critic: Any
    actor_opt: Any
    critic_opt: Any
    alpha_opt: Any
    ensemble: Ensemble
    replay: Replay
    obs_low: jax.Array  # the dataset's per-dimension observation range (rollout_out_of_bounds)
    obs_high: jax.Array
    rollout_stats: dict  # the latest rollout's statistics
    rng: jax.Array
    step: jax.Array  # policy gradient steps done so far


def init(config: Config, dataset, rng: jax.Array) -> ModelState:
    """The model phase's state: untrained ensemble (its held-out split drawn from ``rng``) and
    policy; ``dataset`` (an rljax Dataset) must be concrete (closed over, not passed through
    jit)."""
    rng, model_key, actor_key, critic_key = jax.random.split(rng, 4)
    training = ensemble_init(config, dataset, model_key)  # checks the config and the dataset
    obs_dim, action_dim = dataset.observations.shape[1], dataset.actions.shape[1]
    dummy_obs, dummy_action = jnp.zeros(obs_dim), jnp.zeros(action_dim)
    critic = Critic(tuple(config.hidden_sizes))
    params = Params(
        actor=_actor(config, action_dim).init(actor_key, dummy_obs),
        critic=jax.vmap(critic.init, in_axes=(0, None, None))(
            jax.random.split(critic_key), dummy_obs, dummy_action
        ),
        log_alpha=jnp.zeros(()),
        action_dim=action_dim,
    )
    return ModelState(params, training, rng)


def update_model(config: Config, dataset, state: ModelState) -> tuple[ModelState, dict]:
    """One gradient step of the ensemble (and its holdout check when due)."""
    rng, key = jax.random.split(state.rng)
    training, metrics = ensemble_update(config, dataset, state.training, key)
    return state.replace(training=training, rng=rng), metrics


def begin_policy(config: Config, dataset, state: ModelState) -> TrainState:
    """The fitted ensemble (best snapshots, elites), the policy's optimizers, and the model
    replay filled by a first rollout."""
    params = state.params
    rng, key = jax.random.split(state.rng)
    obs_low, obs_high = observation_bounds(dataset)
    capacity, obs_dim = replay_capacity(config), dataset.observations.shape[1]
    empty = {
        "observations": jnp.zeros((capacity, obs_dim)),
        "actions": jnp.zeros((capacity, params.action_dim)),
        "rewards": jnp.zeros(capacity),
        "terminals": jnp.zeros(capacity),
        "next_observations": jnp.zeros((capacity, obs_dim)),
    }
    policy = TrainState(
        params=params,
        target_critic=params.critic,
        actor_opt=optax.adam(config.actor_lr).init(params.actor),
        critic_opt=optax.adam(config.critic_lr).init(params.critic),
        alpha_opt=optax.adam(config.alpha_lr).init(params.log_alpha),
        ensemble=ensemble_fitted(config, dataset, state.training),
        replay=Replay(empty, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32)),
        obs_low=jnp.asarray(obs_low),
        obs_high=jnp.asarray(obs_high),
        rollout_stats={},
        rng=rng,
        step=jnp.zeros((), jnp.int32),
    )
    replay, stats = rollout(config, dataset, policy, key)
    return policy.replace(replay=replay, rollout_stats=stats)


def update_on_batch(config: Config, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    """One SAC step on ``batch``: the critics, then the actor on the new critics, then the
    temperature, then the targets (OfflineRL-Kit's order)."""
    params = state.params
    actor = _actor(config, params.action_dim)
    rng, next_key, actor_key = jax.random.split(state.rng, 3)
    alpha = jnp.exp(params.log_alpha)

    next_action, next_log_prob = sample_action(
        *actor.apply(params.actor, batch["next_observations"]), next_key
    )
    target = soft_target(batch, next_action, next_log_prob, state.target_critic, alpha, config)
    (loss_q, critic_aux), critic_grads = jax.value_and_grad(twin_critic_loss, has_aux=True)(
        params.critic, batch, target, config
    )
    critic_params, critic_opt = _adam_step(
        config.critic_lr, critic_grads, state.critic_opt, params.critic
    )

    (loss_pi, (log_prob, actor_aux)), actor_grads = jax.value_and_grad(
        policy_loss, has_aux=True
    )(params.actor, critic_params, batch["observations"], actor_key, alpha, params.action_dim,
      config)  # fmt: skip
    actor_params, actor_opt = _adam_step(
        config.actor_lr, actor_grads, state.actor_opt, params.actor
    )

    loss_alpha, alpha_grad = jax.value_and_grad(alpha_loss)(
        params.log_alpha, log_prob, -float(params.action_dim)
    )
    log_alpha, alpha_opt = _adam_step(
        config.alpha_lr, alpha_grad, state.alpha_opt, params.log_alpha
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
        "actor_loss": loss_pi,
        "alpha_loss": loss_alpha,
        "alpha": jnp.exp(log_alpha),
        "entropy": actor_aux["entropy"],
        "q_mean": critic_aux["q_mean"],
        "target_mean": target.mean(),
        "batch_reward": batch["rewards"].mean(),
    }
    return state, metrics


def sample_batch(config: Config, dataset, state: TrainState, rng: jax.Array) -> dict:
    """floor(real_ratio B) dataset rows, then model rows, each uniform with replacement."""
    real_key, model_key = jax.random.split(rng)
    real_rows = jax.random.randint(real_key, (config.batch_size,), 0, dataset.rewards.size)
    model_rows = jax.random.randint(model_key, (config.batch_size,), 0, state.replay.size)
    real = jnp.arange(config.batch_size) < jnp.floor(config.real_ratio * config.batch_size)

    def mix(key):
        row, model = getattr(dataset, key)[real_rows], state.replay.data[key][model_rows]
        return jnp.where(real.reshape(-1, *[1] * (row.ndim - 1)), row, model)

    return {key: mix(key) for key in BATCH_KEYS}


def update(config: Config, dataset, state: TrainState) -> tuple[TrainState, dict]:
    """Rollouts into the model replay when due (every rollout_freq steps), then one SAC step
    on a mixed batch sampled inside jit."""
    rng, rollout_key, batch_key = jax.random.split(state.rng, 3)
    state = state.replace(rng=rng)
    due = (state.step > 0) & (state.step % config.rollout_freq == 0)

    def with_rollout(state):
        replay, stats = rollout(config, dataset, state, rollout_key)
        rolled = state.replace(replay=replay, rollout_stats=stats)
        return jax.tree.map(lambda a, b: jnp.where(due, a, b), rolled, state)

    state = jax.lax.cond(_any_member(due), with_rollout, lambda s: s, state)
    state, metrics = update_on_batch(config, state, sample_batch(config, dataset, state, batch_key))
    return state, metrics | state.rollout_stats


def train(config: Config, dataset, rng: jax.Array, num_updates: int | None = None):
    """init, ``model_updates`` steps of update_model, begin_policy, then num_updates (default:
    total_updates) steps of update. Returns (policy state, (model metrics, policy metrics)).

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
    """tanh of the Gaussian's mean when deterministic, else a tanh-Gaussian sample; in [-1, 1]."""
    mean, log_std = _actor(config, params.action_dim).apply(params.actor, obs)
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

    # A CPU-sized run: smaller models and networks, learning rates 1e-3, rollouts every 250
    # steps from 1000 states (the paper: 4x200 models, 256x256 networks, 50000 states every 1000).
    config = Config(
        num_models=5, num_elites=3, model_hidden_sizes=(64, 64),
        model_weight_decay=(2.5e-5, 5e-5, 1e-4), model_updates=5000, holdout_interval=250,
        hidden_sizes=(64, 64), total_updates=6000, rollout_freq=250, rollout_batch_size=1000,
        actor_lr=1e-3, critic_lr=1e-3, alpha_lr=1e-3, termination="Pendulum-v1",
    )  # fmt: skip
    start = time.time()
    state, (model_metrics, metrics) = jax.block_until_ready(
        jax.jit(lambda key: train(config, dataset, key))(jax.random.PRNGKey(1))
    )
    print(f"MOPO on Pendulum-v1 data: {config.model_updates} model and {config.total_updates} "
          f"policy updates in {time.time() - start:.1f}s")  # fmt: skip
    print(f"  model holdout mse {float(model_metrics['model_holdout_mse'][-1]):.4f}")
    for i in np.linspace(999, config.total_updates - 1, 4).astype(int):
        window = slice(i - 999, i + 1)
        print(
            f"  update {i + 1:>6d}  critic_loss {np.mean(metrics['critic_loss'][window]):8.3f}"
            f"  q_mean {np.mean(metrics['q_mean'][window]):8.2f}"
            f"  rollout_penalty {np.mean(metrics['rollout_penalty'][window]):5.2f}"
            f"  rollout_out_of_bounds {np.mean(metrics['rollout_out_of_bounds'][window]):5.3f}"
        )
    print(f"greedy return: {float(evaluate(config, state.params, jax.random.PRNGKey(2))):.1f}")
