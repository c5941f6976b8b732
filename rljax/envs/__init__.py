"""One ``make(name)`` for gymnax, brax and rljax's own environments.

Names: gymnax environments keep their own names (``CartPole-v1``, ``Breakout-MinAtar``), brax
environments are ``brax/NAME`` (``brax/hopper``), and rljax's own are ``rljax/NAME``. Gymnax
names contain no ``/``, so the three sets can never collide; ``gymnax/CartPole-v1`` is accepted
too. ``rljax envs`` lists them all.
"""

import dataclasses
import difflib
import math
import re

# isort: split
from rljax.envs import _render_imports  # noqa: F401  (before gymnax, which imports plotting)

# isort: split
import gymnax
import jax.numpy as jnp
import numpy as np
from gymnax.environments import spaces

from rljax.envs import brax_env, lot_sizing, maze, risky_shortcut, two_optima
from rljax.envs.wrappers import (
    ClipAction,
    FlattenObservationWrapper,
    LogWrapper,
    NormalizeObservation,
    ScaleReward,
    UnitActions,
)

# rljax's own JAX environments: name -> zero-argument factory returning (env, default params).
OWN_ENVS: dict = {
    "RiskyShortcut": lambda: (risky_shortcut.RiskyShortcut(), risky_shortcut.EnvParams()),
    "TwoOptima": lambda: (two_optima.TwoOptima(), two_optima.EnvParams()),
    **{
        f"LotSizing-{size}": lambda size=size: lot_sizing.make_instance(size)
        for size in lot_sizing.INSTANCES
    },
    **{
        f"{kind.__name__}-{layout}": lambda kind=kind, layout=layout: (
            env := kind(layout),
            env.default_params,
        )
        for kind in (maze.PointMaze, maze.GridMaze)
        for layout in maze.LAYOUTS
    },
}

# Gymnax environments that cannot run here, with the reason, so make() can say it.
UNSUPPORTED = {
    "MNISTBandit-bsuite": "it downloads MNIST when constructed, and rljax never downloads",
    "MetaMaze-misc": "its step fails in gymnax 1.0.1 (lax.select of int32 and float32 in get_obs)",
}


class UnknownEnvironment(ValueError):
    """Raised by make() with the list of names it knows."""


class InvalidEnvironmentOption(ValueError):
    """Raised by make() and wrap() for an option or environment parameter the environment does
    not have, or a value of the wrong type or out of range; the message names it."""


def names() -> dict[str, list[str]]:
    """All environment names, grouped by source."""
    gymnax_names = [n for n in gymnax.registered_envs if n not in UNSUPPORTED]
    return {
        "gymnax": gymnax_names,
        "brax": [f"brax/{n}" for n in brax_env.names()],
        "rljax": [f"rljax/{n}" for n in sorted(OWN_ENVS)],
    }


def _bare(name: str) -> str:
    """A name without its source, version and punctuation: gymnasium's ``HalfCheetah-v4`` and
    ``brax/halfcheetah`` are both ``halfcheetah``."""
    return re.sub(r"[^a-z0-9]", "", re.sub(r"-v\d+$", "", name.split("/")[-1]).lower())


def _unknown(name: str) -> UnknownEnvironment:
    if name in UNSUPPORTED:
        return UnknownEnvironment(f"{name!r} is not supported: {UNSUPPORTED[name]}.")
    known = names()
    by_bare = {_bare(n): n for ns in known.values() for n in ns}
    close = difflib.get_close_matches(_bare(name), by_bare, n=2, cutoff=0.85)
    hint = f" Did you mean {' or '.join(by_bare[c] for c in close)}?" if close else ""
    listing = "\n".join(f"  {source}: {', '.join(ns)}" for source, ns in known.items() if ns)
    return UnknownEnvironment(f"unknown environment {name!r}.{hint} Known environments:\n{listing}")


