"""TwoOptima: a one-step continuous bandit whose reward has a wide low peak and a narrow high one.

A test of exploration over multimodal action values, for the mixture-of-experts policies
(``rljax/agents/sac_pmoe.py``, ``rljax/agents/ppo_pmoe.py``). The observation is the constant
``[1.0]``; the action is one number in [-1, 1]; every episode is that one step, and it
terminates (``max_steps_in_episode`` plays no part)::

    r(a) = wide_height   exp(-(a - wide_center)^2   / (2 wide_width^2))
         + narrow_height exp(-(a - narrow_center)^2 / (2 narrow_width^2))

With the defaults (a wide peak of height 0.5 and width 0.3 at -0.5, a narrow one of height 1
and width 0.04 at 0.6) the narrow peak is the optimum, r(0.6) = 1.0006, but under a broad
action distribution the wide one holds most of the expected reward: a uniform action on
[-1, 1] earns about 0.18 from the wide peak and 0.05 from the narrow one, so a policy that
climbs the smoothed reward settles on the wide peak, r(-0.5) = 0.5. An agent has found the
better optimum when its greedy action earns more than the wide peak's best,
``found_better_optimum``.
"""

import jax
import jax.numpy as jnp
from flax import struct
from gymnax.environments import environment, spaces


@struct.dataclass
class EnvParams(environment.EnvParams):
    wide_center: float = -0.5
    wide_width: float = 0.3
    wide_height: float = 0.5
    narrow_center: float = 0.6
    narrow_width: float = 0.04
    narrow_height: float = 1.0


class InvalidTwoOptimaParameter(ValueError):
    """A TwoOptima parameter out of range; the message names it."""


def reward(action: jax.Array, params: EnvParams) -> jax.Array:
    """r(a) of the module docstring, elementwise."""

    def peak(center, width, height):
        return height * jnp.exp(-jnp.square(action - center) / (2 * width**2))

    wide = peak(params.wide_center, params.wide_width, params.wide_height)
    return wide + peak(params.narrow_center, params.narrow_width, params.narrow_height)


def found_better_optimum(action: jax.Array, params: EnvParams) -> jax.Array:
    """Whether ``action`` earns more than the top of the wide peak: it is on the narrow one."""
    return reward(action, params) > reward(jnp.asarray(params.wide_center), params)


class TwoOptima(environment.Environment):
    """The bandit of the module docstring."""

    @property
    def default_params(self) -> EnvParams:
        return EnvParams()

    def check_params(self, params: EnvParams) -> None:
        """Raises InvalidTwoOptimaParameter, naming the parameter, for a value out of range:
        widths and heights positive, centers in [-1, 1], and the narrow peak the higher."""
        rules = [
            ("wide_width", params.wide_width > 0, "> 0"),
            ("narrow_width", params.narrow_width > 0, "> 0"),
            ("wide_height", params.wide_height > 0, "> 0"),
            ("wide_center", -1 <= params.wide_center <= 1, "in [-1, 1]"),
            ("narrow_center", -1 <= params.narrow_center <= 1, "in [-1, 1]"),
            (
                "narrow_height",
                params.narrow_height > params.wide_height,
                f"> wide_height = {params.wide_height}",
            ),
        ]
        for name, ok, allowed in rules:
            if not ok:
                raise InvalidTwoOptimaParameter(
                    f"{name}={getattr(params, name)!r} is out of range: it must be {allowed}"
                )

    def reset_env(self, key, params):
        state = environment.EnvState(time=0)
        return self.get_obs(state), state

    def step_env(self, key, state, action, params):
        r = reward(jnp.clip(action[0], -1.0, 1.0), params)
        state = environment.EnvState(time=state.time + 1)
        return self.get_obs(state), state, r, jnp.array(True), {}

    def is_truncated(self, state, params) -> jax.Array:
        return jnp.array(False)  # the one step ends by termination, never by a time limit

    def get_obs(self, state, params=None, key=None):
        return jnp.ones(1)

    @property
    def name(self) -> str:
        return "rljax/TwoOptima"

    @property
    def num_actions(self) -> int:
        return 1

    def action_space(self, params=None) -> spaces.Box:
        return spaces.Box(-1.0, 1.0, (1,), jnp.float32)

    def observation_space(self, params=None) -> spaces.Box:
        return spaces.Box(1.0, 1.0, (1,), jnp.float32)
