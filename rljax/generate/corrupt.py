"""Adversarial corruption against a trained EDAC critic, as RIQL's ``attack.py`` makes it.

Yang et al., ICLR 2024 (YangRui2015/RIQL ``attack.py``, ``split_gradient_attack``): the chosen
transitions' field ``x`` becomes ``x + p * sigma`` (``sigma``: each feature's std over the
field, ``|p| <= eps``, ``eps = range``), with ``p`` found by descending the ensemble's mean value:

* ``observations``:      ``L(p) = mean_k,i Q_k(s_i + p_i sigma, a_i)``
* ``actions``:           ``L(p) = mean_k,i Q_k(s_i, a_i + p_i sigma)``
* ``next_observations``: ``L(p) = mean_k,i Q_k(s'_i + p_i sigma, pi(s'_i + p_i sigma))``

``p_0 = U(-eps, eps) * sigma`` (attack.py's ``sample_para`` scales the start by sigma too), then
100 steps of ``p <- clip(p - lr g / (|g| + 1e-8), -eps, eps)``, ``lr = 0.01 eps``: attack.py
makes a fresh Adam each step, whose first step is exactly this (signed gradient). The chosen
transitions are attacked in 10 chunks, as attack.py splits them (the mean is per chunk).
``pi`` is the EDAC actor's deterministic action ``tanh(mu)``, differentiated through: attack.py
(its newest version, 4af90a3) calls ``self.actor(noised_obs)``, which for its EDAC actor is a
stochastic ``(action, log_prob)`` pair that its critic cannot take, so the published branch
cannot run as written; its first version detached the action and scored the clean next
observation, a zero gradient. The start ``p_0`` is drawn from ``jax.random.PRNGKey(seed)``
(attack.py: torch's generator), so the values, unlike the indices, differ from the authors'.

Rewards and random mode need no critic (``rljax.data.corrupt``); ``attack_dataset`` is the entry
point for every mode and field.
"""

import numbers
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from rljax.data import corrupt as data_corrupt
from rljax.data import files
from rljax.runner.policy import restore

STEPS = 100  # attack.py update_times
STEP_SIZE = 0.01  # attack.py step_size: the learning rate is step_size * range
SPLITS = 10  # attack.py split_gradient_attack
ADAM_EPS = 1e-8  # torch.optim.Adam's eps
CRITIC_ALGO = "edac"


class NotAnEdacRun(data_corrupt.CorruptionError):
    """A critic run of another algorithm than edac."""


class CriticShapeMismatch(data_corrupt.CorruptionError):
    """A critic run trained on observations or actions of other shapes than the dataset's."""


def gradient_attack(loss: Callable, x, sigma, range_: float, key, steps: int, step_size: float):
    """``x + p * sigma`` with ``p`` descending ``loss(p)`` (module docstring), ``|p| <= range_``."""
    p = jax.random.uniform(key, x.shape, x.dtype, -range_, range_) * sigma
    lr = step_size * range_

    def step(_, p):
        g = jax.grad(loss)(p)
        return jnp.clip(p - lr * g / (jnp.abs(g) + ADAM_EPS), -range_, range_)

    return x + jax.lax.fori_loop(0, steps, step, p) * sigma


def make_attack(
    what: str,
    q_values: Callable,
    policy: Callable,
    params,
    range_: float,
    seed: int = 0,
    steps: int = STEPS,
    step_size: float = STEP_SIZE,
) -> data_corrupt.Attack:
    """The ``attack(transitions, indices, sigma)`` that ``rljax.data.corrupt.corrupt`` takes,
    against ``q_values(params, obs, actions) -> (K, B)`` and ``policy(params, obs) -> actions``
    (for ``next_observations``)."""
    if what not in ("observations", "actions", "next_observations"):
        raise data_corrupt.UnknownCorruption(
            f"no gradient attack on {what!r}; one of observations, actions, next_observations"
        )

    def value(params, x, other):
        if what == "observations":
            return q_values(params, x, other)
        if what == "actions":
            return q_values(params, other, x)
        return q_values(params, x, policy(params, x))

    @jax.jit
    def chunk(params, x, other, sigma, key):
        def loss(p):
            return jnp.mean(value(params, x + p * sigma, other))

        return gradient_attack(loss, x, sigma, range_, key, steps, step_size)

    def attack(transitions: dict, indices: np.ndarray, sigma: np.ndarray) -> np.ndarray:
        x = np.asarray(transitions[what][indices], np.float32)
        other_field = "observations" if what == "actions" else "actions"
        other = np.asarray(transitions[other_field][indices])
        sigma = np.asarray(sigma, np.float32)
        out = np.empty_like(x)
        size, key = len(x) // SPLITS, jax.random.PRNGKey(seed)
        for i in range(SPLITS):
            rows = slice(i * size, (i + 1) * size if i < SPLITS - 1 else len(x))
            if rows.stop > rows.start:
                out[rows] = chunk(params, x[rows], other[rows], sigma, jax.random.fold_in(key, i))
        return out

    return attack


