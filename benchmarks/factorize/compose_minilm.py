"""Factorized + int8 ONNX: the distilled encoder-lowrank model (benchmarks/factorize/minilm.py, cached in
.cache/bench/factorize_minilm_lowrank) exported with `export --onnx --quantize int8`, against the
original and the same recipe's own deploy pick, measured in one run.

    python benchmarks/factorize/compose_minilm.py --threads 2

STS-B dev Spearman x100; throughput at batch 32 x 128 over the original fp32 PyTorch model,
interleaved in this run (medians); MB of the saved weights."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import slimformer as sf  # noqa: E402
from common import CACHE, base_parser, throughput_ratio, write  # noqa: E402
from slimformer.evaluate.efficiency import make_inputs, saved_bytes  # noqa: E402
from slimformer.evaluate.runners import TaskOptions, run_stsb  # noqa: E402
from slimformer.export import export_onnx  # noqa: E402
from slimformer.report.markdown import table  # noqa: E402


def main() -> None:
    ap = base_parser(__doc__)
    ap.add_argument("--source", default="factorize_minilm_lowrank", help="the cached run to start from")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--name", default="factorize_minilm_int8")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    task = sf.load_task("stsb", a.data / "stsb" / "stsb-en-dev.csv")
    original = sf.load()
    deployed = sf.load(CACHE / a.source)
    fp32 = sf.load(CACHE / a.source)
    fp32.model.float()  # the deploy step picked bf16 here: back to float32 before the int8 export
    folder = CACHE / f"{a.name}-onnx"
    int8 = sf.load(export_onnx(fp32, folder, quantize="int8"))
    enc = make_inputs(original, task.texts(), 32, 128)
    rows, payload = [], {"rows": {}}
    for name, m in (("original (fp32 PyTorch)", original), ("encoder-lowrank as deployed here", deployed),
                    ("encoder-lowrank, float32 PyTorch", fp32), ("encoder-lowrank + int8 ONNX", int8)):
        sp = run_stsb(m, task, TaskOptions(progress=False))[0]["spearman"]
        tx = 1.0 if m is original else throughput_ratio(original, m, enc, rounds=a.rounds)
        mb = saved_bytes(m)["bytes"] / 1e6
        payload["rows"][name] = {"spearman": sp, "throughput_x": tx, "mb": mb}
        rows.append([name, sp, tx, mb])
        print(name, payload["rows"][name], flush=True)
    md = "\n".join([
        "# MiniLM: factorized + int8 ONNX", "",
        f"`python benchmarks/factorize/compose_minilm.py {' '.join(sys.argv[1:])}` ({a.threads} threads). The "
        "encoder-lowrank student (rank-128 token embedding, FFN at 70% of its parameters, one epoch of "
        "distillation) as its recipe deployed it, in float32 PyTorch, and exported to ONNX Runtime int8. STS-B dev "
        f"Spearman x100; throughput at batch 32 x 128 over the original's, interleaved ({a.rounds} rounds).", "",
        table(["model", "spearman", "throughput x", "MB"], rows),
    ])
    write(a.name, payload, md, a.out)


if __name__ == "__main__":
    main()
