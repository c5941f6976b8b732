"""Lot sizing: dynamics by hand, post-decision state, demand laws, horizon, instances, the
authors' setting files, errors."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rljax import envs
from rljax.envs import lot_sizing
from rljax.envs.lot_sizing import EnvParams, EnvState, InvalidLotSizingParameter, LotSizing

KEY = jax.random.PRNGKey(0)

# Two machines, two items. Machine 0 cannot make item 2 (rate 0).
PRODUCTION = [[5.0, 0.0], [3.0, 4.0]]
SETUP_COSTS = [[1.0, 2.0], [3.0, 4.0]]
SETUP_LOSS = [[1.0, 1.0], [2.0, 1.0]]
# Deterministic demand n p = 5 per item; a cap of 6 units.
PARAMS = EnvParams(
    holding_cost=0.5, lost_sales_cost=2.0, max_inventory=6.0, demand_n=10, demand_p=0.5,
    deterministic_demand=True, max_steps_in_episode=4,
)  # fmt: skip


def small_env() -> LotSizing:
    return LotSizing(PRODUCTION, SETUP_COSTS, SETUP_LOSS)


def state(inventory, setup, time=0) -> EnvState:
    return EnvState(
        inventory=jnp.asarray(inventory, jnp.float32), setup=jnp.asarray(setup), time=time
    )


def test_dynamics_by_hand():
    """Four periods from inventory (2, 3), machine 0 set up for item 1, machine 1 idle:
    1. (1, 2): machine 0 keeps its setup (no cost, makes 5); machine 1 changes to item 2 (cost 4,
       loses 1 of its 4). Before demand (7, 6); after (2, 1); holding 0.5 * 3.
    2. (0, 1): machine 1 changes to item 1 (cost 3, loses 2 of 3); before demand (3, 1); after
       (-2 -> 0, -4 -> 0): lost sales 2 * 6, holding 0. Machine 0 idles: its setup is 0.
    3. (1, 1): machine 0 sets up again (cost 1, loses 1: makes 4), machine 1 keeps item 1 (makes
       3): both add to item 1, 7 before demand, 2 after; item 2 loses 5.
    4. (2, 2): machine 0 sets up for item 2, which it cannot make: it pays 2 and makes nothing (the
       loss takes no stock); machine 1 changes to item 2 and makes 4 - 1 = 3; before demand (2, 3).
    Then the cap: 8 + 5 + 3 - 5 = 11 units of item 1 after demand are capped at 6, and held."""
    step_env = jax.jit(small_env().step_env)

    def step(s, action):
        return step_env(KEY, s, jnp.asarray(action), PARAMS)

    expected = [
        # action, post-decision inventory, setup, setup, lost sales, holding, next inventory
        ((1, 2), (7, 6), (1, 2), 4.0, 0.0, 1.5, (2, 1)),
        ((0, 1), (3, 1), (0, 1), 3.0, 12.0, 0.0, (0, 0)),
        ((1, 1), (7, 0), (1, 1), 1.0, 10.0, 1.0, (2, 0)),
        ((2, 2), (2, 3), (2, 2), 6.0, 10.0, 0.0, (0, 0)),
    ]
    s = state([2, 3], [1, 0])
    for t, (action, post, setup, setup_cost, lost, holding, after) in enumerate(expected):
        obs, s, reward, terminated, info = step(s, action)
        np.testing.assert_allclose(info["post_decision_inventory"], post, err_msg=f"t={t}")
        np.testing.assert_array_equal(info["post_decision_setup"], setup)
        np.testing.assert_array_equal(s.setup, setup)
        np.testing.assert_allclose(s.inventory, after, err_msg=f"t={t}")
        for name, want in [("setup_cost", setup_cost), ("lost_sales_cost", lost),
                           ("holding_cost", holding)]:  # fmt: skip
            np.testing.assert_allclose(info[name], want, err_msg=f"{name}, t={t}")
        np.testing.assert_allclose(reward, -(setup_cost + lost + holding), rtol=1e-6)
        np.testing.assert_allclose(info["post_decision_reward"], -setup_cost)
        assert bool(terminated) == (t == 3)
    _, s, reward, _, info = step(state([8, 5], [1, 1]), (1, 1))
    np.testing.assert_allclose(s.inventory, (6, 0))
    np.testing.assert_allclose(info["holding_cost"], 3.0)
    np.testing.assert_allclose(reward, -3.0)


def test_post_decision_obs_is_the_state_before_demand():
    """Over random states and actions of the 15 x 5 instance with binomial demand: the
    post-decision inventory is the pre-decision inventory plus production, the next inventory
    is it minus demand (lost sales counted, capped), and info["post_decision_obs"] encodes it as
    get_obs encodes states, at the decision's time."""
    env, params = lot_sizing.make_instance("15x5")
    keys = jax.random.split(KEY, 64)

    def one(key):
        reset_key, action_key, step_key = jax.random.split(key, 3)
        _, s = env.reset(reset_key, params)
        s = s.replace(time=jax.random.randint(reset_key, (), 0, 100))
        action = env.action_space(params).sample(action_key)
        _, next_s, _, _, info = env.step_env(step_key, s, action, params)
        return s, action, next_s, info

    states, actions, next_states, info = jax.jit(jax.vmap(one))(keys)
    post = np.asarray(info["post_decision_inventory"])
    setups, made = np.asarray(states.setup), np.zeros_like(post)
    for i, action in enumerate(np.asarray(actions)):
        for m, a in enumerate(action):
            if a > 0:
                changed = setups[i, m] != a
                loss = env.setup_loss[m, a - 1] if changed else 0.0
                made[i, a - 1] += max(env.production[m, a - 1] - loss, 0.0)
    np.testing.assert_allclose(post, np.asarray(states.inventory) + made)
    np.testing.assert_array_equal(info["post_decision_setup"], actions)
    # Where demand was met and nothing was capped, it is post minus next inventory.
    after = np.asarray(next_states.inventory)
    met = (after > 0) & (after < params.max_inventory)
    demand = (post - after)[met]
    assert met.mean() > 0.5 and np.array_equal(demand, np.round(demand))
    assert demand.min() >= 0 and demand.max() <= params.demand_n
    post_states = EnvState(inventory=info["post_decision_inventory"],
                           setup=info["post_decision_setup"], time=states.time)  # fmt: skip
    expected_obs = jax.vmap(env.get_obs, in_axes=(0, None))(post_states, params)
    np.testing.assert_allclose(info["post_decision_obs"], expected_obs, rtol=1e-5)


