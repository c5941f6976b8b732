"""What a run records about where it ran, and the persistent compilation cache.

Bit-for-bit reproducibility holds for the same seed and config on the same backend and device
kind with the same versions of jax, jaxlib and XLA flags; other backends, devices or versions
give results equal in distribution, not in bits.
"""

import datetime
import importlib.metadata
import os
import platform
import sys
from pathlib import Path

import jax

LIBRARIES = ["jax", "jaxlib", "flax", "optax", "chex", "distrax", "gymnax", "brax"]
LIBRARIES += ["orbax-checkpoint", "numpy", "rljax"]
CACHE_MIN_COMPILE_SECONDS = 0.2  # below it, reading the cache entry saves too little


def versions() -> dict:
    found = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def host() -> str:
    """The CPU model and the cores this process may use: a CPU backend's only device name."""
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]  # fmt: skip
        model = names[0] if names else model
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model}, {cores} cores"


def environment() -> dict:
    """Everything that decides whether two runs can agree bit for bit."""
    return {
        "time": datetime.datetime.now().isoformat(timespec="seconds"),
        "argv": sys.argv,
        "versions": versions(),
        "backend": jax.default_backend(),
        "device_kind": jax.devices()[0].device_kind,
        "device_count": jax.device_count(),
        "host": host(),
        "process_count": jax.process_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "jax_threefry_partitionable": bool(jax.config.jax_threefry_partitionable),
        "jax_enable_x64": bool(jax.config.jax_enable_x64),
        "compilation_cache_dir": jax.config.jax_compilation_cache_dir,
    }


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "rljax" / "jax"


def enable_compilation_cache() -> None:
    """Turns on JAX's persistent compilation cache, unless the user configured it already.

    The directory is $RLJAX_CACHE_DIR, or ~/.cache/rljax/jax; RLJAX_CACHE_DIR="" turns it off.
    Programs that compile in over CACHE_MIN_COMPILE_SECONDS are kept (JAX's default is 1 s,
    which leaves out a run's init program: 0.8 s for PPO on a CPU, compiled by every run).
    """
    if jax.config.jax_compilation_cache_dir is not None:
        return
    directory = os.environ.get("RLJAX_CACHE_DIR", str(default_cache_dir()))
    if directory:
        jax.config.update("jax_compilation_cache_dir", directory)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", CACHE_MIN_COMPILE_SECONDS)
