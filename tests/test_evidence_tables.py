"""The README's Evidence tables are what the shipped commands derive from the shipped results files: one function
per paper (evid-aug, evid-fiat, evid-phased each add theirs)."""
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _readme_block(paper: str) -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(rf"<!-- evidence:{paper} -->\n(.*?)<!-- /evidence:{paper} -->", text, re.S)
    assert match, f"README.md has no <!-- evidence:{paper} --> ... <!-- /evidence:{paper} --> block"
    return match.group(1)


def test_fiat_table_is_derived_from_the_shipped_results():
    """`python -m fiat_jax.sweeps.evidence_fiat evidence/fiat/results.jsonl` prints the README's FIAT table; with
    no shipped results the block must say so and hold no table."""
    from fiat_jax.sweeps import evidence_fiat

    block = _readme_block("fiat")
    results = ROOT / "evidence" / "fiat" / "results.jsonl"
    if not results.exists():
        assert "| method |" not in block and "not run" in block
        return
    table = evidence_fiat.evidence_table(evidence_fiat.read_rows(results))
    assert table in block, "README's FIAT table differs from the one derived from evidence/fiat/results.jsonl"
    assert all("simulated" in ln for ln in table.splitlines() if "controlled-teacher" in ln)
