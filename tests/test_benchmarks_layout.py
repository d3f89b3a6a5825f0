"""Benchmarks share code through benchmarks/common.py only, and every result records its provenance."""
import ast
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def test_no_benchmark_imports_another():
    scripts = {p.stem for p in BENCH.rglob("*.py") if p.name != "common.py"}
    for p in BENCH.rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module]
            for n in names:
                top = n.split(".")[0]
                assert top not in scripts and top not in {"distill", "prune", "quantize", "fast", "runtime",
                                                          "attention", "transformer"}, \
                    f"{p.relative_to(BENCH)} imports benchmark module {n}; shared pieces go in benchmarks/common.py"


def test_every_result_records_argv_and_commit():
    for p in (BENCH / "results").glob("*.json"):
        d = json.loads(p.read_text())
        assert d.get("argv") and d.get("commit"), f"{p.name} has no argv / commit"
