"""MiniLM (default model) structured pruning on STS-B dev: heads and FFN neurons by each
importance score (and random), no recovery training.

    python benchmarks/prune/minilm.py          # about 10 minutes on 2 cores

Spearman x100 on STS-B dev (1500 pairs), embedding cosine to the original on 512 STS-B sentences,
bytes of the saved model, throughput at batch 32 x 128 as a ratio to the unpruned model (each row
timed interleaved with it, medians). Calibration for data-based scores: 64 SST-2 dev sentences.
"""
from __future__ import annotations

import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import slimformer as sf  # noqa: E402
from common import base_parser, interleaved_speedup, write  # noqa: E402
from slimformer.evaluate.efficiency import make_inputs, saved_bytes  # noqa: E402
from slimformer.evaluate.result import cpu_info  # noqa: E402
from slimformer.evaluate.runners import TaskOptions, run_stsb  # noqa: E402
from slimformer.report.markdown import table  # noqa: E402

SCORES = ("magnitude", "activation", "taylor", "random")


def rows() -> dict:
    out = {}
    for imp in SCORES:
        for amt in (0.25, 0.5):
            out[f"heads {amt:.0%} ({imp})"] = [sf.HeadPruningConfig(amount=amt, importance=imp)]
            out[f"ffn {amt:.0%} ({imp})"] = [sf.FFNPruningConfig(amount=amt, importance=imp)]
    for imp in ("activation", "taylor"):
        out[f"ffn 50% + heads 25% ({imp})"] = [sf.FFNPruningConfig(amount=0.5, importance=imp),
                                               sf.HeadPruningConfig(amount=0.25, importance=imp)]
        out[f"ffn 50% + heads 50% ({imp})"] = [sf.FFNPruningConfig(amount=0.5, importance=imp),
                                               sf.HeadPruningConfig(amount=0.5, importance=imp)]
    out["ffn 50% + bias compensation (activation)"] = [sf.FFNPruningConfig(amount=0.5, importance="activation",
                                                                           bias_compensation=True)]
    out["2 of 6 layers (block influence)"] = [sf.LayerDropConfig(count=2)]
    return out


def main() -> None:
    ap = base_parser(__doc__)
    ap.add_argument("--only", nargs="*", help="subset of row names")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    base = sf.load()
    task = sf.load_task("stsb", a.data / "stsb" / "stsb-en-dev.csv")
    texts = task.texts()
    calib = sf.calibration_texts(sf.load_task("classification", a.data / "sst2" / "dev.tsv"), n=64)
    ref = base.embed(texts[:512])
    enc = make_inputs(base, texts, 32, 128)
    sp0 = run_stsb(base, task, TaskOptions(progress=False))[0]["spearman"]
    b0 = saved_bytes(base)["bytes"]
    payload = {"cpu": cpu_info(), "threads": a.threads, "dense": {"spearman": sp0, "bytes": b0,
               "params": base.num_params()}, "rows": {}}
    table_rows = [["unpruned", sp0, 0.0, 1.0, b0 / 1e6, 1.0]]
    for name, steps in rows().items():
        if a.only and name not in a.only:
            continue
        m = copy.deepcopy(base)
        for cfg in steps:
            sf.prune_(m, cfg, calib)
        sp = run_stsb(m, task, TaskOptions(progress=False))[0]["spearman"]
        cos = torch.nn.functional.cosine_similarity(m.embed(texts[:512]), ref).mean().item()
        v = {"spearman": sp, "cosine": cos, "bytes": saved_bytes(m)["bytes"], "params": m.num_params(),
             "throughput_x": interleaved_speedup(base, m, enc, rounds=3)}
        payload["rows"][name] = v
        table_rows.append([name, sp, sp - sp0, cos, v["bytes"] / 1e6, v["throughput_x"]])
        print(table_rows[-1], flush=True)
    md = "\n".join([
        "# Structured pruning of all-MiniLM-L6-v2 (no recovery training)", "",
        f"`python benchmarks/prune/minilm.py` ({a.threads} threads, CPU {payload['cpu'].get('cpu_model', '?')}, "
        f"{payload['cpu'].get('cpu_capability')}). STS-B dev Spearman x100; cosine of sentence embeddings to the "
        "unpruned model; throughput at batch 32 x 128 as a ratio to the unpruned model (interleaved, medians). Heads: "
        "the same count removed in every layer; FFN: the same fraction of neurons in every layer.", "",
        table(["row", "spearman", "change", "cosine", "MB", "throughput x"], table_rows),
    ])
    write("prune_minilm", payload, md, a.out)


if __name__ == "__main__":
    main()
