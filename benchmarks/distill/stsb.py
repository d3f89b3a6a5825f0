"""Distill all-MiniLM-L6-v2 (the default model) into 3- and 2-layer students initialized from its
own layers, on ~106k unlabeled English sentences (SST-2 train texts, Multi30k English train, STS-B
train sentences; never STS-B dev), trained to reproduce the teacher's sentence embeddings (cosine loss).

    python benchmarks/distill/stsb.py                    # both students, 1 epoch each (cosine loss, lr 5e-4)
    python benchmarks/distill/stsb.py --only 3 --epochs 2

Measured: STS-B dev Spearman x100 (best epoch), embedding cosine to the teacher on 512 STS-B dev
sentences, throughput at batch 32 x 128 as a ratio to the teacher (interleaved in this run), bytes,
wall time per epoch. The teacher's embeddings are computed once and cached.
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import slimformer as sf  # noqa: E402
from common import base_parser, throughput_ratio, unlabeled_sentences, write  # noqa: E402
from slimformer.evaluate.efficiency import make_inputs, saved_bytes  # noqa: E402
from slimformer.evaluate.result import cpu_info  # noqa: E402
from slimformer.evaluate.runners import TaskOptions, run_stsb  # noqa: E402
from slimformer.report.markdown import table  # noqa: E402

STUDENTS = {"3": [0, 2, 4], "2": [0, 3]}


def main() -> None:
    ap = base_parser(__doc__)
    ap.add_argument("--only", nargs="*", choices=list(STUDENTS), help="student sizes to run (layers)")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--loss", default="embedding_cosine", help="distillation losses joined by + (e.g. embedding_cosine)")
    ap.add_argument("--work", type=Path, default=None, help="checkpoints folder (default: a temporary one)")
    ap.add_argument("--append", action="store_true", help="keep the other students of the existing results JSON")
    ap.add_argument("--evaluate-only", action="store_true", help="no training: measure the best weights an earlier "
                    "run left in --work (WORK/student-N/best.pt)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    teacher = sf.load()
    task = sf.load_task("stsb", a.data / "stsb" / "stsb-en-dev.csv")
    texts = unlabeled_sentences(a.data)
    dev = task.texts()[:512]
    ref = teacher.embed(dev)
    sp_t = run_stsb(teacher, task, TaskOptions(progress=False))[0]["spearman"]
    enc = make_inputs(teacher, task.texts(), 32, 128)
    payload = {"cpu": cpu_info(), "threads": a.threads, "training_sentences": len(texts), "epochs": a.epochs,
               "lr": a.lr, "batch_size": a.batch_size, "loss": a.loss,
               "teacher": {"spearman": sp_t, "bytes": saved_bytes(teacher)["bytes"]}, "students": {}}
    if a.append and (a.out / "distill_stsb.json").exists():
        import json

        payload["students"] = json.loads((a.out / "distill_stsb.json").read_text()).get("students", {})
    work = a.work or Path(tempfile.mkdtemp(prefix="distill-"))
    for name, keep in STUDENTS.items():
        if a.only and name not in a.only:
            continue
        student = sf.shrink_layers(teacher, keep)
        sp0 = run_stsb(student, task, TaskOptions(progress=False))[0]["spearman"]
        cfg = sf.DistillConfig(losses=tuple(a.loss.split("+")), epochs=a.epochs, lr=a.lr, batch_size=a.batch_size)
        t0 = time.perf_counter()
        if a.evaluate_only:
            state = torch.load(work / f"student-{name}" / "best.pt")
            student.model.load_state_dict({k[len("student."):]: v for k, v in state.items() if k.startswith("student.")})
            student.model.eval()
            res = None
        else:
            res = sf.distill(student, teacher, texts, cfg, out_dir=work / f"student-{name}", eval_task=task)
        secs = time.perf_counter() - t0
        sp = run_stsb(student, task, TaskOptions(progress=False))[0]["spearman"]
        cos = torch.nn.functional.cosine_similarity(student.embed(dev), ref).mean().item()
        tx = throughput_ratio(teacher, student, enc)
        v = {"layers": keep, "spearman_before": sp0, "spearman": sp, "cosine": cos, "throughput_x": tx,
             "bytes": saved_bytes(student)["bytes"], "epochs": a.epochs, "threads": a.threads}
        if res is not None:
            v.update(seconds=secs, seconds_per_epoch=secs / max(res.epochs, 1e-9), steps=res.steps,
                     precision=res.precision, best=res.best, resumed_from=res.resumed_from,
                     curve=[h for h in res.history if "eval" in h])
        else:
            v.update(evaluated_from=str(work / f"student-{name}" / "best.pt"), precision="bf16")
        payload["students"][name] = v
        print(name, v["spearman"], v["throughput_x"], flush=True)
    rows = [["teacher: all-MiniLM-L6-v2 (6 layers)", sp_t, 0.0, 1.0, payload["teacher"]["bytes"] / 1e6, 1.0, ""]]
    for name, v in sorted(payload["students"].items(), reverse=True):
        wall = (f"{v['seconds_per_epoch'] / 60:.1f} min/epoch, {v.get('threads', a.threads)} thread(s)"
                if v.get("seconds_per_epoch") and not v.get("resumed_from")
                else "trained by an earlier run; its best checkpoint measured")
        rows.append([f"student: layers {v['layers']}, {v.get('epochs', a.epochs):g} epoch(s)", v["spearman"],
                     v["spearman"] - sp_t, v["cosine"], v["bytes"] / 1e6, v["throughput_x"],
                     f"{wall} (before training: {v['spearman_before']:.2f})"])
    md = "\n".join([
        "# Distilling all-MiniLM-L6-v2 for STS-B", "",
        f"`python benchmarks/distill/stsb.py {' '.join(sys.argv[1:])}` ({a.threads} threads, CPU "
        f"{payload['cpu'].get('cpu_model', '?')}, {payload['cpu'].get('cpu_capability')}). Students keep layers of "
        f"the teacher and are trained to reproduce its sentence embeddings ({a.loss}) on {len(texts):,} unlabeled sentences "
        f"(SST-2 train, Multi30k en train, STS-B train; batch {a.batch_size}, lr {a.lr:g}, warm-up 10%, linear decay, "
        f"training precision {', '.join(sorted({v.get('precision', 'no') for v in payload['students'].values()}))}). "
        "STS-B dev Spearman x100 of the best epoch; cosine to the teacher's embeddings on 512 dev sentences; "
        "throughput at batch 32 x 128 as a ratio to the teacher, interleaved in this run.", "",
        table(["model", "spearman", "change", "cosine", "MB", "throughput x", "notes"], rows),
    ])
    write("distill_stsb", payload, md, a.out)


if __name__ == "__main__":
    main()
