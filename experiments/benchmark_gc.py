"""How fast the goal-conditioned side runs: maze env steps/s, evaluation episodes/s, dataset
generation, and gradient steps/s per agent.

* env: ``--envs`` PointMaze-medium / GridMaze-medium envs stepped with random actions for 1000
  steps (auto-reset on).
* evaluation: the runner's evaluation (``rljax.runner.evaluation.evaluate_policy``) of an untrained
  HIQL on OGBench's five tasks, ``--eval-episodes`` per task, in one jit; an untrained policy
  rarely succeeds, so every episode runs its full 1000 steps (the worst case).
* generation: a 1M-transition pointmaze-medium navigate dataset (OGBench's 1000 x 1001).
* training: each agent's update with its sampler on that dataset, batch ``--batch`` and
  networks ``--hidden`` (OGBench's are 1024 and 512,512,512), one seed. Timing and memory as
  in benchmark_ppo.py.

    python experiments/benchmark_gc.py [--agents gcbc,hiql] [--updates 500] [--hidden 512,512,512]
"""

import argparse
import time

import jax
from benchmark_ppo import compile_fn, peak_memory, run_seconds

from rljax import agents, envs
from rljax.data import Dataset
from rljax.data.ogbench import transitions
from rljax.generate import mazes
from rljax.runner import evaluation

AGENTS = ("gcbc", "gcivl", "gciql", "qrl", "crl", "hiql", "ota", "smore", "hilp", "beso")


def env_steps_per_second(name: str, num_envs: int) -> tuple[float, float]:
    env, params = envs.make(name)
    space = env.action_space(params)

    def rollout(key):
        obs, state = jax.vmap(env.reset, (0, None))(jax.random.split(key, num_envs), params)

        def step(state, key):
            action_key, step_key = jax.random.split(key)
            actions = jax.vmap(space.sample)(jax.random.split(action_key, num_envs))
            keys = jax.random.split(step_key, num_envs)
            state = jax.vmap(env.step, (0, 0, 0, None))(keys, state, actions, params)[1]
            return state, None

        return jax.lax.scan(step, state, jax.random.split(key, 1000))[0]

    key = jax.random.key(0)
    compiled, compile_s = compile_fn(rollout, key)
    return num_envs * 1000 / run_seconds(compiled, key), compile_s


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", default=",".join(AGENTS))
    parser.add_argument("--updates", type=int, default=500, help="gradient steps per agent")
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--hidden", default="512,512,512")
    parser.add_argument("--envs", type=int, default=4096)
    parser.add_argument("--eval-episodes", type=int, default=50, help="per task (OGBench: 50)")
    args = parser.parse_args()
    hidden = tuple(int(h) for h in args.hidden.split(","))
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, {jax.devices()[0]}")

    for name in ("rljax/PointMaze-medium", "rljax/GridMaze-medium"):
        rate, compile_s = env_steps_per_second(name, args.envs)
        print(f"{name}: {rate:,.0f} env steps/s ({args.envs} envs, compile {compile_s:.1f}s)")

    start = time.perf_counter()
    rows = mazes.maze_rows("rljax/PointMaze-medium", "navigate", seed=0)
    dataset = Dataset.from_arrays(**transitions(rows))
    print(
        f"pointmaze-medium-navigate: {dataset.size:,} transitions generated in "
        f"{time.perf_counter() - start:.1f}s (compile included)"
    )

    hiql = agents.get("hiql")
    config = hiql.Config(hidden_sizes=hidden, batch_size=args.batch)
    params = hiql.init(config, dataset, jax.random.key(0)).params
    env, env_params = envs.make("rljax/PointMaze-medium")

    policy = evaluation.agent_policy(agents.declaration("hiql"), config, params, True)

    def evaluate(key):
        return evaluation.evaluate_policy(policy, env, env_params, args.eval_episodes, key)

    compiled, compile_s = compile_fn(evaluate, jax.random.key(1))
    episodes = 5 * args.eval_episodes
    seconds = run_seconds(compiled, jax.random.key(1))
    print(
        f"evaluation (HIQL, {hidden}): {episodes} episodes of 1000 steps in {seconds:.2f}s = "
        f"{episodes / seconds:,.0f} episodes/s ({episodes * 1000 / seconds:,.0f} policy "
        f"steps/s), compile {compile_s:.1f}s"
    )

    print(f"\ntraining, batch {args.batch}, hidden {hidden}, {args.updates} updates, one seed")
    print(f"{'agent':<6} {'compile s':>9} {'steps/s':>9} {'peak MiB':>9}")
    for name in args.agents.split(","):
        agent = agents.get(name)
        config = agent.Config(hidden_sizes=hidden, batch_size=args.batch)

        def train(key, agent=agent, config=config):
            return agent.train(config, dataset, key, args.updates)[1]

        compiled, compile_s = compile_fn(train, jax.random.key(0))
        rate = args.updates / run_seconds(compiled, jax.random.key(0))
        print(f"{name:<6} {compile_s:9.1f} {rate:9,.0f} {peak_memory()[0]:9.0f}")


if __name__ == "__main__":
    main()
