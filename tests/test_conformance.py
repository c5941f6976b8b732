"""Every agent in ``rljax.agents.ALGORITHMS`` against the contract that ``rljax/agents/__init__.py``
declares: the constants, the five public names in order, the signatures of its source, imports
(nothing of rljax outside the demo, so the file runs when copied elsewhere), a cited and declared
paper, a meaning for every Config field, ``train`` == ``init`` then a ``lax.scan`` of
``update``, and ``act`` from the params alone.

The demos themselves (``python rljax/agents/NAME.py``) train for minutes: they are run by hand.
"""

import ast
import dataclasses
import functools
import inspect
import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rljax import agents, envs
from rljax.data import Dataset

NAMES = sorted(agents.ALGORITHMS)
NUM_UPDATES = 2  # iterations that train and the scan of update run

# --- Tiny fixtures, one per agent: where it learns, and a config that compiles fast ---

# Policy gradient: 2 iterations of 2 envs x 8 steps, one epoch of 2 minibatches.
PG = dict(num_envs=2, num_steps=8, num_minibatches=2, update_epochs=1, hidden_sizes=(8,))
PG["total_timesteps"] = NUM_UPDATES * 16
# Replay agents learn from the first iteration on: learning_starts <= one iteration's steps.
DQN = dict(num_envs=2, num_steps=4, updates_per_iteration=2, batch_size=8, buffer_size=16)
DQN |= dict(total_timesteps=NUM_UPDATES * 8, learning_starts=8, hidden_sizes=(8,))
SAC = dict(num_envs=2, num_steps=2, utd_ratio=1.0, batch_size=8, buffer_size=16)
SAC |= dict(learning_starts=4, total_timesteps=NUM_UPDATES * 4, hidden_sizes=(8,))
OFFLINE = dict(batch_size=8, hidden_sizes=(8,), total_updates=NUM_UPDATES)
GC = dict(OFFLINE)
# A dynamics ensemble of 3 one-layer models, 2 elites; rollouts of 4 states, 2 steps, each update.
MODEL = dict(
    model_updates=NUM_UPDATES, num_models=3, num_elites=2, model_hidden_sizes=(8,),
    model_weight_decay=(0.0, 0.0), model_batch_size=8, holdout_interval=1, rollout_freq=1,
    rollout_batch_size=4, rollout_length=2, termination="Pendulum-v1",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Fixture:
    """What an agent learns from here, what it must declare, and its tiny config."""

    source: str  # agents.ENV, agents.DATASET or agents.DATASET_THEN_ENV
    data: str  # an env name for rljax.envs.make, or a dataset in DATASETS
    config: dict
    goal_conditioned: bool = False
    wraps_env: bool = False
    env_options: tuple = ()  # (key, value) pairs for rljax.envs.make


def online(env, config, **kw):
    return Fixture(agents.ENV, env, config, **kw)


def offline(data, config, **kw):
    return Fixture(agents.DATASET, data, config, **kw)


def fine_tuning(data, config, **kw):
    """A dataset agent that goes on online (test_fine_tuning_online_phase runs that phase)."""
    return Fixture(agents.DATASET_THEN_ENV, data, config, **kw)


def model_based(data, config, **kw):
    """A dynamics model first, then a policy (test_model_phase runs the model phase)."""
    return Fixture(agents.MODEL_THEN_DATASET, data, config, **kw)


FIXTURES = {
    "ppo": online("CartPole-v1", PG),
    "ppo_pmoe": online("Pendulum-v1", PG | dict(num_components=2, q_hidden_sizes=(8,))),
    "harpg": online("CartPole-v1", dict(num_envs=2, horizon=8, total_timesteps=64)),
    "ppo_rnn": online("CartPole-v1", PG | dict(cell_size=8, embed_size=8)),
    "dpo": online("CartPole-v1", PG),
    "mdpo": online("CartPole-v1", PG),
    "lpo": online("CartPole-v1", PG | dict(drift_hidden=8)),
    # MultiDiscrete actions, our own env; its rollouts must hold whole episodes.
    "pdppo": online("rljax/LotSizing-5x2", PG, env_options=(("max_steps_in_episode", 8),)),
    "c51": online("CartPole-v1", DQN | dict(num_atoms=11)),
    "qr_dqn": online("CartPole-v1", DQN | dict(num_quantiles=8)),
    "stock_dqn": online(
        "rljax/RiskyShortcut", DQN | dict(num_atoms=11, num_stock_candidates=3), wraps_env=True
    ),
    # The env's own bounds, [-2, 2]: online agents act in the env's units.
    "sac": online("Pendulum-v1", SAC),
    "sac_pmoe": online("Pendulum-v1", SAC | dict(num_components=2)),
    "dsac_t": online("Pendulum-v1", SAC),
    "bc": offline("d4rl", OFFLINE),
    "td3_bc": offline("d4rl", OFFLINE),
    "iql": fine_tuning("d4rl", OFFLINE),
    "famo2o": fine_tuning("d4rl", OFFLINE | dict(cql_n_actions=2)),
    "rebrac": offline("d4rl", OFFLINE),
    "cql": fine_tuning("d4rl", OFFLINE | dict(cql_n_actions=2)),
    "calql": fine_tuning("d4rl", OFFLINE | dict(cql_n_actions=2)),
    "wsrl": fine_tuning(
        "d4rl", OFFLINE | dict(cql_n_actions=2, num_critics=3, online_batch_size=8, warmup_steps=1)
    ),
    "uni_o4": fine_tuning(
        "d4rl",
        dict(batch_size=8, total_updates=2, improvement_updates=1, num_policies=2, eval_every=1)
        | dict(rollout_steps=2, ope_batch_size=4, num_envs=2, num_steps=1, num_minibatches=2)
        | dict(update_epochs=1, policy_hidden_sizes=(8,), value_hidden_sizes=(8,))
        | dict(q_hidden_sizes=(8,), dynamics_hidden_sizes=(8,)),
    ),
    "odice": offline("d4rl", OFFLINE),
    "fdvl": offline("d4rl", OFFLINE),
    "prdc": offline("d4rl", OFFLINE),
    "a2pr": offline("d4rl", OFFLINE),
    "riql": offline("d4rl", OFFLINE | dict(num_critics=3)),
    "edac": offline("d4rl", OFFLINE | dict(num_critics=3)),
    "mopo": model_based("d4rl", OFFLINE | MODEL),
    "ravl": model_based("d4rl", OFFLINE | MODEL | dict(num_critics=3)),
    "pgd": model_based(
        "d4rl",
        OFFLINE
        | dict(model_updates=NUM_UPDATES, trajectory_length=4, window_stride=2, unet_blocks=1)
        | dict(unet_features=16, model_batch_size=4, num_sampling_steps=2, sampling_batch=4)
        | dict(num_synthetic_trajectories=4, synthetic_batch_size=6, regenerate_every=1),
    ),
    "mbrcsl": model_based(
        "walks",
        OFFLINE
        | dict(model_updates=NUM_UPDATES, num_models=2, num_elites=1, model_hidden_sizes=(8,))
        | dict(model_weight_decay=(1e-4, 1e-4), model_batch_size=8, holdout_interval=1)
        | dict(behavior_hidden_sizes=(8,), behavior_batch_size=8, behavior_diffusion_steps=2)
        | dict(horizon=3, rollout_batch_size=4, num_needed=2, max_rounds=2),
        wraps_env=True,
    ),
    "gcbc": offline("walks", GC, goal_conditioned=True),
    "gcivl": offline("walks", GC, goal_conditioned=True),
    "gciql": offline("walks", GC, goal_conditioned=True),
    "qrl": offline("walks", GC | dict(latent_dim=8, dim_per_component=4), goal_conditioned=True),
    "crl": offline("walks", GC | dict(latent_dim=8), goal_conditioned=True),
    "hiql": offline("walks", GC | dict(rep_dim=4, subgoal_steps=4), goal_conditioned=True),
    "beso": offline("walks", GC | dict(window=2), goal_conditioned=True),
    "hilp": offline(
        "walks",
        GC
        | dict(skill_dim=4, planning_num_recursions=2, planning_num_states=16, planning_num_knns=4),
        goal_conditioned=True,
    ),
    "smore": offline("walks", GC, goal_conditioned=True),
    "ota": offline(
        "walks",
        GC | dict(rep_dim=4, subgoal_steps=4, abstraction_factor=2),
        goal_conditioned=True,
    ),  # fmt: skip
}

# Agents whose demo trains on one of rljax's own envs, so their __main__ block imports it:
# pdppo on rljax/LotSizing, stock_dqn on rljax/RiskyShortcut. Every other demo (the
# goal-conditioned ones included: they build their own tiny maze data inline) needs no rljax.
DEMO_IMPORTS_RLJAX = {"pdppo", "stock_dqn"}

# What an agent file may import outside its demo: these, and the standard library.
AGENT_DEPENDENCIES = {"jax", "flax", "optax", "distrax", "chex", "numpy"}


def d4rl_dataset(n=64, obs_dim=3, action_dim=2, seed=0) -> Dataset:
    """Random transitions in episodes of 8 steps, actions in [-1, 1]; episode 3 terminates,
    the rest time out (as tests/test_offline_bc_td3_bc_iql.py)."""
    rng = np.random.default_rng(seed)
    terminals, timeouts = np.zeros(n, np.float32), np.zeros(n, np.float32)
    timeouts[7::8] = 1
    terminals[23], timeouts[23] = 1, 0
    return Dataset.from_arrays(
        observations=rng.normal(2.0, 3.0, (n, obs_dim)),
        actions=rng.uniform(-1, 1, (n, action_dim)),
        rewards=rng.normal(size=n),
        terminals=terminals,
        timeouts=timeouts,
        next_observations=rng.normal(2.0, 3.0, (n, obs_dim)),
    )


def walks_dataset(episodes=4, length=16, seed=0) -> Dataset:
    """Random walks in the plane, s' = s + 0.1 a, each ending in a timeout; every observation
    differs, so a goal names its row (as tests/test_gc_qrl_crl.py)."""
    rng = np.random.default_rng(seed)
    actions = rng.uniform(-1, 1, (episodes, length, 2))
    start = rng.uniform(0, 1, (episodes, 1, 2))
    steps = np.concatenate([np.zeros((episodes, 1, 2)), actions], 1)
    positions = start + 0.1 * steps.cumsum(1)
    timeouts = np.zeros((episodes, length), np.float32)
    timeouts[:, -1] = 1
    flat = lambda x: x.reshape(episodes * length, *x.shape[2:])  # noqa: E731
    return Dataset.from_arrays(
        observations=flat(positions[:, :-1]),
        actions=flat(actions),
        rewards=np.zeros(episodes * length),
        terminals=np.zeros(episodes * length),
        timeouts=flat(timeouts),
        next_observations=flat(positions[:, 1:]),
    )


DATASETS = {"d4rl": d4rl_dataset, "walks": walks_dataset}


@dataclasses.dataclass
class Setup:
    name: str
    declared: agents.Declaration
    module: object
    config: object
    env: object = None
    env_params: object = None
    dataset: Dataset = None

    @property
    def source_args(self) -> tuple:
        """What init, update and train take between config and rng / state."""
        return (self.dataset,) if self.dataset is not None else (self.env, self.env_params)


@functools.cache
def setup(name: str) -> Setup:
    fixture = FIXTURES[name]
    declared = agents.declaration(name)
    module = declared.module
    config = module.Config(**fixture.config)
    declared.check(config)
    if declared.from_dataset:
        return Setup(name, declared, module, config, dataset=DATASETS[fixture.data]())
    env, env_params = envs.make(fixture.data, **dict(fixture.env_options))
    if declared.wraps_env:
        env, env_params = module.wrap_env(config, env, env_params)
    return Setup(name, declared, module, config, env, env_params)


@functools.cache
def source_tree(name: str) -> ast.Module:
    return ast.parse(Path(agents.get(name).__file__).read_text())


def is_main_block(node) -> bool:
    """``if __name__ == "__main__":``"""
    test = getattr(node, "test", None)
    return (
        isinstance(node, ast.If)
        and isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and test.left.id == "__name__"
        and len(test.comparators) == 1
        and isinstance(test.comparators[0], ast.Constant)
        and test.comparators[0].value == "__main__"
    )


def imported_modules(nodes) -> list[tuple[int, str]]:
    """(line, module) of every import statement in ``nodes``, at any depth; relative imports
    are named by their dots."""
    found = []
    for node in nodes:
        for sub in ast.walk(node):
            if isinstance(sub, ast.Import):
                found += [(sub.lineno, alias.name) for alias in sub.names]
            elif isinstance(sub, ast.ImportFrom):
                found.append((sub.lineno, "." * sub.level + (sub.module or "")))
    return found


def is_rljax(module: str) -> bool:
    return module.startswith(".") or module.split(".")[0] == "rljax"


def leaves_with_paths(tree) -> list[tuple[str, np.ndarray]]:
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if jnp.issubdtype(jnp.asarray(leaf).dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        out.append((jax.tree_util.keystr(path), np.asarray(leaf)))
    return out


parametrize_names = pytest.mark.parametrize("name", NAMES, ids=NAMES)


def test_every_algorithm_has_a_fixture():
    assert sorted(FIXTURES) == NAMES
    assert DEMO_IMPORTS_RLJAX <= set(NAMES)


# --- The declaration ---


@parametrize_names
def test_declaration(name):
    """declaration() accepts the module, and what it declares is what the agent is."""
    fixture = FIXTURES[name]
    declared = agents.declaration(name)
    module = declared.module
    for constant in ("GOAL_CONDITIONED", "WRAPS_ENV", "RECURRENT"):
        assert isinstance(getattr(module, constant), bool), f"{name}.{constant} is not a bool"
    assert declared.learns_from == fixture.source
    assert declared.goal_conditioned == fixture.goal_conditioned
    assert declared.wraps_env == fixture.wraps_env

    # The static budget the runner reads.
    fields = {f.name: f for f in dataclasses.fields(module.Config)}
    budget = fields.get(declared.budget_field)
    assert budget is not None, f"{name}.Config has no {declared.budget_field}"
    assert budget.metadata.get("pytree_node") is False, f"{declared.budget_field} is not static"
    # Every field made by _field: bounds and choices metadata for the runner's validation.
    for field in fields.values():
        assert {"bounds", "choices"} <= set(field.metadata), f"{name}.Config.{field.name}"


@parametrize_names
def test_every_field_says_what_it_means(name):
    """Every Config field has a doc in its metadata (what `rljax fields` prints): one line, under
    100 characters, without a trailing period."""
    for field in dataclasses.fields(agents.get(name).Config):
        doc, where = field.metadata.get("doc"), f"{name}.Config.{field.name}"
        assert isinstance(doc, str) and doc.strip(), f"{where} has no doc: {doc!r}"
        assert "\n" not in doc and len(doc) < 100, f"{where}: doc {doc!r} is not one short line"
        assert not doc.endswith("."), f"{where}: doc {doc!r} ends with a period"


@parametrize_names
def test_signatures_follow_the_protocol(name):
    """The positional parameters of each contract function are the Protocol's, with the goal
    after the observation in a goal-conditioned act, and train's budget defaulting to None."""
    declared = agents.declaration(name)
    module = declared.module
    protocol = agents.DatasetAgent if declared.from_dataset else agents.EnvAgent
    functions = ["init", "update", "train", "act"]
    if declared.from_dataset:
        functions.append("update_on_batch")
    for function in functions:
        expected = list(inspect.signature(getattr(protocol, function)).parameters)[1:]  # self
        if function == "act" and declared.goal_conditioned:
            expected.insert(expected.index("obs") + 1, "goal")
        got = list(inspect.signature(getattr(module, function)).parameters)
        assert got == expected, f"{name}.{function}{tuple(got)}, the contract says {expected}"
    assert inspect.signature(module.train).parameters["num_updates"].default is None
    assert inspect.signature(module.act).parameters["deterministic"].default is False


# --- The file ---


@parametrize_names
def test_public_names_in_contract_order(name):
    """class Config, def init, def update, def train, def act, in this order, at top level."""
    lines = {}
    for node in source_tree(name).body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef) and node.name in agents.CONTRACT:
            lines.setdefault(node.name, node.lineno)
    assert set(lines) == set(agents.CONTRACT), f"missing {set(agents.CONTRACT) - set(lines)}"
    order = sorted(lines, key=lines.get)
    assert tuple(order) == agents.CONTRACT, f"{name}: {order} (lines {lines})"


@parametrize_names
def test_imports(name):
    """Outside the demo block, which ends the file, the file imports the standard library and
    jax, flax, optax, distrax, chex, numpy only; the demo imports rljax only where it runs on
    rljax's own env."""
    body = source_tree(name).body
    mains = [node for node in body if is_main_block(node)]
    assert len(mains) == 1, f"{name} has {len(mains)} `if __name__ == '__main__':` blocks"
    assert is_main_block(body[-1]), f"{name} does not end with its demo"
    library = imported_modules(node for node in body if not is_main_block(node))
    bad = [
        (line, module)
        for line, module in library
        if is_rljax(module)
        or module.split(".")[0] not in AGENT_DEPENDENCIES | sys.stdlib_module_names
    ]
    assert not bad, f"{name} imports outside its demo: {bad}"
    demo = [(line, m) for line, m in imported_modules(mains) if is_rljax(m)]
    if name in DEMO_IMPORTS_RLJAX:  # and the list stays exact
        assert demo, f"{name}'s demo no longer imports rljax: drop it from DEMO_IMPORTS_RLJAX"
        assert all(not m.startswith(".") for _, m in demo), f"relative imports in {name}: {demo}"
    else:
        assert not demo, f"{name}'s demo imports rljax: {demo}"


@functools.cache
def import_copies_without_rljax(tmp: str) -> dict[str, str]:
    """Copies every agent file into ``tmp`` and imports each copy in one fresh interpreter with
    rljax made unimportable; name -> the error ("" if it imported)."""
    copies = {}
    for name in NAMES:
        shutil.copy(agents.get(name).__file__, Path(tmp) / f"{name}_copy.py")
        copies[name] = f"{name}_copy"
    script = textwrap.dedent(f"""
        import importlib, json, sys
        sys.modules["rljax"] = None
        sys.path.insert(0, {tmp!r})
        errors = {{}}
        for name, module in {copies!r}.items():
            try:
                importlib.import_module(module)
                errors[name] = ""
            except BaseException as error:
                errors[name] = f"{{type(error).__name__}}: {{error}}"
        print(json.dumps(errors))
    """)
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@parametrize_names
def test_a_copy_of_the_file_imports_without_rljax(name, tmp_path_factory):
    """A copy of the file, in a directory of its own, imports in an interpreter where rljax
    cannot be imported. (Every agent: pdppo's and stock_dqn's demos need rljax's envs, but their
    modules must not.)"""
    tmp = tmp_path_factory.getbasetemp() / "agent_copies"
    tmp.mkdir(exist_ok=True)
    error = import_copies_without_rljax(str(tmp))[name]
    assert not error, f"{name}.py copied elsewhere does not import without rljax: {error}"


# A year and an author list ("Schulman, Wolski", "Chen et al.", "Pomerleau (1991)") or an arXiv id.
YEAR = re.compile(r"\b(19|20)\d\d\b")
AUTHORS = re.compile(
    r"arXiv|\b[A-Z][\w'-]+ et al\.|\b[A-Z][\w'-]+,? (and|&) [A-Z][\w'-]+|"
    r"\b[A-Z][\w'-]+, [A-Z][\w'-]+,|\b[A-Z][\w'-]+ \((19|20)\d\d\)"
)


@parametrize_names
def test_docstring_cites_a_paper(name):
    doc = ast.get_docstring(source_tree(name)) or ""
    assert YEAR.search(doc), f"{name}'s docstring names no year"
    assert AUTHORS.search(doc), f"{name}'s docstring names no authors or arXiv id"


# PAPER: 'Authors, "Title", Venue Year', the authors "First et al." when more than two.
PAPER = re.compile(r'(?P<authors>[^"]+), "(?P<title>[^"]+)", (?P<venue>[^"]+) (?P<year>\d{4})')


@parametrize_names
def test_paper_is_the_one_the_docstring_cites(name):
    """PAPER is one line in the declared form, and the module docstring cites the same paper:
    its title, or its venue and year, appear there."""
    paper = agents.declaration(name).paper
    match = PAPER.fullmatch(paper)
    assert match, f"{name}.PAPER={paper!r} is not 'Authors, \"Title\", Venue Year'"
    authors = match["authors"]
    assert authors.endswith(" et al.") or authors.count(",") <= 1, f"{name}: {authors}"
    doc = " ".join((ast.get_docstring(source_tree(name)) or "").split())
    cited = match["title"] in doc or (match["venue"] in doc and match["year"] in doc)
    assert cited, f"{name}'s docstring does not cite its PAPER {paper!r}"


def test_a_missing_or_empty_paper_is_refused(monkeypatch):
    module = agents.get("ppo")
    monkeypatch.setattr(module, "PAPER", " ")
    with pytest.raises(agents.ContractError, match=r"rljax\.agents\.ppo\.PAPER"):
        agents.declaration("ppo")
    monkeypatch.delattr(module, "PAPER")
    with pytest.raises(agents.ContractError, match="rljax.agents.ppo does not declare PAPER"):
        agents.declaration("ppo")


def test_a_recurrent_agent_must_carry_its_memory(monkeypatch):
    """RECURRENT promises act_step and initial_hidden, which the evaluation calls."""
    module = agents.get("ppo")
    monkeypatch.setattr(module, "RECURRENT", True)
    with pytest.raises(agents.ContractError, match="RECURRENT is set but it lacks act_step"):
        agents.declaration("ppo")
    monkeypatch.delattr(module, "RECURRENT")
    with pytest.raises(agents.ContractError, match="does not declare RECURRENT"):
        agents.declaration("ppo")
    assert agents.declaration("ppo_rnn").recurrent


# --- Behaviour ---

# Compilation is nearly all of these tests' time. XLA's backend optimizations change how fast
# the program runs, not what it computes, and each comparison below is within one program;
# without them it compiles 2-3x faster. A jaxlib that no longer knows an option compiles as usual.
FAST_COMPILE = {
    "xla_backend_optimization_level": 0,
    "xla_llvm_disable_expensive_passes": True,
    "xla_cpu_use_fusion_emitters": False,
}


def compiled(function, *args):
    lowered = jax.jit(function).lower(*args)
    try:
        executable = lowered.compile(FAST_COMPILE)
    except Exception as error:  # jaxlib raises its XlaRuntimeError
        if "compile option" not in str(error):
            raise
        executable = lowered.compile()
    return executable(*args)


def policy_phase_start(s: Setup, rng):
    """The state ``update`` starts from: init's, or a model-based agent's after its model phase
    (init, a scan of update_model, begin_policy)."""
    state = s.module.init(s.config, *s.source_args, rng)
    if not s.declared.fits_model:
        return state
    step = lambda state, _: s.module.update_model(s.config, s.dataset, state)  # noqa: E731
    state = jax.lax.scan(step, state, None, s.config.model_updates)[0]
    return s.module.begin_policy(s.config, s.dataset, state)


@functools.cache
def train_and_scan(name: str):
    """(train's output, init (and a model-based agent's model phase) then a scan of update's
    output, init's params), from one key, in one program: where train is init and the scan,
    XLA computes them once."""
    s = setup(name)
    module, config, args = s.module, s.config, s.source_args

    def both(rng):
        trained = module.train(config, *args, rng, NUM_UPDATES)
        if s.declared.fits_model:  # (state, (model metrics, metrics)): the policy's compared
            state, (_, metrics) = trained
            trained = state, metrics
        state = policy_phase_start(s, rng)
        step = lambda state, _: module.update(config, *args, state)  # noqa: E731
        initial = module.init(config, *args, rng).params
        return trained, jax.lax.scan(step, state, None, NUM_UPDATES), initial

    return compiled(both, jax.random.PRNGKey(0))


@parametrize_names
def test_train_is_init_then_a_scan_of_update(name):
    """train(..., rng, 2) and init then lax.scan of update twice, under jit, give the same state
    and metrics, leaf for leaf; metrics are per-iteration scalars, finite but for episode_*."""
    train_out, scan_out, _ = train_and_scan(name)
    assert jax.tree.structure(train_out) == jax.tree.structure(scan_out)
    for (path, a), (_, b) in zip(
        leaves_with_paths(train_out), leaves_with_paths(scan_out), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6, err_msg=f"{name}: {path}")

    _, metrics = train_out
    assert isinstance(metrics, dict) and metrics, f"{name}: metrics {type(metrics)}"
    for key, value in metrics.items():
        assert np.shape(value) == (NUM_UPDATES,), f"{name}: metric {key} of shape {value.shape}"
        if not key.startswith("episode_"):
            assert np.isfinite(value).all(), f"{name}: metric {key} = {value}"


def checkpoint_round_trip(state, directory: Path):
    """``state`` saved by the runner's checkpoints (orbax) and restored: orbax refuses some
    leaves a state could hold (an empty array, for one)."""
    from rljax.runner.checkpoint import Checkpoints

    checkpoints = Checkpoints(directory)
    try:
        checkpoints.save(1, state)
        layout = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state
        )
        _, restored = checkpoints.restore_latest(lambda _: layout)
    finally:
        checkpoints.close()
    for (path, a), (_, b) in zip(
        leaves_with_paths(state), leaves_with_paths(restored), strict=True
    ):
        np.testing.assert_array_equal(a, b, err_msg=path)