def _base_env(name: str, backend: str | None):
    source, _, short = name.partition("/") if "/" in name else ("gymnax", "", name)
    if backend is not None and source != "brax":
        raise InvalidEnvironmentOption(f"backend= applies to brax environments only, not {name!r}")
    if source == "gymnax" and short in gymnax.registered_envs and short not in UNSUPPORTED:
        return gymnax.make(short)
    if source == "brax" and short in brax_env.names():
        env = brax_env.BraxEnv(short, backend=backend or "positional")
        return env, env.default_params
    if source == "rljax" and short in OWN_ENVS:
        return OWN_ENVS[short]()
    if source == "rljax" and short.startswith("LotSizing:"):  # the PDPPO authors' setting file
        return lot_sizing.from_setting(short.partition(":")[2])
    raise _unknown(name)


# Options that belong to one training run (their statistics live in its train state), not to
# the env: evaluation, datasets and exported policies see the env without them.
NORMALIZATION = ("normalize_obs", "normalize_reward", "reward_gamma")


# wrap()'s named options; every other keyword of make() is an environment parameter.
WRAPPER_OPTIONS = (
    "flatten_obs",
    "unit_actions",
    "normalize_obs",
    "normalize_reward",
    "reward_gamma",
)


# wrap()'s boolean options; YAML's true/false (and yes/no, on/off) parse to bools, nothing else.
BOOLEAN_OPTIONS = ("flatten_obs", "unit_actions", "normalize_obs", "normalize_reward")

# Integer environment parameters with a lower bound that holds for every environment.
PARAMETER_MINIMUMS = {"max_steps_in_episode": 1}


def _is_number(value) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(
        value, bool | np.bool_
    )


def check_options(**options) -> None:
    """Raises InvalidEnvironmentOption unless wrap()'s options have the right types and ranges.

    Cheap and import-free beyond this module, so callers can check before building anything.
    """
    for key in BOOLEAN_OPTIONS:
        if key in options and not isinstance(options[key], bool | np.bool_):
            raise InvalidEnvironmentOption(f"{key}={options[key]!r} must be true or false")
    if "reward_gamma" in options:
        gamma = options["reward_gamma"]
        if not _is_number(gamma) or not 0.0 <= float(gamma) <= 1.0:
            raise InvalidEnvironmentOption(
                f"reward_gamma={gamma!r} is out of range: it must be a number in [0, 1]"
            )


def _parameter(name: str, key: str, value, default):
    """``value`` as the type of the parameter's default, or InvalidEnvironmentOption naming it."""
    if hasattr(default, "shape") and np.ndim(default) > 0:  # an array parameter
        array = np.asarray(value) if isinstance(value, list | tuple | np.ndarray) else None
        if array is None or array.shape != default.shape or array.dtype.kind not in "biuf":
            raise InvalidEnvironmentOption(
                f"{name}: {key}={value!r} must be a list of {default.shape[0]} numbers"
            )
        return jnp.asarray(array, dtype=default.dtype)
    default = default.item() if hasattr(default, "item") else default
    if isinstance(default, bool):
        if not isinstance(value, bool | np.bool_):
            raise InvalidEnvironmentOption(f"{name}: {key}={value!r} must be true or false")
        return bool(value)
    if not _is_number(value) or not math.isfinite(float(value)):
        kind = "an integer" if isinstance(default, int) else "a finite number"
        raise InvalidEnvironmentOption(f"{name}: {key}={value!r} must be {kind}")
    if isinstance(default, int):
        if float(value) != int(value):
            raise InvalidEnvironmentOption(f"{name}: {key}={value!r} must be an integer")
        value = int(value)
        if key in PARAMETER_MINIMUMS and value < PARAMETER_MINIMUMS[key]:
            raise InvalidEnvironmentOption(
                f"{name}: {key}={value} is out of range: it must be >= {PARAMETER_MINIMUMS[key]}"
            )
        return value
    return float(value)


def without_normalization(options: dict) -> dict:
    """``options`` (``make``'s, with or without ``name``) less the running normalization."""
    return {k: v for k, v in options.items() if k not in NORMALIZATION}


