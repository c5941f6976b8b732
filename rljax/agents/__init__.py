"""The agents, one self-contained file each, and the contract they declare.

Every agent file has five public names, in this order: ``Config``, ``init``, ``update``,
``train``, ``act``. What an agent learns from, whether it acts towards a goal and which paper it
implements, it declares with module constants, never found out by ``hasattr`` or ``inspect``:

    LEARNS_FROM = "env"          # ENV, DATASET (or, reserved for the families to come,
                                 # DATASET_THEN_ENV and MODEL_THEN_DATASET)
    GOAL_CONDITIONED = False     # act(config, params, obs, goal, rng, deterministic)
    WRAPS_ENV = False            # wrap_env(config, env, env_params, params=None) changes the env
    RECURRENT = False            # act_step(config, params, memory, obs, first, rng, deterministic)
                                 # -> (memory, action) acts with memory from
                                 # initial_hidden(config, batch_shape); act is its first step
    PAPER = 'Fujimoto, Gu, "A Minimalist Approach to Offline Reinforcement Learning", NeurIPS 2021'

``PAPER`` is one line, the paper that the module docstring cites: the authors (the first one and
"et al." when there are more than two), the title in quotes, the venue and the year.

The signatures, per source (the Protocols below spell them out):

* ``ENV``: ``init(config, env, env_params, rng)``, ``update(config, env, env_params, state)``
  for one iteration (a rollout and its gradient steps), ``train(config, env, env_params, rng,
  num_updates=None)``. ``Config.total_timesteps`` is the static budget in env steps, and
  ``Config.num_updates`` / ``Config.steps_per_update`` turn it into iterations.
* ``DATASET``: ``init(config, dataset, rng)``, ``update(config, dataset, state)`` for one
  gradient step on a batch it samples inside jit from ``state.rng``, ``train(config, dataset,
  rng, num_updates=None)``, and ``update_on_batch(config, state, batch)``, the step on a given
  batch that ``update`` wraps (public for hand-computed tests). ``Config.total_updates`` is the
  static budget in gradient steps. The dataset (an ``rljax.data.Dataset``) is closed over, not
  carried in the state, so vmapped members share one copy.
* ``DATASET_THEN_ENV`` (offline-to-online fine-tuning): everything a ``DATASET`` agent has (the
  offline phase, ``Config.total_updates`` gradient steps of ``update``), then an online phase
  of ``Config.online_steps`` env steps (static; 0, the default, leaves a pure dataset agent):
  ``begin_online(config, dataset, env, env_params, state)`` turns the offline train state into
  the online one, once, at the boundary (its structure may differ: a replay of online rows, the
  envs' state, fresh optimizers); ``update_online(config, dataset, env, env_params, state)`` is
  one online iteration, ``Config.steps_per_update`` env steps (one step of ``Config.num_envs``
  envs) and then its gradient steps on a batch whose first ``round(Config.offline_fraction *
  batch_size)`` rows are dataset rows and the rest online ones; ``fine_tune(config, dataset,
  env, env_params, state)`` is ``begin_online`` and a ``lax.scan`` of ``Config.
  num_online_updates`` of them. The env is the dataset's, acting in [-1, 1] like the dataset's
  actions; both phases' states carry ``params`` (one type, so ``act`` serves both) and ``rng``.
  Online training episodes are logged as ``episode_train_return`` and ``episode_train_length``;
  ``episode_return`` is the runner's deterministic evaluation, in both phases.
* ``MODEL_THEN_DATASET`` (model-based offline RL): a dynamics model fitted to the dataset
  first, then a policy trained on the data and the model's rollouts. ``init(config, dataset,
  rng)`` gives the model phase's state; ``update_model(config, dataset, state)`` is one
  gradient step of the model (``Config.model_updates`` of them, static; held-out evaluation
  and early stopping happen inside it); ``begin_policy(config, dataset, state)`` turns the
  fitted model's state into the policy phase's, once, at the boundary (its structure may
  differ: the elites chosen, a replay of model rollouts); then ``update(config, dataset,
  state)`` is one policy iteration (rollouts from dataset states when they are due, and one
  gradient step on a batch of dataset and model rows) and ``update_on_batch(config, state,
  batch)`` its gradient step on a given batch; ``Config.total_updates`` counts the policy's
  gradient steps. ``train(config, dataset, rng, num_updates=None)`` runs both phases and
  returns ``(state, (model metrics, policy metrics))``. Both
  phases' states carry ``params`` and ``rng`` (the model phase's policy is untrained). An
  agent whose model rollouts need a termination function has a static ``Config.termination``
  naming one of its file's ``TERMINATIONS`` table ("none": never); the runner sets it to the
  dataset's env when the table has it. An agent whose policy phase can fail to begin (nothing
  to learn from) defines ``check_begin_policy(config, state)``, which the runner calls on the
  host after ``begin_policy`` (members stacked) and which raises a named error.

For every source ``train`` is ``init`` and then a ``lax.scan`` of ``update``, which is exactly
what the runner's jitted chunk runs. ``TrainState.params`` is all that ``act`` needs: it holds
the static facts of the action space (number or dimension of actions, discreteness, bounds)
beside the network weights, so no ``act`` reads the layout of its parameter tree. Continuous
actions come out in the units the agent was trained in: the env's own for online agents, and
[-1, 1] (the D4RL convention) for dataset agents; ``rljax.load_policy`` maps them to the env's
units. Metrics named ``episode_*`` may be NaN; every other metric must stay finite.

A ``Config`` is a ``flax.struct.dataclass``: shape-like fields static, numbers traced, each field
with ``bounds`` or ``choices`` metadata and a ``doc``, its meaning in one line. An agent may
define ``check(config)`` for rules across fields, which the runner calls on each concrete config
before stacking them.
"""

