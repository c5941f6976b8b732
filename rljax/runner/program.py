"""A resolved RunSpec made concrete: member configs, env, dataset, sharding and compiled steps.

Seeds and sweep points are one vmapped program: member m of config c and seed s uses the key
``PRNGKey(seed + s)``, so a sweep member reproduces the single run of its config. The member
axis is sharded over the devices. A chunk is ``lax.scan`` of the agent's ``update`` over K
updates inside ``jit``, the same for every kind of agent; a dataset agent's chunk ends with
deterministic evaluation episodes, logged as ``episode_return`` at its last update.
"""

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rljax import agents, data, envs
from rljax.runner import config as config_lib
from rljax.runner import evaluation
from rljax.runner.guard import params_finite
from rljax.runner.phases import STATE_STRUCTURE, Phase, phases
from rljax.runner.spec import RunSpec, check_evaluation_env


def over_members(fn):
    """``fn`` over a leading member axis of every argument and output: vmapped, or run unbatched
    when there is one member. XLA's CPU backend turns a reduction of a product over a size-1
    batch axis (LayerNorm's backward, for one) into one tiny dot per row, which made one-member
    programs up to 1.7x slower than the same program unbatched."""

    def run(*args):
        if jax.tree.leaves(args)[0].shape[0] > 1:
            return jax.vmap(fn)(*args)
        first = jax.tree.map(lambda x: x[0], args)
        return jax.tree.map(lambda x: x[None], fn(*first))

    return run


