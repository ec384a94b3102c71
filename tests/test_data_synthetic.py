"""The synthetic generator: deterministic per seed, and no test item it must withhold leaks into training."""

import collections
import re

import pytest

from fiat_jax.data import synthetic


@pytest.fixture(scope="module")
def data():
    return synthetic.generate(seed=7)


def test_same_seed_same_data_other_seed_other_data(data):
    assert synthetic.generate(seed=7) == data
    assert synthetic.generate(seed=8).documents != data.documents


def test_reversal_and_held_out_items_never_in_training_documents(data):
    kinds = collections.Counter(i["kind"] for i in data.items)
    assert set(kinds) == {"rephrase", "reversal", "two_hop", "held_out"} and kinds["held_out"] > 0
    for lang in synthetic.TEMPLATES:
        docs = [d["text"] for d in data.documents if d["language"] == lang]
        sentences = [s for text in docs for s in re.split(r"(?<=\.) ", text)]
        for item in data.items:
            if item["language"] != lang or item["kind"] not in ("reversal", "held_out"):
                continue
            statement = synthetic.item_statement(item)
            assert all(statement not in text for text in docs), item
            if item["kind"] == "held_out":
                # The two entities of a held-out fact never share a sentence in any document.
                subject = item["question"].split()[0]
                answer = item["options"][item["answer"]]
                assert not any(subject in s and answer in s for s in sentences), item


def test_items_are_well_formed_and_trained_facts_are_in_documents(data):
    corpus = " ".join(d["text"] for d in data.documents if d["language"] == "en")
    for item in data.items:
        assert len(item["options"]) == 4 and len(set(item["options"])) == 4
        assert 0 <= item["answer"] < 4
    # A rephrase item's fact is written in its forward form.
    item = next(i for i in data.items if i["kind"] == "rephrase" and i["language"] == "en"
                and "child" in i["question"])
    parent = item["question"].split()[0]
    assert f"{parent} is the parent of {item['options'][item['answer']]}." in corpus


def test_leak_check_catches_a_leak(data):
    item = next(i for i in data.items if i["kind"] == "reversal")
    leaked = synthetic.SyntheticData(
        documents=data.documents + [{"id": "x", "language": item["language"],
                                     "text": synthetic.item_statement(item) + "."}],
        items=data.items, seed=data.seed)
    with pytest.raises(AssertionError, match="leaks"):
        synthetic.check_no_leaks(leaked)
