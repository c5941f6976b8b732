"""Every function that agent files inline in more than one file: the copies are one text, and one
copy (which, being the same text, stands for all) agrees with a reference written here in plain
NumPy and Python loops.

``COPIES`` lists them, and ``test_every_inlined_copy_is_listed`` finds every function of the
same name and text in two agent files, so a new copy must be listed here and a copy that drifts
from its siblings fails. Trivial helpers (a Dense layer, a concatenation) get the text check
only; the error-prone primitives also get a reference. The goal sampler's references live in
tests/test_goal_relabelling.py (OGBench's sampler, ported), the projection's and the quantile
loss's rlax comparisons in tests/test_distributional.py.
"""

import ast
import collections
import importlib
import inspect
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from rljax import agents

ALL = sorted(agents.ALGORITHMS)
POLICY_GRADIENT = ["dpo", "lpo", "mdpo", "pdppo", "ppo", "ppo_pmoe", "ppo_rnn"]
GOAL_CONDITIONED = ["crl", "gcbc", "gciql", "gcivl", "hiql", "ota", "qrl", "smore"]
HIERARCHICAL = ["hiql", "ota"]
DQN = ["c51", "qr_dqn", "stock_dqn"]
SAC = ["dsac_t", "sac"]
SAC_FAMILY = [*SAC, "sac_pmoe"]  # PMOE-SAC shares SAC's buffer, squashing and temperature
ONLINE = sorted(POLICY_GRADIENT + DQN + SAC_FAMILY + ["harpg"])
FINE_TUNING = ["calql", "cql", "famo2o", "iql", "wsrl"]  # with a replay of online rows
EDAC = ["edac", "ravl"]  # RAVL is EDAC on model rollouts; the cases: tests/test_offline_edac.py
# The dynamics ensemble section; mopo.py holds the reference, its cases: tests/test_model_mopo.py.
MODEL_BASED = ["mopo", "mbrcsl", "ravl"]
ENSEMBLE_SECTION = "# --- Dynamics ensemble ---"
ENSEMBLE_FUNCTIONS = (
    "_never_terminates", "_hopper_terminates", "_walker2d_terminates", "terminates",
    "holdout_sizes", "check_ensemble", "check_model_dataset", "_model_rows", "_init_layers",
    "model_forward", "ensemble_forward", "ensemble_loss", "_per_model", "ensemble_init",
    "holdout_errors", "ensemble_evaluate", "ensemble_update", "ensemble_fitted",
    "ensemble_predict", "ensemble_sample", "observation_bounds",
)  # fmt: skip
# The written-out threefry section of the policy-gradient files; its reference: jax's threefry.
THREEFRY_SECTION = "# --- Written-out threefry ---"
THREEFRY_FUNCTIONS = (
    "_threefry2x32", "_threefry_keys", "_written_out", "_hashed_counts", "_split",
    "_random_bits", "written_out_keys", "holds_keys",
)  # fmt: skip

