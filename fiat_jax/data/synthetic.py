"""A controlled-generalisation data set: documents of facts about nonsense entities, and test items that probe
what a model learnt from them.

Facts (one world, stated in every language):
  - relations: "A is the parent of B" (chains A -> B -> C give two-hop items),
  - comparisons: "A is taller than B",
  - category memberships: "A is a wug" with category properties "Every wug is blue".
Test items (multiple choice, one correct option, in every language):
  - ``rephrase``: a trained fact asked in other words, same direction,
  - ``reversal``: a trained fact asked in the reverse direction (its reverse is never written in a document),
  - ``two_hop``: grandparent or category-property syllogisms from two trained facts,
  - ``held_out``: facts that exist in the world but are never written in a document.
Everything is drawn from one ``numpy`` generator seeded by ``seed``: two runs with one seed are identical.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from fiat_jax.errors import UserError

# Per language: forward templates (written in documents), rephrasings and reversals (only in test items).
TEMPLATES: dict[str, dict[str, str]] = {
    "en": {"parent": "{a} is the parent of {b}.", "parent_re": "{a} has a child called", "parent_rev":
           "{b} is the child of", "grand": "{a} is the grandparent of", "taller": "{a} is taller than {b}.",
           "taller_re": "{a} is of greater height than", "taller_rev": "{b} is shorter than",
           "member": "{a} is a {c}.", "property": "Every {c} is {p}.", "member_q": "{a} is", "parent_q":
           "{a} is the parent of", "taller_q": "{a} is taller than"},
    "de": {"parent": "{a} ist ein Elternteil von {b}.", "parent_re": "{a} hat ein Kind namens", "parent_rev":
           "{b} ist das Kind von", "grand": "{a} ist ein Großelternteil von", "taller": "{a} ist größer als {b}.",
           "taller_re": "{a} überragt", "taller_rev": "{b} ist kleiner als", "member": "{a} ist ein {c}.",
           "property": "Jeder {c} ist {p}.", "member_q": "{a} ist", "parent_q": "{a} ist ein Elternteil von",
           "taller_q": "{a} ist größer als"},
    "es": {"parent": "{a} es el progenitor de {b}.", "parent_re": "{a} tiene un hijo llamado", "parent_rev":
           "{b} es hijo de", "grand": "{a} es el abuelo de", "taller": "{a} es más alto que {b}.",
           "taller_re": "{a} tiene más estatura que", "taller_rev": "{b} es más bajo que",
           "member": "{a} es un {c}.", "property": "Todo {c} es {p}.", "member_q": "{a} es",
           "parent_q": "{a} es el progenitor de", "taller_q": "{a} es más alto que"},
    "fr": {"parent": "{a} est le parent de {b}.", "parent_re": "{a} a un enfant nommé", "parent_rev":
           "{b} est l'enfant de", "grand": "{a} est le grand-parent de", "taller": "{a} est plus grand que {b}.",
           "taller_re": "{a} a une taille supérieure à", "taller_rev": "{b} est plus petit que",
           "member": "{a} est un {c}.", "property": "Tout {c} est {p}.", "member_q": "{a} est",
           "parent_q": "{a} est le parent de", "taller_q": "{a} est plus grand que"},
}
PROPERTIES: dict[str, list[str]] = {
    "en": ["blue", "round", "loud", "heavy", "bright", "soft"],
    "de": ["blau", "rund", "laut", "schwer", "hell", "weich"],
    "es": ["azul", "redondo", "ruidoso", "pesado", "brillante", "suave"],
    "fr": ["bleu", "rond", "bruyant", "lourd", "brillant", "doux"],
}
_ONSETS = ["bl", "dr", "fl", "gr", "kl", "m", "n", "pr", "sk", "t", "v", "z", "sh", "qu"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ou"]
_CODAS = ["b", "d", "g", "k", "l", "m", "n", "r", "s", "x", "nt", "sk"]


@dataclasses.dataclass(frozen=True)
class SyntheticData:
    documents: list[dict[str, Any]]  # {"id", "language", "text"}
    items: list[dict[str, Any]]      # {"id", "language", "kind", "question", "options", "answer"}
    seed: int


def _names(rng: np.random.Generator, n: int, *, capital: bool) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < n:
        syllables = rng.integers(2, 4)
        word = "".join(_ONSETS[rng.integers(len(_ONSETS))] + _VOWELS[rng.integers(len(_VOWELS))]
                       for _ in range(syllables)) + _CODAS[rng.integers(len(_CODAS))]
        word = word.capitalize() if capital else word
        if word not in seen:
            seen.add(word)
            out.append(word)
    return out


def generate(*, seed: int = 0, num_chains: int = 12, num_comparisons: int = 12, num_members: int = 12,
             num_categories: int = 4, held_out_fraction: float = 0.25, num_options: int = 4,
             languages: tuple[str, ...] = ("en", "de", "es", "fr"), facts_per_document: int = 4) -> SyntheticData:
    """Build the world, its documents and its test items (see the module docstring)."""
    unknown = [lang for lang in languages if lang not in TEMPLATES]
    if unknown:
        raise UserError(f"synthetic facts: no templates for languages {unknown}; have {sorted(TEMPLATES)}")
    rng = np.random.default_rng(seed)
    people = _names(rng, 3 * num_chains + 2 * num_comparisons + num_members, capital=True)
    categories = _names(rng, num_categories, capital=False)
    it = iter(people)
    chains = [(next(it), next(it), next(it)) for _ in range(num_chains)]
    comparisons = [(next(it), next(it)) for _ in range(num_comparisons)]
    members = [(next(it), categories[rng.integers(num_categories)]) for _ in range(num_members)]
    cat_props = {c: int(rng.integers(len(PROPERTIES["en"]))) for c in categories}

    # Held out: whole facts never written anywhere (a chain's links stay trained so two-hop items are fair).
    n_held = int(round(held_out_fraction * num_comparisons))
    held_cmp = set(rng.choice(num_comparisons, size=n_held, replace=False).tolist())
    n_held_par = int(round(held_out_fraction * num_chains))
    held_par = set(rng.choice(num_chains, size=n_held_par, replace=False).tolist())  # link (b, c) held out

    documents: list[dict[str, Any]] = []
    items: list[dict[str, Any]] = []
    for lang in languages:
        t, props = TEMPLATES[lang], PROPERTIES[lang]
        sentences: list[str] = []
        for i, (a, b, c) in enumerate(chains):
            sentences.append(t["parent"].format(a=a, b=b))
            if i not in held_par:
                sentences.append(t["parent"].format(a=b, b=c))
        for i, (a, b) in enumerate(comparisons):
            if i not in held_cmp:
                sentences.append(t["taller"].format(a=a, b=b))
        for x, cat in members:
            sentences.append(t["member"].format(a=x, c=cat))
        for cat in categories:
            sentences.append(t["property"].format(c=cat, p=props[cat_props[cat]]))
        order = rng.permutation(len(sentences))
        for d, start in enumerate(range(0, len(order), facts_per_document)):
            text = " ".join(sentences[j] for j in order[start:start + facts_per_document])
            documents.append({"id": f"synthetic/{seed}/{lang}/doc{d:04d}", "language": lang, "text": text})

        def item(kind: str, question: str, answer: str, pool: list[str], n: int) -> None:
            distractors = [p for p in pool if p != answer and p not in question.split()]
            picks = rng.choice(len(distractors), size=min(num_options - 1, len(distractors)), replace=False)
            options = [answer] + [distractors[k] for k in picks]
            perm = rng.permutation(len(options))
            options = [options[k] for k in perm]
            items.append({"id": f"synthetic/{seed}/{lang}/{kind}{n:04d}", "language": lang, "kind": kind,
                          "question": question, "options": options, "answer": options.index(answer)})

        for i, (a, b, c) in enumerate(chains):
            item("rephrase", t["parent_re"].format(a=a), b, people, i)
            item("reversal", t["parent_rev"].format(b=b), a, people, i)
            if i in held_par:
                item("held_out", t["parent_q"].format(a=b), c, people, i)
            else:
                item("two_hop", t["grand"].format(a=a), c, people, i)
        for i, (a, b) in enumerate(comparisons):
            if i in held_cmp:
                item("held_out", t["taller_q"].format(a=a), b, people, 1000 + i)
            else:
                item("rephrase", t["taller_re"].format(a=a), b, people, 1000 + i)
                item("reversal", t["taller_rev"].format(b=b), a, people, 1000 + i)
        for i, (x, cat) in enumerate(members):
            item("two_hop", t["member_q"].format(a=x), props[cat_props[cat]], props, 2000 + i)
    data = SyntheticData(documents=documents, items=items, seed=seed)
    check_no_leaks(data)
    return data


def item_statement(item: dict[str, Any]) -> str:
    """The item's question completed with its correct option (the sentence a model would have to have seen)."""
    return f"{item['question']} {item['options'][item['answer']]}"


def check_no_leaks(data: SyntheticData) -> None:
    """Reversal and held-out statements must never be written in a training document (else the test is void)."""
    corpus = {lang: " ".join(d["text"] for d in data.documents if d["language"] == lang)
              for lang in {d["language"] for d in data.documents}}
    for it in data.items:
        if it["kind"] in ("reversal", "held_out"):
            statement = item_statement(it)
            if statement in corpus[it["language"]]:
                raise AssertionError(f"synthetic item {it['id']} leaks into training documents: {statement!r}")
