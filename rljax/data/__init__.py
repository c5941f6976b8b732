"""Offline datasets: one device ``Dataset``; D4RL, Minari (0.5) and OGBench files, local only.

Nothing here downloads: a missing file raises DatasetNotFound with the path that was looked at.
"""

from rljax.data.d4rl import load_d4rl, qlearning_arrays, read_d4rl, write_d4rl
from rljax.data.dataset import (
    ChecksumMismatch,
    Dataset,
    DatasetError,
    DatasetExists,
    DatasetNotFound,
    MalformedDataset,
    UnwritableOutput,
    check_transitions,
    check_values,
    episode_returns,
    sample,
)
from rljax.data.files import (
    D4RL_KINDS,
    GENERATED_TAGS,
    MAZE_KINDS,
    MBRCSL_MAZE,
    data_dir,
    dataset_dirs,
    generate_command,
    load,
    local_datasets,
    prepare_outputs,
    read_metadata,
    resolve,
    source_env,
)
from rljax.data.minari import episodes_to_arrays, load_minari, read_minari, write_minari
from rljax.data.ogbench import load_ogbench, read_ogbench, write_ogbench
from rljax.data.scores import (
    D4RL_REFERENCES,
    NoReferenceScores,
    normalized_score,
    references,
)

__all__ = [
    "D4RL_KINDS",
    "D4RL_REFERENCES",
    "GENERATED_TAGS",
    "MAZE_KINDS",
    "MBRCSL_MAZE",
    "ChecksumMismatch",
    "Dataset",
    "DatasetError",
    "DatasetExists",
    "DatasetNotFound",
    "MalformedDataset",
    "NoReferenceScores",
    "UnwritableOutput",
    "check_transitions",
    "check_values",
    "episode_returns",
    "data_dir",
    "dataset_dirs",
    "episodes_to_arrays",
    "generate_command",
    "load",
    "load_d4rl",
    "load_minari",
    "load_ogbench",
    "local_datasets",
    "read_metadata",
    "normalized_score",
    "prepare_outputs",
    "qlearning_arrays",
    "read_d4rl",
    "read_minari",
    "read_ogbench",
    "references",
    "resolve",
    "sample",
    "source_env",
    "write_d4rl",
    "write_minari",
    "write_ogbench",
]