# Function name -> the groups of agent modules that each share one text of it. Most have one
# group; two where two versions exist on purpose (e.g. the replay buffers of the DQN and SAC
# families).
COPIES = {
    # Error-prone primitives, each with a reference below.
    "gae": [[*POLICY_GRADIENT, "uni_o4"]],
    "random_permutation": [[*POLICY_GRADIENT, "uni_o4"]],
    "ppo_loss": [["ppo", "ppo_rnn"]],  # its hand-computed case: tests/test_ppo.py
    "egae": [["ppo", "ppo_rnn"]],  # its hand-computed cases: tests/test_egae.py
    "monte_carlo": [["pdppo", "ppo"]],  # its hand-computed case: tests/test_pdppo.py
    "weighted_value_loss": [["ppo", "ppo_rnn"]],  # by hand: tests/test_egae.py, test_ggd.py
    "_episode_metrics": [ONLINE],
    "router_loss": [["ppo_pmoe", "sac_pmoe"]],  # its hand-computed case: tests/test_pmoe.py
    "_field": [ALL],
    "buffer_init": [DQN, SAC_FAMILY],
    "buffer_add": [DQN, SAC_FAMILY],
    "buffer_sample": [DQN, SAC_FAMILY],
    "biv_weights": [["ppo", "sac"]],  # its references: tests/test_ggd.py
    "ggd_nll": [["ppo", "sac"]],  # its hand values: tests/test_ggd.py
    "ggd_variance": [["ppo", "sac"]],
    "categorical_projection": [["c51", "stock_dqn"]],
    "_epsilon": [DQN],
    "_epsilon_greedy": [DQN],
    "sample_action": [SAC_FAMILY, ["calql", "cql", "edac", "famo2o", "mopo", "ravl", "wsrl"]],
    "alpha_loss": [["calql", "cql", "edac", "famo2o", "mopo", "ravl", "wsrl", *SAC_FAMILY]],
    "check": [GOAL_CONDITIONED, DQN, SAC, ["dpo", "mdpo", "pdppo", "ppo"], ["calql", "cql", "iql"]],
    # The online phase's pieces; their cases by hand: tests/test_o2o_iql_cql.py.
    "replay_init": [FINE_TUNING],
    "replay_add": [FINE_TUNING],
    "mixed_batch": [FINE_TUNING],
    "collect": [FINE_TUNING],
    "reset_envs": [[*FINE_TUNING, "uni_o4"]],
    "fine_tune": [["calql", "cql", "famo2o", "iql"]],
    "_replay_capacity": [["cql", "iql"]],
    "cql_logsumexp": [["calql", "cql", "famo2o"]],
    "alpha_prime_loss": [["calql", "cql"]],
    "value_loss": [["famo2o", "iql"]],
    "_adam_step": [["edac", "famo2o", "mbrcsl", "mopo", "ravl", "wsrl"]],
    "values_and_action_grads": [EDAC],
    "diversity_loss": [EDAC],
    "critic_target": [EDAC],
    "policy_terms": [EDAC],
    "trajectory_ends": [[*GOAL_CONDITIONED, "hilp", "beso"]],
    "sample_goals": [[*GOAL_CONDITIONED, "hilp", "beso"]],
    "unit_gaussian_log_prob": [["crl", "hiql", "ota", "qrl"]],
    "ddpg_bc_loss": [["crl", "qrl"]],
    "awr_weight": [HIERARCHICAL],
    "length_normalize": [HIERARCHICAL],
    # Helpers: the text check only (_any_member's behaviour: tests/test_delayed_updates.py).
    "_any_member": [[*MODEL_BASED, "a2pr", "dsac_t", "pgd", "prdc", "td3_bc", "uni_o4"]],
    "_any_member_vmap": [[*MODEL_BASED, "a2pr", "dsac_t", "pgd", "prdc", "td3_bc", "uni_o4"]],
    "_cat": [HIERARCHICAL],
    "_pick": [["ppo_pmoe", "sac_pmoe"]],
    "_check_dataset": [["gcbc", "gcivl", "smore"]],
    "_dense": [["gcbc", "gciql", "gcivl", "hilp", "hiql", "ota", "smore"]],
    "_mlp": [
        SAC_FAMILY,
        ["a2pr", "famo2o", "fdvl", "iql", "odice", "pgd", "prdc", "riql", "td3_bc"],
        ["calql", "cql"],
    ],
    "_network": [["dpo", "lpo", "mdpo", "ppo"]],
    "_networks": [["a2pr", "calql", "cql", "pgd", "prdc", "td3_bc"], SAC, HIERARCHICAL],
    "_normalize": [
        [
            "a2pr",
            "bc",
            "edac",
            "famo2o",
            "fdvl",
            "iql",
            "odice",
            "pgd",
            "prdc",
            "ravl",
            "riql",
            "td3_bc",
            "uni_o4",
        ]
    ],  # fmt: skip
    "normalize": [["calql", "cql", "rebrac", "wsrl"]],
    "_optimizer": [DQN, POLICY_GRADIENT],
    # The rollout's noise drawn ahead; that it samples as pi.sample: tests/test_ppo.py.
    "_action_noise": [["dpo", "lpo", "mdpo", "ppo"]],
    "_sample": [["dpo", "lpo", "mdpo", "pdppo", "ppo"]],
    "_policy": [["gcbc", "gciql", "gcivl", "smore"]],
    "_value": [["gciql", "smore"]],
    "_critic": [["gciql", "smore"]],
    "_support": [["c51", "stock_dqn"]],
    "goal_representation": [HIERARCHICAL],
    "values": [HIERARCHICAL],
    "low_log_prob": [HIERARCHICAL],
    "sample_batch": [
        ["a2pr", "cql", "edac", "famo2o", "fdvl", "iql", "odice", "riql", "td3_bc"],
        ["gcbc", "gciql", "gcivl"],
    ],
    "critic_loss": [["a2pr", "pgd", "prdc", "td3_bc"], ["famo2o", "iql"], EDAC],
    "actor_loss": [["pgd", "td3_bc"], ["fdvl", "iql"], ["calql", "cql", "wsrl"], EDAC],
    "_observation_stats": [["a2pr", "prdc", "td3_bc"]],
    "_torch_init": [["edac", "mbrcsl", "ravl", "rebrac"]],
    "_edac_trunk": [EDAC],
    "_actor": [[*EDAC, "mopo"]],
    "_ensemble": [EDAC],
    "q_values": [EDAC],
    "_uniform": [["edac", "ppo_pmoe", "ravl", "rebrac", "riql", "sac_pmoe"]],
    "gaussian_log_prob": [["famo2o", "fdvl", "hilp", "iql", "odice", "pgd"]],
    "episode_returns": [["famo2o", "fdvl", "iql", "odice", "riql"]],
    "_reward_transform": [["famo2o", "fdvl", "iql", "riql"]],
    "actor_learning_rate": [["fdvl", "iql", "riql"]],
    # The dynamics ensemble section, function by function (and whole: see its test below).
    **{name: [MODEL_BASED] for name in ENSEMBLE_FUNCTIONS},
    **{name: [POLICY_GRADIENT] for name in THREEFRY_FUNCTIONS},
    "expectile_loss": [["famo2o", "iql", "pgd", "riql", "smore"]],
}
# The contract's names are the agent's own even where two files happen to agree.
CONTRACT = {*agents.CONTRACT, "update_on_batch"}

