"""The agents, one self-contained file each, found by name.

Besides its five public names (Config, init, update, train, act), the runner relies on:
``Config.total_timesteps`` (a static field it sets from --total-steps), the properties
``Config.steps_per_update`` and ``Config.num_updates``, ``TrainState.params`` (what ``act``
takes, and what the divergence guard checks), and, for online agents, ``TrainState.env_state``
(where saved observation normalization is found). Metrics named ``episode_*`` may be NaN;
every other metric must stay finite.

Offline agents learn from a dataset: ``init(config, dataset, rng)``, ``update(config, state,
batch)`` for one gradient step, and a sixth name, ``sample_batch(config, dataset, rng)``, that
draws the batch inside jit (the dataset is closed over, so it may be read on the host while
tracing). Their Config has a static ``total_updates`` (set from --total-steps) instead of
``total_timesteps``, and ``TrainState.rng``. Goal-conditioned agents are offline agents whose
``act(config, params, obs, goal, rng, deterministic)`` also takes the goal.

Optionally, ``wrap_env(config, env, env_params, params=None) -> (env, env_params)`` changes the
env an agent sees (stock_dqn appends its stock to the observation, since ``act`` is
stateless). The runner applies it to the env it builds, with the first config (so it may read
static fields only) and no params, and in evaluation, per member, with the member's config and
trained params. ``init`` and ``update`` receive the wrapped env; users outside the runner wrap
it themselves.
"""

import importlib
from types import ModuleType

# Algorithm name -> module. Each module exposes Config, init, update, train and act.
ALGORITHMS = {
    "ppo": "rljax.agents.ppo",
    "pdppo": "rljax.agents.pdppo",
    "lpo": "rljax.agents.lpo",
    "c51": "rljax.agents.c51",
    "qr_dqn": "rljax.agents.qr_dqn",
    "stock_dqn": "rljax.agents.stock_dqn",
    "sac": "rljax.agents.sac",
    "dsac_t": "rljax.agents.dsac_t",
    "mdpo": "rljax.agents.mdpo",
    "dpo": "rljax.agents.dpo",
    "bc": "rljax.agents.bc",
    "td3_bc": "rljax.agents.td3_bc",
    "iql": "rljax.agents.iql",
    "rebrac": "rljax.agents.rebrac",
    "cql": "rljax.agents.cql",
    "gcbc": "rljax.agents.gcbc",
    "gcivl": "rljax.agents.gcivl",
    "gciql": "rljax.agents.gciql",
    "qrl": "rljax.agents.qrl",
    "crl": "rljax.agents.crl",
    "hiql": "rljax.agents.hiql",
    "ota": "rljax.agents.ota",
}


class UnknownAlgorithm(ValueError):
    """Raised by get() with the list of algorithm names it knows."""


def get(name: str) -> ModuleType:
    if name not in ALGORITHMS:
        raise UnknownAlgorithm(
            f"unknown algorithm {name!r}; known algorithms: {', '.join(sorted(ALGORITHMS))}"
        )
    return importlib.import_module(ALGORITHMS[name])
