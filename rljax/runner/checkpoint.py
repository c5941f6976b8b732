"""Orbax checkpoints of the whole (member-batched) train state.

Orbax writes each step into a temporary directory and renames it when complete, so a checkpoint
is either whole or absent; ``latest`` only ever sees finished ones.
"""

from pathlib import Path

import orbax.checkpoint as ocp


class Checkpoints:
    def __init__(self, directory: Path, keep: int = 2):
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
        self._manager = ocp.CheckpointManager(Path(directory).absolute(), options=options)

    def save(self, step: int, state) -> None:
        self._manager.save(step, args=ocp.args.StandardSave(state))
        self._manager.wait_until_finished()

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def restore(self, step: int, abstract_state):
        """The state saved at ``step``, laid out (shapes, dtypes, shardings) as abstract_state."""
        return self._manager.restore(step, args=ocp.args.StandardRestore(abstract_state))

    def close(self) -> None:
        self._manager.close()
