"""Readers of the published files: exact counts, bad rows reported with file:line, missing files named."""

import json

import pytest

from fiat_jax.data import readers, sources, splits
from fiat_jax.data.readers import RowReport
from fiat_jax.errors import UserError


def test_mgsm_has_250_per_language(shared_data_dir):
    for lang in sources.MGSM_LANGUAGES:
        report = RowReport(strict=True)
        rows = sources.read_mgsm(str(shared_data_dir), lang, report)["test"]
        assert len(rows) == 250, lang
        assert len({r["id"] for r in rows}) == 250
    assert len(sources.mgsm_exemplars(str(shared_data_dir), "sw")) == 8


def test_xcopa_has_100_validation_500_test(shared_data_dir):
    for lang in sources.XCOPA_LANGUAGES:
        out = sources.read_xcopa(str(shared_data_dir), lang, RowReport(strict=True))
        assert (len(out["validation"]), len(out["test"])) == (100, 500), lang
        assert {r["label"] for r in out["test"]} == {0, 1}


def test_tydiqa_counts_match_the_files(shared_data_dir):
    for lang, language in sources.TYDIQA_LANGUAGES.items():
        with open(shared_data_dir / "tydiqa_goldp" / f"{language}_dev.json", encoding="utf-8") as f:
            doc = json.load(f)
        expected = sum(len(p["qas"]) for a in doc["data"] for p in a["paragraphs"])
        rows = sources.read_tydiqa(str(shared_data_dir), lang, RowReport(strict=True))["validation"]
        assert len(rows) == expected, lang
    assert len(sources.read_tydiqa(str(shared_data_dir), "en", RowReport())["validation"]) == 440


def test_alpaca_scored_reports_its_nine_empty_responses(shared_data_dir):
    # The published stage-3 file has 6,889 rows, 9 of them with an empty response: reported, not hidden.
    report = RowReport()
    rows = sources.read_alpaca_scored(str(shared_data_dir), "en", report)["train"]
    assert len(rows) + len(report.issues) == 6889 and len(report.issues) == 9
    assert report.issues[0].line == 2161 and report.issues[0].reason == "empty response"
    assert all(3.5 <= r["score"] <= 5 for r in rows)
    with pytest.raises(UserError, match="en-alpaca52k-stage3.jsonl:2161: empty response"):
        sources.read_alpaca_scored(str(shared_data_dir), "en", RowReport(strict=True))


def _write(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def test_bad_rows_are_counted_with_file_and_line(tmp_path):
    good = {"premise": "p", "choice1": "a", "choice2": "b", "question": "cause", "label": 0, "idx": 0}
    rows = [json.dumps(good),
            json.dumps({**good, "idx": 1, "label": 7}),          # bad label, line 2
            json.dumps({**good, "idx": 2, "premise": "  "}),     # empty text, line 3
            json.dumps({k: v for k, v in good.items() if k != "choice2"}),  # missing field, line 4
            "{not json"]                                           # line 5
    _write(tmp_path / "xcopa" / "val.et.jsonl", rows)
    _write(tmp_path / "xcopa" / "test.et.jsonl", [json.dumps(good)])
    report = RowReport()
    out = sources.read_xcopa(str(tmp_path), "et", report)
    assert len(out["validation"]) == 1 and report.read == 2
    lines = [(i.line, i.reason) for i in report.issues]
    assert [line for line, _ in lines] == [2, 3, 4, 5]
    assert "bad label" in lines[0][1] and "empty text" in lines[1][1] and "missing field 'choice2'" in lines[2][1]
    assert all(i.path.endswith("val.et.jsonl") for i in report.issues)
    with pytest.raises(UserError, match=r"val\.et\.jsonl:2: bad label"):
        sources.read_xcopa(str(tmp_path), "et", RowReport(strict=True))


def test_bad_mgsm_answer_is_reported(tmp_path):
    _write(tmp_path / "mgsm" / "mgsm_en.tsv", ["What is 1+1?\t2", "Broken row\tmany", "\t3"])
    report = RowReport()
    rows = sources.read_mgsm(str(tmp_path), "en", report)["test"]
    assert len(rows) == 1
    assert [(i.line, i.reason.split(":")[0]) for i in report.issues] == [(2, "bad label"), (3, "empty question")]


def test_missing_file_names_path_and_source(tmp_path):
    with pytest.raises(UserError) as err:
        sources.read_mgsm(str(tmp_path), "sw", RowReport())
    message = str(err.value)
    assert str(tmp_path / "mgsm" / "mgsm_sw.tsv") in message and "github.com/google-research/url-nlp" in message
    assert "\n" not in message


def test_fixtures_in_published_formats(repo_root):
    data = str(repo_root / "tests" / "fixtures" / "data")
    xor = sources.read_xor_attriqa(data, "bn", RowReport(strict=True))
    assert {k: len(v) for k, v in xor.items()} == {"train": 2, "validation": 1, "test": 3}
    test = xor["test"]
    assert [r["label"] for r in test] == [1, 1, 0]
    assert test[1]["passage_language"] == "en" and test[1]["passage"].startswith("Rabindranath")
    up = sources.read_xtreme_up_qa(data, "sw", RowReport(strict=True), setting="qa_cross_lang")
    assert {k: len(v) for k, v in up.items()} == {"train": 1, "validation": 1, "test": 1}
    assert up["test"][0]["answers"] == ["William Shakespeare"]


def test_cut_is_seeded_exact_and_caps_nest():
    examples = [{"id": f"x{i}"} for i in range(250)]
    a = splits.cut(examples, seed=3)
    b = splits.cut(list(reversed(examples)), seed=3)
    assert {k: len(v) for k, v in a.items()} == {"train": 125, "validation": 25, "test": 100, "full": 250}
    assert a == {k: sorted(v, key=lambda e: e["rank"]) for k, v in b.items()}  # order of input irrelevant
    ids = [set(e["id"] for e in a[s]) for s in ("train", "validation", "test")]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert splits.cut(examples, seed=4)["train"] != a["train"]
    first = lambda n: {e["id"] for e in a["train"] if e["rank"] < n}  # noqa: E731
    assert len(first(10)) == 10 and first(10) < first(100)


def test_readers_module_knows_how_to_get_every_source():
    for name in ("mgsm", "xcopa", "tydiqa_goldp", "alpaca_scored", "xor_attriqa", "xtreme_up", "teacher"):
        assert readers.HOW_TO_GET[name]