GROUPS = [
    pytest.param(function, group, id=f"{function}-{'-'.join(group)}")
    for function, groups in COPIES.items()
    for group in groups
    if len(group) > 1
]


def module(name: str):
    return importlib.import_module(agents.ALGORITHMS[name])


def one(function: str, group_index: int = 0):
    """The first module's copy of ``function`` in the group: all copies are this text."""
    return getattr(module(COPIES[function][group_index][0]), function)


def variants(function: str):
    """One copy per group of ``function``, as pytest params (for primitives with versions)."""
    return [
        pytest.param(getattr(module(group[0]), function), id=group[0]) for group in COPIES[function]
    ]


# --- The copies are one text ---


@pytest.mark.parametrize("function, group", GROUPS)
def test_copies_are_identical(function, group):
    """Each module's copy is character for character the group's first copy."""
    texts = {name: inspect.getsource(getattr(module(name), function)) for name in group}
    first = texts[group[0]]
    drifted = [name for name, text in texts.items() if text != first]
    assert not drifted, f"{function} in {drifted} differs from {group[0]}'s copy"


def section(name: str, marker: str) -> str:
    """The text of an agent file from ``marker`` to the next section marker."""
    source = Path(module(name).__file__).read_text()
    start = source.index(marker)
    end = source.find("\n# --- ", start + len(marker))
    return source[start : end if end >= 0 else None]


def test_written_out_threefry_sections_are_identical():
    """The written-out threefry section (its impl's definition too) is ppo.py's text in every
    policy-gradient file, and only there."""
    holders = [n for n in ALL if THREEFRY_SECTION in Path(module(n).__file__).read_text()]
    assert sorted(holders) == sorted(POLICY_GRADIENT)
    reference = section("ppo", THREEFRY_SECTION)
    drifted = [n for n in holders if section(n, THREEFRY_SECTION) != reference]
    assert not drifted, f"the written-out threefry section of {drifted} differs from ppo.py's"


def test_dynamics_ensemble_sections_are_identical():
    """The whole dynamics ensemble section (its constants, dataclasses and table too, which
    the function check does not see) is mopo.py's text in every agent file that has it."""
    holders = [n for n in ALL if ENSEMBLE_SECTION in Path(module(n).__file__).read_text()]
    assert sorted(holders) == sorted(MODEL_BASED)
    reference = section("mopo", ENSEMBLE_SECTION)
    drifted = [n for n in holders if section(n, ENSEMBLE_SECTION) != reference]
    assert not drifted, f"the dynamics ensemble section of {drifted} differs from mopo.py's"


def shared_functions() -> dict[str, set[frozenset]]:
    """Function name -> the sets (two or more) of agent files that define it with one text."""
    texts = collections.defaultdict(lambda: collections.defaultdict(set))
    for name in ALL:
        path = Path(module(name).__file__)
        source = path.read_text()
        for node in ast.parse(source).body:
            if isinstance(node, ast.FunctionDef) and node.name not in CONTRACT:
                texts[node.name][ast.get_source_segment(source, node)].add(name)
    return {
        function: {frozenset(group) for group in by_text.values() if len(group) > 1}
        for function, by_text in texts.items()
        if any(len(group) > 1 for group in by_text.values())
    }


def test_every_inlined_copy_is_listed():
    """COPIES holds exactly the functions that two or more agent files share, by name and
    text: a new copy must be listed (and, if error-prone, get a reference here)."""
    found = shared_functions()
    listed = {
        function: {frozenset(group) for group in groups if len(group) > 1}
        for function, groups in COPIES.items()
    }
    unlisted = {f: sorted(map(sorted, g)) for f, g in found.items() if listed.get(f) != g}
    stale = {f: sorted(map(sorted, g)) for f, g in listed.items() if found.get(f) != g}
    assert not unlisted and not stale, f"shared now: {unlisted}; listed: {stale}"