def test_demand_laws():
    """From a large stock with idle machines, the demand (post-decision minus next inventory) is
    Binomial(20, 0.4) per item: integers in [0, 20] with mean 8 and variance 4.8; the control
    variant demands exactly n p."""
    env = small_env()
    s = state([1000, 1000], [0, 0])
    params = PARAMS.replace(max_inventory=1e6, deterministic_demand=False, demand_n=20,
                            demand_p=0.4)  # fmt: skip
    one = jax.jit(jax.vmap(lambda key, p: env.step_env(key, s, jnp.zeros(2, jnp.int32), p)[1],
                           in_axes=(0, None)))  # fmt: skip
    demand = 1000 - np.asarray(one(jax.random.split(KEY, 20_000), params).inventory)
    assert np.array_equal(demand, np.round(demand)) and demand.min() >= 0 and demand.max() <= 20
    assert abs(demand.mean() - 8.0) < 0.05 and abs(demand.var() - 4.8) < 0.15
    fixed = 1000 - np.asarray(
        one(jax.random.split(KEY, 4), params.replace(deterministic_demand=True)).inventory
    )
    np.testing.assert_allclose(fixed, 8.0)


def test_reset_and_horizon_through_make():
    """Through make() (LogWrapper, vmapped, jitted): reset draws inventories in {0, .., 99} and
    setups each machine can make; the 100th step terminates (never truncates) and auto-resets;
    the post-decision info survives the wrappers; observations carry the time left."""
    env, params = envs.make("rljax/LotSizing-15x5", normalize_obs=True)
    base = lot_sizing.make_instance("15x5")[0]
    reset = jax.vmap(env.reset, in_axes=(0, None), axis_name="env")
    step = jax.vmap(env.step, in_axes=(0, 0, 0, None), axis_name="env")
    keys = jax.random.split(KEY, 100)
    _, s = reset(jax.random.split(KEY, 256), params)
    inner = s.env_state.env_state
    inventory, setup = np.asarray(inner.inventory), np.asarray(inner.setup)
    assert np.array_equal(inventory, np.round(inventory)) and inventory.max() <= 99
    assert inventory.min() == 0 and inventory.max() == 99
    assert (setup >= 1).all() and (base.production[np.arange(5), setup - 1] > 0).all()
    actions = jnp.zeros((256, 5), jnp.int32)

    def one_step(s, key):
        _, s, _, terminated, truncated, info = step(jax.random.split(key, 256), s, actions, params)
        return s, (terminated, truncated, info)

    s, (terminated, truncated, info) = jax.jit(lambda s: jax.lax.scan(one_step, s, keys))(s)
    assert not np.asarray(truncated).any()
    np.testing.assert_array_equal(terminated.all(1), np.arange(100) == 99)
    np.testing.assert_array_equal(terminated.any(1), np.arange(100) == 99)
    assert info["post_decision_obs"].shape == (100, 256, 15 + 5 * 16 + 1)
    time_left = np.broadcast_to(1 - np.arange(100)[:, None] / 100, (100, 256))
    np.testing.assert_allclose(info["post_decision_obs"][..., -1], time_left, rtol=1e-5)
    assert (np.asarray(s.env_state.env_state.time) == 0).all()
    np.testing.assert_allclose(info["returned_episode_lengths"][-1], 100)