import dataclasses
import importlib
from types import ModuleType
from typing import Any, Protocol

ENV = "env"
DATASET = "dataset"
DATASET_THEN_ENV = "dataset_then_env"
MODEL_THEN_DATASET = "model_then_dataset"
SOURCES = (ENV, DATASET, DATASET_THEN_ENV, MODEL_THEN_DATASET)
DATASET_SOURCES = SOURCES[1:]  # the agents that learn from a dataset first
CONTRACT = ("Config", "init", "update", "train", "act")

# Algorithm name -> module.
ALGORITHMS = {
    "ppo": "rljax.agents.ppo",
    "ppo_pmoe": "rljax.agents.ppo_pmoe",
    "ppo_rnn": "rljax.agents.ppo_rnn",
    "pdppo": "rljax.agents.pdppo",
    "lpo": "rljax.agents.lpo",
    "c51": "rljax.agents.c51",
    "qr_dqn": "rljax.agents.qr_dqn",
    "stock_dqn": "rljax.agents.stock_dqn",
    "sac": "rljax.agents.sac",
    "sac_pmoe": "rljax.agents.sac_pmoe",
    "dsac_t": "rljax.agents.dsac_t",
    "mdpo": "rljax.agents.mdpo",
    "dpo": "rljax.agents.dpo",
    "bc": "rljax.agents.bc",
    "td3_bc": "rljax.agents.td3_bc",
    "iql": "rljax.agents.iql",
    "famo2o": "rljax.agents.famo2o",
    "rebrac": "rljax.agents.rebrac",
    "cql": "rljax.agents.cql",
    "calql": "rljax.agents.calql",
    "wsrl": "rljax.agents.wsrl",
    "odice": "rljax.agents.odice",
    "fdvl": "rljax.agents.fdvl",
    "prdc": "rljax.agents.prdc",
    "a2pr": "rljax.agents.a2pr",
    "riql": "rljax.agents.riql",
    "edac": "rljax.agents.edac",
    "mopo": "rljax.agents.mopo",
    "ravl": "rljax.agents.ravl",
    "pgd": "rljax.agents.pgd",
    "mbrcsl": "rljax.agents.mbrcsl",
    "gcbc": "rljax.agents.gcbc",
    "gcivl": "rljax.agents.gcivl",
    "gciql": "rljax.agents.gciql",
    "qrl": "rljax.agents.qrl",
    "crl": "rljax.agents.crl",
    "hiql": "rljax.agents.hiql",
    "beso": "rljax.agents.beso",
    "hilp": "rljax.agents.hilp",
    "smore": "rljax.agents.smore",
    "ota": "rljax.agents.ota",
    "harpg": "rljax.agents.harpg",
    "uni_o4": "rljax.agents.uni_o4",
}


class EnvAgent(Protocol):
    """An agent with ``LEARNS_FROM = ENV``."""

    Config: type

    def init(self, config, env, env_params, rng) -> Any: ...
    def update(self, config, env, env_params, state) -> tuple[Any, dict]: ...
    def train(self, config, env, env_params, rng, num_updates=None) -> tuple[Any, dict]: ...
    def act(self, config, params, obs, rng, deterministic=False) -> Any: ...


class DatasetAgent(Protocol):
    """An agent with ``LEARNS_FROM = DATASET``; a goal-conditioned one's ``act`` takes the goal
    after ``obs``."""

    Config: type

    def init(self, config, dataset, rng) -> Any: ...
    def update(self, config, dataset, state) -> tuple[Any, dict]: ...
    def update_on_batch(self, config, state, batch) -> tuple[Any, dict]: ...
    def train(self, config, dataset, rng, num_updates=None) -> tuple[Any, dict]: ...
    def act(self, config, params, obs, rng, deterministic=False) -> Any: ...


