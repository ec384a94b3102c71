"""Data for fiat_jax: readers of the published files, TFDS builders, seqio preprocessors, metrics, synthetic data.

Nothing here registers seqio tasks; ``tasks.register_all()`` does that (see ``tasks/__init__.py``).
"""