@parametrize_names
def test_the_train_state_checkpoints(name, tmp_path):
    """What training leaves is what a checkpoint gives back."""
    (state, _), _, _ = train_and_scan(name)
    checkpoint_round_trip(state, tmp_path / "checkpoints")


class KeepsItsKey(envs.wrappers.GymnaxWrapper):
    """An env whose state holds the last key it was given, as an env that splits its own
    stream might: a step handed keys of another kind than its state holds could not be
    scanned."""

    def reset(self, key, params=None):
        obs, state = self._env.reset(key, params)
        return obs, (state, key)

    def step(self, key, state, action, params=None):
        obs, inner, reward, terminated, truncated, info = self._env.step(
            key, state[0], action, params
        )
        return obs, (inner, key), reward, terminated, truncated, info


# The rollouts that draw through their written-out threefry (tests/test_inlined_copies.py).
WRITTEN_OUT_ROLLOUTS = ["dpo", "lpo", "mdpo", "pdppo", "ppo", "ppo_pmoe", "ppo_rnn"]


def hashing_key_types(jaxpr) -> set[str]:
    """The key types that the hashing primitives (split, bits, fold_in) of a jaxpr and every
    jaxpr nested in it take: ``key<fry>`` is jax's threefry, ``key<fwo>`` the written-out one."""
    found = set()
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in ("random_split", "random_bits", "random_fold_in"):
            found.add(str(eqn.invars[0].aval.dtype))
        for param in eqn.params.values():
            for sub in param if isinstance(param, tuple | list) else (param,):
                if hasattr(sub, "eqns") or hasattr(sub, "jaxpr"):
                    found |= hashing_key_types(getattr(sub, "jaxpr", sub))
    return found


