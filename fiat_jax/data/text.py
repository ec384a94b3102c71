"""Text splitting shared by the teacher recipes (``expand: sentences``) and augmented fine-tuning."""

from __future__ import annotations

import re

_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+")


def split_sentences(text: str) -> list[str]:
    """Sentences of a document (split after ., !, ? and their CJK forms)."""
    return [s.strip() for s in _SENTENCE_END.split((text or "").strip()) if s.strip()]
