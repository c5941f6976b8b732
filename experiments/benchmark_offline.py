"""How fast the offline agents train: gradient steps/s, compile time, peak memory.

Each agent trains with its paper's networks and batch size (CORL's: 256x256, batch 256; CQL
and IQL as in their files) on a D4RL-sized dataset held on the device (``--rows`` transitions
of hopper's shapes, 11-d observations and 3-d actions, random numbers: speed does not depend on
the values). One seed (unbatched, as the runner runs one member), then ``--seeds`` seeds vmapped
in one program. Each agent's ``update`` samples its batch inside the jitted scan, as in the
runner. Timing and memory as in benchmark_ppo.py. ``MFLOP`` is the arithmetic of one update as
XLA counts it (``cost_analysis``; a ``lax.cond`` counts as its larger branch, so an agent whose
actor steps are delayed, TD3+BC, PRDC, A2PR, is counted as on an actor step, and a loop's body
counts once, so PRDC's neighbour search counts as one of its blocks): where steps/s against
IQL's is no better than MFLOP against IQL's allows, the time goes to arithmetic.

When td3_bc is among the agents, it is also timed against JAX-CORL's TD3+BC (written out below
from nissymori/JAX-CORL ``algos/td3bc.py``), one seed each, the two interleaved ``--repeats``
times on the same dataset; the best of each and the ratio rljax / reference in steps/s are
printed. Only gradient steps are timed there: both are initialized before the clock starts.

A model-based agent (MOPO, RAVL, MBRCSL, PGD) is timed phase by phase, at its paper's sizes
but for its budget, one seed and ``--seeds`` vmapped: its model's gradient steps/s (the
dynamics ensemble's, or PGD's denoiser's); what ``begin_policy`` generates per second (model
rollout transitions, or PGD's sampled trajectories: the first rollout or synthetic pool, at
``--rollout-states`` starting states, MBRCSL's one round of horizon-long rollouts, or
``--trajectories``); and its policy's gradient steps/s (with the rollouts that fall due).

    python experiments/benchmark_offline.py [--agents bc,td3_bc] [--updates 2000] [--rows 1000000]
        [--rollout-states 50000] [--trajectories 256] [--unet-features 1024]
"""

import argparse
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from benchmark_ppo import compile_fn, peak_memory, run_seconds
from flax.training.train_state import TrainState

from rljax import agents
from rljax.data import Dataset
from rljax.runner.program import over_members

NAMES = ("bc", "td3_bc", "iql", "rebrac", "cql", "odice", "fdvl", "prdc", "a2pr", "riql", "edac")
MODEL_BASED = ("mopo", "ravl", "mbrcsl", "pgd")


def generated(name: str, config) -> tuple[int, str]:
    """(how many, of what) a model-based agent's begin_policy generates."""
    if name == "pgd":
        return config.num_synthetic_trajectories, "trajectories"
    if name == "mbrcsl":  # one round (``sized``)
        return config.rollout_batch_size * config.horizon, "transitions"
    return config.rollout_batch_size * config.rollout_length, "transitions"


def fake_dataset(rows: int, obs_dim: int = 11, action_dim: int = 3, episode: int = 1000):
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(rows, obs_dim)).astype(np.float32)
    timeouts = (np.arange(rows) % episode == episode - 1).astype(np.float32)
    return Dataset.from_arrays(
        observations=obs,
        actions=rng.uniform(-1, 1, (rows, action_dim)).astype(np.float32),
        rewards=rng.normal(size=rows).astype(np.float32),
        terminals=np.zeros(rows, np.float32),
        timeouts=timeouts,
        next_observations=np.roll(obs, -1, 0),
    )


def measure(agent, config, dataset, updates: int, seeds: int) -> dict:
    keys = jax.random.split(jax.random.key(0), seeds)

    def train_seeds(keys):
        # One member at a time for init (see rljax.runner.program: no vmapped init on CPU).
        states = jax.lax.map(lambda k: agent.init(config, dataset, k), keys)

        def one_update(state, _):
            return agent.update(config, dataset, state)  # samples its batch inside jit

        # Over the seeds as the runner's chunk: vmapped, or unbatched for one seed.
        run = over_members(lambda s: jax.lax.scan(one_update, s, None, updates))
        return run(states)[1]

    compiled, compile_s = compile_fn(train_seeds, keys)
    run_s = run_seconds(compiled, keys)
    return {"compile_s": compile_s, "run_s": run_s, "steps_per_s": seeds * updates / run_s}


