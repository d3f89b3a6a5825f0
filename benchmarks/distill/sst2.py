"""SST-2: fine-tune all-MiniLM-L6-v2 (the default model) as a classifier teacher on SST-2 train,
then distill it into a 3-layer student made of the teacher's layers 0, 2, 4 (soft targets at
temperature 2 mixed with the hard labels, "kd") on SST-2 train.

    python benchmarks/distill/sst2.py                      # teacher 1 epoch (cached), student 2 epochs
    python benchmarks/distill/sst2.py --student-epochs 3

Measured: SST-2 dev accuracy (872 sentences) of the teacher and the student (best epoch), the
student's accuracy as a share of the teacher's, throughput at batch 32 x 128 as a ratio to the
teacher (interleaved in this run), bytes, wall time per epoch. The fine-tuned teacher is kept in
.cache/bench/sst2-teacher and reused (the multi-task benchmark uses it too).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import slimformer as sf  # noqa: E402
from common import CACHE, base_parser, interleaved_speedup, sst2_teacher, write  # noqa: E402
from slimformer.evaluate.efficiency import make_inputs, saved_bytes  # noqa: E402
from slimformer.evaluate.result import cpu_info  # noqa: E402
from slimformer.evaluate.runners import TaskOptions, run_classification  # noqa: E402
from slimformer.report.markdown import table  # noqa: E402

def main() -> None:
    ap = base_parser(__doc__)
    ap.add_argument("--teacher-epochs", type=float, default=1.0)
    ap.add_argument("--student-epochs", type=float, default=2.0)
    ap.add_argument("--lr", type=float, default=1e-4, help="student learning rate")
    ap.add_argument("--keep", default="0,2,4", help="teacher layers the student keeps")
    ap.add_argument("--name", default="distill_sst2", help="results file name (the 3-epoch retry: distill_sst2_e3)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    dev = sf.load_task("classification", a.data / "sst2" / "dev.tsv")
    train = sf.load_task("classification", a.data / "sst2" / "train.tsv")
    teacher, tinfo = sst2_teacher(a.data, a.teacher_epochs)
    acc_t = run_classification(teacher, dev, TaskOptions(progress=False))[0]["accuracy"]
    keep = [int(x) for x in a.keep.split(",")]
    student = sf.shrink_layers(teacher, keep)
    acc0 = run_classification(student, dev, TaskOptions(progress=False))[0]["accuracy"]
    t0 = time.perf_counter()
    res = sf.distill(student, teacher, train, sf.DistillConfig(epochs=a.student_epochs, lr=a.lr),
                     out_dir=CACHE / f"sst2-student-{len(keep)}-e{a.student_epochs:g}", eval_task=dev)
    secs = time.perf_counter() - t0
    acc = run_classification(student, dev, TaskOptions(progress=False))[0]["accuracy"]
    enc = make_inputs(teacher, dev.texts(), 32, 128)
    tx = interleaved_speedup(teacher, student, enc)
    b_t, b_s = saved_bytes(teacher)["bytes"], saved_bytes(student)["bytes"]
    payload = {"cpu": cpu_info(), "threads": a.threads, "train_sentences": len(train.examples),
               "teacher": {"accuracy": acc_t, "bytes": b_t, **tinfo},
               "student": {"layers": keep, "accuracy_before": acc0, "accuracy": acc, "share_of_teacher": acc / acc_t,
                           "throughput_x": tx, "bytes": b_s, "seconds": secs, "epochs": a.student_epochs,
                           "seconds_per_epoch": secs / max(res.epochs, 1e-9), "lr": a.lr, "steps": res.steps,
                           "precision": res.precision, "curve": [h for h in res.history if "eval" in h]}}
    rows = [["teacher: all-MiniLM-L6-v2 fine-tuned (6 layers)", acc_t, "100%", b_t / 1e6, 1.0, ""],
            [f"student: layers {keep}, kd", acc, f"{100 * acc / acc_t:.1f}%", b_s / 1e6, tx,
             f"{payload['student']['seconds_per_epoch'] / 60:.1f} min/epoch (before: {acc0:.2f})"]]
    md = "\n".join([
        "# SST-2: a fine-tuned MiniLM teacher and a 3-layer distilled student", "",
        f"`python benchmarks/distill/sst2.py {' '.join(sys.argv[1:])}` ({a.threads} threads, CPU "
        f"{payload['cpu'].get('cpu_model', '?')}, {payload['cpu'].get('cpu_capability')}). Teacher: all-MiniLM-L6-v2 "
        f"with a classification head fine-tuned on SST-2 train ({len(train.examples):,} sentences, "
        f"{a.teacher_epochs:g} epoch, lr 1e-4). Student: the teacher's layers {keep}, trained with 'kd' (KL at "
        f"T=2 x T^2, mixed 50/50 with the hard labels) for {a.student_epochs:g} epochs, lr {a.lr:g}, batch 64, "
        f"precision {res.precision}. SST-2 dev accuracy x100 (872 sentences, best epoch); throughput at batch "
        "32 x 128 as a ratio to the teacher, interleaved in this run.", "",
        table(["model", "accuracy", "of teacher", "MB", "throughput x", "notes"], rows),
    ])
    write(a.name, payload, md, a.out)


if __name__ == "__main__":
    main()