# --- GAE ---


def gae_reference(rewards, values, next_values, terminated, truncated, gamma, lam):
    """A backward loop per env: delta_t = r_t + gamma (1 - terminated_t) V(s'_t) - V(s_t),
    A_t = delta_t + gamma lambda (1 - done_t) A_{t+1}: truncation bootstraps, both end the
    trace."""
    num_steps, num_envs = rewards.shape
    advantages = np.zeros((num_steps, num_envs))
    for n in range(num_envs):
        next_advantage = 0.0
        for t in reversed(range(num_steps)):
            bootstrap = 0.0 if terminated[t, n] else gamma * next_values[t, n]
            delta = rewards[t, n] + bootstrap - values[t, n]
            if terminated[t, n] or truncated[t, n]:
                next_advantage = 0.0
            next_advantage = delta + gamma * lam * next_advantage
            advantages[t, n] = next_advantage
    return advantages, advantages + values


def test_gae_by_hand():
    """Three steps, gamma = lam = 0.5: a plain step, a truncation (bootstraps from V(s'_1) = 1.5
    but cuts the trace), a termination (no bootstrap). deltas (1, 1.75, 1.5), advantages
    (1 + 0.25 * 1.75, 1.75, 1.5)."""
    column = lambda *x: np.array(x, np.float32)[:, None]  # noqa: E731
    advantages, targets = one("gae")(
        column(1, 2, 3), column(0.5, 1, 1.5), column(1, 1.5, 2),
        column(0, 0, 1) > 0, column(0, 1, 0) > 0, 0.5, 0.5,
    )  # fmt: skip
    np.testing.assert_allclose(advantages[:, 0], [1.4375, 1.75, 1.5], rtol=1e-6)
    np.testing.assert_allclose(targets[:, 0], [1.9375, 2.75, 3.0], rtol=1e-6)


def test_gae_matches_the_loop():
    """Random rollouts of 4 envs with terminations, truncations and both, under no-jit, jit and
    vmap over envs; lambda 1 and 0 included."""
    rng = np.random.default_rng(0)
    shape = (25, 4)
    rewards, values, next_values = (rng.normal(size=shape).astype(np.float32) for _ in range(3))
    terminated, truncated = rng.random(shape) < 0.15, rng.random(shape) < 0.15
    terminated[7, 1] = truncated[7, 1] = True  # an env may report both
    assert (truncated & ~terminated).any() and (terminated & ~truncated).any()
    gae = one("gae")
    for gamma, lam in ((0.97, 0.9), (0.9, 1.0), (0.99, 0.0)):
        args = (rewards, values, next_values, terminated, truncated, gamma, lam)
        expected = gae_reference(*args)
        per_env = jax.vmap(gae, in_axes=(1, 1, 1, 1, 1, None, None), out_axes=1)
        for fn in (gae, jax.jit(gae), per_env):
            for got, want in zip(fn(*args), expected, strict=True):
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_random_permutation_is_jax_permutation():
    """The same numbers as jax.random.permutation: sizes of one and two rounds of jax's shuffle
    (up to 1625 and beyond), jitted and vmapped over keys, the plain call past 2**16, and draws
    in which two indices get the same 32-bit key (a tie, ordered by index)."""
    permutation = one("random_permutation")
    keys = jax.random.split(jax.random.key(7), 20)
    for n in (1, 2, 5, 128, 512, 1625, 1626, 4096, 2**16 + 1):
        want = jax.vmap(lambda k, n=n: jax.random.permutation(k, n))(keys[:3])
        np.testing.assert_array_equal(jax.vmap(lambda k, n=n: permutation(k, n))(keys[:3]), want)
    jitted = jax.jit(permutation, static_argnums=1)
    for key in keys:
        np.testing.assert_array_equal(jitted(key, 512), jax.random.permutation(key, 512))
    tied = keys[jnp.array([1, 5, 19])]  # their 2**16 keys hold 1, 2 and 3 ties
    for key in tied:
        bits = jax.random.bits(jax.random.split(key)[1], (2**16,), jnp.uint32)
        assert np.unique(np.asarray(bits)).size < 2**16
        np.testing.assert_array_equal(jitted(key, 2**16), jax.random.permutation(key, 2**16))


# --- Written-out threefry ---