def update_flops(agent, config, dataset) -> float:
    """XLA's count of one update's floating-point operations (one seed)."""
    state = jax.jit(lambda key: agent.init(config, dataset, key))(jax.random.key(0))
    update = jax.jit(lambda state: agent.update(config, dataset, state))
    return update.lower(state).compile().cost_analysis()["flops"]


def sized(name: str, args) -> dict:
    """The generation sizes of a model-based agent's config (the rest its paper's)."""
    if name == "pgd":
        return {
            "num_synthetic_trajectories": args.trajectories,
            "unet_features": args.unet_features,
        }
    if name == "mbrcsl":  # one round of its authors' 200 trajectories, whatever they return
        return {"max_rounds": 1}
    return {"rollout_batch_size": args.rollout_states}


def measure_model_based(agent, config, dataset, updates: int, seeds: int) -> dict:
    """Seconds to compile and run each phase over ``seeds`` members: ``updates`` model steps,
    begin_policy, ``updates`` policy steps."""
    keys = jax.random.split(jax.random.key(0), seeds)
    init = jax.jit(lambda keys: jax.lax.map(lambda k: agent.init(config, dataset, k), keys))
    over = lambda step: over_members(  # noqa: E731
        lambda s: jax.lax.scan(lambda s, _: step(config, dataset, s), s, None, updates)
    )
    phases = {
        "model": over(agent.update_model),
        "begin": over_members(lambda s: (agent.begin_policy(config, dataset, s), {})),
        "policy": over(agent.update),
    }
    state, found = init(keys), {}
    for phase, fn in phases.items():
        compiled, compile_s = compile_fn(fn, state)
        start = time.perf_counter()
        state = jax.block_until_ready(compiled(state))[0]
        found[phase] = (compile_s, time.perf_counter() - start)
    return found


# --- JAX-CORL's TD3+BC (algos/td3bc.py), as the reference rljax's td3_bc is timed against ---
# Its networks (orthogonal init, LayerNorm in the critics), its flax TrainStates, its update: a
# jitted function that samples 8 batches and unrolls 8 critic steps in Python, with the actor
# and target steps on the unrolled steps i % policy_freq == 0, so no skipped work is traced;
# its driver calls that function from a Python loop. Hyperparameters are its defaults.


class _CORLConfig(NamedTuple):
    batch_size: int = 256
    n_jitted_updates: int = 8
    hidden_dims: Sequence[int] = (256, 256)
    critic_lr: float = 1e-3
    actor_lr: float = 1e-3
    policy_freq: int = 2
    alpha: float = 2.5
    policy_noise_std: float = 0.2
    policy_noise_clip: float = 0.5
    tau: float = 0.005
    discount: float = 0.99


class _CORLMLP(nn.Module):
    hidden_dims: Sequence[int]
    layer_norm: bool = False

    @nn.compact
    def __call__(self, x):
        for i, size in enumerate(self.hidden_dims):
            x = nn.Dense(size, kernel_init=nn.initializers.orthogonal(jnp.sqrt(2)))(x)
            if i + 1 < len(self.hidden_dims):
                if self.layer_norm:
                    x = nn.LayerNorm()(x)
                x = nn.relu(x)
        return x


class _CORLDoubleCritic(nn.Module):
    hidden_dims: Sequence[int]

    @nn.compact
    def __call__(self, observation, action):
        x = jnp.concatenate([observation, action], axis=-1)
        q1 = _CORLMLP((*self.hidden_dims, 1), layer_norm=True)(x)
        q2 = _CORLMLP((*self.hidden_dims, 1), layer_norm=True)(x)
        return q1, q2


class _CORLActor(nn.Module):
    hidden_dims: Sequence[int]
    action_dim: int

    @nn.compact
    def __call__(self, observation):
        return jnp.tanh(_CORLMLP((*self.hidden_dims, self.action_dim))(observation))


class _CORLTransition(NamedTuple):
    observations: jax.Array
    actions: jax.Array
    rewards: jax.Array
    next_observations: jax.Array
    dones: jax.Array


class _CORLState(NamedTuple):
    actor: TrainState
    critic: TrainState
    target_actor: TrainState
    target_critic: TrainState


def _corl_target_update(model: TrainState, target: TrainState, tau: float) -> TrainState:
    params = jax.tree.map(lambda p, tp: p * tau + tp * (1 - tau), model.params, target.params)
    return target.replace(params=params)


def _corl_step(train_state: TrainState, loss_fn) -> tuple[TrainState, Any]:
    loss, grad = jax.value_and_grad(loss_fn)(train_state.params)
    return train_state.apply_gradients(grads=grad), loss