@pytest.mark.parametrize("name", WRITTEN_OUT_ROLLOUTS, ids=WRITTEN_OUT_ROLLOUTS)
def test_the_update_hashes_only_through_the_written_out_threefry(name):
    """Every split and draw of an update, the env's own included, hashes with the written-out
    threefry, none with jax's (a loop of small kernels on a CPU), unless the env's state holds
    keys: the speed-up's path, which the same numbers alone would not show was taken."""
    s = setup(name)
    key = jax.random.PRNGKey(0)

    def hashing(env):
        state = jax.eval_shape(lambda k: s.module.init(s.config, env, s.env_params, k), key)
        update = lambda st: s.module.update(s.config, env, s.env_params, st)  # noqa: E731
        return hashing_key_types(jax.make_jaxpr(update)(state).jaxpr)

    assert hashing(s.env) == {"key<fwo>"}
    assert "key<fry>" in hashing(KeepsItsKey(s.env))  # the env that keeps a key: its own kind


@pytest.mark.parametrize("name", WRITTEN_OUT_ROLLOUTS, ids=WRITTEN_OUT_ROLLOUTS)
@pytest.mark.parametrize("key", ["raw", "typed"])
def test_an_env_that_keeps_its_key_trains_on_the_same_numbers(name, key):
    """The policy-gradient rollouts draw their env steps' randomness through keys of their
    written-out threefry, except for an env whose state holds keys: it gets keys of the kind
    it holds, and trains on the numbers of the env that keeps none (to float rounding: the
    two are compiled as different programs)."""
    s = setup(name)
    rng = jax.random.PRNGKey(0) if key == "raw" else jax.random.key(0)
    keeps = KeepsItsKey(s.env)
    plain, kept = compiled(
        lambda rng: [s.module.train(s.config, env, s.env_params, rng) for env in (s.env, keeps)],
        rng,
    )
    (_, kept_key), held = kept[0].env_state, jax.random.key_data(rng) if key == "raw" else rng
    assert kept_key.dtype == held.dtype  # the kind the env was reset with
    kept = (kept[0].replace(env_state=kept[0].env_state[0]), kept[1])
    for (path, a), (_, b) in zip(leaves_with_paths(plain), leaves_with_paths(kept), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=f"{name}: {path}")


