"""Multi-task distillation: one 3-layer student (all-MiniLM-L6-v2's layers 0, 2, 4) for STS-B
(sentence embeddings, from the default model) and SST-2 (a classification head on the student's
pooled embedding, from the fine-tuned SST-2 teacher of benchmarks/distill/sst2.py), against the
two single-task students of benchmarks/distill/stsb.py and sst2.py (read from their results).

    python benchmarks/distill/sst2.py                   # first: the SST-2 teacher (cached)
    python benchmarks/distill/multitask.py              # 1 epoch over both tasks' training texts

Batches alternate between the tasks (each batch is one task's); losses: embedding cosine to the
default model for STS-B, soft targets (T=2) for SST-2; equal weights.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import slimformer as sf  # noqa: E402
from common import CACHE, base_parser, sst2_teacher, unlabeled_sentences, write  # noqa: E402
from slimformer.distill import TaskSpec, distill_multitask  # noqa: E402
from slimformer.evaluate.result import cpu_info  # noqa: E402
from slimformer.evaluate.runners import TaskOptions, run_stsb  # noqa: E402
from slimformer.report.markdown import table  # noqa: E402


@torch.no_grad()
def head_accuracy(student, head, task) -> float:
    texts, gold = task.texts(), [int(e[1]) for e in task.examples]
    preds = []
    for i in range(0, len(texts), 64):
        preds += head(student.embed(texts[i:i + 64]).float()).argmax(-1).tolist()
    return 100.0 * sum(p == g for p, g in zip(preds, gold)) / len(gold)


def main() -> None:
    ap = base_parser(__doc__)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--max-steps", type=int, default=0)
    ap.add_argument("--lr", type=float, default=5e-4)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    stsb = sf.load_task("stsb", a.data / "stsb" / "stsb-en-dev.csv")
    dev = sf.load_task("classification", a.data / "sst2" / "dev.tsv")
    sst2_texts = sf.load_task("classification", a.data / "sst2" / "train.tsv").texts()
    emb_teacher = sf.load()
    clf_teacher, _ = sst2_teacher(a.data)
    sentences = unlabeled_sentences(a.data)
    student = sf.shrink_layers(emb_teacher, [0, 2, 4])
    t0 = time.perf_counter()
    heads = distill_multitask(student, [TaskSpec("stsb", emb_teacher, sentences), TaskSpec("sst2", clf_teacher, sst2_texts)],
                              sf.DistillConfig(epochs=a.epochs, max_steps=a.max_steps, lr=a.lr),
                              out_dir=CACHE / "multitask-3")
    secs = time.perf_counter() - t0
    sp = run_stsb(student, stsb, TaskOptions(progress=False))[0]["spearman"]
    acc = head_accuracy(student, heads["sst2"], dev)
    single = {}
    for name, key in (("distill_stsb", "stsb"), ("distill_sst2", "sst2")):
        p = a.out / f"{name}.json"
        if p.exists():
            single[key] = json.loads(p.read_text())
    st = single.get("stsb", {}).get("students", {}).get("3", {})
    ss = single.get("sst2", {}).get("student", {})
    payload = {"cpu": cpu_info(), "threads": a.threads, "epochs": a.epochs, "max_steps": a.max_steps, "lr": a.lr,
               "texts": {"stsb": len(sentences), "sst2": len(sst2_texts)}, "seconds": secs,
               "multitask": {"stsb_spearman": sp, "sst2_accuracy": acc},
               "single_task": {"stsb_spearman": st.get("spearman"), "stsb_steps": st.get("steps"),
                               "sst2_accuracy": ss.get("accuracy"), "sst2_steps": ss.get("steps")}}
    fmt = lambda v: "" if v is None else v  # noqa: E731
    rows = [["one multi-task student (3 layers)", sp, acc, f"{secs / 60:.0f} min, both tasks"],
            ["two single-task students (3 layers each)", fmt(st.get("spearman")), fmt(ss.get("accuracy")),
             f"{st.get('steps', '?')} + {ss.get('steps', '?')} steps, separate models"]]
    md = "\n".join([
        "# Multi-task distillation: one 3-layer student for STS-B and SST-2", "",
        f"`python benchmarks/distill/multitask.py {' '.join(sys.argv[1:])}` ({a.threads} threads, CPU "
        f"{payload['cpu'].get('cpu_model', '?')}). Student: all-MiniLM-L6-v2's layers 0, 2, 4; STS-B task: "
        f"embedding cosine to the default model on {len(sentences):,} unlabeled sentences; SST-2 task: a linear head on "
        f"the pooled embedding, soft targets (T=2) of the fine-tuned SST-2 teacher on {len(sst2_texts):,} SST-2 train "
        f"sentences; batches alternate, {a.max_steps or a.epochs} {'steps' if a.max_steps else 'epoch(s)'}, lr {a.lr:g}. "
        "STS-B dev Spearman x100 and SST-2 dev accuracy x100; single-task rows from distill_stsb.json and "
        "distill_sst2.json.", "",
        table(["students", "STS-B spearman", "SST-2 accuracy", "notes"], rows),
    ])
    write("distill_multitask", payload, md, a.out)


if __name__ == "__main__":
    main()
