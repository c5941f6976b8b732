"""Goal relabelling: every goal-conditioned agent inlines the same ``trajectory_ends``,
``sample_goals`` and ``check`` (its goal mixtures sum to 1); each sampler is checked here against
a NumPy port of OGBench's ``GCDataset.sample_goals`` (seohongpark/ogbench
``impls/utils/datasets.py``, after the "Fix goal sampler" commit) and against the mixture's exact
probabilities, and all copies must be the same text, so they cannot drift apart. ``update``
samples its relabelled batch from the state's key exactly as the runner did."""

import importlib
import inspect
import re
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rljax.data import Dataset

# Every agent file with an inlined goal sampler.
GOAL_SAMPLERS = [
    "rljax.agents.gcbc",
    "rljax.agents.gcivl",
    "rljax.agents.gciql",
    "rljax.agents.qrl",
    "rljax.agents.crl",
    "rljax.agents.hiql",
    "rljax.agents.ota",
]
MODULES = [pytest.param(name, id=name.rsplit(".", 1)[-1]) for name in GOAL_SAMPLERS]
N = 20_000  # draws per statistical check; tolerances are 5 standard deviations


@pytest.fixture(params=MODULES)
def module(request):
    return importlib.import_module(request.param)


# --- The reference: OGBench's sampler in NumPy, with its own RNG ---


def reference_sample_goals(
    np_rng, idxs, terminal_locs, size, p_cur, p_traj, p_rand, geom, discount
):
    """OGBench's GCDataset.sample_goals, line for line (``self.dataset.get_random_idxs`` is a
    uniform row; ``terminal_locs`` are the rows that end a trajectory)."""
    batch_size = len(idxs)
    random_goal_idxs = np_rng.integers(size, size=batch_size)
    final_state_idxs = terminal_locs[np.searchsorted(terminal_locs, idxs)]
    if geom:
        offsets = np_rng.geometric(p=1 - discount, size=batch_size)  # in [1, inf)
        traj_goal_idxs = np.minimum(idxs + offsets, final_state_idxs)
    else:
        distances = np_rng.random(batch_size)  # in [0, 1)
        traj_goal_idxs = np.round(
            np.minimum(idxs + 1, final_state_idxs) * distances + final_state_idxs * (1 - distances)
        ).astype(int)
    if p_cur == 1.0:
        return idxs
    goal_idxs = np.where(
        np_rng.random(batch_size) < p_traj / (1.0 - p_cur), traj_goal_idxs, random_goal_idxs
    )
    return np.where(np_rng.random(batch_size) < p_cur, idxs, goal_idxs)


# --- Helpers ---


def trajectories(lengths):
    """Row -> last row of its trajectory, and the trajectory-ending rows, for trajectories of
    the given lengths laid end to end."""
    ends = np.cumsum(lengths) - 1
    return np.repeat(ends, lengths), ends


def module_goals(module, seed, idx, final, size, probs, geom, discount):
    """The module's sampler under jit, probabilities and discount traced as in sample_batch
    (every call draws N goals, so each module compiles it once per geom)."""
    sample = jax.jit(module.sample_goals, static_argnums=7)
    goals = sample(
        jax.random.PRNGKey(seed),
        jnp.asarray(idx, jnp.int32),
        jnp.asarray(final, jnp.int32),
        jnp.int32(size),
        *(jnp.float32(p) for p in probs),
        geom,
        jnp.float32(discount),
    )
    return np.asarray(goals)


def categories(goal, idx, final):
    """0: the current row, 1: a later row of the same trajectory, 2: any other row."""
    return np.where(goal == idx, 0, np.where((goal > idx) & (goal <= final), 1, 2))


def assert_frequency(observed_count, expected_probs):
    """A count of Bernoulli draws with these (per-draw) probabilities, within 5 sd."""
    expected = np.sum(expected_probs)
    sd = np.sqrt(np.sum(expected_probs * (1 - expected_probs)))
    assert abs(observed_count - expected) <= 5 * sd + 1e-9, (observed_count, expected, sd)


