"""Test-wide settings, applied before JAX starts its backend (CLI subprocesses set the same).

Precautions for CI's small machine, where XLA's CPU runtime has been seen to leave a vmapped
program stuck with every thread idle: its multi-threaded Eigen pool is off (PyAutoFit#1528, an
XLA_FLAGS setting that subprocesses inherit), and so is asynchronous CPU dispatch
(jax-ml/jax#25861), as in ``rljax.cli.main``.
"""

import os

os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_cpu_multi_thread_eigen=false"]
).strip()

import jax  # noqa: E402  (after XLA_FLAGS, which XLA reads once)

jax.config.update("jax_cpu_enable_async_dispatch", False)