# A model-based agent's update also rolls its model out and samples model rows: each agent's
# own tests check its batches.
DATASET_NAMES = [
    n for n in NAMES if agents.declaration(n).from_dataset and not agents.declaration(n).fits_model
]


@pytest.mark.parametrize("name", DATASET_NAMES, ids=DATASET_NAMES)
def test_dataset_update_samples_its_own_batch(name):
    """A dataset agent's update is update_on_batch on sample_batch, with the key split from
    state.rng as the runner did before the contract (so results did not move)."""
    s = setup(name)
    module, config, dataset = s.module, s.config, s.dataset

    def both(rng):
        state = module.init(config, dataset, rng)
        rng, key = jax.random.split(state.rng)
        batch = module.sample_batch(config, dataset, key)
        by_hand = module.update_on_batch(config, state.replace(rng=rng), batch)
        return module.update(config, dataset, state), by_hand

    updated, by_hand = compiled(both, jax.random.PRNGKey(3))
    for (path, a), (_, b) in zip(
        leaves_with_paths(updated), leaves_with_paths(by_hand), strict=True
    ):
        np.testing.assert_array_equal(a, b, err_msg=f"{name}: {path}")


def observations_and_space(s: Setup, count: int):
    """``count`` observations and goals (None unless from a dataset), and the action shape and
    bounds: ("discrete", n) or ("box", low, high)."""
    if s.dataset is not None:
        obs = s.dataset.observations[:count]
        goals = s.dataset.observations[-count:]
        if s.declared.wraps_env:  # what its wrapper adds: MBRCSL's return so far
            obs = jnp.concatenate([obs, jnp.zeros((count, 1))], axis=-1)
        actions = np.asarray(s.dataset.actions)
        if np.issubdtype(actions.dtype, np.integer):
            return obs, goals, actions.shape[1:], ("discrete", int(actions.max()) + 1)
        return obs, goals, actions.shape[1:], ("box", -1.0, 1.0)  # the D4RL convention
    keys = jax.random.split(jax.random.PRNGKey(1), count)
    obs, _ = jax.jit(jax.vmap(s.env.reset, in_axes=(0, None)))(keys, s.env_params)
    space = s.env.action_space(s.env_params)
    if hasattr(space, "n"):
        bounds = ("discrete", int(space.n))
    elif hasattr(space, "nvec"):  # rljax's MultiDiscrete
        bounds = ("discrete", np.asarray(space.nvec))
    else:
        bounds = ("box", np.asarray(space.low), np.asarray(space.high))
    return obs, None, tuple(space.shape), bounds


