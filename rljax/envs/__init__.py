"""One ``make(name)`` for gymnax, brax and rljax's own environments.

Names: gymnax environments keep their own names (``CartPole-v1``, ``Breakout-MinAtar``), brax
environments are ``brax/NAME`` (``brax/hopper``), and rljax's own are ``rljax/NAME``. Gymnax
names contain no ``/``, so the three sets can never collide; ``gymnax/CartPole-v1`` is accepted
too. ``rljax envs`` lists them all.
"""

import dataclasses

import gymnax
from gymnax.environments import spaces

from rljax.envs import brax_env, lot_sizing, maze, risky_shortcut
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
    """Raised by make() for an option or environment parameter the environment does not have."""


def names() -> dict[str, list[str]]:
    """All environment names, grouped by source."""
    gymnax_names = [n for n in gymnax.registered_envs if n not in UNSUPPORTED]
    return {
        "gymnax": gymnax_names,
        "brax": [f"brax/{n}" for n in brax_env.names()],
        "rljax": [f"rljax/{n}" for n in sorted(OWN_ENVS)],
    }


def _unknown(name: str) -> UnknownEnvironment:
    if name in UNSUPPORTED:
        return UnknownEnvironment(f"{name!r} is not supported: {UNSUPPORTED[name]}.")
    listing = "\n".join(f"  {source}: {', '.join(ns)}" for source, ns in names().items() if ns)
    return UnknownEnvironment(f"unknown environment {name!r}. Known environments:\n{listing}")


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
    raise _unknown(name)


def make(
    name: str,
    *,
    normalize_obs: bool = False,
    normalize_reward: bool = False,
    reward_gamma: float = 0.99,
    flatten_obs: bool = False,
    unit_actions: bool = False,
    backend: str | None = None,
    **params,
):
    """Returns ``(env, env_params)`` with the gymnax 1.0 step API, auto-reset and episode stats.

    Args:
      name: an environment name (see the module docstring and ``names()``).
      normalize_obs: normalize observations by running moments shared across the vmapped envs.
      normalize_reward: divide rewards by the running std of the discounted return.
      reward_gamma: the discount of that return.
      flatten_obs: flatten observations to vectors (MinAtar's images for an MLP).
      unit_actions: continuous actions in [-1, 1], mapped onto the env's bounds (the D4RL
        convention, which offline datasets follow).
      backend: the brax physics backend (brax environments only; default "positional").
      **params: overrides of the environment's parameters, e.g. ``max_steps_in_episode=200``.

    Wrappers, inside out: episode statistics on the raw rewards, flattening, action clipping to
    the action space's bounds (continuous actions), [-1, 1] actions, observation normalization,
    reward scaling.
    """
    env, env_params = _base_env(name, backend)
    valid = {f.name for f in dataclasses.fields(env_params)}
    unknown = sorted(set(params) - valid)
    if unknown:
        raise InvalidEnvironmentOption(
            f"{name} has no parameter {', '.join(unknown)}; its parameters are: "
            f"{', '.join(sorted(valid))}"
        )
    env_params = env_params.replace(**params)
    if hasattr(env, "check_params"):  # an env that validates its parameters (rljax's own)
        env.check_params(env_params)
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
    if normalize_obs:
        env = NormalizeObservation(env)
    if normalize_reward:
        env = ScaleReward(env, reward_gamma)
    return env, env_params


__all__ = ["InvalidEnvironmentOption", "UnknownEnvironment", "make", "names"]
