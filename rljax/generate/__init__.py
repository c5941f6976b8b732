"""Dataset generation, above the runner: behaviour agents trained through it, and their rollouts.

``rljax.generate.d4rl`` makes D4RL-style datasets from a behaviour agent per recipe
(``rljax.generate.recipes``); ``rljax.generate.mazes`` makes OGBench-style maze datasets from
the mazes' oracle. Both write through ``rljax.data``, which only reads and writes files.
"""
