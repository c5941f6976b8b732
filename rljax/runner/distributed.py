"""Many processes, one program: jax.distributed set-up and the few agreements a run needs.

Every process runs the same runner over one global mesh. Decisions taken between chunks
(stop on a signal, checkpoint now, every member diverged) must be the same on all processes,
or a collective would wait forever; ``any_process`` makes them so.
"""

import jax
import numpy as np
from jax.experimental import multihost_utils


def initialize(coordinator: str | None, num_processes: int | None, process_id: int | None,
               auto: bool = False) -> None:  # fmt: skip
    """Joins a multi-process run: explicitly with a coordinator address, or, with ``auto``,
    from the cluster's environment as JAX detects it (SLURM, Open MPI, Kubernetes, TPU pods).

    Must run before anything starts JAX's backend, i.e. before importing gymnax or rljax.envs.
    """
    if coordinator is not None:
        if num_processes is None or process_id is None:
            raise ValueError("--coordinator needs --num-processes and --process-id")
        if not 0 <= process_id < num_processes:
            raise ValueError(
                f"--process-id={process_id} is out of range: it must lie in [0, {num_processes})"
            )
        jax.distributed.initialize(coordinator, num_processes, process_id)
    elif auto:
        jax.distributed.initialize()


def is_primary() -> bool:
    """Process 0 writes the run's shared files and prints progress."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def gather(tree):
    """A tree of member-sharded arrays, whole and as numpy, on every process."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    return multihost_utils.process_allgather(tree, tiled=True)


def any_process(flags: np.ndarray) -> np.ndarray:
    """Element-wise OR of boolean flags over all processes."""
    if jax.process_count() == 1:
        return flags
    return multihost_utils.process_allgather(np.asarray(flags)).any(axis=0)


def owned_members(sharding, num_members: int) -> list[int]:
    """The members whose shards live on this process's devices."""
    index_map = sharding.addressable_devices_indices_map((num_members,))
    return sorted({i for index in index_map.values() for i in range(num_members)[index[0]]})
