"""Parameter-efficient tuning as model transforms (no model is forked or edited).

* :mod:`fiat_jax.peft.lora` — LoRA adapters on dense kernels chosen by regex; merge; HF-peft export / import
  (:mod:`fiat_jax.peft.hf_adapter`).
* :mod:`fiat_jax.peft.prompt_tuning` — a learned soft prompt prepended to the encoder (T5) / decoder input.
* :mod:`fiat_jax.peft.trainable` — the NNX filter choosing what trains (``full``, ``lora``, ``prompt``, ...).
* :mod:`fiat_jax.peft.wrapper` — the ``PeftModel`` wrapper both transforms return.

Importing this package imports nothing heavy and registers nothing.
"""