def draws(key):
    """What envs and agents draw from a key, through every path of a PRNG implementation:
    split, bits of each width, fold_in, and the samplers built on them."""
    return {
        "split": jax.random.key_data(jax.random.split(key, (2, 3))),
        "bits8": jax.random.bits(key, (5,), jnp.uint8),
        "bits16": jax.random.bits(key, (5,), jnp.uint16),
        "bits32": jax.random.bits(key, (3, 4), jnp.uint32),
        "fold_in": jax.random.key_data(jax.random.fold_in(key, 7)),
        "uniform": jax.random.uniform(key, (4,), minval=-0.05, maxval=0.05),
        "normal": jax.random.normal(key, (2, 3)),
        "gumbel": jax.random.gumbel(key, (4, 2)),
        "randint": jax.random.randint(key, (6,), 0, 10),
        "bernoulli": jax.random.bernoulli(key, 0.3, (6,)),
        "categorical": jax.random.categorical(key, jnp.log(jnp.array([0.2, 0.3, 0.5])), shape=(6,)),
        "binomial": jax.random.binomial(key, 20, 0.3, (3,)),
        "permutation": jax.random.permutation(key, 40),
        "scalar": jax.random.uniform(key),
    }


def test_written_out_threefry_draws_jax_threefry_numbers():
    """Keys of the written-out hash draw jax's threefry numbers bit for bit: typed and raw
    keys, jitted and vmapped over keys, in jax's partitionable layout and (drawn there by jax's
    own hash) its older one; the keys turn back into the kind given."""
    to_written_out = one("written_out_keys")
    impl = module(COPIES["written_out_keys"][0][0]).WRITTEN_OUT_THREEFRY
    typed = jax.random.split(jax.random.key(3), 4)
    raw = jax.random.key_data(typed)
    for partitionable in (True, False):
        with jax.threefry_partitionable(partitionable):
            for keys, wrap in ((typed, lambda k: k), (raw, jax.random.wrap_key_data)):
                written_out, back = to_written_out(keys)
                assert jax.random.key_impl(written_out) == impl
                np.testing.assert_array_equal(
                    jax.random.key_data(back(written_out)), jax.random.key_data(wrap(keys))
                )
                assert back(written_out).dtype == keys.dtype
                want = jax.vmap(draws)(wrap(keys))
                for got in (jax.vmap(draws)(written_out), jax.jit(jax.vmap(draws))(written_out)):
                    for name in want:
                        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_written_out_keys_leave_other_prngs_and_find_held_keys():
    """Keys of another PRNG pass through unchanged; ``holds_keys`` finds typed keys and raw
    uint32 pairs in an env state, and nothing in one of floats and counters."""
    to_written_out, holds_keys = one("written_out_keys"), one("holds_keys")
    rbg = jax.random.key(0, impl="rbg")
    same, back = to_written_out(rbg)
    assert same is rbg and back(same) is rbg
    assert holds_keys({"x": jnp.zeros(3), "key": jax.random.key(0)})
    assert holds_keys({"x": jnp.zeros(3), "key": jax.random.PRNGKey(0)})
    assert holds_keys((jnp.zeros((4, 2), jnp.uint32),))  # raw keys of 4 envs
    assert not holds_keys({"x": jnp.zeros((4, 2)), "t": jnp.zeros((4,), jnp.uint32)})


# --- Episode metrics ---


def episode_metrics_reference(finished, returns, lengths):
    """Mean return and length over the finished episodes (NaN if none), and their number."""
    done = [(r, n) for f, r, n in zip(finished.flat, returns.flat, lengths.flat, strict=True) if f]
    if not done:
        return np.nan, np.nan, 0
    return np.mean([r for r, _ in done]), np.mean([n for _, n in done]), len(done)


@pytest.mark.parametrize("probability", [0.0, 0.05, 0.5, 1.0])
def test_episode_metrics(probability):
    rng = np.random.default_rng(1)
    shape = (16, 4)
    finished = rng.random(shape) < probability
    returns = rng.normal(size=shape).astype(np.float32) * 10
    lengths = rng.integers(1, 500, shape).astype(np.int32)
    info = {
        "returned_episode": jnp.asarray(finished),
        "returned_episode_returns": jnp.asarray(returns),
        "returned_episode_lengths": jnp.asarray(lengths),
    }
    metrics = jax.jit(one("_episode_metrics"))(info)
    expected = episode_metrics_reference(finished, returns, lengths)
    got = [metrics[k] for k in ("episode_return", "episode_length", "episodes")]
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_episode_metrics_without_episode_statistics():
    assert one("_episode_metrics")({"other": jnp.zeros(3)}) == {}


