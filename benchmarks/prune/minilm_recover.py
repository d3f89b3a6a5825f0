"""MiniLM structured pruning, then recovery by distillation from the unpruned model.

    python benchmarks/prune/minilm_recover.py            # 50% FFN + 25% heads (taylor), 1 epoch

The pruned model is the student; the unpruned model the teacher; training: embedding cosine (lr 5e-4, the
distillation defaults) on the ~106k unlabeled sentences of benchmarks/distill/stsb.py (never STS-B dev). STS-B dev Spearman x100
before and after recovery (best epoch), throughput at batch 32 x 128 as a ratio to the unpruned
model (interleaved, medians).
"""
from __future__ import annotations

import copy
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import slimformer as sf  # noqa: E402
from common import base_parser, provenance, throughput_ratio, unlabeled_sentences, write  # noqa: E402
from slimformer.evaluate.efficiency import make_inputs, saved_bytes  # noqa: E402
from slimformer.evaluate.result import cpu_info  # noqa: E402
from slimformer.evaluate.runners import TaskOptions, run_stsb  # noqa: E402
from slimformer.report.markdown import table  # noqa: E402

PLANS = {
    "ffn 50% + heads 25% (taylor)": [sf.FFNPruningConfig(amount=0.5, importance="taylor"),
                                     sf.HeadPruningConfig(amount=0.25, importance="taylor")],
    "2 of 6 layers (block influence)": [sf.LayerDropConfig(count=2)],
    # the same 50% of FFN neurons as recipe encoder-movement, one-shot (benchmarks/prune/movement.py)
    "ffn 50% (taylor)": [sf.FFNPruningConfig(amount=0.5, importance="taylor")],
}


def main() -> None:
    ap = base_parser(__doc__)
    ap.add_argument("--only", nargs="*", choices=list(PLANS))
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--max-steps", type=int, default=0, help="stop after N steps (0: --epochs)")
    ap.add_argument("--losses", default="embedding_cosine", help="distillation losses joined by +")
    ap.add_argument("--name", default="prune_minilm_recover", help="results file name (default prune_minilm_recover)")
    ap.add_argument("--speed-only", action="store_true", help="re-time the pruned shapes against the unpruned model "
                    "(speed depends on the shapes only) and update the throughput of the rows in the results JSON")
    ap.add_argument("--work", type=Path, default=None, help="checkpoints folder (default: a temporary one; a "
                    "teacher_embeddings.pt there is reused)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    teacher = sf.load()
    task = sf.load_task("stsb", a.data / "stsb" / "stsb-en-dev.csv")
    texts = unlabeled_sentences(a.data)
    calib = sf.calibration_texts(sf.load_task("classification", a.data / "sst2" / "dev.tsv"), n=64)
    enc = make_inputs(teacher, task.texts(), 32, 128)
    if a.speed_only:
        import json

        path = a.out / f"{a.name}.json"
        payload = json.loads(path.read_text())
        for name, steps in PLANS.items():
            if name in payload["rows"] and (not a.only or name in a.only):
                m = copy.deepcopy(teacher)
                for cfg in steps:
                    sf.prune_(m, cfg, calib)
                payload["rows"][name]["throughput_x_training_run"] = payload["rows"][name]["throughput_x"]
                payload["rows"][name]["throughput_x"] = throughput_ratio(teacher, m, enc, rounds=9)
                payload["rows"][name]["speed_threads"] = a.threads
        payload["speed_note"] = (f"throughput re-timed alone at {a.threads} threads "
                                 "(--speed-only); the training run's own figure is kept as throughput_x_training_run")
        payload["speed_provenance"] = provenance()  # the --speed-only run that re-timed the rows
        path.write_text(json.dumps(payload, indent=2, default=str))
        md = (a.out / f"{a.name}.md").read_text().rstrip() + "\n\n" + "\n".join(
            f"- {n}: throughput re-timed alone ({a.threads} threads, 9 interleaved rounds): {v['throughput_x']:.2f}x "
            f"(during the training run, 1 thread, machine shared: {v['throughput_x_training_run']:.2f}x)"
            for n, v in payload["rows"].items() if "throughput_x_training_run" in v) + "\n"
        (a.out / f"{a.name}.md").write_text(md)
        print(md)
        return
    sp_t = run_stsb(teacher, task, TaskOptions(progress=False))[0]["spearman"]
    work = a.work or Path(tempfile.mkdtemp(prefix="recover-"))
    payload = {"cpu": cpu_info(), "threads": a.threads, "epochs": a.epochs, "max_steps": a.max_steps, "lr": a.lr,
               "losses": a.losses, "training_sentences": len(texts),
               "teacher_spearman": sp_t, "rows": {}}
    rows = [["unpruned", sp_t, "", "", 1.0, saved_bytes(teacher)["bytes"] / 1e6]]
    for name, steps in PLANS.items():
        if a.only and name not in a.only:
            continue
        m = copy.deepcopy(teacher)
        for cfg in steps:
            sf.prune_(m, cfg, calib)
        sp0 = run_stsb(m, task, TaskOptions(progress=False))[0]["spearman"]
        t0 = time.perf_counter()
        losses = tuple(a.losses.split("+"))
        res = sf.distill(m, teacher, texts, sf.DistillConfig(losses=losses, epochs=a.epochs, max_steps=a.max_steps, lr=a.lr),
                         out_dir=work / name.replace(" ", "_"), eval_task=task)
        secs = time.perf_counter() - t0
        sp = run_stsb(m, task, TaskOptions(progress=False))[0]["spearman"]
        tx = throughput_ratio(teacher, m, enc)
        payload["rows"][name] = {"spearman_pruned": sp0, "spearman_recovered": sp, "throughput_x": tx,
                                 "bytes": saved_bytes(m)["bytes"], "seconds": secs, "steps": res.steps,
                                 "precision": res.precision}
        rows.append([name, sp, sp0, f"{sp - sp_t:+.2f}", tx, payload["rows"][name]["bytes"] / 1e6])
        print(rows[-1], flush=True)
    md = "\n".join([
        "# MiniLM: structured pruning, then recovery by distillation", "",
        f"`python benchmarks/prune/minilm_recover.py {' '.join(sys.argv[1:])}` ({a.threads} threads, CPU "
        f"{payload['cpu'].get('cpu_model', '?')}). Recovery: distillation from the unpruned model on {len(texts):,} "
        f"unlabeled sentences ({a.losses}; {a.max_steps or a.epochs} {'steps' if a.max_steps else 'epoch(s)'}, lr "
        f"{a.lr:g}, batch 64, training precision {res.precision}). STS-B dev Spearman x100 (best epoch); "
        "throughput at batch 32 x 128 as a ratio to the unpruned model, interleaved in this run.", "",
        table(["model", "spearman recovered", "spearman pruned", "vs unpruned", "throughput x", "MB"], rows),
    ])
    write(a.name, payload, md, a.out)


if __name__ == "__main__":
    main()