def assert_same_frequency(a, b, n=N):
    """Two proportions from independent samples of size n agree within 5 sd."""
    p = (a + b) / 2
    assert abs(a - b) <= 5 * np.sqrt(2 * p * (1 - p) / n) + 1e-9, (a, b)


# --- trajectory_ends ---


def test_trajectory_ends_on_a_hand_built_dataset(module):
    """Ends where terminals or timeouts is set, including a one-row trajectory (row 6); as
    OGBench's terminal_locs[searchsorted(terminal_locs, idx)]."""
    terminals = np.array([0, 0, 1, 0, 0, 0, 1, 0, 0, 0], np.float32)
    timeouts = np.array([0, 0, 0, 0, 0, 1, 0, 0, 0, 1], np.float32)
    dataset = SimpleNamespace(
        observations=np.zeros((10, 2)), terminals=terminals, timeouts=timeouts
    )
    ends = module.trajectory_ends(dataset)
    np.testing.assert_array_equal(ends, [2, 2, 2, 5, 5, 5, 6, 9, 9, 9])
    locs = np.flatnonzero(terminals + timeouts)
    np.testing.assert_array_equal(ends, locs[np.searchsorted(locs, np.arange(10))])


def ends_only(timeouts):
    return SimpleNamespace(observations=np.zeros((len(timeouts), 1)),
                           terminals=np.zeros(len(timeouts)), timeouts=timeouts)  # fmt: skip


def test_trajectory_ends_named_errors(module):
    """An unterminated last trajectory, no trajectory end at all, and a traced dataset."""
    open_end = np.array([0, 1, 0], np.float32)
    with pytest.raises(ValueError, match="last row must end a trajectory"):
        module.trajectory_ends(ends_only(open_end))
    with pytest.raises(ValueError, match="last row must end a trajectory"):
        module.trajectory_ends(ends_only(np.zeros(3)))
    traced = lambda obs: module.trajectory_ends(  # noqa: E731
        SimpleNamespace(observations=obs, terminals=np.zeros(3), timeouts=np.ones(3))
    )
    with pytest.raises(ValueError, match="close over the dataset"):
        jax.jit(traced)(jnp.zeros((3, 1)))


# --- sample_goals ---

PROBABILITIES = [
    ((1.0, 0.0, 0.0), True),
    ((0.0, 1.0, 0.0), False),
    ((0.0, 0.0, 1.0), True),
    ((0.2, 0.5, 0.3), True),  # OGBench's value goals
    ((0.2, 0.5, 0.3), False),
    ((0.0, 0.5, 0.5), False),  # the stitch datasets' actor goals
    ((0.5, 0.5, 0.0), True),
    ((0.3, 0.0, 0.7), False),
]


@pytest.mark.parametrize("probs, geom", PROBABILITIES)
def test_mixture_proportions(module, probs, geom):
    """Shares of current / same-trajectory future / other goals over uniform rows of 50
    trajectories of 3 to 200 rows, against their exact probabilities and the reference:
    P(g = i) = p_cur + (1 - p_cur) (q 1(i = F) + (1 - q) / N) with q = p_traj / (1 - p_cur)
    (a future goal at the final row is the row itself; a random row is i with prob. 1 / N)."""
    lengths = np.random.default_rng(1).integers(3, 200, 50)
    final_of, ends = trajectories(lengths)
    size = len(final_of)
    idx = np.random.default_rng(2).integers(size, size=N)
    final = final_of[idx]
    p_cur, p_traj, p_rand = probs
    goal = module_goals(module, 0, idx, final, size, probs, geom, 0.97)
    reference = reference_sample_goals(
        np.random.default_rng(3), idx, ends, size, *probs, geom, 0.97
    )
    assert goal.min() >= 0 and goal.max() < size

    q = p_traj / (1 - p_cur) if p_cur < 1 else 0.0
    at_end = (idx == final).astype(float)
    later = (final - idx) / size  # share of rows a random goal finds later in the trajectory
    expected = [
        p_cur + (1 - p_cur) * (q * at_end + (1 - q) / size),
        (1 - p_cur) * (q * (1 - at_end) + (1 - q) * later),
    ]
    expected.append(1 - expected[0] - expected[1])
    observed, observed_reference = categories(goal, idx, final), categories(reference, idx, final)
    for c in range(3):
        assert_frequency((observed == c).sum(), expected[c])
        assert_same_frequency((observed == c).mean(), (observed_reference == c).mean())
    if p_cur == 1:
        np.testing.assert_array_equal(goal, idx)
    if p_rand == 0:  # no random goals: every goal lies in the row's own trajectory
        assert (goal >= idx).all() and (goal <= final).all()


