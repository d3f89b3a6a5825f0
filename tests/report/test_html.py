"""report.html: rendered from result.json only, self-contained, and checked in a real browser
(headless Chromium, network blocked): the charts drew as many points as the JSON has stages, no
console error, and the page's figures are the JSON's."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import slimformer as sf
from slimformer.evaluate import EvalOptions, TimingOptions
from slimformer.recipes import CompressOptions
from slimformer.report.pareto import pareto_front
from slimformer.testing import tiny_slim

TEXTS = sf.sample_sentences()[:48]
FAST = CompressOptions(evaluate=EvalOptions(timing=TimingOptions(seq_len=16, batch_size=4, warmup=1, repeats=2,
                                                                  throughput_repeats=2)), calibration_samples=16)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("runs")
    import csv

    with open(d / "stsb.csv", "w", newline="") as f:
        csv.writer(f).writerows([a, b, i % 6] for i, (a, b) in enumerate(zip(TEXTS[:24], TEXTS[24:48])))
    task = sf.load_task("stsb", d / "stsb.csv")
    two = [sf.FFNPruningConfig(amount=0.5), sf.Int8DynamicConfig()]
    sf.compress(tiny_slim("bert", "embedding"), two, task, d / "two", FAST)
    sf.compress(tiny_slim("bert", "embedding"), [sf.SvdConfig(ratio=0.6)], task, d / "svd", FAST)
    return d


def test_every_run_folder_gets_a_self_contained_report(runs):
    page = (runs / "two" / "report.html").read_text()
    result = json.loads((runs / "two" / "result.json").read_text())
    assert "<script src=" not in page and "https://" not in page.split('id="slimformer-data"')[0].split("</script>")[-1]
    embedded = page.split('id="slimformer-data" type="application/json">')[1].split("</script>")[0]
    assert json.loads(embedded)["steps"] == result["steps"]
    assert page.count('class="sf-chart"') >= 3  # two trade-off plots and bytes per module
    assert result["module_bytes"] and sum(result["module_bytes"].values()) > 0


def test_pareto_front():
    pts = [(1.0, 5.0), (2.0, 4.0), (1.5, 3.0), (3.0, 1.0), (2.0, 4.0)]
    assert pareto_front(pts) == [0, 1, 3, 4]


def test_report_command_compares_runs_and_refuses_foreign_files(runs, capsys):
    from slimformer.cli import main

    out = runs / "compare.html"
    assert main(["report", str(runs / "two"), str(runs / "svd"), "--out", str(out)]) == 0
    page = out.read_text()
    assert "Pareto front" in page and page.count('class="sf-chart"') == 2
    assert main(["report", str(runs / "two"), "--out", str(out)]) == 0  # a page slimformer wrote is replaced
    (runs / "mine.html").write_text("<html>my notes</html>")
    assert main(["report", str(runs / "two"), "--out", str(runs / "mine.html")]) == 2
    assert (runs / "mine.html").read_text() == "<html>my notes</html>"
    assert main(["report", str(runs / "stsb.csv")]) == 2
    assert "not JSON" in capsys.readouterr().err


def _chromium() -> str | None:
    for name in (os.environ.get("SLIMFORMER_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def test_report_renders_in_headless_chromium(runs, tmp_path):
    exe = _chromium()
    if exe is None or not _has_playwright():
        if os.environ.get("CI"):
            pytest.fail("CI must run the browser test: install chromium (apt-get install chromium) and playwright")
        pytest.skip("no Chromium (apt-get install chromium) or no playwright (pip install playwright) here")
    result = json.loads((runs / "two" / "result.json").read_text())
    script = Path(__file__).with_name("browser_probe.py")
    r = subprocess.run([sys.executable, str(script), exe, str(runs / "two" / "report.html"), str(tmp_path / "shot.png")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    seen = json.loads(r.stdout.strip().splitlines()[-1])
    assert seen["errors"] == [], seen["errors"]
    charts = {c["name"]: c for c in seen["charts"]}
    stages = len(result["stages"]) + 1  # the original and every stage
    for name in ("quality vs speed", "quality vs bytes"):
        assert charts[name]["drawn"] == charts[name]["declared"] == stages
    spearman = [result["baseline"]["metrics"]["spearman"]] + [s["metrics"]["spearman"] for s in result["stages"]]
    assert charts["quality vs speed"]["y"] == pytest.approx(spearman)
    mb = [result["baseline"]["efficiency"]["bytes"] / 1e6] + [s["efficiency"]["bytes"] / 1e6 for s in result["stages"]]
    assert charts["quality vs bytes"]["x"] == pytest.approx(mb)
    assert (tmp_path / "shot.png").stat().st_size > 10_000


def _has_playwright() -> bool:
    try:
        import playwright  # noqa: F401
    except ImportError:
        return False
    return True


def test_per_layer_details_and_training_curves_are_drawn(runs):
    import re

    page = (runs / "svd" / "report.html").read_text()
    result = json.loads((runs / "svd" / "result.json").read_text())
    n = len(result["steps"][0]["details"]["per_layer"])
    assert re.search(rf'data-name="svd per layer" data-points="{n}"', page)
    from slimformer.report import render_html

    d = dict(result)
    d["steps"] = [{**result["steps"][0], "method": "distill",
                   "details": {"curve": [{"step": 20 * i, "loss": 1.0 / i} for i in range(1, 6)]}}]
    assert 'data-name="distill training curve" data-points="5"' in render_html(d)
