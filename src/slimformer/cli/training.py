"""Commands that train: distill and finetune (recipe runs through `slimformer.compress`), train (the
reference Transformer from scratch) and translate."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from .common import (MODEL_HELP, add_log_with, trackers_arg, DISTRIBUTED_HELP, PRECISION_HELP, TASKS, count, layers_arg, positive, positive_float, run_recipe,
                     task_from_args)


def add_parsers(sub) -> None:
    p = sub.add_parser("distill", help="train a smaller student to match a teacher (default: the default model)",
                       description="Distill a teacher into a student: --keep-layers makes the student from the "
                       "teacher's own layers (DistilBERT-style: recipe shrink_layers + distill), --student gives one. "
                       "Trains on --unlabeled sentences (a text file, one a line; or a task file whose texts are used), "
                       "measures on --data each epoch and keeps the best; result.json as compress writes it. "
                       "Resumable: re-run with the same --out after an interruption.")
    p.add_argument("--teacher", default=None, help=MODEL_HELP)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--student", help="a student model (folder, .gguf, hub id)")
    g.add_argument("--keep-layers", help="student = the teacher's layers with these indices, e.g. 0,2,4 (default: "
                   "every other layer)")
    p.add_argument("--task", choices=TASKS, help="the evaluation task of --data")
    p.add_argument("--data", help="evaluation data for --task")
    p.add_argument("--unlabeled", help="training sentences: a text file (one a line), or several joined with ','")
    p.add_argument("--loss", action="append", help="loss name (repeatable): embedding_cosine (default for sentence "
                   "encoders), embedding_mse, kd (classifiers), soft, lm, hidden_mse, attention_kl, minilm_relation")
    p.add_argument("--epochs", type=positive_float, default=2.0, help="passes over the training sentences (default 2: a 3-layer "
                   "MiniLM student reached STS-B 85.88 after 2, 85.51 after 1)")
    p.add_argument("--max-steps", type=count, default=0, help="stop after N optimizer steps (overrides --epochs)")
    p.add_argument("--lr", type=positive_float, default=None, help="peak learning rate (default 5e-4 for sentence encoders, "
                   "1e-4 otherwise)")
    p.add_argument("--batch-size", type=positive, default=64, help="sentences per step (default 64)")
    p.add_argument("--precision", choices=["auto", "bf16", "fp16", "no"], default="auto", help=PRECISION_HELP)
    p.add_argument("--distributed", choices=["auto", "ddp", "fsdp"], default="auto", help=DISTRIBUTED_HELP)
    p.add_argument("--out", required=True, help="output folder: the student, result.json, report.md, report.html")
    add_log_with(p)
    p.set_defaults(run=cmd_distill)

    p = sub.add_parser("finetune", help="fine-tune a model on a labeled task (a teacher, or a student afterwards)")
    p.add_argument("model", nargs="?", default=None, help=MODEL_HELP)
    p.add_argument("--task", choices=["classification", "stsb"], required=True)
    p.add_argument("--data", required=True, help="training data of the task")
    p.add_argument("--eval-data", help="evaluation data (measured each epoch; the best weights are kept)")
    p.add_argument("--epochs", type=positive_float, default=3.0)
    p.add_argument("--max-steps", type=count, default=0)
    p.add_argument("--lr", type=positive_float, default=5e-5)
    p.add_argument("--batch-size", type=positive, default=32)
    p.add_argument("--precision", choices=["auto", "bf16", "fp16", "no"], default="auto", help=PRECISION_HELP)
    p.add_argument("--distributed", choices=["auto", "ddp", "fsdp"], default="auto", help=DISTRIBUTED_HELP)
    p.add_argument("--out", required=True, help="output folder: the model, result.json, report.md, report.html")
    add_log_with(p)
    p.set_defaults(run=cmd_finetune)

    p = sub.add_parser("train", help="train slimformer's reference Transformer (translation)",
                       description="Train the reference encoder-decoder Transformer from scratch on parallel text: a "
                       "joint BPE vocabulary, token-based batches, inverse-square-root schedule, label smoothing, "
                       "checkpoint averaging. Resumable: re-run the same command after an interruption.")
    p.add_argument("--task", choices=["translation"], default="translation")
    p.add_argument("--data", required=True, help="training files prefix (PREFIX.SRC and PREFIX.TGT), e.g. "
                   "../shared/data/multi30k/train")
    p.add_argument("--valid", help="validation prefix (BLEU measured after each epoch, greedy, first 300 pairs)")
    p.add_argument("--src", default="en")
    p.add_argument("--tgt", default="de")
    p.add_argument("--epochs", type=positive_float, default=10.0)
    p.add_argument("--max-steps", type=count, default=0)
    p.add_argument("--vocab-size", type=positive, default=8000)
    p.add_argument("--d-model", type=positive, default=256)
    p.add_argument("--layers", type=positive, default=3, help="encoder and decoder layers each (default 3)")
    p.add_argument("--heads", type=positive, default=4)
    p.add_argument("--ffn", type=positive, default=1024)
    p.add_argument("--max-tokens", type=positive, default=4096, help="padded tokens per batch (default 4096)")
    p.add_argument("--lr", type=positive_float, default=1e-3)
    p.add_argument("--warmup-steps", type=count, default=1000)
    p.add_argument("--out", required=True, help="output folder: the model, its tokenizer, result.json")
    add_log_with(p)
    p.set_defaults(run=cmd_train)

    p = sub.add_parser("translate", help="translate a text file with a seq2seq model (one translation a line)")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--input", required=True, help="a text file, one sentence a line ('-': standard input)")
    p.add_argument("--beams", type=positive, default=5, help="beam size (1 = greedy; default 5)")
    p.add_argument("--batch-size", type=positive, default=32)
    p.set_defaults(run=cmd_translate)


def cmd_distill(a) -> None:
    from .. import DistillConfig, ShrinkConfig, load
    from ..core.errors import SlimformerError

    if not a.unlabeled:
        raise SlimformerError("distill needs --unlabeled SENTENCES (a text file, one sentence a line)")
    task = task_from_args(a)
    cfg = dict(losses=tuple(a.loss or ()), epochs=a.epochs, max_steps=a.max_steps, lr=a.lr, batch_size=a.batch_size,
               mixed_precision=a.precision, keep_best=task is not None, distributed=a.distributed)
    if a.student:  # the student is the model the recipe runs on; the teacher is named
        model, steps = load(a.student), [DistillConfig(teacher=str(a.teacher or "default"), **cfg)]
    else:          # the teacher is the model; the student is made from its layers, then distilled from it
        model = load(a.teacher)
        steps = [ShrinkConfig(keep=tuple(layers_arg(a.keep_layers, model))), DistillConfig(**cfg)]
    res = run_recipe(model, steps, a.out, task, unlabeled=a.unlabeled, trackers=trackers_arg(a))
    d = res.steps[-1].details
    print(f"wrote {a.out}: {d['steps']} steps in {d['seconds']:.0f} s" + (f"; best {d['best']}" if d.get("best") else "")
          + " (result.json, report.md, report.html)")


def cmd_finetune(a) -> None:
    from .. import FinetuneConfig, load, load_task

    train = load_task(a.task, a.data)
    ev = load_task(a.task, a.eval_data) if a.eval_data else None
    cfg = FinetuneConfig(epochs=a.epochs, max_steps=a.max_steps, lr=a.lr, batch_size=a.batch_size,
                         mixed_precision=a.precision, distributed=a.distributed)
    res = run_recipe(load(a.model), [cfg], a.out, ev, train_task=train, trackers=trackers_arg(a))
    d = res.steps[-1].details
    print(f"wrote {a.out}: {d['steps']} steps in {d['seconds']:.0f} s" + (f"; best {d['best']}" if d.get("best") else ""))


def cmd_train(a) -> None:
    from .. import load_task, save
    from ..models.saving import check_out_dir
    from ..train.translation import TranslationConfig, bleu_of, train_translation

    check_out_dir(a.out)
    pair = (a.src, a.tgt)
    train = load_task("translation", a.data, pair=pair)
    valid = load_task("translation", a.valid, pair=pair) if a.valid else None
    cfg = TranslationConfig(vocab_size=a.vocab_size, d_model=a.d_model, layers=a.layers, heads=a.heads, ffn=a.ffn,
                            max_tokens=a.max_tokens, epochs=a.epochs, max_steps=a.max_steps, lr=a.lr,
                            warmup_steps=a.warmup_steps)
    work = Path(a.out).expanduser().resolve().parent / f".{Path(a.out).name}.training"
    from ..train.trackers import tracker_callbacks

    sm, res = train_translation(train, valid, cfg, out_dir=work, callbacks=tracker_callbacks(trackers_arg(a), work, "train"))
    report = {"training": res.to_dict(), "config": cfg.__dict__, "pair": pair}
    if valid is not None:
        report["valid_greedy_averaged"] = bleu_of(sm, valid)
    save(sm, a.out, extra_files={"result.json": json.dumps(report, indent=2, default=str)})
    said = f"; valid BLEU {report['valid_greedy_averaged']['bleu']:.2f} (greedy)" if valid is not None else ""
    print(f"wrote {a.out}: {res.steps} steps in {res.seconds / 60:.1f} min{said} (checkpoints in {work})")


def cmd_translate(a) -> None:
    from .. import load
    from ..core.errors import DataError
    from ..evaluate.runners import TaskOptions, generate

    sm = load(a.model)
    if sm.kind != "seq2seq-lm":
        raise DataError(f"{a.model}: a {sm.kind} model cannot translate; give an encoder-decoder (seq2seq) model")
    if a.input == "-":
        lines = sys.stdin.read().splitlines()
    else:
        from ..data.readers import read_text

        lines = read_text(Path(a.input).expanduser()).splitlines()
    opts = TaskOptions(batch_size=a.batch_size, gen_num_beams=a.beams, gen_max_new_tokens=None, progress=False)
    for t in generate(sm, [t or " " for t in lines], opts, "translate"):
        print(t, flush=True)