def test_rollouts_keep_every_entry_the_episode_metrics_read():
    """The policy-gradient rollouts keep only ``EPISODE_STATISTICS`` of the env's info: one tuple
    in every file, and ``_episode_metrics`` reads nothing else (an info cut to it gives the same
    metrics as the whole info)."""
    holders = [name for name in ALL if hasattr(module(name), "EPISODE_STATISTICS")]
    assert {"ppo", "mdpo", "dpo", "lpo", "pdppo", "ppo_rnn", "ppo_pmoe"} <= set(holders)
    kept = {module(name).EPISODE_STATISTICS for name in holders}
    assert len(kept) == 1
    rng = np.random.default_rng(2)
    info = {
        "returned_episode": jnp.asarray(rng.random((8, 4)) < 0.3),
        "returned_episode_returns": jnp.asarray(rng.normal(size=(8, 4)), jnp.float32),
        "returned_episode_lengths": jnp.asarray(rng.integers(1, 500, (8, 4)), jnp.int32),
        "discount": jnp.ones((8, 4)),
        "terminated": jnp.zeros((8, 4), bool),
    }
    (statistics,) = kept
    cut = {k: info[k] for k in statistics}
    assert jax.tree.all(
        jax.tree.map(np.array_equal, one("_episode_metrics")(cut), one("_episode_metrics")(info))
    )


# --- Config fields ---


def test_field_static_traced_and_metadata():
    """A static field is no pytree leaf (it is part of the treedef), a traced one is; bounds,
    choices and doc land in the metadata, and a field without a doc cannot be written."""
    field = one("_field")

    @struct.dataclass
    class Config:
        size: int = field(4, static=True, bounds="[1, inf)", doc="a size")
        activation: str = field("tanh", static=True, choices=("tanh", "relu"), doc="a switch")
        lr: float = field(0.1, bounds="(0, inf)", doc="a rate")
        gamma: float = field(0.99, doc="a discount")

    config = Config()
    assert jax.tree.leaves(config) == [0.1, 0.99]
    fields = {f.name: f for f in Config.__dataclass_fields__.values()}
    assert {name: f.metadata["pytree_node"] for name, f in fields.items()} == {
        "size": False, "activation": False, "lr": True, "gamma": True,
    }  # fmt: skip
    assert fields["size"].metadata["bounds"] == "[1, inf)"
    assert fields["activation"].metadata["choices"] == ("tanh", "relu")
    assert fields["gamma"].metadata["bounds"] is None and fields["lr"].metadata["choices"] is None
    assert fields["gamma"].metadata["doc"] == "a discount"
    with pytest.raises(TypeError, match="doc"):
        field(0.99)
    changed = jax.tree.map(lambda x: 2 * x, config)
    assert (changed.size, changed.lr) == (4, 0.2)
    assert jax.tree.structure(Config(size=5)) != jax.tree.structure(config)


# --- Replay buffers ---


class RingBuffer:
    """A Python ring buffer: slots in order, the oldest overwritten once full."""

    def __init__(self, capacity, example):
        self.capacity, self.position, self.size = capacity, 0, 0
        self.data = {
            k: np.zeros((capacity, *np.shape(v)), np.asarray(v).dtype) for k, v in example.items()
        }

    def add(self, batch):
        for i in range(len(next(iter(batch.values())))):
            for key, values in batch.items():
                self.data[key][self.position] = values[i]
            self.position = (self.position + 1) % self.capacity
            self.size = min(self.size + 1, self.capacity)


def batch_of(start, n):
    t = np.arange(start, start + n)
    return {"t": t.astype(np.int32), "x": np.stack([t, -t], -1).astype(np.float32)}


@pytest.mark.parametrize("functions", [0, 1], ids=[g[0] for g in COPIES["buffer_init"]])
def test_buffer_matches_a_ring_buffer(functions):
    """Writes of 3, 4, 2, 5 (= capacity) and 1 items into 5 slots, under jit: position, size
    and contents as the ring buffer's after each; samples come from filled slots only, rows
    whole, about uniformly."""
    init, add, sample = (one(f, functions) for f in ("buffer_init", "buffer_add", "buffer_sample"))
    example = {"t": jnp.int32(0), "x": jnp.zeros(2)}
    buffer, reference = init(5, example), RingBuffer(5, example)
    add, sample = jax.jit(add), jax.jit(sample, static_argnums=2)
    start = 0
    for step, n in enumerate((3, 4, 2, 5, 1)):
        batch = batch_of(start, n)
        start += n
        buffer = add(buffer, {k: jnp.asarray(v) for k, v in batch.items()})
        reference.add(batch)
        assert (int(buffer.position), int(buffer.size)) == (reference.position, reference.size)
        for key in reference.data:
            np.testing.assert_array_equal(buffer.data[key], reference.data[key])
        drawn = sample(buffer, jax.random.PRNGKey(step), 6000)
        drawn_t = np.asarray(drawn["t"])
        np.testing.assert_array_equal(drawn["x"], np.stack([drawn_t, -drawn_t], -1))
        live = reference.data["t"][: reference.size]
        assert set(drawn_t.tolist()) == set(live.tolist())
        counts = np.array([(drawn_t == t).sum() for t in live])
        expected = 6000 / reference.size
        assert np.abs(counts - expected).max() < 5 * np.sqrt(expected), counts