def _corl_update_actor(s: _CORLState, batch: _CORLTransition, c: _CORLConfig):
    def actor_loss_fn(actor_params):
        predicted_action = s.actor.apply_fn(actor_params, batch.observations)
        critic_params = jax.lax.stop_gradient(s.critic.params)
        q_value, _ = s.critic.apply_fn(critic_params, batch.observations, predicted_action)
        loss_lambda = c.alpha / jax.lax.stop_gradient(jnp.abs(q_value).mean())
        bc_loss = jnp.square(predicted_action - batch.actions).mean()
        return -1.0 * q_value.mean() * loss_lambda + bc_loss

    actor, loss = _corl_step(s.actor, actor_loss_fn)
    return s._replace(actor=actor), loss


def _corl_update_critic(s: _CORLState, batch: _CORLTransition, rng, c: _CORLConfig):
    def critic_loss_fn(critic_params):
        q_pred_1, q_pred_2 = s.critic.apply_fn(critic_params, batch.observations, batch.actions)
        next_action = s.target_actor.apply_fn(s.target_actor.params, batch.next_observations)
        noise = c.policy_noise_std * jax.random.normal(rng, batch.actions.shape)
        next_action = next_action + noise.clip(-c.policy_noise_clip, c.policy_noise_clip)
        next_action = next_action.clip(-1.0, 1.0)
        q_next_1, q_next_2 = s.target_critic.apply_fn(
            s.target_critic.params, batch.next_observations, next_action
        )
        target = batch.rewards[..., None] + c.discount * jnp.minimum(q_next_1, q_next_2) * (
            1 - batch.dones[..., None]
        )
        target = jax.lax.stop_gradient(target)
        return (jnp.square(q_pred_1 - target) + jnp.square(q_pred_2 - target)).mean()

    critic, loss = _corl_step(s.critic, critic_loss_fn)
    return s._replace(critic=critic), loss


def _corl_update_n_times(s: _CORLState, data: _CORLTransition, rng, c: _CORLConfig):
    for i in range(c.n_jitted_updates):  # unrolled: the actor's turn is known when tracing
        rng, batch_rng = jax.random.split(rng, 2)
        idx = jax.random.randint(batch_rng, (c.batch_size,), 0, len(data.observations))
        batch = jax.tree.map(lambda x, idx=idx: x[idx], data)
        rng, critic_rng, _ = jax.random.split(rng, 3)
        s, critic_loss = _corl_update_critic(s, batch, critic_rng, c)
        if i % c.policy_freq == 0:
            s, actor_loss = _corl_update_actor(s, batch, c)
            s = s._replace(
                target_critic=_corl_target_update(s.critic, s.target_critic, c.tau),
                target_actor=_corl_target_update(s.actor, s.target_actor, c.tau),
            )
    return s, {"critic_loss": critic_loss, "actor_loss": actor_loss}


def _corl_init(rng, data: _CORLTransition, c: _CORLConfig) -> _CORLState:
    critic = _CORLDoubleCritic(c.hidden_dims)
    actor = _CORLActor(c.hidden_dims, data.actions.shape[-1])
    obs, action = data.observations[0], data.actions[0]
    _, critic_rng, actor_rng = jax.random.split(rng, 3)

    def state(model, tx, *example):
        params = model.init(*example)
        return TrainState.create(apply_fn=model.apply, params=params, tx=tx)

    critic_state = state(critic, optax.adam(c.critic_lr), critic_rng, obs, action)
    actor_state = state(actor, optax.adam(c.actor_lr), actor_rng, obs)
    return _CORLState(actor_state, critic_state, actor_state, critic_state)


