"""The agents, one self-contained file each, found by name.

Besides its five public names (Config, init, update, train, act), the runner relies on:
``Config.total_timesteps`` (a static field it sets from --total-steps), the properties
``Config.steps_per_update`` and ``Config.num_updates``, ``TrainState.params`` (what ``act``
takes, and what the divergence guard checks), and, for online agents, ``TrainState.env_state``
(where saved observation normalization is found). Metrics named ``episode_*`` may be NaN;
every other metric must stay finite.
"""

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