@pytest.mark.parametrize("discount", [0.9, 0.99])
def test_geometric_offsets_before_clipping(module, discount):
    """Rows at least 1500 steps before their trajectory's end: g - i ~ Geometric(1 - discount)
    on {1, 2, ...}, mean 1 / (1 - discount), P(1) = 1 - discount, P(2) = discount (1 - discount),
    as the reference's offsets."""
    final_of, ends = trajectories([2500] * 4)
    size = len(final_of)
    rng = np.random.default_rng(4)
    idx = ends[rng.integers(4, size=N)] - 2499 + rng.integers(0, 1000, N)
    geometric = (0.0, 1.0, 0.0)
    offset = module_goals(module, 1, idx, final_of[idx], size, geometric, True, discount) - idx
    reference = reference_sample_goals(rng, idx, ends, size, *geometric, True, discount) - idx
    p = 1 - discount
    assert offset.min() >= 1
    mean, sd = 1 / p, np.sqrt(1 - p) / p
    assert abs(offset.mean() - mean) <= 5 * sd / np.sqrt(N), (offset.mean(), mean)
    assert abs(offset.mean() - reference.mean()) <= 5 * sd * np.sqrt(2 / N)
    for k in (1, 2):
        assert_frequency((offset == k).sum(), np.full(N, p * (1 - p) ** (k - 1)))


