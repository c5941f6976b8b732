"""Dataset recipes: which behaviour agent makes an environment's D4RL-style datasets, and how.

Each recipe trains its behaviour agent through the runner (``rljax.generate.d4rl``); the
datasets' file names come from ``rljax.data.GENERATED_TAGS``, so a missing dataset's error can
name the command that makes it.
"""

import dataclasses

from rljax.data import GENERATED_TAGS
from rljax.envs import without_normalization


class UnknownRecipe(ValueError):
    """No generation recipe for an environment; the message lists the recipes."""


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How to generate an environment's datasets.

    ``env`` are the ``rljax.envs.make`` options the behaviour agent trains on (the datasets'
    env drops the normalization options); ``agent`` the behaviour agent's Config fields. The
    agent trains in chunks of ``chunk_updates`` updates, its deterministic policy evaluated on
    ``eval_episodes`` episodes after each; the references average ``reference_evals`` such
    evaluations of the final policy and of uniform actions. ``transitions`` is the size of the
    random, medium and expert datasets, rolled out in ``rollout_envs`` parallel streams.
    """

    env: dict
    agent: dict
    transitions: int
    rollout_envs: int
    chunk_updates: int
    algo: str = "sac"
    eval_episodes: int = 20
    reference_evals: int = 5  # evaluations averaged into the random and expert references

    @property
    def tag(self) -> str:
        """The datasets' file names: <tag>-<kind>.hdf5 (``rljax.data.GENERATED_TAGS``)."""
        return GENERATED_TAGS[self.env["name"]]


def _brax(name: str, preset: dict, total_timesteps: int) -> Recipe:
    # D4RL's sizes: 1M transitions, here as 100 streams of 10,000 steps (1000-step episodes).
    return Recipe(
        env={"name": f"brax/{name}", "normalize_obs": True},
        agent={**preset, "total_timesteps": total_timesteps},
        transitions=1_000_000,
        rollout_envs=100,
        chunk_updates=512,  # 65536 env steps: 80-100 snapshots to choose the medium one from
    )


# brax's SAC settings (configs/sac/brax_*.yaml); sized for a GPU.
_BRAX_SAC = {
    "num_envs": 128, "num_steps": 1, "utd_ratio": 0.5, "batch_size": 512,
    "buffer_size": 1_048_576, "learning_starts": 8192, "hidden_sizes": [256, 256],
    "actor_lr": 6e-4, "critic_lr": 6e-4, "alpha_lr": 6e-4, "gamma": 0.99, "tau": 0.005,
    "reward_scale": 1.0,
}  # fmt: skip

RECIPES: dict[str, Recipe] = {
    # SAC slowed down from configs/sac/pendulum.yaml (16 envs, one gradient step per 8 env
    # steps, lr 3e-4) so that it passes a third of expert after ~100 mixed-quality episodes:
    # medium-replay then spans random to medium, as D4RL's. About -155 after 96k steps.
    "Pendulum-v1": Recipe(
        env={"name": "Pendulum-v1", "unit_actions": True},
        agent={
            "num_envs": 16,
            "num_steps": 1,
            "utd_ratio": 0.125,
            "batch_size": 128,
            "buffer_size": 100_000,
            "learning_starts": 1600,
            "total_timesteps": 96_000,
            "hidden_sizes": [64, 64],
            "actor_lr": 3e-4,
            "critic_lr": 3e-4,
            "alpha_lr": 3e-4,
            "gamma": 0.99,
            "tau": 0.005,
        },
        transitions=100_000,
        rollout_envs=50,  # 2000 steps each: 10 whole episodes of 200 steps
        chunk_updates=25,  # 400 env steps per snapshot
    ),
    "brax/hopper": _brax("hopper", {**_BRAX_SAC, "gamma": 0.997, "reward_scale": 30.0}, 6_553_600),
    "brax/halfcheetah": _brax("halfcheetah", _BRAX_SAC, 5_242_880),
    # No tuned SAC preset for walker2d yet: halfcheetah's.
    "brax/walker2d": _brax("walker2d", _BRAX_SAC, 5_242_880),
}


def recipe_for(env_name: str) -> Recipe:
    if env_name not in RECIPES:
        raise UnknownRecipe(
            f"no dataset recipe for {env_name!r}; recipes exist for: {', '.join(RECIPES)}"
        )
    return RECIPES[env_name]


def data_env(recipe: Recipe) -> dict:
    """The make() options of the env the data comes from: raw observations and rewards."""
    return without_normalization(recipe.env)
