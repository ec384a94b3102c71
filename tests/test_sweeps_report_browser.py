"""report.html in a real browser: headless Chromium loads it, and a script in the page measures what a reader
sees: the sections and tables are there, every plot decodes, and nothing is wider than the window."""
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from fiat_jax.sweeps import report

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
WIDTH = 1024
METRICS = ("accuracy", "accuracy_held_out", "accuracy_rephrase", "accuracy_reversal", "accuracy_two_hop")
_CHECK = """<script>window.addEventListener('load', function () {
  var d = document.documentElement, w = d.clientWidth;
  var boxes = Array.from(document.querySelectorAll('body *')).filter(function (e) {
    var r = e.getBoundingClientRect(); return r.width > 0 && r.right > w + 0.5; });
  var out = {width: w, scrollWidth: d.scrollWidth,
    h2: Array.from(document.querySelectorAll('h2')).map(function (e) { return e.textContent; }),
    tables: Array.from(document.querySelectorAll('table')).map(function (t) { return t.rows.length; }),
    images: Array.from(document.images).map(function (i) { return [i.naturalWidth, i.naturalHeight,
      Math.round(i.getBoundingClientRect().width)]; }),
    overflowing: boxes.map(function (e) { return e.tagName + ': ' + e.textContent.slice(0, 60); })};
  var pre = document.createElement('pre'); pre.id = 'fiat-check'; pre.style.display = 'none';
  pre.textContent = JSON.stringify(out); document.body.appendChild(pre);
});</script>"""


def _browser():
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("FIAT_REQUIRE_CHROMIUM"):  # .ci/run installs it: missing there is a failure, not a skip
        pytest.fail(f"FIAT_REQUIRE_CHROMIUM is set but none of {', '.join(BROWSERS)} is on PATH")
    pytest.skip("no Chromium on this host (CI installs Debian's chromium)")


def _measure(browser, page, tmp_path, extra_html=""):
    probe = tmp_path / f"probe_{len(list(tmp_path.glob('probe_*')))}.html"
    probe.write_text(page.read_text().replace("</body>", extra_html + _CHECK + "</body>"))
    done = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           f"--window-size={WIDTH},800", "--virtual-time-budget=10000", "--dump-dom",
                           probe.as_uri()], capture_output=True, text=True, timeout=180)
    found = re.search(r'<pre id="fiat-check"[^>]*>(.*?)</pre>', done.stdout, re.S)
    assert found, f"the page's check did not run (exit {done.returncode}): {done.stderr[-500:]}"
    return json.loads(found.group(1).replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">"))


def _rows():
    rng = np.random.default_rng(0)
    rows = []
    for method, kind, p in (("FT (LoRA, rank 4, every attention and MLP projection)", "finetune_lora", 0.4),
                            ("FIAT", "fiat", 0.7), ("ICL", "icl", 0.3)):
        for size in (16, 64):
            for seed in range(3):
                metrics, items = {}, {}
                for lang in ("sw", "bn", "te", "th"):
                    metrics[lang], items[f"mgsm_{lang}"] = {}, {}
                    for name in METRICS:  # as many columns as the synthetic facts' accuracy by kind
                        hits = 100.0 * (rng.random(40) < p)
                        metrics[lang][name] = float(hits.mean())
                        items[f"mgsm_{lang}"][name] = {"ids": [f"q{i}" for i in range(40)], "targets": [],
                                                       "values": hits.tolist()}
                rows.append({"run_id": f"{kind}-{size}-{seed}-" + "x" * 60, "method": method, "seed": seed,
                             "train_examples": size, "metrics": metrics, "variant": {"MODEL": "smollm2_tiny"},
                             "wall_s": 2.0, "tokens_seen": 1000, "params_trained": 10, "config_hash": f"{kind}{size}{seed}",
                             "extra": {"task": "mgsm", "method": kind, "item_scores": items, "params_total": 100,
                                       "num_train_examples": size, "provenance": {
                                           "git_commit": "f" * 40, "git_dirty": False, "teacher": "local:smollm2",
                                           "packages": {n: "1.0" for n in report.run_results.PROVENANCE_PACKAGES},
                                           "hardware": "x86_64 2 CPUs"}}})
    return rows


@pytest.mark.slow
def test_report_html_renders_in_chromium_without_overflow(tmp_path):
    browser = _browser()
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    page = report.report(results_dir=sweep) / "report.html"
    seen = _measure(browser, page, tmp_path)
    assert seen["h2"] == ["Results", "Paired comparisons", "Per-language breakdown", "Cost", "Failed or missing runs",
                          "Provenance", "Plots"]
    # Per size: 1 result table (5 metrics) and 2 of paired differences (3 + 2 metrics); 5 per-language tables; cost,
    # failures, provenance. Header + rows each.
    assert len(seen["tables"]) == 2 * 3 + 5 + 3 and all(n >= 2 for n in seen["tables"])
    assert len(seen["images"]) == 2 * len(METRICS)  # per metric a scale curve with bands and a bar chart
    assert all(w > 100 and h > 100 and 0 < shown <= seen["width"] for w, h, shown in seen["images"])
    assert seen["scrollWidth"] <= seen["width"] and seen["overflowing"] == [], seen["overflowing"]
    # The check can fail: a block wider than the window is caught.
    wide = _measure(browser, page, tmp_path, extra_html=f"<div style='width:{2 * WIDTH}px'>wide</div>")
    assert wide["scrollWidth"] > wide["width"] and any(o.startswith("DIV: wide") for o in wide["overflowing"])