def act_reads_parameter_layout(name: str) -> list[str]:
    """``["params"]`` subscripts in act or in a module-level function that it calls, directly
    or not: reading the layout of the parameter tree instead of what Params keeps."""
    functions = {
        node.name: node for node in source_tree(name).body if isinstance(node, ast.FunctionDef)
    }
    seen, todo, found = set(), ["act"], []
    while todo:
        function = todo.pop()
        if function in seen or function not in functions:
            continue
        seen.add(function)
        for node in ast.walk(functions[function]):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                todo.append(node.func.id)
            if (
                isinstance(node, ast.Subscript)
                and isinstance(node.slice, ast.Constant)
                and node.slice.value == "params"
            ):
                found.append(f"{function} (line {node.lineno})")
    return found


@parametrize_names
def test_act_from_params_alone(name):
    """After init, act(config, state.params, obs[, goal], rng, deterministic) on one observation
    and on a batch of 3 gives actions of the action shape inside the action space; deterministic
    actions do not depend on the key. act reads no parameter layout: Params keeps the facts."""
    s = setup(name)
    module, config, goal_conditioned = s.module, s.config, s.declared.goal_conditioned
    params = train_and_scan(name)[2]
    assert dataclasses.is_dataclass(params), f"{name}: state.params is a {type(params)}"
    layout = act_reads_parameter_layout(name)
    assert not layout, f"{name}.act reads the parameter tree's layout in {layout}"

    obs, goals, action_shape, bounds = observations_and_space(s, 3)
    cases = [(deterministic, batch) for deterministic in (True, False) for batch in (False, True)]

    def act(params, obs, goals, rng, deterministic, batch):
        o = obs if batch else obs[0]
        extra = ((goals if batch else goals[0]),) if goal_conditioned else ()
        return module.act(config, params, o, *extra, rng, deterministic)

    def all_cases(params, obs, goals):
        actions = [act(params, obs, goals, jax.random.PRNGKey(3), *case) for case in cases]
        again = [act(params, obs, goals, jax.random.PRNGKey(4), True, b) for b in (False, True)]
        return actions, again

    actions, again = compiled(all_cases, params, obs, goals)
    for (deterministic, batch), action in zip(cases, actions, strict=True):
        action = np.asarray(action)
        where = f"{name}: deterministic={deterministic}, batch={batch}"
        expected = (3, *action_shape) if batch else tuple(action_shape)
        assert action.shape == expected, f"{where}: shape {action.shape}, not {expected}"
        if bounds[0] == "discrete":
            assert np.issubdtype(action.dtype, np.integer), f"{where}: {action.dtype}"
            assert (action >= 0).all() and (action < bounds[1]).all(), f"{where}: {action}"
        else:
            assert np.issubdtype(action.dtype, np.floating), f"{where}: {action.dtype}"
            low, high = bounds[1:]
            assert (action >= low).all() and (action <= high).all(), f"{where}: {action}"
    for batch, action, other in zip((False, True), actions[:2], again, strict=True):
        np.testing.assert_array_equal(
            action, other, err_msg=f"{name}: deterministic, batch={batch}"
        )


