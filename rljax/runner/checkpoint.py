"""Orbax checkpoints of the whole (member-batched) train state.

Orbax writes each step into a temporary directory and renames it when complete, so a step
killed mid-write never looks finished. A finished step that cannot be read back (a truncated or
corrupted file) is deleted with a warning in favour of the one before it (two are kept), so the
resumed run writes that step afresh.
"""

import warnings
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

    def restore_latest(self, abstract_state):
        """(step, state) of the newest readable checkpoint, or (None, None) if there is none."""
        for step in sorted(self._manager.all_steps(), reverse=True):
            try:
                return step, self.restore(step, abstract_state)
            except Exception as error:  # any unreadable checkpoint: fall back to the previous
                warnings.warn(
                    f"checkpoint at update {step} is unreadable and was deleted "
                    f"({type(error).__name__}: {str(error)[:200]})",
                    stacklevel=2,
                )
                self._manager.delete(step)
        return None, None

    def close(self) -> None:
        self._manager.close()