def make(name: str, *, backend: str | None = None, inner_wrapper=None, **options):
    """Returns ``(env, env_params)`` with the gymnax 1.0 step API, auto-reset and episode stats.

    Args:
      name: an environment name (see the module docstring and ``names()``).
      backend: the brax physics backend (brax environments only; default "positional").
      inner_wrapper: ``env -> env`` applied beneath the normalization wrappers (dataset
        generation records raw transitions there).
      **options: ``wrap``'s options, and overrides of the environment's parameters, e.g.
        ``max_steps_in_episode=200``.
    """
    wrapping = {k: options.pop(k) for k in WRAPPER_OPTIONS if k in options}
    check_options(**wrapping)  # before the env is built: a brax env takes seconds
    env, env_params = _base_env(name, backend)
    valid = {f.name for f in dataclasses.fields(env_params)}
    unknown = sorted(set(options) - valid)
    if unknown:
        raise InvalidEnvironmentOption(
            f"{name} has no parameter {', '.join(unknown)}; its parameters are: "
            f"{', '.join(sorted(valid))}; and make()'s options: {', '.join(WRAPPER_OPTIONS)}"
        )
    if hasattr(env, "check_params"):  # an env that names its own ranges (rljax's own) goes first
        try:
            env.check_params(env_params.replace(**options))
        except TypeError:  # a value of the wrong type, which _parameter names
            pass
    env_params = env_params.replace(
        **{k: _parameter(name, k, v, getattr(env_params, k)) for k, v in options.items()}
    )
    if hasattr(env, "check_params"):
        env.check_params(env_params)
    return wrap(env, env_params, name=name, inner_wrapper=inner_wrapper, **wrapping)


def wrap(
    env,
    env_params,
    *,
    name: str = "the env",
    flatten_obs: bool = False,
    unit_actions: bool = False,
    normalize_obs: bool = False,
    normalize_reward: bool = False,
    reward_gamma: float = 0.99,
    inner_wrapper=None,
):
    """The one place that turns named options into wrappers; returns ``(env, env_params)``.

    Args:
      flatten_obs: flatten observations to vectors (MinAtar's images for an MLP).
      unit_actions: continuous actions in [-1, 1], mapped onto the env's bounds (the D4RL
        convention, which offline datasets follow).
      normalize_obs: normalize observations by running moments shared across the vmapped envs.
      normalize_reward: divide rewards by the running std of the discounted return.
      reward_gamma: the discount of that return.

    Wrappers, inside out: episode statistics on the raw rewards, flattening, action clipping to
    the action space's bounds (continuous actions), [-1, 1] actions, ``inner_wrapper``,
    observation normalization, reward scaling.

    Raises InvalidEnvironmentOption for a boolean option that is not a bool, or a
    ``reward_gamma`` outside [0, 1].
    """
    check_options(
        flatten_obs=flatten_obs,
        unit_actions=unit_actions,
        normalize_obs=normalize_obs,
        normalize_reward=normalize_reward,
        reward_gamma=reward_gamma,
    )
    env = LogWrapper(env)
    if flatten_obs:
        env = FlattenObservationWrapper(env)
    continuous = isinstance(env.action_space(env_params), spaces.Box)
    if continuous:
        env = ClipAction(env)
    if unit_actions:
        if not continuous:
            raise InvalidEnvironmentOption(
                f"unit_actions applies to continuous actions; {name} has none"
            )
        env = UnitActions(env)
    if inner_wrapper is not None:
        env = inner_wrapper(env)
    if normalize_obs:
        env = NormalizeObservation(env)
    if normalize_reward:
        env = ScaleReward(env, reward_gamma)
    return env, env_params


__all__ = [
    "NORMALIZATION",
    "InvalidEnvironmentOption",
    "UnknownEnvironment",
    "check_options",
    "make",
    "names",
    "without_normalization",
    "wrap",
]
