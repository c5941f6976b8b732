"""Agent configs from defaults, presets, ``--set`` overrides and sweep grids, validated.

Agents declare each field's allowed values in its metadata (``bounds`` as an interval such as
``"(0, 1]"``, or ``choices``); this module checks them, so a bad value is reported by field name
before anything is traced.
"""

import dataclasses
import itertools
import math

import jax
import jax.numpy as jnp
import yaml


class ConfigError(ValueError):
    """A config that cannot run; the message names the field."""


class UnknownField(ConfigError):
    """A field name the agent's Config does not have."""


class FieldOutOfRange(ConfigError):
    """A value outside the field's bounds or choices, or of the wrong type."""


class StaticFieldSweep(ConfigError):
    """A sweep over a static field (a shape or switch), which no single program can vmap."""


def _fields(config_cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(config_cls)}


def is_static(field: dataclasses.Field) -> bool:
    return not field.metadata.get("pytree_node", True)


def field_choices(config_cls, name: str) -> tuple:
    """The values a Config field allows (empty when it has bounds instead, or no such field)."""
    field = _fields(config_cls).get(name)
    return tuple(field.metadata.get("choices") or ()) if field else ()


def _coerce(name: str, value, default):
    """Converts a YAML or command-line value to the type of the field's default."""
    if isinstance(value, str) and not isinstance(default, str):
        value = yaml.safe_load(value)
    try:
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise TypeError
        elif isinstance(default, int):
            if float(value) != int(float(value)):
                raise TypeError
            value = int(float(value))
        elif isinstance(default, float):
            value = float(value)
        elif isinstance(default, tuple):
            if isinstance(value, str | dict):  # tuple("abc") would be ("a", "b", "c")
                raise TypeError
            value = tuple(value)
        elif isinstance(default, str):
            value = str(value)
    except (TypeError, ValueError):
        kind = type(default).__name__
        raise FieldOutOfRange(f"{name}={value!r} is not a valid {kind}") from None
    if isinstance(default, tuple) and _sizes(default):
        value = _positive_ints(name, value)
    return value


def _sizes(default: tuple) -> bool:
    """Whether a tuple default is a tuple of sizes (layer widths): ints, none of them bools."""
    return bool(default) and all(isinstance(x, int) and not isinstance(x, bool) for x in default)


def _positive_ints(name: str, value: tuple) -> tuple:
    """A tuple of sizes, each an int >= 1, or FieldOutOfRange naming the field and element."""
    sizes = []
    for i, x in enumerate(value):
        whole = isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
        if not whole or x != int(x) or x < 1:
            raise FieldOutOfRange(
                f"{name}={list(value)!r} is out of range: element {i} ({x!r}) must be an "
                "integer >= 1"
            )
        sizes.append(int(x))
    return tuple(sizes)


def _check(name: str, value, field: dataclasses.Field) -> None:
    choices = field.metadata.get("choices")
    if choices and value not in choices:
        raise FieldOutOfRange(f"{name}={value!r} is not allowed; choose one of {list(choices)}")
    bounds = field.metadata.get("bounds")
    if bounds:
        low_text, high_text = bounds[1:-1].split(",")
        low, high = float(low_text), float(high_text)
        above = value >= low if bounds[0] == "[" else value > low
        below = value <= high if bounds[-1] == "]" else value < high
        if not (above and below) or (isinstance(value, float) and math.isnan(value)):
            raise FieldOutOfRange(f"{name}={value!r} is out of range: it must lie in {bounds}")


def make_config(config_cls, overrides: dict):
    """The agent's default Config with ``overrides`` applied, each coerced and validated."""
    fields = _fields(config_cls)
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise UnknownField(
            f"{config_cls.__module__}.Config has no field {', '.join(map(repr, unknown))}; "
            f"its fields: {', '.join(fields)}"
        )
    values = {}
    for name, value in overrides.items():
        values[name] = _coerce(name, value, fields[name].default)
        _check(name, values[name], fields[name])
    return config_cls(**values)


def parse_assignments(items: list[str]) -> dict[str, str]:
    """``["lr=3e-4", "env.normalize_obs=true"]`` -> ``{"lr": "3e-4", ...}``."""
    parsed = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"expected KEY=VALUE, got {item!r}")
        parsed[key.strip()] = value.strip()
    return parsed


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """``["lr=1e-4,3e-4", "clip_eps=0.1,0.2"]`` -> ``{"lr": ["1e-4", "3e-4"], ...}``."""
    return {key: value.split(",") for key, value in parse_assignments(items).items()}


def check_sweepable(config_cls, grid: dict) -> None:
    fields = _fields(config_cls)
    for name in grid:
        if name not in fields:
            raise UnknownField(
                f"cannot sweep {name!r}: {config_cls.__module__}.Config has no such field; "
                f"its fields: {', '.join(fields)}"
            )
        if is_static(fields[name]):
            traced = [n for n, f in fields.items() if not is_static(f)]
            raise StaticFieldSweep(
                f"cannot sweep {name!r}: it is a static field (it sets shapes or the program's "
                f"structure), so each value needs its own compilation; run one sweep per value. "
                f"Sweepable fields: {', '.join(traced)}"
            )


def grid_points(grid: dict[str, list]) -> list[dict]:
    """The Cartesian product of a grid, in the order its keys and values were given."""
    keys = list(grid)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*grid.values())]


def stack(configs: list):
    """One Config whose traced leaves carry a leading member axis, for ``jax.vmap``."""
    return jax.tree.map(lambda *values: jnp.stack([jnp.asarray(v) for v in values]), *configs)


def as_dict(config) -> dict:
    """A plain, YAML-friendly dict of a (single) Config."""
    return {
        f.name: list(v) if isinstance(v := getattr(config, f.name), tuple) else v
        for f in dataclasses.fields(config)
    }


def member_configs(agent, fields: dict, grid: dict) -> list:
    """One validated Config per grid point of a declared agent (``rljax.agents.declaration``),
    with ``fields`` set; the agent checks its cross-field rules on each."""
    check_sweepable(agent.module.Config, grid)
    configs = []
    for point in grid_points(grid):
        config = make_config(agent.module.Config, {**fields, **point})
        try:
            agent.check(config)
        except ValueError as error:
            raise FieldOutOfRange(str(error)) from None
        configs.append(config)
    return configs
