"""Shared helpers for benchmark scripts: data location, result writing, table printing."""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"


def base_parser(description: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with the real data (default ../shared/data)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="where to write JSON + Markdown")
    return ap


def write(name: str, payload: dict, markdown: str, out: Path = RESULTS) -> None:
    out.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "date": time.strftime("%Y-%m-%d"), "machine": platform.machine(), **payload}
    (out / f"{name}.json").write_text(json.dumps(payload, indent=2, default=str))
    (out / f"{name}.md").write_text(markdown)
    print(markdown)
    print(f"\nwrote {out / (name + '.json')} and .md")


def interleaved_speedup(base, other, enc: dict, rounds: int = 5) -> float:
    """base time / other time for one forward of `enc` (batch of token ids), timed interleaved
    (base, other, base, other, ...) after one warm-up each; medians. > 1: `other` is faster."""
    import statistics

    import torch

    tb, to = [], []
    with torch.inference_mode():
        base.model(**enc), other.model(**enc)
        for _ in range(rounds):
            for m, acc in ((base, tb), (other, to)):
                t0 = time.perf_counter()
                m.model(**enc)
                acc.append(time.perf_counter() - t0)
    return statistics.median(tb) / statistics.median(to)


UNLABELED = ("sst2/train.tsv", "multi30k/train.en", "stsb/stsb-en-train.csv")


def unlabeled_sentences(data: Path) -> list[str]:
    """The ~106k unlabeled English training sentences of the distillation benchmarks (SST-2 train,
    Multi30k en train, STS-B train; never STS-B dev), deduplicated."""
    from slimformer.data import training_texts

    return training_texts(",".join(str(data / p) for p in UNLABELED))
