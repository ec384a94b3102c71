"""Quality of what a teacher wrote as augmentations of the synthetic facts world: the share of its statements
that are true in the world, and the share of the world's reversals it produced (why an LLM teacher helps the
student, or does not). The synthetic world knows its facts (fiat_jax/data/synthetic.py), so both are exact.

    python -m fiat_jax.sweeps.augment_quality --teacher=local --documents=2 --out=evidence/augmented/x.json
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from fiat_jax.data import synthetic
from fiat_jax.errors import UserError
from fiat_jax.methods import augmentation, run

_SPACE = re.compile(r"\s+")


def normalise(statement: str) -> str:
    """Lower case, one space between words, one final full stop: how statements are compared."""
    text = _SPACE.sub(" ", statement.strip().strip('"').strip()).rstrip(".").strip().lower()
    return f"{text}." if text else ""


def world_statements(data: Any, language: str = "en") -> tuple[set[str], set[str], set[str]]:
    """(true, reversal, false) statement sets of a world. True: its written facts, each one's rephrasing and
    reversal, the inferences from all of them together (the exact rule-based augmenter over the whole world) and
    every item's correct statement (held-out facts included); reversal: the reversals of the written facts;
    false: every item's question completed with a wrong option."""
    rules = augmentation.RuleBasedAugmenter(language)
    sentences = [s for d in data.documents if d["language"] == language
                 for s in augmentation.split_sentences(d["text"])]
    true = {normalise(s) for s in sentences}
    reversal = set()
    for s in sentences:
        local = rules.local(s)
        true |= {normalise(x) for x in local}
        reversal |= {normalise(x) for x in local[1:]}
    true |= {normalise(x) for x in rules.global_(" ".join(sentences))}
    false = set()
    for item in data.items:
        if item["language"] != language:
            continue
        true.add(normalise(synthetic.item_statement(item)))
        false |= {normalise(f"{item['question']} {o}") for k, o in enumerate(item["options"]) if k != item["answer"]}
    return true, reversal, false - true


def quality(rows: Sequence[Mapping[str, Any]], data: Any, *, language: str = "en",
            documents: Sequence[Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """Shares (0..100) over the teacher's statements (rows with ``source`` local/global, as
    :func:`fiat_jax.methods.augmentation.augment_documents` writes them): true, known false (an item's question
    with a wrong option), and true reversals; and the reversal coverage: the share of the reversals of the facts
    in ``documents`` (default: the whole world) that the teacher wrote."""
    true, _, false = world_statements(data, language)
    rules = augmentation.RuleBasedAugmenter(language)
    wanted = {normalise(x) for d in (documents or data.documents) for s in augmentation.split_sentences(d["text"])
              for x in rules.local(s)[1:]}
    made = [normalise(str(r["text"])) for r in rows if r.get("source") in ("local", "global")]
    share = (lambda n: 100.0 * n / len(made)) if made else (lambda n: float("nan"))
    return {"statements": len(made), "true_pct": share(sum(s in true for s in made)),
            "false_pct": share(sum(s in false for s in made)),
            "reversal_pct": share(sum(s in wanted for s in made)),
            "reversal_coverage_pct": (100.0 * len(wanted & set(made)) / len(wanted)) if wanted else float("nan"),
            "reversals_possible": len(wanted)}


def measure(*, teacher: Any, seed: int = 0, documents: int = 2, facts_per_document: int = 4,
            language: str = "en", max_new_tokens: int = 96) -> dict[str, Any]:
    """Augment the first ``documents`` documents of world ``seed`` with ``teacher`` (local and global), and
    score what it wrote."""
    data = synthetic.generate(seed=seed, languages=(language,), facts_per_document=facts_per_document)
    docs = data.documents[:documents]
    if not docs:
        raise UserError("augment quality: no documents to augment")
    start = time.perf_counter()
    rows = augmentation.augment_documents(docs, teacher=teacher, local=True, global_=True,
                                          max_new_tokens=max_new_tokens)
    out = {"teacher": str(getattr(teacher, "identity", type(teacher).__name__)), "seed": seed,
           "documents": len(docs), "facts_per_document": facts_per_document, "max_new_tokens": max_new_tokens,
           "wall_s": round(time.perf_counter() - start, 1),
           **quality(rows, data, language=language, documents=docs)}
    out["rows"] = [r for r in rows if r["source"] in ("local", "global")]
    return out


def _teacher(name: str) -> Any:
    if name == "rule-based":
            return augmentation.RuleBasedAugmenter()
    if name == "local":
        # Named, not imported here: the JAX teacher loads only when asked for.
        return run.lazy_call(target="fiat_jax.teachers.local:local_teacher")
    raise UserError(f"augment quality: teacher {name!r}: choose rule-based (simulated) or local (SmolLM2-135M)")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default="local", help="local (the embedded SmolLM2-135M-Instruct) or rule-based")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--documents", type=int, default=2, help="documents of 4 facts to augment")
    p.add_argument("--max_new_tokens", type=int, default=96)
    p.add_argument("--out", default=None, help="write the measurement (JSON) here")
    args = p.parse_args(argv)
    try:
        result = measure(teacher=_teacher(args.teacher), seed=args.seed, documents=args.documents,
                         max_new_tokens=args.max_new_tokens)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    text = json.dumps(result, indent=1, ensure_ascii=False)
    if args.out:
        pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(args.out).write_text(text + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
