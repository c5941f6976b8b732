"""Stochastic multi-item, multi-machine lot sizing, after the PDPPO paper's production planning.

Felizardo, Fadda, Brandimarte, Del-Moral-Hernandez, Nascimento, "A Reinforcement Learning Method
for Environments with Stochastic Variables: Post-Decision Proximal Policy Optimization with Dual
Critic Networks", arXiv 2504.05150 (2025); the problem of their ``SimplePlant`` environment.

Each period t = 0 .. T-1 every machine m either idles (action 0) or produces item k (action k):

    post-decision step (deterministic), per producing machine m with a_m = k:
        if setup_m != k:  pay setup_costs[m, k-1] and lose setup_loss[m, k-1] units of the run
        inventory_k += max(production[m, k-1] - loss, 0);   setup_m = a_m (0 when idle)
    stochastic step: d_k ~ Binomial(demand_n, demand_p) i.i.d. per item (or n p, deterministic)
        inventory_k -= d_k;  lost_k = max(-inventory_k, 0);  inventory_k = clip(., 0, max_inv_k)
    reward = -(setup costs + sum_k lost_sales_cost_k lost_k + sum_k holding_cost_k inventory_k)

The costs and the inventory cap are one value for all items or one per item (the authors'
20 x 10 file prices lost sales per item).

The post-decision state (inventory and setups after the decision, before demand) is in
``info["post_decision_inventory"]`` and ``info["post_decision_setup"]``, encoded like an
observation in ``info["post_decision_obs"]``; the deterministic part of the reward (minus the
setup costs) is ``info["post_decision_reward"]``. Agents that ignore them see a plain env.

Choices, where the authors' code is silent or odd:
- The horizon ends the problem, so the last period is a termination (no value after T), never
  a truncation; observations carry the fraction of time left, so the values are Markov.
- Observations are [inventory / max_inventory, one-hot setup per machine, time left]; the
  authors feed raw inventory and setup indices. The post-decision obs is encoded the same way.
- A setup loss removes at most the run's own output: the authors' code lets a setup on an item
  the machine cannot make (rate 0) take stock out of the inventory.
- Reset draws the initial inventory uniformly from {0, .., max_inventory - 1} and each machine's
  setup uniformly from the items it can make, as the authors' ``_random_initial_state``.

Instances (``INSTANCES``) have the authors' sizes (15 x 5, 20 x 10, 25 x 10) and are drawn from
their generator's distributions (``cfg_env/generate_setting.py``, the settings without the
``_t100`` suffix): production rate 0 w.p. 0.4 else uniform on 1..40, setup cost 1 w.p. 0.2 else
2, setup loss 1, holding cost 0.01, lost-sales cost 0.2, max inventory 100, Binomial(20, 0.4)
demand. They are not the authors' matrices; every item can be made by some machine.
The authors' own instances are their setting files (``cfg_env/setting_*.json``), which
``from_setting`` reads: ``make("rljax/LotSizing:PATH")``. Their 15 x 5 and 25 x 10 files follow
the distributions above, but in the 15 x 5 no machine can make item 12, whose demand is all lost
sales (an instance may have such items; every machine must be able to make something). Their
20 x 10 file is another problem at a tenth of the scale: rates 0..4, max inventory 10, holding
cost 0.1, lost-sales costs 1 to 3 per item, Binomial(4, 0.4) demand; ``20x10`` here is not it.
"""

import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from gymnax.environments import environment, spaces


class InvalidLotSizingParameter(ValueError):
    """A lot-sizing instance or parameter out of range; the message names it."""


class MultiDiscrete(spaces.Space):
    """One choice in {0, .., nvec[i] - 1} per dimension i (gymnax has no such space)."""

    def __init__(self, nvec):
        self.nvec = tuple(int(n) for n in nvec)
        self.shape = (len(self.nvec),)
        self.dtype = jnp.int32

    def sample(self, key: jax.Array) -> jax.Array:
        return jax.random.randint(key, self.shape, 0, jnp.asarray(self.nvec), self.dtype)

    def contains(self, x: jax.Array) -> jax.Array:
        x = jnp.asarray(x)
        if x.shape != self.shape:
            return jnp.asarray(False)
        return jnp.all((x >= 0) & (x < jnp.asarray(self.nvec)))


