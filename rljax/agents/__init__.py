"""The agents, one self-contained file each, found by name."""

import importlib
from types import ModuleType

# Algorithm name -> module. Each module exposes Config, init, update, train and act.
ALGORITHMS = {"ppo": "rljax.agents.ppo"}


class UnknownAlgorithm(ValueError):
    """Raised by get() with the list of algorithm names it knows."""


def get(name: str) -> ModuleType:
    if name not in ALGORITHMS:
        raise UnknownAlgorithm(
            f"unknown algorithm {name!r}; known algorithms: {', '.join(sorted(ALGORITHMS))}"
        )
    return importlib.import_module(ALGORITHMS[name])