# --- Categorical projection ---


def projection_reference(z_t, p_t, z):
    """C51's projection (Bellemare, Dabney, Munos 2017, Algorithm 1) as a loop over atoms."""
    v_min, v_max, dz = z[0], z[-1], z[1] - z[0]
    m = np.zeros(len(z))
    for atom, p in zip(z_t, p_t, strict=True):
        b = (min(max(atom, v_min), v_max) - v_min) / dz
        low, high = int(np.floor(b)), int(np.ceil(b))
        if low == high:
            m[low] += p
        else:
            m[low] += p * (high - b)
            m[high] += p * (b - low)
    return m


def test_categorical_projection_by_hand():
    """-2 clips onto -1; 0.5 splits evenly between 0 and 1; 0.25 gives 3/4 to 0, 1/4 to 1."""
    project = one("categorical_projection")
    got = project(jnp.array([-2.0, 0.5, 0.25]), jnp.array([0.2, 0.5, 0.3]), jnp.array([-1.0, 0, 1]))
    np.testing.assert_allclose(got, [0.2, 0.475, 0.325], rtol=1e-6)


def test_categorical_projection_matches_the_loop():
    """Random targets r + discount z' (some far outside the support, some exactly on atoms,
    some terminal), from 7 source atoms onto 11, under jit."""
    rng = np.random.default_rng(2)
    z = np.linspace(-5, 5, 11).astype(np.float32)
    project = jax.jit(one("categorical_projection"))
    for case in range(40):
        source = np.linspace(-3, 3, 7).astype(np.float32)
        reward, discount = rng.uniform(-9, 9), [0.0, 1.0, rng.uniform()][case % 3]
        if case % 4 == 0:
            source, reward, discount = z[2:9], float(rng.integers(-3, 4)), 1.0
        z_t = (reward + discount * source).astype(np.float32)
        p_t = rng.dirichlet(np.ones(7)).astype(np.float32)
        got = project(z_t, p_t, z)
        np.testing.assert_allclose(got, projection_reference(z_t, p_t, z), atol=1e-5)
        np.testing.assert_allclose(got.sum(), 1.0, rtol=1e-5)


# --- Exploration ---


def test_epsilon_schedule():
    """Linear from start_e to end_e over exploration_fraction * total_timesteps, then flat."""
    config = SimpleNamespace(
        start_e=1.0, end_e=0.05, exploration_fraction=0.5, total_timesteps=1000
    )
    steps = [0, 100, 250, 499, 500, 501, 5000]
    got = [float(one("_epsilon")(config, s)) for s in steps]
    expected = [1.0 + min(s / 500, 1.0) * (0.05 - 1.0) for s in steps]
    np.testing.assert_allclose(got, expected, rtol=1e-6)


@pytest.mark.parametrize("epsilon_greedy", variants("_epsilon_greedy"))
def test_epsilon_greedy(epsilon_greedy):
    """Greedy at epsilon 0; uniform at 1; the greedy action w.p. 1 - eps + eps / A otherwise."""
    q = jnp.array([[0.0, 2.0, 1.0]] * 20_000)
    fn = jax.jit(epsilon_greedy)
    np.testing.assert_array_equal(fn(jax.random.PRNGKey(0), q, 0.0), 1)
    for epsilon in (1.0, 0.3):
        actions = np.asarray(fn(jax.random.PRNGKey(1), q, epsilon))
        assert actions.shape == (20_000,) and set(actions.tolist()) <= {0, 1, 2}
        probs = np.array([epsilon / 3, 1 - epsilon + epsilon / 3, epsilon / 3])
        sd = np.sqrt(probs * (1 - probs) / 20_000)
        assert (np.abs(np.bincount(actions, minlength=3) / 20_000 - probs) < 5 * sd).all()


# --- SAC's squashed Gaussian and temperature ---


