"""A run's phases: one for an env or dataset agent, two for an agent that goes on online after
its dataset or that fits a model before its policy; what each runs and how it is counted."""

import dataclasses

from rljax import agents

# The train state's structure (pytree classes, static fields, shapes and dtypes), written
# beside the checkpoints so a run restores without its dataset or anything else; a second
# phase's state has a structure of its own (``Program.structure_file``).
STATE_STRUCTURE = "state_structure.pkl"


@dataclasses.dataclass(frozen=True)
class Phase:
    """One phase of a run: ``updates`` calls of the agent's function ``update`` (after its
    function ``begin`` turned the last phase's state into this one's), counted on the step axis
    in ``unit`` at ``steps_per_update`` each; ``budget`` is the Config field that sets its length.
    Dataset agents' policy phases end each chunk with evaluation episodes (``evaluates``)."""

    name: str
    updates: int
    update: str
    unit: str
    steps_per_update: int
    budget: str
    begin: str | None = None
    evaluates: bool = False


def phases(agent: agents.Declaration, config) -> tuple[Phase, ...]:
    """The phases a run of ``agent`` goes through: online (an env agent), offline (a dataset
    agent), offline then online (a fine-tuning agent with ``online_steps``), or the dynamics
    model then the policy (a model-based agent)."""
    if not agent.from_dataset:
        spu = config.steps_per_update
        return (Phase("env", config.num_updates, "update", "steps", spu, "total_timesteps"),)
    policy = Phase(
        "offline", config.num_updates, "update", "gradient steps", 1, "total_updates",
        evaluates=True,
    )  # fmt: skip
    if agent.fits_model:
        model = Phase("model", config.model_updates, "update_model", "model steps", 1,
                      "model_updates")  # fmt: skip
        return model, dataclasses.replace(policy, name="policy", begin="begin_policy")
    if agent.fine_tunes and config.online_steps:
        online = Phase(
            "online", config.num_online_updates, "update_online", "steps",
            config.steps_per_update, "online_steps", begin="begin_online", evaluates=True,
        )  # fmt: skip
        return policy, online
    return (policy,)