def test_instances():
    """The named instances have the authors' sizes and their generator's value sets, every item
    can be made, they are registered as rljax/LotSizing-NAME, and the 15 x 5 draw is pinned."""
    for name, (items, machines, _) in lot_sizing.INSTANCES.items():
        env, params = envs.make(f"rljax/LotSizing-{name}")
        assert env.action_space(params).nvec == (items + 1,) * machines
        assert env.observation_space(params).shape == (items + machines * (items + 1) + 1,)
        base = lot_sizing.make_instance(name)[0]
        assert base.production.shape == (machines, items)
        assert set(np.unique(base.production)) <= set(range(41))
        assert (base.production.sum(0) > 0).all()
        assert set(np.unique(base.setup_costs)) <= {1.0, 2.0} and (base.setup_loss == 1).all()
        assert 0.2 < (base.production == 0).mean() < 0.6
    assert {"15x5", "20x10", "25x10"} <= set(lot_sizing.INSTANCES)
    # The draw is pinned: results on an instance stay comparable across versions.
    base = lot_sizing.make_instance("15x5")[0]
    assert (base.production.sum(), base.setup_costs.sum()) == (1043.0, 138.0)


def test_multi_discrete_space():
    space = lot_sizing.MultiDiscrete([3, 3, 3])
    samples = jax.vmap(space.sample)(jax.random.split(KEY, 500))
    assert samples.shape == (500, 3) and samples.dtype == jnp.int32
    assert set(np.unique(samples)) == {0, 1, 2}
    assert bool(space.contains(jnp.array([0, 2, 1])))
    assert not bool(space.contains(jnp.array([0, 3, 1])))
    assert not bool(space.contains(jnp.array([0, 1])))


