"""The vocabulary every task's output features use, chosen in gin.

Until the student's own vocabulary is bound (``get_vocabulary.vocabulary = @...``), tasks use bytes, which need
no model file and cover every script.
"""

from __future__ import annotations

import gin
import seqio


@gin.configurable
def get_vocabulary(*, vocabulary: seqio.Vocabulary | None = None) -> seqio.Vocabulary:
    return vocabulary if vocabulary is not None else seqio.ByteVocabulary()
