"""The methods: ICL, fine-tuning (full / LoRA / prompt), FIAT and its ablations, augmented fine-tuning, phased
instruction tuning, pairwise win rate. ``run.run`` is the gin entry point of ``fiat run``."""