@pytest.mark.parametrize(
    "option, match",
    [
        ({"holding_cost": -1.0}, r"holding_cost=-1.0 is out of range: it must be >= 0"),
        ({"holding_cost": "abc"}, r"holding_cost='abc' is out of range: it must be >= 0"),
        (
            {"lost_sales_cost": [0.1, 0.2]},
            r"lost_sales_cost=\[0.1, 0.2\] is out of range: it "
            r"must be >= 0, one value or 5, one per item",
        ),
        ({"lost_sales_cost": -0.1}, r"lost_sales_cost=-0.1 is out of range"),
        ({"max_inventory": 0.0}, r"max_inventory=0.0 is out of range: it must be > 0"),
        ({"demand_n": 2.5}, r"demand_n=2.5 is out of range: it must be an integer >= 0"),
        ({"demand_p": 1.5}, r"demand_p=1.5 is out of range: it must be in \[0, 1\]"),
        ({"deterministic_demand": "yes"}, r"deterministic_demand='yes' is out of range"),
        ({"max_steps_in_episode": 0}, r"max_steps_in_episode=0 is out of range"),
    ],
)
def test_make_rejects_bad_parameters(option, match):
    with pytest.raises(InvalidLotSizingParameter, match=match):
        envs.make("rljax/LotSizing-5x2", **option)


def test_instance_errors():
    with pytest.raises(InvalidLotSizingParameter, match=r"\(machines, items\) matrix"):
        LotSizing([1.0, 2.0], [1.0, 2.0], [1.0, 1.0])
    with pytest.raises(InvalidLotSizingParameter, match=r"setup_costs has shape \(1, 2\)"):
        LotSizing(PRODUCTION, [[1.0, 2.0]], SETUP_LOSS)
    with pytest.raises(InvalidLotSizingParameter, match=r"setup_loss must be finite and >= 0"):
        LotSizing(PRODUCTION, SETUP_COSTS, [[1.0, -1.0], [1.0, 1.0]])
    with pytest.raises(InvalidLotSizingParameter, match=r"machine\(s\) 2 can make no item"):
        LotSizing([[5.0, 0.0], [0.0, 0.0]], SETUP_COSTS, SETUP_LOSS)
    with pytest.raises(envs.InvalidEnvironmentOption, match="has no parameter demand"):
        envs.make("rljax/LotSizing-5x2", demand=3)


def authors_setting(**changes) -> dict:
    """A setting file's contents in the PDPPO authors' format (their cfg_env/setting_*.json):
    two machines, three items, item 3 made by neither (as item 12 of their 15 x 5 file)."""
    return {
        "time_horizon": 4, "n_items": 3, "n_machines": 2, "initial_setup": [1, 0],
        "machine_production": [[5, 0, 0], [3, 4, 0]], "setup_costs": [[1, 2, 2], [3, 4, 1]],
        "setup_loss": [[1, 1, 1], [2, 1, 1]], "max_inventory_level": [6, 6, 6],
        "initial_inventory": [0, 0, 0], "holding_costs": [0.5] * 3, "lost_sales_costs": [2] * 3,
        "demand_distribution": {"name": "binomial", "n": 10, "p": 0.5},
    } | changes  # fmt: skip


def test_an_authors_setting_file_is_an_instance(tmp_path):
    """make("rljax/LotSizing:PATH") reads the file's matrices, costs, cap, demand and horizon
    (their initial state is not read: resets are random, as the authors train); an item no
    machine can make is allowed, and its demand is all lost sales."""
    path = tmp_path / "setting.json"
    path.write_text(json.dumps(authors_setting()))
    env, params = envs.make(f"rljax/LotSizing:{path}")
    assert params == EnvParams(holding_cost=0.5, lost_sales_cost=2.0, max_inventory=6.0,
                               demand_n=10, demand_p=0.5, max_steps_in_episode=4)  # fmt: skip
    base, _ = lot_sizing.from_setting(path)
    np.testing.assert_array_equal(base.production, [[5, 0, 0], [3, 4, 0]])
    assert base.default_params == params and env.action_space(params).nvec == (4, 4)
    start = state([0.0, 0.0, 0.0], [1, 2])
    deterministic = params.replace(deterministic_demand=True)
    _, _, reward, _, info = base.step_env(KEY, start, jnp.array([1, 2]), deterministic)
    # Both machines keep their setups: 5 and 4 units made, 5 of each item demanded.
    np.testing.assert_allclose(info["lost_sales_cost"], 2.0 * (0 + 1 + 5))
    np.testing.assert_allclose(reward, -(0 + 12.0 + 0))


