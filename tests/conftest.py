"""Test-wide settings, applied before JAX is imported (subprocesses inherit them).

A precaution for CI's small machine: XLA's multi-threaded Eigen pool on CPU has been seen to
wedge on vmapped programs on small, busy machines (all threads idle inside execution; see
PyAutoLabs/PyAutoFit#1528), so the tests run with it off, at some cost in speed.
"""

import os

os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_cpu_multi_thread_eigen=false"]
).strip()
