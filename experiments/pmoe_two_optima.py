"""Two optima: how often SAC and PMOE-SAC find the better of two separated reward peaks.

PMOE's claim (Ren et al., arXiv 2104.09122) is better exploration of multimodal action values.
On rljax/TwoOptima (``rljax/envs/two_optima.py``: a one-step bandit over one action in [-1, 1]
with a wide peak of height 0.5 and a narrow one of height 1 far from it), each variant below
trains on several seeds as one vmapped program from the preset
``configs/sac_pmoe/two_optima.yaml`` (SAC takes its shared fields). Per variant it prints the
fraction of seeds whose greedy action lands on the narrow peak (earns more than the wide
peak's top), the mean reward of the stochastic policy over the last 10% of training, and each
seed's greedy action. The variants isolate the mixture: SAC; PMOE-SAC with one expert (its
code with a single Gaussian); two and four experts with SAC's rewards; and two and four
experts with the authors' batch reward standardization (x10), the PMOE-SAC default.

    python experiments/pmoe_two_optima.py              # 16 seeds, 5,000 steps each
                                                       # (~15 min on 2 busy CPU cores)
    python experiments/pmoe_two_optima.py --seeds 8 --steps 10000
"""

import argparse
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import yaml

from rljax import envs
from rljax.agents import sac, sac_pmoe
from rljax.envs import two_optima
from rljax.runner import config as config_lib

REPO = Path(__file__).resolve().parents[1]
PMOE_ONLY = ("num_components", "standardize_rewards")
STANDARDIZED = {"standardize_rewards": True, "reward_scale": 10.0}
# name -> (agent, changes to the preset)
VARIANTS = {
    "SAC": (sac, {}),
    "PMOE-SAC K=1": (sac_pmoe, {"num_components": 1}),
    "PMOE-SAC K=2": (sac_pmoe, {"num_components": 2}),
    "PMOE-SAC K=4": (sac_pmoe, {"num_components": 4}),
    "PMOE-SAC K=2, rewards standardized x10": (sac_pmoe, {"num_components": 2, **STANDARDIZED}),
    "PMOE-SAC K=4, rewards standardized x10": (sac_pmoe, {"num_components": 4, **STANDARDIZED}),
}


def run(agent, fields: dict, env, env_params, seeds: int):
    """(greedy action per seed, mean reward of the last 10% of updates per seed)."""
    if agent is sac:
        fields = {k: v for k, v in fields.items() if k not in PMOE_ONLY}
    config = config_lib.make_config(agent.Config, fields)
    obs = jnp.ones(1)

    def one(key):
        state, metrics = agent.train(config, env, env_params, key)
        return agent.act(config, state.params, obs, key, deterministic=True)[0], metrics

    keys = jax.random.split(jax.random.PRNGKey(0), seeds)
    greedy, metrics = jax.jit(jax.vmap(one))(keys)
    returns = np.asarray(metrics["episode_return"])
    return np.asarray(greedy), np.nanmean(returns[:, -max(1, returns.shape[1] // 10) :], axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--steps", type=int, default=None, help="env steps (preset: 5,000)")
    args = parser.parse_args()
    preset = yaml.safe_load((REPO / "configs" / "sac_pmoe" / "two_optima.yaml").read_text())
    env, env_params = envs.make(**preset["env"])
    base = dict(preset["agent"])
    if args.steps is not None:
        base |= {"total_timesteps": args.steps, "buffer_size": max(args.steps, 1000)}
    print(
        f"rljax/TwoOptima, {args.seeds} seeds x {base['total_timesteps']} env steps; the wide "
        f"peak pays {env_params.wide_height} at {env_params.wide_center}, the narrow one "
        f"{env_params.narrow_height} at {env_params.narrow_center}"
    )
    print(f"{'variant':<40} {'found':>7} {'reward':>7}  greedy actions")
    for name, (agent, changes) in VARIANTS.items():
        start = time.time()
        greedy, reward = run(agent, base | changes, env, env_params, args.seeds)
        found = np.asarray(two_optima.found_better_optimum(jnp.asarray(greedy), env_params))
        actions = " ".join(f"{a:+.2f}" for a in greedy)
        print(
            f"{name:<40} {found.sum():>3d}/{args.seeds:<3d} {reward.mean():7.3f}  {actions}"
            f"  ({time.time() - start:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