def test_costs_and_caps_may_be_one_per_item(tmp_path):
    """A setting file's per-item costs and caps price and cap each item apart (the authors'
    20 x 10 file prices lost sales per item); a value the same for all items stays one number."""
    path = tmp_path / "setting.json"
    path.write_text(json.dumps(authors_setting(
        lost_sales_costs=[1, 2, 3], holding_costs=[0.5, 0.25, 0.5], max_inventory_level=[6, 2, 6]
    )))  # fmt: skip
    env, params = lot_sizing.from_setting(path)
    np.testing.assert_array_equal(params.lost_sales_cost, [1, 2, 3])
    uniform = tmp_path / "uniform.json"
    uniform.write_text(json.dumps(authors_setting()))
    assert lot_sizing.from_setting(uniform)[1].lost_sales_cost == 2.0
    start = state([0.0, 4.0, 13.0], [1, 2])
    deterministic = params.replace(deterministic_demand=True)
    obs, after, reward, _, info = env.step_env(KEY, start, jnp.array([0, 0]), deterministic)
    # Machines idle, 5 of each item demanded: 5 and 1 units lost; item 3 keeps 6 of 8 (its cap).
    np.testing.assert_allclose(info["lost_sales_cost"], 1 * 5 + 2 * 1 + 3 * 0)
    np.testing.assert_allclose(info["holding_cost"], 0.5 * 6)
    np.testing.assert_allclose(after.inventory, [0, 0, 6])
    np.testing.assert_allclose(obs[:3], [0, 0, 1])
    np.testing.assert_allclose(reward, -(7 + 3))
    _, start = env.reset_env(KEY, params)
    assert np.all(np.asarray(start.inventory) < np.array([6, 2, 6]))


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"time_horizon": None}, r"lacks time_horizon"),
        ({"setup_costs": [[1, 2, 2]]}, r"setup_costs in .* has shape \(1, 3\); n_machines x "),
        ({"holding_costs": [0.5, 0.5]}, r"holding_costs in .* must be a list of n_items=3 num"),
        ({"lost_sales_costs": [2, -1, 2]}, r"lost_sales_cost=.* must be >= 0, one value or 3,"),
        ({"demand_distribution": {"name": "poisson", "lam": 8}}, r"only a binomial with n and p"),
        ({"demand_distribution": {"name": "binomial", "n": 20}}, r"only a binomial with n and p"),
        ({"time_horizon": 4.5}, r"max_steps_in_episode=4.5 is out of range"),
        ({"machine_production": [[5, 0, 0], [0, 0, 0]]}, r"machine\(s\) 2 can make no item"),
    ],
)
def test_a_bad_setting_file_is_named(tmp_path, changes, match):
    path = tmp_path / "setting.json"
    setting = {k: v for k, v in authors_setting(**changes).items() if v is not None}
    path.write_text(json.dumps(setting))
    with pytest.raises(InvalidLotSizingParameter, match=match):
        envs.make(f"rljax/LotSizing:{path}")


def test_a_missing_setting_file_is_named(tmp_path):
    with pytest.raises(InvalidLotSizingParameter, match=r"cannot read lot-sizing setting"):
        envs.make(f"rljax/LotSizing:{tmp_path / 'missing.json'}")
