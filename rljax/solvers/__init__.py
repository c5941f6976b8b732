"""Exact tabular solvers, one self-contained, copyable file each: not agents, so they have no
five-name contract (Config, init, update, train, act) and no LEARNS_FROM declaration."""
