"""REINFORCE, N-PG-IGT, HARPG and N-HARPG on CartPole-v1: how close each gradient estimate is to
the true gradient, and return against env steps, over seeds.

Every estimator runs the preset configs/harpg/cartpole.yaml (H = 500, 64-64 tanh policy, gamma
0.99, one trajectory per sampling point) with its own step size and momentum (``SETTINGS``, each
the best of a small sweep over 4 seeds), for ``--iterations`` iterations, its seeds one vmapped
program.

Error of the estimate. The recursions estimate the gradient of the truncated objective J at the
iterate th_t with the direction d_t they step along. Every ``--check-every`` iterations, along each
estimator's own run, N fresh single-trajectory REINFORCE gradients g_i at th_t give their mean
gbar and their total variance V = tr Cov[g(tau, th_t)] (which is the error E||g - grad J||^2 of
vanilla one-trajectory REINFORCE at that very point), and, gbar being independent of d_t,

    E||d_t - grad J(th_t)||^2  ~  ||d_t - gbar||^2 - V / N.

The table gives that error over V, averaged over checkpoints and seeds (below 1: d_t is nearer the
true gradient than a fresh one-trajectory REINFORCE gradient at the same iterate; HARPG spends two
trajectories per iteration, against which two-trajectory REINFORCE would score 0.5), with the
median cosine between d_t and gbar, and V / ||grad J||^2, the one-trajectory REINFORCE
gradient's relative variance along that run.

Sample efficiency: the undiscounted return of the trajectory each iteration samples at its
(first) point, as a moving mean over ``--window`` iterations, at given counts of the env steps
the estimator used (steps after an episode's end, simulated only to keep shapes fixed, do not
count; HARPG's second trajectory does).

    python experiments/pg_estimators.py                 # 4 seeds, 1000 iterations
    python experiments/pg_estimators.py --iterations 300 --estimators n_pg_igt,n_harpg
"""

import argparse
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import yaml
from jax.flatten_util import ravel_pytree

from rljax import envs
from rljax.agents import harpg
from rljax.runner import config as config_lib

REPO = Path(__file__).resolve().parents[1]
PRESET = REPO / "configs" / "harpg" / "cartpole.yaml"
# Per estimator, from lr x eta sweeps of 1000 iterations (4 seeds; /tmp scripts, not kept): the
# unnormalized steps diverge above these step sizes (REINFORCE at 3e-4, HARPG at 1e-4).
SETTINGS = {
    "reinforce": dict(lr=1e-4, anneal_lr=False),
    "n_pg_igt": dict(lr=0.04, eta=0.3, anneal_lr=True),
    "harpg": dict(lr=3e-5, eta=0.3, anneal_lr=False),
    "n_harpg": dict(lr=0.04, eta=0.3, anneal_lr=True),
}
STEPS = (10_000, 25_000, 50_000, 100_000, 200_000)


def make_config(estimator: str, iterations: int) -> harpg.Config:
    preset = yaml.safe_load(PRESET.read_text())["agent"]
    fields = {**preset, "estimator": estimator, **SETTINGS[estimator]}
    config = config_lib.make_config(harpg.Config, fields)
    return config.replace(total_timesteps=iterations * config.steps_per_update)


def estimate_error(config, env, env_params, state, num_samples: int) -> dict:
    """The error of d_t against the mean of num_samples REINFORCE gradients at th_t (whose
    iterate the state after update t keeps as prev_net)."""
    at_iterate = state.params.replace(net=state.prev_net)
    many = config.replace(num_envs=num_samples)
    key = jax.random.fold_in(state.rng, 1)  # the training's own keys are left as they are
    traj = harpg.rollout(many, env, env_params, at_iterate, key)._replace(info={})

    def one(traj):  # one trajectory's gradient, as a flat vector
        single = jax.tree.map(lambda x: x[:, None], traj)
        return ravel_pytree(harpg.reinforce_gradient(config, at_iterate, single))[0]

    grads = jax.vmap(one, in_axes=1)(traj)  # (num_samples, dim)
    mean = grads.mean(0)
    variance = jnp.square(grads - mean).sum() / (num_samples - 1)
    direction = ravel_pytree(state.direction)[0]
    error = jnp.square(direction - mean).sum() - variance / num_samples
    cosine = direction @ mean / (jnp.linalg.norm(direction) * jnp.linalg.norm(mean))
    gradient_sq = jnp.square(mean).sum() - variance / num_samples
    return {"error": error, "variance": variance, "cosine": cosine, "gradient_sq": gradient_sq}


