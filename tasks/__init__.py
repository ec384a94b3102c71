"""seqio task registrations. Nothing registers on import: call ``register_all()`` (gin-configurable).

    import tasks
    tasks.register_all()                      # DATA_DIR from gin (register_all.data_dir = %DATA_DIR)
    seqio.get_mixture_or_task("mgsm_sw")

Calling it again replaces the tasks it registered (idempotent), e.g. with another ``num_train_examples``.
"""

from __future__ import annotations

from collections.abc import Mapping

import gin

from fiat_jax.data import feature_converters as _feature_converters  # noqa: F401 - gin configurables
from fiat_jax.data import preprocessors, splits
from fiat_jax.data import vocab as _vocab  # noqa: F401 - get_vocabulary is bound in gin files
from fiat_jax.errors import UserError
from tasks import common, multilingual, synthetic_facts, teacher_tasks


@gin.configurable
def register_all(*, data_dir: str | None = None, tfds_dir: str | None = None, seed: int = 0,
                 split_fractions: Mapping[str, float] | None = None, num_train_examples: int | None = None,
                 strict: bool = False, mgsm_num_exemplars: int = 0, chat_template: str | None = None,
                 xtreme_up_languages: tuple[str, ...] | None = None, synthetic_seed: int = 0,
                 teacher_dir: str | None = None, fiat_instruction: str | None = None) -> list[str]:
    """Register every task and mixture; returns the task names.

    data_dir: the DATA_DIR holding the published files (default: <repo>/../shared/data when it exists).
    tfds_dir: where TFRecords are prepared (default ~/.cache/fiat_jax/tfds; a subdirectory per data_dir+seed).
    seed, split_fractions: the seeded cut of single-split sources. num_train_examples: nested cap on train.
    strict: a bad row fails instead of being reported and skipped. mgsm_num_exemplars: few-shot CoT prefix.
    chat_template: wrap inputs for a decoder student (e.g. preprocessors.SMOLLM2_CHAT).
    teacher_dir: register ``<task>_teacher`` tasks from materialised teacher outputs found there.
    """
    data_dir = data_dir or common.default_data_dir()
    if data_dir is None:
        raise UserError("no DATA_DIR: bind register_all.data_dir (gin macro DATA_DIR) to the data directory")
    names = multilingual.register(
        data_dir=str(data_dir), tfds_dir=str(tfds_dir or common.default_tfds_dir()), seed=seed,
        split_fractions=split_fractions or splits.DEFAULT_FRACTIONS, num_train_examples=num_train_examples,
        strict=strict, mgsm_num_exemplars=mgsm_num_exemplars, chat_template=chat_template,
        xtreme_up_languages=xtreme_up_languages)
    names += synthetic_facts.register(seed=synthetic_seed)
    if teacher_dir:
        names += teacher_tasks.register(teacher_dir=str(teacher_dir), instruction=fiat_instruction,
                                        template=preprocessors.DEFAULT_FIAT_TEMPLATE, strict=strict)
    return names