@parametrize_names
def test_act_on_params_stacked_over_members(name):
    """The action space's facts are static fields of Params, not leaves a sweep would batch, so
    act vmaps over params stacked across members (as evaluation runs it) and gives each
    member's own actions."""
    s = setup(name)
    module, config, goal_conditioned = s.module, s.config, s.declared.goal_conditioned
    obs, goals, _, _ = observations_and_space(s, 3)
    extra = (goals,) if goal_conditioned else ()

    def members_and_each(obs, *extra):
        params = [module.init(config, *s.source_args, jax.random.PRNGKey(i)).params for i in (0, 1)]
        stacked = jax.tree.map(lambda *x: jnp.stack(x), *params)
        key = jax.random.PRNGKey(5)
        vmapped = jax.vmap(lambda p: module.act(config, p, obs, *extra, key, True))(stacked)
        each = [module.act(config, p, obs, *extra, key, True) for p in params]
        return vmapped, each, params[0]

    vmapped, each, params = compiled(members_and_each, obs, *extra)
    static = {f.name for f in dataclasses.fields(params) if not f.metadata.get("pytree_node", True)}
    leaves = {jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_leaves_with_path(params)}
    assert static, f"{name}: Params keeps no static facts of the action space"
    assert not any(f".{field}" in leaf for field in static for leaf in leaves), (name, static)
    for member, actions in enumerate(each):
        np.testing.assert_allclose(vmapped[member], actions, atol=1e-6, err_msg=f"{name} {member}")


