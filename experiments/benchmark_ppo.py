"""How fast rljax's PPO trains: env steps per second, compile time and peak memory.

Cases:
  a  PureJaxRL's CartPole config (``ppo.Config()``: 4 envs x 128 steps, 5e5 steps), one seed,
     beside PureJaxRL's own ppo.py (written out below as ``reference_train``), both compiled in
     this process and run in turn: the ratio of steps/s is what to read.
  b  CartPole with many envs (2048 x 16 steps by default, 2**21 steps).
  c  a 16-member sweep over lr x clip_eps on CartPole (1e5 steps each): one vmapped program
     against the same 16 runs one after another through one compiled function, and against
     PureJaxRL's script run for each member (its hyperparameters are constants: a compile each).
  d  brax hopper with normalized observations and rewards, a short run (slow to compile on CPU).
  r  recurrent PPO (``ppo_rnn.Config()``: PureJaxRL's ppo_rnn, a GRU of 128) on CartPole with
     case a's rollout and hyperparameters, one seed: its steps/s beside case a's (at --scale 1
     case a's budget too).

Compilation is timed alone (``jax.jit(f).lower(...).compile()``); steps/s time the compiled call
until ``jax.block_until_ready``. Peak memory is the device's ``peak_bytes_in_use`` where the
backend reports it, else the process's max RSS; both are peaks since the process started, so a
case's figure covers the cases before it too.

    python experiments/benchmark_ppo.py                      # all cases, CPU-sized budgets
    python experiments/benchmark_ppo.py --cases a,b --scale 10 --num-envs 8192 --json out.json
    python experiments/benchmark_ppo.py --cases a,r               # feed-forward vs recurrent
"""

import argparse
import itertools
import json
import resource
import time

import distrax
import flax.linen as nn
import gymnax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.linen.initializers import constant, orthogonal
from flax.training.train_state import TrainState
from gymnax.wrappers.purerl import LogWrapper

from rljax import envs
from rljax.agents import ppo, ppo_rnn
from rljax.runner.config import stack

SWEEP_LRS = (1e-4, 2.5e-4, 5e-4, 1e-3)
SWEEP_CLIP_EPS = (0.1, 0.2, 0.3, 0.4)


def compile_fn(fn, *args):
    """(compiled fn, seconds to lower and compile it)."""
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - start


def run_seconds(compiled, *args) -> float:
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    return time.perf_counter() - start


def peak_memory() -> tuple[float, str]:
    """(MiB, what it measures)."""
    stats = jax.devices()[0].memory_stats()
    if stats and "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / 2**20, "device peak_bytes_in_use"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10, "process max RSS"


def result(case, what, steps, compile_s, run_s) -> dict:
    print(f"  {case}: {what}, {compile_s:.1f} s compile + {run_s:.1f} s run", flush=True)
    memory_mib, memory_kind = peak_memory()
    return {
        "case": case,
        "what": what,
        "env_steps": steps,
        "compile_s": compile_s,
        "run_s": run_s,
        "total_s": compile_s + run_s,
        "steps_per_s": steps / run_s,
        "peak_mib": memory_mib,
        "memory": memory_kind,
    }


def versus_reference(config, env, env_params, seed, repeats) -> list[dict]:
    """Case a: ``ppo.train`` and PureJaxRL's ``make_train`` (``reference_train``), both compiled
    in this process, then run in turn ``repeats`` times each; the fastest run of each counts (on a
    shared machine the others measure the neighbours)."""
    key, reference_key = jax.random.key(seed), jax.random.PRNGKey(seed)
    ours, ours_compile_s = compile_fn(lambda k: ppo.train(config, env, env_params, k), key)
    reference, reference_compile_s = compile_fn(reference_train(config), reference_key)
    ours_s, reference_s = [], []
    for _ in range(repeats):
        ours_s.append(run_seconds(ours, key))
        reference_s.append(run_seconds(reference, reference_key))
    steps = config.num_updates * config.steps_per_update
    return [
        result("a", "CartPole, PureJaxRL config", steps, ours_compile_s, min(ours_s)),
        result("a", "  PureJaxRL's ppo.py", steps, reference_compile_s, min(reference_s)),
    ]


def single_run(case, what, config, env, env_params, seed, agent=ppo) -> dict:
    key = jax.random.key(seed)
    compiled, compile_s = compile_fn(lambda k: agent.train(config, env, env_params, k), key)
    run_s = run_seconds(compiled, key)
    return result(case, what, config.num_updates * config.steps_per_update, compile_s, run_s)