@struct.dataclass
class EnvState(environment.EnvState):
    inventory: jax.Array  # (items,) float
    setup: jax.Array  # (machines,) int: 0 idle, k the item the machine is set up for
    time: int


@struct.dataclass
class EnvParams(environment.EnvParams):
    # One value for all items, or an (items,) array of one per item:
    holding_cost: float | jax.Array = 0.01  # per unit held at the end of a period
    lost_sales_cost: float | jax.Array = 0.2  # per unit of unmet demand
    max_inventory: float | jax.Array = 100.0  # stock above it is discarded after demand
    demand_n: int = 20
    demand_p: float = 0.4
    deterministic_demand: bool = False  # the control: demand n p every period
    max_steps_in_episode: int = 100  # the horizon T


# name -> (items, machines, seed of the instance draw)
INSTANCES = {"5x2": (5, 2, 0), "15x5": (15, 5, 1), "20x10": (20, 10, 2), "25x10": (25, 10, 3)}


@functools.cache
def instance(items: int, machines: int, seed: int) -> dict:
    """Production rates, setup costs and setup losses, (machines, items) each, drawn from the
    authors' generator distributions; an item no machine can make gets one machine that can."""
    u = np.random.default_rng(seed).random((4, machines, items))
    production = np.where(u[0] < 0.4, 0, 1 + np.floor(u[1] * 40)).astype(np.float32)
    for k in np.flatnonzero(production.sum(0) == 0):
        production[k % machines, k] = 1 + np.floor(u[3, k % machines, k] * 40)
    setup_costs = np.where(u[2] < 0.2, 1.0, 2.0).astype(np.float32)
    setup_loss = np.ones((machines, items), np.float32)
    return {"production": production, "setup_costs": setup_costs, "setup_loss": setup_loss}


