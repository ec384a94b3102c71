"""T5X-style training: jitted partitioned step, orbax checkpoints with exact resume, metrics, seqio evaluation.

Modules are imported lazily by the CLI (``fiat train`` -> :mod:`fiat_jax.train.trainer`); nothing runs at import.
"""