# --- PureJaxRL's ppo.py, as the reference every run of case a is timed against ---


class _ReferenceActorCritic(nn.Module):
    """PureJaxRL's network: separate 64x64 tanh actor and critic MLPs, orthogonal init."""

    action_dim: int

    @nn.compact
    def __call__(self, x):
        def mlp(x, out, head_gain):
            for _ in range(2):
                x = nn.tanh(nn.Dense(64, kernel_init=orthogonal(np.sqrt(2)))(x))
            return nn.Dense(out, kernel_init=orthogonal(head_gain), bias_init=constant(0.0))(x)

        logits = mlp(x, self.action_dim, 0.01)
        value = mlp(x, 1, 1.0)
        return distrax.Categorical(logits=logits), jnp.squeeze(value, -1)


def reference_train(config: ppo.Config, env_name: str = "CartPole-v1"):
    """PureJaxRL's ``make_train`` (github.com/luchris429/purejaxrl, purejaxrl/ppo.py) at the
    same hyperparameters as ``config``, written out closure-style as its script does: gymnax's
    env with its LogWrapper, GAE cut at every done (terminated or truncated), its loss, its
    shuffling, the per-step infos as the returned metrics. Returns ``train(rng)``."""
    env, env_params = gymnax.make(env_name)
    env = LogWrapper(env)
    c = config
    minibatch_size = c.steps_per_update // c.num_minibatches

    def schedule(count):
        return c.lr * (1.0 - (count // (c.num_minibatches * c.update_epochs)) / c.num_updates)

    def train(rng):
        network = _ReferenceActorCritic(env.action_space(env_params).n)
        rng, init_key = jax.random.split(rng)
        params = network.init(init_key, jnp.zeros(env.observation_space(env_params).shape))
        lr = schedule if c.anneal_lr else c.lr
        tx = optax.chain(optax.clip_by_global_norm(c.max_grad_norm), optax.adam(lr, eps=1e-5))
        train_state = TrainState.create(apply_fn=network.apply, params=params, tx=tx)
        rng, reset_key = jax.random.split(rng)
        reset_keys = jax.random.split(reset_key, c.num_envs)
        obs, env_state = jax.vmap(env.reset, in_axes=(0, None))(reset_keys, env_params)

        def update_step(runner_state, _):
            def env_step(runner_state, _):
                train_state, env_state, last_obs, rng = runner_state
                rng, action_key = jax.random.split(rng)
                pi, value = network.apply(train_state.params, last_obs)
                action = pi.sample(seed=action_key)
                log_prob = pi.log_prob(action)
                rng, step_key = jax.random.split(rng)
                step_keys = jax.random.split(step_key, c.num_envs)
                step = jax.vmap(env.step, in_axes=(0, 0, 0, None))
                obs, env_state, reward, terminated, truncated, info = step(
                    step_keys, env_state, action, env_params
                )
                done = jnp.logical_or(terminated, truncated)  # gymnax 1.0 splits PureJaxRL's done
                transition = (done, action, value, reward, log_prob, last_obs, info)
                return (train_state, env_state, obs, rng), transition

            runner_state, traj = jax.lax.scan(env_step, runner_state, None, c.num_steps)
            train_state, env_state, last_obs, rng = runner_state
            done, action, value, reward, log_prob, traj_obs, info = traj
            _, last_value = network.apply(train_state.params, last_obs)

            def gae_step(carry, t):
                advantage, next_value = carry
                done, value, reward = t
                delta = reward + c.gamma * next_value * (1 - done) - value
                advantage = delta + c.gamma * c.gae_lambda * (1 - done) * advantage
                return (advantage, value), advantage

            _, advantages = jax.lax.scan(
                gae_step, (jnp.zeros_like(last_value), last_value), (done, value, reward),
                reverse=True, unroll=16,
            )  # fmt: skip
            targets = advantages + value

            def update_epoch(update_state, _):
                def update_minibatch(train_state, batch):
                    action, old_value, old_log_prob, obs, gae, targets = batch

                    def loss_fn(params):
                        pi, value = network.apply(params, obs)
                        log_prob = pi.log_prob(action)
                        value_clipped = old_value + (value - old_value).clip(
                            -c.clip_eps, c.clip_eps
                        )
                        value_loss = (
                            0.5
                            * jnp.maximum(
                                jnp.square(value - targets), jnp.square(value_clipped - targets)
                            ).mean()
                        )
                        ratio = jnp.exp(log_prob - old_log_prob)
                        normalized = (gae - gae.mean()) / (gae.std() + 1e-8)
                        clipped = jnp.clip(ratio, 1.0 - c.clip_eps, 1.0 + c.clip_eps)
                        actor_loss = -jnp.minimum(ratio * normalized, clipped * normalized).mean()
                        entropy = pi.entropy().mean()
                        total = actor_loss + c.vf_coef * value_loss - c.ent_coef * entropy
                        return total, (value_loss, actor_loss, entropy)

                    loss, grads = jax.value_and_grad(loss_fn, has_aux=True)(train_state.params)
                    return train_state.apply_gradients(grads=grads), loss

                train_state, rng = update_state
                rng, perm_key = jax.random.split(rng)
                permutation = jax.random.permutation(perm_key, c.steps_per_update)
                batch = (action, value, log_prob, traj_obs, advantages, targets)
                batch = jax.tree.map(
                    lambda x: x.reshape((c.steps_per_update,) + x.shape[2:]), batch
                )
                minibatches = jax.tree.map(
                    lambda x: jnp.take(x, permutation, axis=0).reshape(
                        (c.num_minibatches, minibatch_size) + x.shape[1:]
                    ),
                    batch,
                )
                train_state, loss = jax.lax.scan(update_minibatch, train_state, minibatches)
                return (train_state, rng), loss

            (train_state, rng), _ = jax.lax.scan(
                update_epoch, (train_state, rng), None, c.update_epochs
            )
            return (train_state, env_state, last_obs, rng), info

        rng, run_key = jax.random.split(rng)
        runner_state = (train_state, env_state, obs, run_key)
        return jax.lax.scan(update_step, runner_state, None, c.num_updates)

    return train


def sweep(config, env, env_params, seed) -> list[dict]:
    """16 (lr, clip_eps) members: one vmapped program, then one after another."""
    configs = [
        config.replace(lr=lr, clip_eps=eps)
        for lr, eps in itertools.product(SWEEP_LRS, SWEEP_CLIP_EPS)
    ]
    keys = jax.random.split(jax.random.key(seed), len(configs))
    steps = len(configs) * config.num_updates * config.steps_per_update

    def train(c, k):
        return ppo.train(c, env, env_params, k)

    def train_all(configs, keys):
        # Members initialized in turn, as the runner does: a vmapped orthogonal init is a
        # batched LAPACK QR that can deadlock on a small CPU (jaxlib 0.10.2).
        states = jax.lax.map(lambda ck: ppo.init(ck[0], env, env_params, ck[1]), (configs, keys))

        def run(c, state):
            return jax.lax.scan(
                lambda s, _: ppo.update(c, env, env_params, s), state, None, c.num_updates
            )

        return jax.vmap(run)(configs, states)

    stacked = stack(configs)
    compiled, compile_s = compile_fn(train_all, stacked, keys)
    run_s = run_seconds(compiled, stacked, keys)
    vmapped = result("c", f"sweep x{len(configs)}, vmapped", steps, compile_s, run_s)

    # The config is an argument, not a constant, so its traced lr and clip_eps reuse one program.
    compiled, compile_s = compile_fn(train, configs[0], keys[0])
    run_s = sum(run_seconds(compiled, c, k) for c, k in zip(configs, keys, strict=True))
    sequential = result("c", f"sweep x{len(configs)}, sequential", steps, compile_s, run_s)

    # PureJaxRL's script closes over its hyperparameters: each member compiles its own program.
    compile_s = run_s = 0.0
    for c in configs:
        compiled, seconds = compile_fn(reference_train(c), jax.random.PRNGKey(seed))
        compile_s += seconds
        run_s += run_seconds(compiled, jax.random.PRNGKey(seed))
    what = f"sweep x{len(configs)}, PureJaxRL's ppo.py in turn"
    return [vmapped, sequential, result("c", what, steps, compile_s, run_s)]


def print_table(results: list[dict]):
    header = ("case", "what", "env steps", "compile s", "run s", "total s", "steps/s", "peak MiB")
    rows = [
        (
            r["case"],
            r["what"],
            f"{r['env_steps']:,}",
            f"{r['compile_s']:.1f}",
            f"{r['run_s']:.1f}",
            f"{r['total_s']:.1f}",
            f"{r['steps_per_s']:,.0f}",
            f"{r['peak_mib']:,.0f}",
        )
        for r in results
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    print()
    for row in (header, *rows):
        print(
            "  ".join(
                cell.ljust(w) if i < 2 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default="a,b,c,d,r", help="comma-separated subset of a,b,c,d,r")
    parser.add_argument("--skip-brax", action="store_true", help="drop case d")
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiply the step budgets of cases b, c, d, r"
    )
    parser.add_argument("--num-envs", type=int, default=2048, help="envs in case b")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--repeats", type=int, default=3, help="case a: runs of each program, in turn"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results here")
    args = parser.parse_args()
    cases = set(args.cases.split(",")) - ({"d"} if args.skip_brax else set())
    if not cases <= set("abcdr"):
        parser.error(f"unknown cases: {sorted(cases - set('abcdr'))}")

    device = jax.devices()[0]
    print(
        f"jax {jax.__version__}, backend {jax.default_backend()}, device {device.device_kind} "
        f"(x{jax.device_count()})"
    )
    cartpole = envs.make("CartPole-v1")
    results = []
    if "a" in cases:
        config = ppo.Config()
        results.extend(versus_reference(config, *cartpole, args.seed, args.repeats))
    if "r" in cases:
        config = ppo_rnn.Config(total_timesteps=int(5e5 * args.scale))
        what = f"CartPole, recurrent ({config.cell.upper()} {config.cell_size})"
        results.append(single_run("r", what, config, *cartpole, args.seed, agent=ppo_rnn))
    if "b" in cases:
        config = ppo.Config(
            num_envs=args.num_envs,
            num_steps=16,
            num_minibatches=32,
            total_timesteps=int(2**21 * args.scale),
        )
        what = f"CartPole, {config.num_envs} envs x {config.num_steps}"
        results.append(single_run("b", what, config, *cartpole, args.seed))
    if "c" in cases:
        config = ppo.Config(total_timesteps=int(1e5 * args.scale))
        results.extend(sweep(config, *cartpole, args.seed))
    if "d" in cases:
        hopper = envs.make("brax/hopper", normalize_obs=True, normalize_reward=True)
        config = ppo.Config(
            num_envs=64,
            num_steps=10,
            num_minibatches=4,
            update_epochs=4,
            hidden_sizes=(256, 256),
            lr=3e-4,
            ent_coef=0.0,
            anneal_lr=False,
            total_timesteps=int(2**15 * args.scale),
        )
        what = f"brax hopper, {config.num_envs} envs x {config.num_steps}"
        results.append(single_run("d", what, config, *hopper, args.seed))

    print_table(results)
    print()
    summary = {"jax": jax.__version__, "backend": jax.default_backend(), "device": str(device)}
    if "a" in cases:
        ours, reference = (r for r in results if r["case"] == "a")
        summary["speed_vs_purejaxrl"] = ours["steps_per_s"] / reference["steps_per_s"]
        summary["compile_vs_purejaxrl"] = ours["compile_s"] / reference["compile_s"]
        print(
            f"PureJaxRL config: {summary['speed_vs_purejaxrl']:.3f}x PureJaxRL's steps/s "
            f"(fastest of {args.repeats} runs each, in turn), "
            f"{summary['compile_vs_purejaxrl']:.2f}x its compile time"
        )
    if "c" in cases:
        vmapped, sequential, reference = (r for r in results if r["case"] == "c")
        summary["sweep_speedup_total"] = sequential["total_s"] / vmapped["total_s"]
        summary["sweep_speedup_run"] = sequential["run_s"] / vmapped["run_s"]
        summary["sweep_speedup_vs_purejaxrl"] = reference["total_s"] / vmapped["total_s"]
        print(
            f"sweep speed-up (sequential time / vmapped time): "
            f"{summary['sweep_speedup_total']:.1f}x in total time with compile, "
            f"{summary['sweep_speedup_run']:.1f}x in run time; "
            f"{summary['sweep_speedup_vs_purejaxrl']:.1f}x against PureJaxRL's script run once "
            "per member (a compile each)"
        )
    if results:
        print(f"peak MiB: {results[0]['memory']}, since the process started")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**summary, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