class LotSizing(environment.Environment):
    """The lot-sizing problem of the module docstring on one instance.

    Args:
      production: (machines, items) units per period a machine makes of an item (0: it cannot).
      setup_costs: (machines, items) cost of setting a machine up for an item.
      setup_loss: (machines, items) units lost from the first run after a setup change.
    """

    def __init__(self, production, setup_costs, setup_loss, name: str = "LotSizing", params=None):
        production, setup_costs, setup_loss = (
            np.asarray(x, np.float32) for x in (production, setup_costs, setup_loss)
        )
        if production.ndim != 2 or min(production.shape) < 1:
            raise InvalidLotSizingParameter(
                f"production must be a (machines, items) matrix, got shape {production.shape}"
            )
        for label, x in [("production", production), ("setup_costs", setup_costs),
                         ("setup_loss", setup_loss)]:  # fmt: skip
            if x.shape != production.shape:
                raise InvalidLotSizingParameter(
                    f"{label} has shape {x.shape}; it must match production's {production.shape}"
                )
            if not np.isfinite(x).all() or (x < 0).any():
                raise InvalidLotSizingParameter(f"{label} must be finite and >= 0")
        idle_machines = np.flatnonzero(production.sum(1) == 0)
        if len(idle_machines):
            raise InvalidLotSizingParameter(
                f"machine(s) {', '.join(map(str, idle_machines + 1))} can make no item: "
                "every row of production needs a positive rate"
            )
        self.production, self.setup_costs, self.setup_loss = production, setup_costs, setup_loss
        self.num_machines, self.num_items = production.shape
        self._name = name
        self._params = EnvParams() if params is None else params

    @property
    def default_params(self) -> EnvParams:
        return self._params

    def check_params(self, params: EnvParams) -> None:
        """Raises InvalidLotSizingParameter, naming the parameter, for a value out of range."""
        per_item = f"one value or {self.num_items}, one per item"
        rules = [
            ("holding_cost", self._per_item(params.holding_cost) >= 0, f">= 0, {per_item}"),
            ("lost_sales_cost", self._per_item(params.lost_sales_cost) >= 0,
             f">= 0, {per_item}"),
            ("max_inventory", self._per_item(params.max_inventory) > 0, f"> 0, {per_item}"),
            ("demand_n", _is_int(params.demand_n) and params.demand_n >= 0, "an integer >= 0"),
            ("demand_p", 0 <= params.demand_p <= 1, "in [0, 1]"),
            ("deterministic_demand", isinstance(params.deterministic_demand, bool), "a bool"),
            ("max_steps_in_episode", _is_int(params.max_steps_in_episode)
             and params.max_steps_in_episode >= 1, "an integer >= 1"),
        ]  # fmt: skip
        for name, ok, allowed in rules:
            if not ok:
                value = getattr(params, name)
                raise InvalidLotSizingParameter(
                    f"{name}={value!r} is out of range: it must be {allowed}"
                )

    def _per_item(self, value) -> float:
        """The least of ``value``'s numbers if it is one number or one per item, else NaN
        (which fails every range check, so the message names the parameter)."""
        try:
            value = np.asarray(value, np.float64)
        except (TypeError, ValueError):  # not numbers: "abc", a dict
            return np.nan
        return value.min() if value.shape in ((), (self.num_items,)) else np.nan

    def reset_env(self, key, params):
        inventory_key, setup_key = jax.random.split(key)
        uniform = jax.random.uniform(inventory_key, (self.num_items,))
        inventory = jnp.floor(uniform * jnp.floor(params.max_inventory))
        can_make = jnp.log(jnp.asarray(self.production) > 0)  # -inf where it cannot
        setup = jax.random.categorical(setup_key, can_make) + 1
        state = EnvState(inventory=inventory, setup=setup, time=0)
        return self.get_obs(state, params), state

    def post_decision(self, state: EnvState, action: jax.Array):
        """(inventory, setup, setup cost) after the action, before demand."""
        machines = jnp.arange(self.num_machines)
        item = jnp.maximum(action - 1, 0)
        producing = action > 0
        changed = producing & (state.setup != action)
        setup_cost = jnp.where(changed, jnp.asarray(self.setup_costs)[machines, item], 0.0)
        loss = jnp.where(changed, jnp.asarray(self.setup_loss)[machines, item], 0.0)
        made = jnp.maximum(jnp.asarray(self.production)[machines, item] - loss, 0.0)
        inventory = state.inventory.at[item].add(jnp.where(producing, made, 0.0))
        return inventory, action, setup_cost.sum()

    def step_env(self, key, state, action, params):
        inventory, setup, setup_cost = self.post_decision(state, action)
        post_state = EnvState(inventory=inventory, setup=setup, time=state.time)
        n, p = params.demand_n, params.demand_p
        sampled = jax.random.binomial(key, n, p, (self.num_items,))
        demand = jnp.where(params.deterministic_demand, n * p, sampled)
        left = inventory - demand
        lost_sales_cost = (params.lost_sales_cost * jnp.maximum(-left, 0.0)).sum()
        inventory = jnp.clip(left, 0.0, params.max_inventory)
        holding_cost = (params.holding_cost * inventory).sum()
        next_state = EnvState(inventory=inventory, setup=setup, time=state.time + 1)
        info = {
            "post_decision_obs": self.get_obs(post_state, params),
            "post_decision_inventory": post_state.inventory,
            "post_decision_setup": post_state.setup,
            "post_decision_reward": -setup_cost,
            "setup_cost": setup_cost,
            "lost_sales_cost": lost_sales_cost,
            "holding_cost": holding_cost,
        }
        reward = -(setup_cost + lost_sales_cost + holding_cost)
        terminated = next_state.time >= params.max_steps_in_episode
        return self.get_obs(next_state, params), next_state, reward, terminated, info

    def is_truncated(self, state, params) -> jax.Array:
        return jnp.asarray(False)  # the horizon is the problem's end: a termination

    def get_obs(self, state, params=None, key=None):
        params = self.default_params if params is None else params
        setup = jax.nn.one_hot(state.setup, self.num_items + 1).reshape(-1)
        time_left = 1.0 - jnp.asarray(state.time, jnp.float32) / params.max_steps_in_episode
        return jnp.concatenate([state.inventory / params.max_inventory, setup, time_left[None]])

    @property
    def name(self) -> str:
        return self._name

    def action_space(self, params=None) -> MultiDiscrete:
        return MultiDiscrete([self.num_items + 1] * self.num_machines)

    def observation_space(self, params=None) -> spaces.Box:
        size = self.num_items + self.num_machines * (self.num_items + 1) + 1
        return spaces.Box(0.0, 1.0, (size,), jnp.float32)