FINE_TUNING_NAMES = [n for n in NAMES if agents.declaration(n).fine_tunes]


@pytest.mark.parametrize("name", FINE_TUNING_NAMES, ids=FINE_TUNING_NAMES)
def test_fine_tuning_online_phase(name, tmp_path):
    """A fine-tuning agent, from init on a dataset of Pendulum's shapes (obs 3, action 1), on
    Pendulum-v1 acting in [-1, 1], with online_steps = 2 num_envs: the online functions have the
    Protocol's parameters; begin_online then two update_online (under jit) give per-iteration
    metrics, the losses finite, the training episodes' return and length but never the
    runner's episode_return; the online state carries params of the offline type and an rng;
    act on the online params gives actions in [-1, 1]; fine_tune is begin_online then a scan of
    update_online, leaf for leaf."""
    s = setup(name)
    module = s.module
    for function in ("begin_online", "update_online", "fine_tune"):
        expected = list(inspect.signature(getattr(agents.FineTuningAgent, function)).parameters)
        got = list(inspect.signature(getattr(module, function)).parameters)
        assert got == expected[1:], f"{name}.{function}{tuple(got)}, the contract says {expected}"
    config = s.config.replace(online_steps=2 * s.config.num_envs)
    s.declared.check(config)
    assert config.num_online_updates == NUM_UPDATES
    dataset = d4rl_dataset(obs_dim=3, action_dim=1)
    env, env_params = envs.make("Pendulum-v1", unit_actions=True)

    def both(rng):
        state = module.init(config, dataset, rng)
        tuned = module.fine_tune(config, dataset, env, env_params, state)
        online = module.begin_online(config, dataset, env, env_params, state)
        by_hand = jax.lax.scan(
            lambda state, _: module.update_online(config, dataset, env, env_params, state),
            online,
            None,
            NUM_UPDATES,
        )
        obs, _ = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(rng, 3), env_params)
        params = by_hand[0].params
        key = jax.random.PRNGKey(7)
        actions = [module.act(config, params, obs, key, d) for d in (True, False)]
        return tuned, by_hand, actions, state.params

    tuned, by_hand, actions, offline_params = compiled(both, jax.random.PRNGKey(0))
    assert jax.tree.structure(tuned) == jax.tree.structure(by_hand)
    for (path, a), (_, b) in zip(leaves_with_paths(tuned), leaves_with_paths(by_hand), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6, err_msg=f"{name}: {path}")

    online, metrics = by_hand
    assert type(online.params) is type(offline_params), f"{name}: {type(online.params)}"
    assert hasattr(online, "rng"), f"{name}'s online state has no rng"
    assert "episode_train_return" in metrics and "episode_train_length" in metrics, sorted(metrics)
    assert "episode_return" not in metrics, f"{name}: episode_return is the runner's evaluation"
    for key, value in metrics.items():
        assert np.shape(value) == (NUM_UPDATES,), f"{name}: metric {key} of shape {value.shape}"
        if not key.startswith("episode_"):
            assert np.isfinite(value).all(), f"{name}: metric {key} = {value}"
    for deterministic, action in zip((True, False), actions, strict=True):
        action = np.asarray(action)
        assert action.shape == (3, 1), f"{name}: deterministic={deterministic}: {action.shape}"
        assert (np.abs(action) <= 1).all(), f"{name}: deterministic={deterministic}: {action}"
    checkpoint_round_trip(online, tmp_path / "checkpoints")