@dataclasses.dataclass
class Program:
    """What one run compiles and executes."""

    spec: RunSpec  # resolved: its env is named in full
    agent: agents.Declaration
    env: object
    env_params: object
    configs: list  # one Config per grid point
    members: list  # (config index, seed index) per vmapped member
    stacked: object  # the members' configs stacked on a leading axis
    keys: jax.Array
    sharding: NamedSharding
    dataset: data.Dataset | None = None  # dataset agents only
    references: tuple | None = None  # (random, expert) returns, when the dataset has them
    traces: int = 0  # how often the chunk function was traced: once per run

    @property
    def base(self):
        return self.configs[0]

    @property
    def phases(self) -> tuple[Phase, ...]:
        return phases(self.agent, self.base)

    @property
    def boundary(self) -> int | None:
        """Updates before the second phase begins (None in a one-phase run)."""
        return self.phases[0].updates if len(self.phases) > 1 else None

    @property
    def num_updates(self) -> int:
        """Updates of the whole run, every phase's."""
        return sum(phase.updates for phase in self.phases)

    @property
    def steps_per_update(self) -> int:
        """Env steps per update of the first phase; a dataset agent's update is one gradient
        step."""
        return self.phases[0].steps_per_update

    def steps(self, updates):
        """The run's one step axis at ``updates``: each phase counts its own steps (env steps,
        or gradient steps of a dataset agent or of a dynamics model) after the last phase's."""
        updates, steps, before = np.asarray(updates), 0, 0
        for phase in self.phases:
            steps = steps + np.clip(updates - before, 0, phase.updates) * phase.steps_per_update
            before += phase.updates
        return steps

    def chunks(self) -> list[tuple[int, int]]:
        """(first update, updates) of every chunk, phase after phase."""
        chunks, before = [], 0
        for index, phase in enumerate(self.phases):
            per_chunk = chunk_updates(self, index)
            chunks += [(first, per_chunk) for first in range(before, before + phase.updates,
                                                             per_chunk)]  # fmt: skip
            before += phase.updates
        return chunks

    def later_after(self, update: int) -> bool:
        """Whether the train state after ``update`` updates is the second phase's (its layout
        may differ from the first's)."""
        return self.boundary is not None and update > self.boundary

    def unit(self, update: int) -> str:
        """What the step axis counts up to ``update``."""
        return self.phases[self.later_after(update)].unit

    def axis_label(self) -> str:
        """The step axis's label: each phase's unit, in order."""
        return ", then ".join(dict.fromkeys(phase.unit for phase in self.phases))

    def structure_file(self, later: bool) -> str:
        """The run directory's file that holds the train state's structure of a phase."""
        return f"state_structure_{self.phases[1].name}.pkl" if later else STATE_STRUCTURE

    def source(self):
        """What ``init`` and ``update`` take after the config: the dataset, or env and params."""
        return (self.dataset,) if self.agent.from_dataset else (self.env, self.env_params)

    def abstract(self, shapes):
        """Shapes and dtypes laid out over the member sharding, to compile and restore."""
        return jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=self.sharding), shapes
        )

    def init_fn(self):
        """(configs, keys) -> states. Each device initializes its own members one at a time:
        vmapped, flax's orthogonal initializer becomes a batched LAPACK QR whose thread-pool
        fan-out can deadlock on a small CPU (jaxlib 0.10.2); one member at a time it runs inline.
        """
        module, source = self.agent.module, self.source()

        def init_local(configs, keys):
            return jax.lax.map(lambda c_k: module.init(c_k[0], *source, c_k[1]), (configs, keys))

        spec = self.sharding.spec
        # check_vma off: the env wrappers' pmean runs over a vmapped axis, not a mesh axis.
        init = jax.shard_map(
            init_local, mesh=self.sharding.mesh, in_specs=spec, out_specs=spec, check_vma=False
        )
        return jax.jit(init, out_shardings=self.sharding)

    def chunk_fn(self, num_updates: int, later: bool = False):
        """(configs, states) -> (states, metrics, params finite), num_updates per member of
        the first phase's update, or of the second's with ``later``."""
        module, phase = self.agent.module, self.phases[later]
        update, source = getattr(module, phase.update), self.phase_source(phase)

        def run_member(config, state):
            self.traces += 1  # runs while tracing only: counts compilations, not calls
            state, metrics = jax.lax.scan(
                lambda state, _: update(config, *source, state), state, None, num_updates
            )
            if phase.evaluates:
                metrics |= self._evaluation(config, state, num_updates)
            return state, metrics, params_finite(state.params)

        return self._per_member(run_member)

    def begin_fn(self):
        """(configs, first phase's states) -> second phase's states, at the boundary."""
        phase = self.phases[1]
        begin, source = getattr(self.agent.module, phase.begin), self.phase_source(phase)
        return self._per_member(lambda config, state: begin(config, *source, state))

    def phase_source(self, phase: Phase):
        """What the agent's functions of ``phase`` take after the config: the dataset, the env
        and its params, or (online fine-tuning) all three."""
        if phase.name == "online":
            return self.dataset, self.env, self.env_params
        return self.source()

    def _per_member(self, fn):
        """``fn(config, state)`` jitted over the members, each device running its own; the
        states passed in are donated."""
        spec = self.sharding.spec
        per_device = jax.shard_map(
            over_members(fn), mesh=self.sharding.mesh, in_specs=spec, out_specs=spec,
            check_vma=False,
        )  # fmt: skip
        return jax.jit(per_device, donate_argnums=(1,), out_shardings=self.sharding)

    def _evaluation(self, config, state, num_updates: int) -> dict:
        """Deterministic evaluation episodes after a chunk, as metrics of its last update. The
        key is folded from the agent's, which it leaves as it is: training does not depend on
        how often it is evaluated."""
        key = jax.random.fold_in(state.rng, 0x5EED)
        policy = evaluation.agent_policy(self.agent, config, state.params, deterministic=True)
        returns = evaluation.evaluate_policy(
            policy, self.env, self.env_params, self.spec.eval_episodes, key
        )
        last = np.arange(num_updates) == num_updates - 1
        return {
            "episode_return": jnp.where(last, returns.mean(), jnp.nan),
            "episodes": jnp.where(last, returns.shape[0], 0),
        }