def run(estimator, env, env_params, args) -> tuple[dict, dict, float]:
    """(per-iteration metrics, per-checkpoint errors, seconds), each (seeds, ...)."""
    config = make_config(estimator, args.iterations)
    chunks = args.iterations // args.check_every

    def train(state):
        def chunk(state, _):
            step = lambda s, _: harpg.update(config, env, env_params, s)  # noqa: E731
            state, metrics = jax.lax.scan(step, state, None, args.check_every)
            return state, (metrics, estimate_error(config, env, env_params, state, args.samples))

        return jax.lax.scan(chunk, state, None, chunks)[1]

    def seeds(keys):
        # Members initialized in turn: a vmapped orthogonal init can deadlock a 2-core CPU.
        states = jax.lax.map(lambda key: harpg.init(config, env, env_params, key), keys)
        return jax.vmap(train)(states)

    keys = jnp.stack([jax.random.PRNGKey(seed) for seed in range(args.seeds)])
    start = time.time()
    metrics, errors = jax.block_until_ready(jax.jit(seeds)(keys))
    metrics = {k: np.asarray(v).reshape(args.seeds, -1) for k, v in metrics.items()}
    return metrics, {k: np.asarray(v) for k, v in errors.items()}, time.time() - start


def return_at(metrics: dict, steps: int, window: int) -> np.ndarray:
    """Per seed, the moving-mean return at the first iteration whose used env steps reach
    ``steps`` (NaN where the run ends first)."""
    used = np.cumsum(metrics["samples"], axis=1)
    returns = metrics["trajectory_return"]
    out = []
    for seed in range(returns.shape[0]):
        reached = np.nonzero(used[seed] >= steps)[0]
        if len(reached) == 0:
            out.append(np.nan)
            continue
        end = reached[0] + 1
        out.append(returns[seed, max(0, end - window) : end].mean())
    return np.array(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--estimators", default=",".join(harpg.ESTIMATORS))
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--check-every", type=int, default=50, help="iterations per checkpoint")
    parser.add_argument("--samples", type=int, default=128, help="trajectories per true gradient")
    parser.add_argument("--window", type=int, default=50, help="iterations per moving mean")
    args = parser.parse_args()
    env, env_params = envs.make("CartPole-v1")

    results = {}
    for estimator in args.estimators.split(","):
        results[estimator] = run(estimator, env, env_params, args)
        print(f"{estimator}: {results[estimator][2]:.0f}s (compile included)", flush=True)

    print(f"\nCartPole-v1, {args.seeds} seeds, {args.iterations} iterations, H = 500")
    print(f"\nError of d_t against grad J(th_t), {args.samples} trajectories per true gradient,")
    print(f"every {args.check_every} iterations; mean over checkpoints and seeds (median cosine)")
    print(f"{'estimator':<10} {'E|d-gJ|^2 / V':>14} {'cos(d, gJ)':>11} {'V / |gJ|^2':>11}")
    for estimator, (_, errors, _) in results.items():
        ratio = (errors["error"] / errors["variance"]).mean()
        cosine = np.median(errors["cosine"])
        relative = np.median(errors["variance"] / np.maximum(errors["gradient_sq"], 1e-12))
        print(f"{estimator:<10} {ratio:14.3f} {cosine:11.3f} {relative:11.1f}")

    print(f"\nReturn (moving mean over {args.window} iterations) at env steps used; mean [seeds]")
    for estimator, (metrics, _, _) in results.items():
        used = np.sum(metrics["samples"], axis=1)
        print(f"{estimator}: {used.mean():.0f} env steps used in all")
        for steps in STEPS:
            at = return_at(metrics, steps, args.window)
            seeds = " ".join(f"{x:.0f}" for x in at)
            mean = np.nanmean(at) if np.isfinite(at).any() else np.nan
            print(f"  {steps:>7d}  {mean:6.1f}  [{seeds}]")
        final = metrics["trajectory_return"][:, -args.window :].mean(1)
        print(f"  {'final':>7}  {final.mean():6.1f}  [{' '.join(f'{x:.0f}' for x in final)}]")


if __name__ == "__main__":
    main()