MODEL_BASED_NAMES = [n for n in NAMES if agents.declaration(n).fits_model]


@pytest.mark.parametrize("name", MODEL_BASED_NAMES, ids=MODEL_BASED_NAMES)
def test_model_phase(name, tmp_path):
    """A model-based agent: update_model and begin_policy have the Protocol's parameters; two
    update_model steps (under jit) give per-step finite metrics and leave the policy's params
    as init made them; begin_policy's state carries params of the same type and an rng and
    checkpoints; ``termination``, where there is one, is a static field whose choices are "none"
    and the file's TERMINATIONS table."""
    s = setup(name)
    module, config, dataset = s.module, s.config, s.dataset
    for function in ("update_model", "begin_policy"):
        expected = list(inspect.signature(getattr(agents.ModelBasedAgent, function)).parameters)
        got = list(inspect.signature(getattr(module, function)).parameters)
        assert got == expected[1:], f"{name}.{function}{tuple(got)}, the contract says {expected}"
    fields = {f.name: f for f in dataclasses.fields(module.Config)}
    assert fields["model_updates"].metadata.get("pytree_node") is False, name
    if "termination" in fields:
        assert fields["termination"].metadata.get("pytree_node") is False, name
        assert set(fields["termination"].metadata["choices"]) == {"none", *module.TERMINATIONS}

    def phase(rng):
        state = module.init(config, dataset, rng)
        step = lambda state, _: module.update_model(config, dataset, state)  # noqa: E731
        fitted, metrics = jax.lax.scan(step, state, None, NUM_UPDATES)
        return state.params, fitted.params, metrics, module.begin_policy(config, dataset, fitted)

    initial, kept, metrics, policy_state = compiled(phase, jax.random.PRNGKey(0))
    for (path, a), (_, b) in zip(leaves_with_paths(initial), leaves_with_paths(kept), strict=True):
        np.testing.assert_array_equal(a, b, err_msg=f"{name}: the model phase moved {path}")
    assert metrics, f"{name}: update_model logs no metrics"
    for key, value in metrics.items():
        assert np.shape(value) == (NUM_UPDATES,), f"{name}: metric {key} of shape {value.shape}"
        assert np.isfinite(value).all(), f"{name}: metric {key} = {value}"
    assert type(policy_state.params) is type(initial), f"{name}: {type(policy_state.params)}"
    assert hasattr(policy_state, "rng"), f"{name}'s policy state has no rng"
    checkpoint_round_trip(policy_state, tmp_path / "checkpoints")