class FineTuningAgent(DatasetAgent, Protocol):
    """An agent with ``LEARNS_FROM = DATASET_THEN_ENV``: a dataset agent that goes on online."""

    def begin_online(self, config, dataset, env, env_params, state) -> Any: ...
    def update_online(self, config, dataset, env, env_params, state) -> tuple[Any, dict]: ...
    def fine_tune(self, config, dataset, env, env_params, state) -> tuple[Any, dict]: ...


class ModelBasedAgent(DatasetAgent, Protocol):
    """An agent with ``LEARNS_FROM = MODEL_THEN_DATASET``: a dynamics model, then a policy."""

    def update_model(self, config, dataset, state) -> tuple[Any, dict]: ...
    def begin_policy(self, config, dataset, state) -> Any: ...


class UnknownAlgorithm(ValueError):
    """Raised by get() with the list of algorithm names it knows."""


class ContractError(TypeError):
    """An agent module that does not declare what the contract asks of it."""


@dataclasses.dataclass(frozen=True)
class Declaration:
    """What an agent module declares: the one place the library looks its capabilities up."""

    name: str
    module: ModuleType
    learns_from: str
    goal_conditioned: bool
    wraps_env: bool
    paper: str
    recurrent: bool

    @property
    def from_dataset(self) -> bool:
        """Whether it learns from a dataset first (a fine-tuning agent does, then online)."""
        return self.learns_from in DATASET_SOURCES

    @property
    def fine_tunes(self) -> bool:
        return self.learns_from == DATASET_THEN_ENV

    @property
    def fits_model(self) -> bool:
        return self.learns_from == MODEL_THEN_DATASET

    @property
    def budget_field(self) -> str:
        """The static Config field that sets the training length: env steps or gradient steps."""
        return "total_updates" if self.from_dataset else "total_timesteps"

    def check(self, config) -> None:
        """The agent's own cross-field rules, on a concrete config (if it has any)."""
        check = getattr(self.module, "check", None)
        if check is not None:
            check(config)

    def check_begin_policy(self, config, state) -> None:
        """A model-based agent's check that its policy phase can begin (if it has one)."""
        check = getattr(self.module, "check_begin_policy", None)
        if check is not None:
            check(config, state)


def check_name(name: str) -> None:
    """UnknownAlgorithm, listing the known names, unless ``name`` is one (imports nothing)."""
    if name not in ALGORITHMS:
        raise UnknownAlgorithm(
            f"unknown algorithm {name!r}; known algorithms: {', '.join(sorted(ALGORITHMS))}"
        )


def get(name: str) -> ModuleType:
    check_name(name)
    return importlib.import_module(ALGORITHMS[name])


def declaration(name: str) -> Declaration:
    """The declared contract of algorithm ``name``; ContractError if it declares it badly."""
    module = get(name)
    constants = ("LEARNS_FROM", "GOAL_CONDITIONED", "WRAPS_ENV", "RECURRENT", "PAPER")
    missing = [n for n in (*CONTRACT, *constants) if not hasattr(module, n)]
    if missing:
        raise ContractError(f"{module.__name__} does not declare {', '.join(missing)}")
    if module.LEARNS_FROM not in SOURCES:
        raise ContractError(
            f"{module.__name__}.LEARNS_FROM={module.LEARNS_FROM!r}; choose one of {SOURCES}"
        )
    if module.LEARNS_FROM in (DATASET, DATASET_THEN_ENV) and not hasattr(module, "update_on_batch"):
        raise ContractError(f"{module.__name__} learns from a dataset but has no update_on_batch")
    online = ("begin_online", "update_online", "fine_tune")
    if module.LEARNS_FROM == DATASET_THEN_ENV and not all(hasattr(module, n) for n in online):
        raise ContractError(
            f"{module.__name__} fine-tunes online but lacks one of {', '.join(online)}"
        )
    if module.WRAPS_ENV and not hasattr(module, "wrap_env"):
        raise ContractError(f"{module.__name__}.WRAPS_ENV is set but it has no wrap_env")
    if module.RECURRENT and not all(hasattr(module, n) for n in ("act_step", "initial_hidden")):
        raise ContractError(
            f"{module.__name__}.RECURRENT is set but it lacks act_step or initial_hidden"
        )
    if not isinstance(module.PAPER, str) or not module.PAPER.strip():
        raise ContractError(
            f"{module.__name__}.PAPER={module.PAPER!r}; declare the paper it implements in one "
            "line, e.g. 'Author et al., \"Title\", Venue 2024'"
        )
    return Declaration(
        name,
        module,
        module.LEARNS_FROM,
        bool(module.GOAL_CONDITIONED),
        bool(module.WRAPS_ENV),
        module.PAPER,
        bool(module.RECURRENT),
    )


def names(*sources: str) -> list[str]:
    """Algorithm names, all or those that learn from one of ``sources``."""
    return sorted(n for n in ALGORITHMS if not sources or declaration(n).learns_from in sources)
