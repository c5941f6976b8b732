"""A dataset in another layout, or with its actions rescaled to [-1, 1]: ``rljax data convert``.

The source is read as training reads it (``rljax.data.load``: the six ``Dataset`` arrays, in
float32) and written episode by episode in the layout the output names (``layout_of``), so
that loading the output gives back the same transitions:

* D4RL (``.hdf5``): each episode's rows, then one row holding its final observation with a zero
  action and ``timeouts = 1``, which ``qlearning_dataset`` drops; so a terminal transition keeps
  its own next observation too. A ``next_observations`` column is written as D4RL's files have.
* OGBench (``.npz``): each trajectory's rows and its final observation, flagged ``terminals =
  1``, as OGBench writes them; ``rewards`` and ``masks`` (``1 - terminals``) only when the
  data has a reward or a termination (goal-conditioned data has neither).
* Minari (a directory, or an id under ``$MINARI_DATASETS_PATH``): one episode per episode, with
  ``terminations`` and ``truncations`` from the terminals and timeouts.

Episodes end at a terminal, a timeout, or a row whose next observation is not the following
row's observation (which reads back as a timeout). What the six arrays do not hold (``infos``,
OGBench's ``qpos``) is not carried over.

``action_bounds=(low, high)`` (the env's action space) maps each action affinely from [low,
high] onto [-1, 1], the units offline agents learn in; the metadata records the bounds under
``actions_rescaled_from`` and the env with ``unit_actions: true``, so evaluation and
``rljax.load_policy`` map the agent's actions back onto [low, high].
"""

import json
from pathlib import Path

import numpy as np

from rljax.data import d4rl, files, minari, ogbench
from rljax.data.dataset import DatasetError

LAYOUTS = ("d4rl", "ogbench", "minari")
# Actions stored in float32 can overshoot their bounds by rounding.
SLACK = 1e-5


def layout_of(out) -> str:
    """``d4rl`` for ``.hdf5``, ``ogbench`` for ``.npz``, else ``minari`` (a directory or id)."""
    suffix = Path(out).suffix
    return {".hdf5": "d4rl", ".npz": "ogbench"}.get(suffix, "minari")


def rescale_actions(actions: np.ndarray, low, high, source: str = "the dataset") -> np.ndarray:
    """``2 (a - low) / (high - low) - 1``, checked: integer (discrete) actions, non-finite or
    empty bounds, and actions outside [low, high] raise DatasetError naming them."""
    if not np.issubdtype(actions.dtype, np.floating):
        raise DatasetError(f"{source} has discrete actions ({actions.dtype}); nothing to rescale")
    low, high = np.broadcast_to(low, actions.shape[1:]), np.broadcast_to(high, actions.shape[1:])
    if not (np.isfinite(low).all() and np.isfinite(high).all() and (high > low).all()):
        raise DatasetError(f"action bounds low={low}, high={high} must be finite with high > low")
    if np.allclose(low, -1) and np.allclose(high, 1):
        raise DatasetError(f"the action bounds are already [-1, 1]; {source} needs no rescaling")
    below = actions < low - SLACK * np.maximum(1, abs(low))
    above = actions > high + SLACK * np.maximum(1, abs(high))
    if below.any() or above.any():
        row = int(np.argmax((below | above).reshape(len(actions), -1).any(axis=1)))
        raise DatasetError(
            f"{source} holds actions outside the bounds [{low}, {high}], the first at row {row}: "
            f"{actions[row]} (already rescaled, or recorded on another env?)"
        )
    return np.clip(2 * (actions - low) / (high - low) - 1, -1, 1).astype(actions.dtype)


def recorded_bounds(metadata: dict) -> tuple | None:
    """(low, high) of the Box action space a Minari dataset's metadata records, else None."""
    space = metadata.get("action_space")
    try:
        space = json.loads(space) if isinstance(space, str) else space
    except ValueError:
        return None
    if not isinstance(space, dict) or space.get("type") != "Box":
        return None
    return space["low"], space["high"]


def episodes(transitions: dict) -> list[slice]:
    """The transitions of each episode, in order (module docstring: where episodes end)."""
    n = len(transitions["rewards"])
    ends = (transitions["terminals"] > 0) | (transitions["timeouts"] > 0)
    obs, next_obs = transitions["observations"], transitions["next_observations"]
    jumps = np.any((next_obs[:-1] != obs[1:]).reshape(n - 1, -1), axis=1)
    ends[:-1] |= jumps
    ends[-1] = True
    stops = np.flatnonzero(ends) + 1
    return [slice(start, stop) for start, stop in zip([0, *stops[:-1]], stops, strict=True)]


