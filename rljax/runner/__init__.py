"""Runs agents: configs and sweeps, chunked jitted training, checkpoints, logs, plots."""