def build_program(spec: RunSpec, *, inner_wrapper=None, load_dataset: bool = True) -> Program:
    """Builds a resolved spec (``rljax.runner.spec.resolve_spec``); bad values raise named errors.

    ``inner_wrapper`` goes beneath the env's normalization wrappers (``rljax.envs.wrap``).
    Without ``load_dataset`` a dataset run is built without its data, to restore and act.
    """
    agent = agents.declaration(spec.algo)
    configs = config_lib.member_configs(agent, spec.agent, spec.grid)
    dataset, references = None, None
    if agent.from_dataset:
        env, env_params = envs.make(**envs.without_normalization(spec.env))
        if load_dataset:
            path = data.resolve(spec.dataset)
            dataset, metadata = data.load(path, max_episode_steps=spec.max_episode_steps)
            check_evaluation_env(spec, agent, dataset, env, env_params)
        else:  # its metadata, when the dataset is still there, for the reference returns
            try:
                path = data.resolve(spec.dataset)
                metadata = data.read_metadata(path)
            except data.DatasetError:
                path, metadata = Path(spec.dataset), {}
        references = _references(metadata, path.stem)
    else:
        env, env_params = envs.make(**spec.env, inner_wrapper=inner_wrapper)
    if agent.wraps_env:  # an agent that adds to what its env observes
        if spec.env.get("normalize_obs"):
            # The saved moments would cover the env's observation, not what the agent adds.
            raise config_lib.ConfigError(
                f"{spec.algo} adds to its observations (wrap_env), so env.normalize_obs=true "
                "is not supported for it"
            )
        env, env_params = agent.module.wrap_env(configs[0], env, env_params)
    members = [(c, s) for c in range(len(configs)) for s in range(spec.seeds)]
    stacked = config_lib.stack([configs[c] for c, _ in members])
    keys = np.stack([jax.random.key_data(jax.random.PRNGKey(spec.seed + s)) for _, s in members])
    sharding = member_sharding(len(members))
    # Identical numpy on every process; each keeps the rows of its own devices.
    stacked, keys = jax.device_put((jax.tree.map(np.asarray, stacked), keys), sharding)
    return Program(
        spec, agent, env, env_params, configs, members, stacked, keys, sharding, dataset, references
    )


def _references(metadata: dict, name: str) -> tuple | None:
    try:
        return data.references(metadata, name)
    except data.NoReferenceScores:
        return None


def member_sharding(num_members: int) -> NamedSharding:
    """Shards the member axis over the devices of every process.

    One process uses as many of its devices as divide the members evenly; several processes
    must use all devices, so the members must divide evenly over them.
    """
    devices = jax.devices()
    if jax.process_count() > 1 and num_members % len(devices):
        raise config_lib.ConfigError(
            f"{num_members} members (configs x seeds) cannot be split evenly over the "
            f"{len(devices)} devices of {jax.process_count()} processes; use a multiple of "
            f"{len(devices)} members"
        )
    count = max(d for d in range(1, len(devices) + 1) if num_members % d == 0)
    return NamedSharding(Mesh(np.array(devices[:count]), ("member",)), PartitionSpec("member"))


def chunk_updates(program: Program, phase: int = 0) -> int:
    """Updates per jitted chunk of a phase (the first by default): the spec's, or the largest
    divisor of the phase's updates up to a tenth of it (~10+ chunks, one compilation)."""
    found = program.phases[phase]
    if found.updates < 1:
        raise config_lib.FieldOutOfRange(
            f"{found.budget}={getattr(program.base, found.budget)} is less than one update "
            f"({found.steps_per_update} steps)"
        )
    limit = max(1, found.updates // 10)
    per_chunk = program.spec.chunk_updates or max(
        d for d in range(1, limit + 1) if found.updates % d == 0
    )
    if found.updates % per_chunk:
        name = f"{found.name} " if len(program.phases) > 1 else ""
        raise config_lib.FieldOutOfRange(
            f"chunk_updates={per_chunk} must divide the number of {name}updates ({found.updates})"
        )
    return per_chunk