def test_squashed_gaussian_sample_and_density():
    """The action lies in (low, high); its log density is that of the Gaussian at the pre-tanh
    point u = atanh(2 (a - low) / (high - low) - 1) less log|da/du|, computed here from the
    action alone; u follows N(mean, std)."""
    rng = np.random.default_rng(3)
    mean = rng.uniform(-0.5, 0.5, (4000, 2)).astype(np.float32)
    log_std = rng.uniform(-1.0, 0.0, (4000, 2)).astype(np.float32)
    low, high = np.array([-2.0, 0.0], np.float32), np.array([2.0, 1.0], np.float32)
    sample = jax.jit(one("sample_action"))
    action, log_prob = sample(mean, log_std, low, high, jax.random.PRNGKey(4))
    action = np.asarray(action, np.float64)
    assert ((action > low) & (action < high)).all()
    half = (high - low) / 2.0
    u = np.arctanh((action - low) / half - 1.0)
    std = np.exp(log_std.astype(np.float64))
    gaussian = -0.5 * ((u - mean) / std) ** 2 - np.log(std) - 0.5 * np.log(2 * np.pi)
    expected = (gaussian - np.log(half * (1 - np.tanh(u) ** 2))).sum(-1)
    np.testing.assert_allclose(log_prob, expected, rtol=1e-3, atol=1e-3)
    z = (u - mean) / std
    assert abs(z.mean()) < 5 / np.sqrt(z.size) and abs(z.std() - 1) < 0.05


def test_alpha_loss():
    """-mean(log_alpha (log_prob + target_entropy)), with no gradient into log_prob."""
    log_prob = jnp.array([-1.0, 0.5, 2.0])
    loss = one("alpha_loss")
    np.testing.assert_allclose(loss(0.3, log_prob, -2.0), -0.3 * np.mean([-3.0, -1.5, 0.0]))
    grad_alpha, grad_log_prob = jax.grad(loss, argnums=(0, 1))(0.3, log_prob, -2.0)
    np.testing.assert_allclose(grad_alpha, 1.5, rtol=1e-6)
    np.testing.assert_array_equal(grad_log_prob, 0.0)


# --- Goal-conditioned ---


def goal_config(value, actor):
    names = [f"p_{kind}goal" for kind in ("cur", "traj", "random")]
    fields = {f"value_{n}": p for n, p in zip(names, value, strict=True)}
    fields |= {f"actor_{n}": p for n, p in zip(names, actor, strict=True)}
    return SimpleNamespace(**fields)


def test_goal_mixture_check():
    """Each mixture (value, actor) must sum to 1 on a concrete config; traced ones pass."""
    check = one("check")
    check(goal_config((0.2, 0.5, 0.3), (0.0, 1.0, 0.0)))
    check(goal_config((0.2, 0.5, 0.3 + 1e-7), (0.0, 0.5, 0.5)))
    for bad in (goal_config((0.2, 0.5, 0.2), (0, 1, 0)), goal_config((0, 1, 0), (0.5, 0.5, 0.5))):
        with pytest.raises(ValueError, match="sum to 1"):
            check(bad)
    jax.jit(lambda p: check(goal_config((p, 0.5, 0.3), (p, 0.0, 0.0))) or p)(0.7)


def test_unit_gaussian_log_prob():
    """log N(x; mean, I) summed over the last axis, as a loop over its entries."""
    rng = np.random.default_rng(5)
    mean, x = rng.normal(size=(2, 6, 3))
    expected = np.zeros(len(x))
    for row in range(len(x)):
        for xi, mi in zip(x[row], mean[row], strict=True):
            expected[row] += -0.5 * (xi - mi) ** 2 - 0.5 * np.log(2 * np.pi)
    got = one("unit_gaussian_log_prob")(jnp.asarray(mean), jnp.asarray(x))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_ddpg_bc_loss():
    """-mean Q / (mean |Q| + 1e-6) - alpha mean log pi, the normalizer outside the gradient."""
    q, log_prob, alpha = jnp.array([1.0, -3.0, 2.0, 4.0]), jnp.array([-1.0, -2.0, 0.0, 1.0]), 0.5
    loss, q_loss = one("ddpg_bc_loss")(q, log_prob, alpha)
    np.testing.assert_allclose(q_loss, -1.0 / (2.5 + 1e-6), rtol=1e-6)
    np.testing.assert_allclose(loss, -1.0 / (2.5 + 1e-6) - 0.5 * -0.5, rtol=1e-6)
    grad = jax.grad(lambda q: one("ddpg_bc_loss")(q, log_prob, alpha)[0])(q)
    np.testing.assert_allclose(grad, np.full(4, -1.0 / (4 * (2.5 + 1e-6))), rtol=1e-6)


def test_awr_weight():
    advantage = jnp.array([-2.0, 0.0, 1.0, 3.0])
    expected = [min(np.exp(2.0 * a), 100.0) for a in (-2.0, 0.0, 1.0, 3.0)]
    np.testing.assert_allclose(one("awr_weight")(advantage, 2.0), expected, rtol=1e-6)


def test_length_normalize():
    """x sqrt(d) / |x| per row; an exactly zero row stays zero (not NaN)."""
    x = np.array([[3.0, 4.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]], np.float32)
    expected = [row * 2.0 / np.linalg.norm(row) if row.any() else row for row in x]
    np.testing.assert_allclose(one("length_normalize")(jnp.asarray(x)), expected, rtol=1e-6)