def test_geometric_offsets_clip_at_the_trajectory_end(module):
    """Five rows before the end: g = min(i + k, F), so P(g = F) = P(k >= 5) = discount^4."""
    final_of, ends = trajectories([100] * 10)
    idx = np.repeat(ends - 5, N // 10)
    assert len(idx) == N
    goal = module_goals(module, 2, idx, final_of[idx], 1000, (0.0, 1.0, 0.0), True, 0.9)
    final = final_of[idx]
    assert (goal > idx).all() and (goal <= final).all()
    assert_frequency((goal == final).sum(), np.full(len(idx), 0.9**4))


def test_uniform_future_goals(module):
    """Uniform sampling is round(a u + F (1 - u)), u ~ U[0, 1), a = min(i + 1, F): five rows
    before the end the goals i+1..F come with probabilities 1/8, 1/4, 1/4, 1/4, 1/8 (rounding
    halves the end points), as the reference's; at the last two rows the goal is F."""
    final_of, ends = trajectories([100] * 10)
    size = len(final_of)
    idx = np.repeat(ends - 5, N // 10)
    uniform = (0.0, 1.0, 0.0)
    step = module_goals(module, 3, idx, final_of[idx], size, uniform, False, 0.99) - idx
    reference = reference_sample_goals(np.random.default_rng(5), idx, ends, size, *uniform,
                                       False, 0.99) - idx  # fmt: skip
    assert step.min() >= 1 and step.max() <= 5
    for k, p in zip(range(1, 6), [1 / 8, 1 / 4, 1 / 4, 1 / 4, 1 / 8], strict=True):
        assert_frequency((step == k).sum(), np.full(len(idx), p))
        assert_same_frequency((step == k).mean(), (reference == k).mean(), len(idx))
    last = np.resize(np.concatenate([ends, ends - 1]), N)
    goal = module_goals(module, 4, last, final_of[last], size, uniform, False, 0.99)
    np.testing.assert_array_equal(goal, final_of[last])


# --- The batch: rewards and masks on the current row ---


@pytest.mark.parametrize("gc_negative", [True, False])
def test_rewards_and_masks_on_the_current_row(module, gc_negative):
    """Observations are unique per row, so a value goal equal to the observation is the
    current row: reward 0 there and -1 elsewhere (gc_negative) or 1 / 0, mask 0 there."""
    final_of, _ = trajectories([30] * 20)
    n = len(final_of)
    obs = np.stack([np.arange(n), np.zeros(n)], -1).astype(np.float32)
    timeouts = (np.arange(n) == final_of).astype(np.float32)
    dataset = Dataset.from_arrays(
        observations=obs, actions=np.random.default_rng(6).uniform(-1, 1, (n, 2)),
        rewards=np.zeros(n), terminals=np.zeros(n), timeouts=timeouts,
        next_observations=np.roll(obs, -1, 0),
    )  # fmt: skip
    config = module.Config(
        batch_size=4000, gc_negative=gc_negative, value_p_curgoal=0.5, value_p_trajgoal=0.25,
        value_p_randomgoal=0.25, value_geom_sample=True,
    )  # fmt: skip
    batch = jax.jit(lambda key: module.sample_batch(config, dataset, key))(jax.random.PRNGKey(7))
    success = (batch["value_goals"] == batch["observations"]).all(-1)
    np.testing.assert_array_equal(batch["rewards"], success - 1.0 if gc_negative else success)
    np.testing.assert_array_equal(batch["masks"], 1.0 - success)
    # P(g = i) = 0.5 + 0.25 P(i is a trajectory's last row) + 0.25 / n = 0.5 + 0.25 / 30 + ...
    assert_frequency(success.sum(), np.full(4000, 0.5 + 0.25 / 30 + 0.25 / n))


# --- The goal mixtures' rule ---


def test_check_names_a_mixture_that_does_not_sum_to_1(module):
    """check(config) passes the defaults and raises for either mixture off 1 (beyond float
    rounding), naming its three fields and their sum; init calls it; traced values (a vmapped
    sweep) are left to the runner, which checks each concrete member."""
    module.check(module.Config())
    module.check(module.Config(value_p_curgoal=0.1, value_p_trajgoal=0.2, value_p_randomgoal=0.7))
    message = "value_p_curgoal + value_p_trajgoal + value_p_randomgoal = 1.1; they must sum to 1"
    off = module.Config(value_p_curgoal=0.2, value_p_trajgoal=0.5, value_p_randomgoal=0.4)
    with pytest.raises(ValueError, match=re.escape(message)):
        module.check(off)
    message = "actor_p_curgoal + actor_p_trajgoal + actor_p_randomgoal = 0.9; they must sum to 1"
    short = module.Config(actor_p_curgoal=0.0, actor_p_trajgoal=0.9, actor_p_randomgoal=0.0)
    with pytest.raises(ValueError, match=re.escape(message)):
        module.check(short)
    module.check(short.replace(actor_p_trajgoal=jnp.float32(0.9) + jnp.float32(0.1)))
    dataset = Dataset.from_arrays(
        observations=np.zeros((4, 2)), actions=np.zeros((4, 2)), rewards=np.zeros(4),
        terminals=np.zeros(4), timeouts=np.ones(4), next_observations=np.zeros((4, 2)),
    )  # fmt: skip
    with pytest.raises(ValueError, match=re.escape(message)):
        module.init(short, dataset, jax.random.PRNGKey(0))
    stacked = jax.tree.map(lambda *x: jnp.stack(x), short, short)
    jax.vmap(module.check)(stacked)  # traced: nothing to read, nothing raised


# --- The copies are one text ---


@pytest.mark.parametrize("function", ["trajectory_ends", "sample_goals", "check"])
def test_inlined_copies_are_identical(module, function):
    """Each agent's copy is character for character the first agent's."""
    first = importlib.import_module(GOAL_SAMPLERS[0])
    assert inspect.getsource(getattr(module, function)) == inspect.getsource(
        getattr(first, function)
    )
