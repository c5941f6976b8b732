"""rljax: JAX-native reinforcement learning with single-file agents and vmapped sweeps."""

_EXPORTS = {
    "make": "rljax.envs",
    "load_policy": "rljax.runner.policy",
    "evaluate_run": "rljax.runner.policy",
    "export_policy": "rljax.runner.policy",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    # Imported on first use: gymnax starts JAX's backend when imported, and a multi-process run
    # must call jax.distributed.initialize before that (see rljax.runner.distributed).
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'rljax' has no attribute {name!r}")