def _is_int(x) -> bool:
    return isinstance(x, int | np.integer) and not isinstance(x, bool)


SETTING_KEYS = ("n_items", "n_machines", "machine_production", "setup_costs", "setup_loss",
                "holding_costs", "lost_sales_costs", "max_inventory_level",
                "demand_distribution", "time_horizon")  # fmt: skip


def from_setting(path) -> tuple[LotSizing, EnvParams]:
    """(env, params) of an instance in the PDPPO authors' setting-file format (their
    ``cfg_env/setting_*.json``). A per-item cost or cap that is the same for all items becomes
    one value; their ``initial_inventory`` and ``initial_setup`` are not read, as their
    training resets draw both at random."""
    try:
        setting = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise InvalidLotSizingParameter(f"cannot read lot-sizing setting {path}: {error}") from None
    missing = [key for key in SETTING_KEYS if key not in setting]
    if missing:
        raise InvalidLotSizingParameter(f"lot-sizing setting {path} lacks {', '.join(missing)}")
    shape = (setting["n_machines"], setting["n_items"])
    for key in ("machine_production", "setup_costs", "setup_loss"):
        if np.shape(setting[key]) != shape:
            raise InvalidLotSizingParameter(
                f"{key} in {path} has shape {np.shape(setting[key])}; n_machines x n_items is "
                f"{shape}"
            )

    def per_item(key):
        values = np.asarray(setting[key])
        if values.shape != (setting["n_items"],) or values.dtype.kind not in "iuf":
            raise InvalidLotSizingParameter(
                f"{key} in {path} must be a list of n_items={setting['n_items']} numbers"
            )
        return float(values[0]) if np.all(values == values[0]) else jnp.asarray(values, "f4")

    demand = setting["demand_distribution"]
    if (
        not isinstance(demand, dict)
        or demand.get("name") != "binomial"
        or not {"n", "p"} <= set(demand)
    ):
        raise InvalidLotSizingParameter(
            f"demand_distribution in {path} is {demand!r}; only a binomial with n and p is modelled"
        )
    params = EnvParams(
        holding_cost=per_item("holding_costs"),
        lost_sales_cost=per_item("lost_sales_costs"),
        max_inventory=per_item("max_inventory_level"),
        demand_n=demand["n"],  # check_params names a non-integer n or horizon
        demand_p=float(demand["p"]),
        max_steps_in_episode=setting["time_horizon"],
    )
    env = LotSizing(setting["machine_production"], setting["setup_costs"], setting["setup_loss"],
                    name=f"rljax/LotSizing:{path}", params=params)  # fmt: skip
    env.check_params(params)
    return env, params


def make_instance(name: str) -> tuple[LotSizing, EnvParams]:
    """(env, params) of a named instance of ``INSTANCES``, e.g. "15x5"."""
    items, machines, seed = INSTANCES[name]
    env = LotSizing(**instance(items, machines, seed), name=f"rljax/LotSizing-{name}")
    return env, env.default_params
