"""Short distillation runs to pick losses and learning rate: MiniLM -> 3 layers (its layers 0, 2, 4),
a fixed number of steps on the ~106k unlabeled sentences, STS-B dev Spearman after.

    python benchmarks/distill/ablation.py --name A --loss embedding_mse --lr 1e-4 --steps 400
    python benchmarks/distill/ablation.py --name B --loss embedding_mse+hidden_mse --lr 2e-4 --steps 400
    python benchmarks/distill/ablation.py --name C --loss embedding_cosine --lr 5e-4 --steps 400
    python benchmarks/distill/ablation.py --name D --loss embedding_cosine+minilm_relation --lr 5e-4 --steps 400
    python benchmarks/distill/ablation.py --name E --loss embedding_cosine+attention_kl --lr 5e-4 --steps 400
    python benchmarks/distill/ablation.py --name F --loss embedding_cosine+hidden_mse --lr 5e-4 --steps 400
    python benchmarks/distill/ablation.py --name G --loss embedding_cosine --lr 5e-4 --steps 400 --init random

Each run adds its row to benchmarks/results/distill_ablation.json and rewrites the table.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import slimformer as sf  # noqa: E402
from common import base_parser, unlabeled_sentences, write  # noqa: E402

CACHE = Path(__file__).resolve().parents[2] / ".cache" / "bench" / "distill-ablation"
from slimformer.distill import student_from_config  # noqa: E402
from slimformer.evaluate.result import cpu_info  # noqa: E402
from slimformer.evaluate.runners import TaskOptions, run_stsb  # noqa: E402
from slimformer.report.markdown import table  # noqa: E402


def main() -> None:
    ap = base_parser(__doc__)
    ap.add_argument("--name", required=True)
    ap.add_argument("--loss", default="embedding_cosine")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--init", choices=["teacher", "random"], default="teacher",
                    help="student weights: the teacher's layers 0, 2, 4, or a fresh 3-layer model of the same shape")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    teacher = sf.load()
    task = sf.load_task("stsb", a.data / "stsb" / "stsb-en-dev.csv")
    texts = unlabeled_sentences(a.data)
    if a.init == "teacher":
        student = sf.shrink_layers(teacher, [0, 2, 4])
    else:
        student = student_from_config(teacher, num_hidden_layers=3)
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="ablation-"))
    shared = CACHE / "teacher_embeddings.pt"  # the teacher's embeddings of the training texts: computed once
    if shared.exists():
        (work / "teacher_embeddings.pt").symlink_to(shared)
    res = sf.distill(student, teacher, texts, sf.DistillConfig(losses=tuple(a.loss.split("+")), lr=a.lr,
                                                               max_steps=a.steps), out_dir=work)
    if not shared.exists() and (work / "teacher_embeddings.pt").exists():
        shared.parent.mkdir(parents=True, exist_ok=True)
        (work / "teacher_embeddings.pt").replace(shared)
    sp = run_stsb(student, task, TaskOptions(progress=False))[0]["spearman"]
    path = a.out / "distill_ablation.json"
    payload = json.loads(path.read_text()) if path.exists() else {"cpu": cpu_info(), "rows": {}}
    payload["rows"][a.name] = {"loss": a.loss, "lr": a.lr, "steps": a.steps, "init": a.init, "spearman": sp,
                               "seconds": time.perf_counter() - t0, "threads": a.threads, "precision": res.precision}
    rows = [[k, v["loss"], v.get("init", "teacher"), v["lr"], v["steps"], v["spearman"], v.get("precision", "no"),
             f"{v['seconds']:.0f}"] for k, v in payload["rows"].items()]
    md = "\n".join(["# Distillation ablation: MiniLM -> 3 layers, short runs", "",
                    "`python benchmarks/distill/ablation.py --name N --loss L --lr LR --steps S` (batch 64, warm-up 10%, "
                    "linear decay over the run; STS-B dev Spearman x100; teacher 86.72, the 3-layer student before "
                    "training 73.81).", "",
                    table(["run", "losses", "init", "lr", "steps", "spearman", "precision", "seconds"], rows)])
    write("distill_ablation", payload, md, a.out)


if __name__ == "__main__":
    main()