def _rows(transitions: dict, spans: list[slice]) -> dict[str, np.ndarray]:
    """Each episode's rows and one more with its final observation (flag ``final``)."""
    parts = []
    for span in spans:
        last = span.stop - 1
        count = span.stop - span.start
        parts.append(
            {
                "observations": np.concatenate(
                    [transitions["observations"][span], transitions["next_observations"][[last]]]
                ),
                "next_observations": np.concatenate(
                    [
                        transitions["next_observations"][span],
                        transitions["next_observations"][[last]],
                    ]
                ),
                "actions": np.concatenate(
                    [transitions["actions"][span], np.zeros_like(transitions["actions"][:1])]
                ),
                "rewards": np.append(transitions["rewards"][span], 0).astype(np.float32),
                "terminals": np.append(transitions["terminals"][span] > 0, False),
                "final": np.append(np.zeros(count, bool), True),
            }
        )
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def write(out, transitions: dict, metadata: dict, layout: str, force: bool = False) -> Path:
    """Writes ``transitions`` (the six ``Dataset`` arrays, numpy) at ``out`` in ``layout``; returns
    the path written."""
    spans = episodes(transitions)
    if layout == "minari":
        if "actions_rescaled_from" in metadata:
            shape = list(transitions["actions"].shape[1:])
            metadata = metadata | {"action_space": minari.box_space(-1.0, 1.0, shape)}
        return minari.write_minari(
            out,
            [
                {
                    "observations": np.concatenate(
                        [
                            transitions["observations"][s],
                            transitions["next_observations"][[s.stop - 1]],
                        ]
                    ),
                    "actions": transitions["actions"][s],
                    "rewards": transitions["rewards"][s],
                    "terminations": transitions["terminals"][s] > 0,
                    "truncations": transitions["timeouts"][s] > 0,
                }
                for s in spans
            ],
            metadata,
            force=force,
        )
    files.prepare_outputs([out], force)
    rows = _rows(transitions, spans)
    final = rows.pop("final")
    if layout == "d4rl":
        d4rl.write_d4rl(out, {**rows, "timeouts": final}, metadata)
    elif layout == "ogbench":
        terminals = rows.pop("terminals")
        arrays = {k: rows[k] for k in ("observations", "actions")} | {"terminals": final}
        if rows["rewards"].any() or terminals.any():
            arrays |= {"rewards": rows["rewards"], "masks": ~terminals}
        ogbench.write_ogbench(out, arrays, metadata)
    else:
        raise DatasetError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    return Path(out)


def convert(
    source,
    out,
    *,
    layout: str | None = None,
    action_bounds: tuple | None = None,
    env: dict | None = None,
    max_episode_steps: int | None = None,
    force: bool = False,
) -> Path:
    """Writes dataset ``source`` at ``out`` in ``layout`` (default: ``layout_of(out)``), its
    actions rescaled from ``action_bounds`` when given; ``env`` (``{"name": ..., **options}``)
    replaces the env the metadata records. Returns the path written."""
    layout = layout or layout_of(out)
    if layout not in LAYOUTS:
        raise DatasetError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    path = files.resolve(source)
    dataset, metadata = files.load(path, max_episode_steps=max_episode_steps)
    transitions = dataset.to_numpy()
    metadata = {k: v for k, v in metadata.items() if k not in ("rljax_sha256", "dataset_id")}
    metadata["converted_from"] = str(path)
    recorded = dict(env) if env else files.source_env(metadata)
    if action_bounds is not None:
        if "actions_rescaled_from" in metadata:
            raise DatasetError(
                f"{path}'s actions were already rescaled from {metadata['actions_rescaled_from']}"
            )
        shape = transitions["actions"].shape[1:]
        low, high = (np.broadcast_to(np.asarray(b, np.float64), shape) for b in action_bounds)
        transitions["actions"] = rescale_actions(transitions["actions"], low, high, str(path))
        metadata["actions_rescaled_from"] = {"low": low.tolist(), "high": high.tolist()}
        metadata.pop("action_space", None)  # Minari's: the writer records the new [-1, 1] one
        if not recorded:
            raise DatasetError(
                f"{path} records no env: pass the env whose bounds the actions are in (--env)"
            )
        recorded["unit_actions"] = True
    if recorded:
        metadata["env"] = recorded
    return write(out, transitions, metadata, layout, force)