def _check_shapes(program, q_values, policy, params, transitions: dict, run_dir) -> None:
    """CriticShapeMismatch unless the critic (and, for the env it was evaluated on, the env)
    takes the dataset's observations and actions."""
    obs, actions = transitions["observations"][:1], transitions["actions"][:1]
    want = (obs.shape[1:], actions.shape[1:])
    if program.env is not None:
        env_obs = jax.eval_shape(program.env.reset, jax.random.PRNGKey(0), program.env_params)[0]
        env_actions = program.env.action_space(program.env_params).shape
        if (tuple(env_obs.shape), tuple(env_actions)) != want:
            raise CriticShapeMismatch(
                f"{run_dir} learnt on observations {tuple(env_obs.shape)} and actions "
                f"{tuple(env_actions)}; the dataset has {want[0]} and {want[1]}"
            )
    try:
        q = jax.eval_shape(q_values, params, obs, actions)
        a = jax.eval_shape(policy, params, obs)
    except Exception as error:  # flax and lax raise several types for a shape that does not fit
        raise CriticShapeMismatch(
            f"{run_dir}'s critic does not take the dataset's observations {want[0]} and actions "
            f"{want[1]}: {error}"
        ) from None
    if len(q.shape) != 2 or q.shape[1] != 1 or a.shape != actions.shape:
        raise CriticShapeMismatch(
            f"{run_dir}'s critic gives values {q.shape} and actions {a.shape} for one "
            f"transition; expected (ensemble, 1) and {actions.shape}"
        )


def edac_critic(run_dir, member: int = 0) -> tuple:
    """``(program, q_values, policy, params, step)`` of one member of an edac run:
    ``q_values(params, obs, actions) -> (K, B)``, ``policy(params, obs)`` its deterministic
    action. NotAnEdacRun for a run of another algorithm."""
    program, state, step = restore(run_dir)
    if program.spec.algo != CRITIC_ALGO:
        raise NotAnEdacRun(
            f"{run_dir} is a {program.spec.algo} run; the adversarial attack needs the ensemble "
            f"critic of an {CRITIC_ALGO} run (rljax train {CRITIC_ALGO} --dataset ...)"
        )
    if not 0 <= member < len(program.members):
        raise data_corrupt.CorruptionError(
            f"member={member} is out of range: {run_dir} has {len(program.members)}"
        )
    config, params = jax.tree.map(lambda x: x[member], (program.stacked, state.params))
    module = program.agent.module

    def q_values(params, obs, actions):
        return module.q_values(config, params, obs, actions)

    def policy(params, obs):
        return module.act(config, params, obs, jax.random.PRNGKey(0), deterministic=True)

    return program, q_values, policy, params, step


def attack_dataset(
    source,
    out,
    what: str,
    mode: str = "random",
    rate: float = data_corrupt.DEFAULT_RATE,
    range_: float = data_corrupt.DEFAULT_RANGE,
    seed: int = 0,
    *,
    critic=None,
    member: int = 0,
    layout: str | None = None,
    force: bool = False,
    steps: int = STEPS,
    step_size: float = STEP_SIZE,
) -> Path:
    """Writes dataset ``source`` at ``out`` with ``what`` corrupted in ``mode`` and returns the
    path written; ``critic`` is the edac run directory an adversarial attack on observations,
    actions or next observations descends (member ``member``), and must be absent otherwise.
    Every argument is checked, and the output refused (existing without ``force``, or the
    source), before the critic is restored or the data read."""
    data_corrupt.check_request(what, mode, rate, range_, seed)
    data_corrupt.check_attack(what, mode, critic is not None)
    if not data_corrupt.needs_critic(what, mode):
        return data_corrupt.corrupt_dataset(
            source, out, what, mode, rate, range_, seed, layout=layout, force=force
        )
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise data_corrupt.CorruptionError(f"steps={steps!r} must be an integer >= 1")
    if not isinstance(step_size, numbers.Real) or not 0 < step_size < np.inf:
        raise data_corrupt.CorruptionError(f"step_size={step_size!r} must be a number > 0")
    path = files.resolve(source)
    out, layout = data_corrupt.output_layout(path, out, layout)
    data_corrupt.check_output(path, out, layout, force)
    program, q_values, policy, params, step = edac_critic(critic, member)
    gradient = make_attack(what, q_values, policy, params, range_, seed, steps, step_size)

    def attack(transitions, indices, sigma):
        _check_shapes(program, q_values, policy, params, transitions, critic)
        return gradient(transitions, indices, sigma)

    record = {"run_dir": str(critic), "algo": CRITIC_ALGO, "member": member, "update": int(step)}
    record |= {"steps": steps, "step_size": float(step_size)}
    return data_corrupt.corrupt_dataset(
        path, out, what, mode, rate, range_, seed,
        layout=layout, force=force, attack=attack, critic=record,
    )  # fmt: skip