def compare_td3_bc(dataset, updates: int, repeats: int) -> dict:
    """rljax's td3_bc (one seed, a jitted scan of ``update``) and JAX-CORL's TD3+BC (its
    jitted 8-step update called from a Python loop), timed in turn ``repeats`` times after
    init and compilation; the best steps/s of each."""
    td3_bc = agents.get("td3_bc")
    config = td3_bc.Config(total_updates=updates)
    state = jax.jit(lambda k: td3_bc.init(config, dataset, k))(jax.random.key(0))

    def rljax_run(state):
        return jax.lax.scan(lambda s, _: td3_bc.update(config, dataset, s), state, None, updates)

    compiled, _ = compile_fn(rljax_run, state)

    c = _CORLConfig()
    mean, std = dataset.observations.mean(0), dataset.observations.std(0)
    data = _CORLTransition(  # normalized once, as its get_dataset does
        observations=(dataset.observations - mean) / (std + 1e-5),
        actions=dataset.actions,
        rewards=dataset.rewards,
        next_observations=(dataset.next_observations - mean) / (std + 1e-5),
        dones=dataset.terminals,
    )
    corl_state = _corl_init(jax.random.key(1), data, c)
    corl_update = jax.jit(lambda s, d, k: _corl_update_n_times(s, d, k, c))
    calls = updates // c.n_jitted_updates
    jax.block_until_ready(corl_update(corl_state, data, jax.random.key(2)))  # compiles

    def corl_seconds():
        s, rng = corl_state, jax.random.key(3)
        start = time.perf_counter()
        for _ in range(calls):
            rng, update_rng = jax.random.split(rng)
            s, info = corl_update(s, data, update_rng)
        jax.block_until_ready((s, info))
        return time.perf_counter() - start

    ours, theirs = [], []
    for _ in range(repeats):
        ours.append(updates / run_seconds(compiled, state))
        theirs.append(calls * c.n_jitted_updates / corl_seconds())
    return {"rljax": max(ours), "reference": max(theirs), "all": (ours, theirs)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", default=",".join(NAMES))
    parser.add_argument("--updates", type=int, default=2000, help="gradient steps per seed")
    parser.add_argument("--rows", type=int, default=1_000_000, help="dataset transitions")
    parser.add_argument("--seeds", type=int, default=4, help="vmapped seeds in the second case")
    parser.add_argument(
        "--repeats", type=int, default=3, help="interleaved timings of td3_bc and its reference"
    )
    parser.add_argument(
        "--rollout-states", type=int, default=50_000,
        help="model-based agents: states rolled out at once (the papers': 50,000)",
    )  # fmt: skip
    parser.add_argument(
        "--trajectories", type=int, default=256, help="PGD: trajectories sampled at once"
    )
    parser.add_argument(
        "--unet-features", type=int, default=1024,
        help="PGD: the denoiser's first-level channels (the paper's 1024: 178M weights)",
    )  # fmt: skip
    args = parser.parse_args()

    print(f"jax {jax.__version__}, backend {jax.default_backend()}, {jax.devices()[0]}")
    dataset = fake_dataset(args.rows)
    print(f"dataset: {args.rows:,} transitions on device, {args.updates} gradient steps per seed")
    print(
        f"{'agent':<8} {'seeds':>5} {'compile s':>9} {'run s':>7} {'steps/s':>9} "
        f"{'peak MiB':>9} {'MFLOP':>7}"
    )
    names = args.agents.split(",")
    for name in [n for n in names if n not in MODEL_BASED]:
        agent = agents.get(name)
        config = agent.Config(total_updates=args.updates)
        flops = update_flops(agent, config, dataset)
        for seeds in (1, args.seeds):
            r = measure(agent, config, dataset, args.updates, seeds)
            print(
                f"{name:<8} {seeds:>5} {r['compile_s']:9.1f} {r['run_s']:7.2f} "
                f"{r['steps_per_s']:9,.0f} {peak_memory()[0]:9.0f} {flops / 1e6:7,.0f}"
            )
    for name in [n for n in names if n in MODEL_BASED]:
        agent = agents.get(name)
        config = agent.Config(total_updates=args.updates, model_updates=args.updates)
        config = config.replace(**sized(name, args))
        count, what = generated(name, config)
        for seeds in (1, args.seeds):
            r = measure_model_based(agent, config, dataset, args.updates, seeds)
            (model_c, model_s), (begin_c, begin_s), (policy_c, policy_s) = r.values()
            print(
                f"{name:<8} {seeds:>5}  model {seeds * args.updates / model_s:7,.1f} steps/s "
                f"({model_c:.1f} s compile); begin_policy {seeds * count / begin_s:9,.0f} "
                f"{what}/s ({begin_c:.1f} s compile); policy "
                f"{seeds * args.updates / policy_s:7,.1f} steps/s ({policy_c:.1f} s compile); "
                f"peak {peak_memory()[0]:.0f} MiB"
            )
    if "td3_bc" in names:
        r = compare_td3_bc(dataset, args.updates, args.repeats)
        print(
            f"\ntd3_bc against JAX-CORL's TD3+BC, one seed, best of {args.repeats} interleaved:"
            f"\n  rljax {r['rljax']:,.0f} steps/s, reference {r['reference']:,.0f} steps/s, "
            f"ratio rljax/reference {r['rljax'] / r['reference']:.2f}"
            f"\n  every run (rljax; reference): "
            + "; ".join(" ".join(f"{x:,.0f}" for x in runs) for runs in r["all"])
        )


if __name__ == "__main__":
    main()
