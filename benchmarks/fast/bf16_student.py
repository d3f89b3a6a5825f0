"""deploy's other candidate, timed at 2 threads: the encoder-fast student in bf16 PyTorch.

    python benchmarks/fast/bf16_student.py

The encoder-fast recipe run of benchmarks/fast/minilm.py used 1 thread on a shared machine, where
its `deploy` step timed int8 ONNX Runtime (418.8 sentences/s) ahead of bf16 PyTorch (377.9). This
times, in one interleaved run at --threads: fp32 PyTorch (the original), the recipe's int8 ONNX
output, and the same 3-layer student in bf16 PyTorch. The student's weights come from
benchmarks/distill/stsb.py --epochs 2 (.cache/bench/distill-stsb/student-3/best.pt): the same
settings as the recipe's distill step, and the same STS-B dev Spearman to the last digit (85.884).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import slimformer as sf  # noqa: E402
from common import base_parser, timings, write  # noqa: E402
from slimformer.evaluate.result import cpu_info  # noqa: E402
from slimformer.evaluate.runners import TaskOptions, run_stsb  # noqa: E402
from slimformer.report.markdown import table  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    ap = base_parser(__doc__)
    ap.add_argument("--rounds", type=int, default=8)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    task = sf.load_task("stsb", a.data / "stsb" / "stsb-en-dev.csv")
    base = sf.load()
    student = sf.shrink_layers(base, [0, 2, 4])
    state = torch.load(ROOT / ".cache/bench/distill-stsb/student-3/best.pt")
    student.model.load_state_dict({k[len("student."):]: v for k, v in state.items() if k.startswith("student.")})
    student.model.eval()
    bf = sf.load(sf.save(student, Path(a.out).parent.parent / ".cache" / "bench" / "fast" / "student-3-fp32"))
    sf.core.config.apply_method(bf, sf.CastConfig(dtype="bf16"))
    models = {"fp32 PyTorch (original)": base, "encoder-fast output (int8 ONNX Runtime)":
              sf.load(ROOT / ".cache/bench/fast/encoder-fast"), "the same student, bf16 PyTorch": bf}
    sp = {k: run_stsb(m, task, TaskOptions(progress=False))[0]["spearman"] for k, m in models.items()}
    t = timings(models, task.texts(), a.rounds)
    f = t["fp32 PyTorch (original)"]
    rows = [[k, sp[k], v["throughput"] / f["throughput"], f["latency_ms_p50"] / v["latency_ms_p50"]] for k, v in t.items()]
    payload = {"cpu": cpu_info(), "threads": a.threads, "rounds": a.rounds, "spearman": sp, "timings": t}
    md = "\n".join(["# encoder-fast: int8 ONNX Runtime vs the same student in bf16", "",
                    f"`python benchmarks/fast/bf16_student.py` ({a.threads} threads, CPU {payload['cpu'].get('cpu_model')}, "
                    f"flags {' '.join(payload['cpu'].get('cpu_flags', []))}); {a.rounds} interleaved rounds; ratios to "
                    "fp32 PyTorch in this run.", "",
                    table(["variant", "spearman", "throughput x", "latency x"], rows)])
    write("fast_bf16_student", payload, md, a.out)


if __name__ == "__main__":
    main()
