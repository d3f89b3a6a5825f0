"""Commands that look at models: inspect, evaluate, recipes."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from .common import MODEL_HELP, add_eval_args, eval_options, positive, print_eval, task_from_args


def add_parsers(sub) -> None:
    p = sub.add_parser("inspect", help="architecture, per-module parameters and bytes, heads, FFN sizes")
    p.add_argument("model", nargs="?", default=None, help=MODEL_HELP)
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--kernels", action="store_true",
                   help="show which implementation each quantized module type runs on this machine (int8 / int4 "
                   "kernels), why, and the alternatives; with a model, also which of them it uses. Override with "
                   "SLIMFORMER_KERNELS='int8_linear=float,int4_linear=dequant'")
    p.set_defaults(run=cmd_inspect)

    p = sub.add_parser("evaluate", help="task metrics, efficiency and fidelity of a model")
    add_eval_args(p, need_task=False)
    p.add_argument("--reference", help="a model to measure fidelity against (cosine / KL / agreement): a folder, "
                   ".gguf, hub id, or 'default' for the packaged all-MiniLM-L6-v2")
    p.add_argument("--out", help="write the EvalResult JSON here")
    p.add_argument("--attention", metavar="NAME", help="evaluate with another attention implementation swapped in "
                   "(no training): eager, sdpa, sliding_window, block_sparse, lsh, linear, nystrom (encoders), pooled "
                   "(encoders); see README 'Efficient attention'")
    p.add_argument("--window", type=positive, help="--attention sliding_window: keys each side (default 256)")
    p.add_argument("--attention-option", action="append", default=[], metavar="KEY=VALUE",
                   help="another option of the --attention implementation (repeatable), e.g. buckets=8, "
                   "landmarks=32, stride=2, feature_map=performer, global_tokens=0")
    p.add_argument("--kv-cache", choices=["full", "sinks", "h2o", "int8", "int4"],
                   help="--task lm: read the text as one stream through this KV cache instead of strided windows "
                   "(sinks: StreamingLLM, 4 sinks + 1,020 recent tokens; h2o: 128 heavy hitters + 1,020 recent; "
                   "int8/int4: KIVI-quantized, unbounded) and report its peak bytes")
    p.add_argument("--kv-option", action="append", default=[], metavar="KEY=VALUE",
                   help="an option of --kv-cache (repeatable): sinks=, window=, heavy=, group=, residual=, chunk= "
                   "(tokens fed at a time, default 64)")
    p.add_argument("--stream", action="store_true", help="--task lm on a decoder LM folder of safetensors: "
                   "perplexity computed one layer at a time, read from the shards (a model bigger than memory); "
                   "reports the peak memory instead of timings. On by itself when the model in float32 would not fit "
                   "in the memory available")
    p.set_defaults(run=cmd_evaluate)

    p = sub.add_parser("report", help="an HTML page of one run, or several runs on one quality / speed / bytes "
                       "front", description="Reads each run's result.json (a folder compress, quantize, prune, "
                       "factorize, distill or export wrote, or the JSON file) and writes one self-contained HTML "
                       "page (plotly inlined; opens offline). One run: its figures, trade-off, steps, bytes per "
                       "module, per-layer details and training curves. Several: their final models and originals "
                       "on one Pareto plot and one table.")
    p.add_argument("runs", nargs="+", help="run folders or result.json files")
    p.add_argument("--out", default="slimformer-report.html", help="the HTML file to write (default "
                   "slimformer-report.html; an existing file is replaced only if slimformer wrote it)")
    p.set_defaults(run=cmd_report)

    p = sub.add_parser("recipes", help="list the built-in recipes (and, with --methods, every method and its traits)")
    p.add_argument("--methods", action="store_true", help="list the registered methods with their traits instead")
    p.set_defaults(run=cmd_recipes)


def cmd_inspect(a) -> None:
    from .. import load, summarize
    from ..report.markdown import table

    if a.kernels:
        return _inspect_kernels(a)
    s = summarize(load(a.model))
    if a.json:
        print(json.dumps(s, indent=2))
        return
    print(f"{s['architecture']} ({s['model_type']}, {s['family']} adapter), kind {s['kind']}, "
          f"hidden {s['hidden_size']}, vocab {s['vocab_size']}, {s['params']:,} params, "
          f"{s['bytes_in_memory'] / 2**20:.1f} MiB in memory")
    if s["pooling"]:
        print(f"pooling: {s['pooling']}")
    print()
    print(table(["module", "type", "params", "bytes"], [[m["name"], m["type"], m["params"], m["bytes"]] for m in s["modules"]]))
    print()
    print(table(["stack", "layer", "heads", "kv heads", "head dim", "ffn", "gated", "cross-attn", "params"],
                [[l["stack"], l["index"], l["heads"], l["kv_heads"], l["head_dim"], l["ffn"], l["gated"],
                  l["cross_attention"], l["params"]] for l in s["layers"]]))


def _inspect_kernels(a) -> None:
    from ..core.hardware import cpu_info
    from ..core.kernels import kernel_report, kernels_of
    from ..report.markdown import table

    info, rows = cpu_info(), kernel_report()
    used = None
    if a.model is not None:
        from .. import load

        used = kernels_of(load(a.model))
    if a.json:
        print(json.dumps({"cpu": info, "kernels": rows, "model_uses": used}, indent=2))
        return
    print(f"CPU: {info.get('cpu_model', '?')}, torch capability {info.get('cpu_capability')}, "
          f"flags {' '.join(info.get('cpu_flags', [])) or 'none of interest'}")
    print(table(["op", "runs", "why", "candidates"],
                [[r["op"], r["chosen"], r["why"],
                  "; ".join(f"{n}: {'yes' if c['available'] else 'no'} ({c['note']})" for n, c in r["candidates"].items())]
                 for r in rows]))
    if used is not None:
        print("\nthis model uses: " + (", ".join(f"{op} -> {impl}" for op, impl in used.items())
                                         or "no quantized modules (float kernels only)"))


def cmd_evaluate(a) -> None:
    from .. import evaluate, load

    model = _load_for_evaluation(a, load)
    if a.attention or a.window or a.attention_option:
        from ..attention import set_attention_

        set_attention_(model, a.attention or "sliding_window", **_attention_options(a))
    task = task_from_args(a)
    ref = load(a.reference) if a.reference else None
    if a.out:  # before any work: never overwrite a file slimformer did not write
        from ..models.saving import check_out_file

        check_out_file(a.out, ours=_is_eval_result)
    opts = eval_options(a)
    if a.kv_cache or a.kv_option:
        opts = _with_kv_cache(a, model, task, opts)
    res = evaluate(model, task, ref, opts)
    print_eval(res)
    if task is None:
        print("no --task/--data given: measured efficiency (and fidelity with --reference) on the packaged "
              "sample sentences; task metrics need real data via --data", file=sys.stderr)
    if a.out:
        from ..models.saving import write_file_atomically

        write_file_atomically(a.out, res.to_json(), ours=_is_eval_result)
        print(f"\nwrote {a.out}")


def _load_for_evaluation(a, load):
    """The model whole, or (--stream, or a float32 model bigger than the memory available, with
    --task lm) streamed from its shards, evaluated layer by layer (models.loading.load_for_perplexity)."""
    from ..core.errors import ConfigError
    from ..models.loading import load_for_perplexity

    if a.stream and (getattr(a, "task", None) != "lm" or a.reference or a.attention or a.kv_cache):
        raise ConfigError("--stream evaluates perplexity layer by layer: it takes --task lm, without --reference, "
                          "--attention or --kv-cache")
    if getattr(a, "task", None) == "lm" and a.model:
        return load_for_perplexity(a.model, True if a.stream else None,
                                   notify=lambda m: print(m, file=sys.stderr))
    return load(a.model)


def _is_eval_result(path: Path) -> bool:
    """Whether `path` holds an EvalResult JSON slimformer wrote (the only kind --out replaces)."""
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, OSError):
        return False
    return isinstance(d, dict) and set(d) == {"metrics", "efficiency", "fidelity", "env"} and "slimformer" in d["env"]


def _with_kv_cache(a, model, task, opts):
    import dataclasses

    from ..attention import kv_cache
    from ..core.errors import SlimformerError

    if task is None or task.kind != "lm":
        raise SlimformerError("--kv-cache needs --task lm (perplexity of a causal LM read as one stream)")
    kv = {}
    for item in a.kv_option:
        key, sep, value = item.partition("=")
        if not sep or not value.strip().lstrip("-").isdigit():
            raise SlimformerError(f"--kv-option {item!r}; accepted: KEY=INTEGER with KEY one of sinks, window, heavy, "
                                  "group, residual, chunk")
        kv[key] = int(value)
    chunk = kv.pop("chunk", 64)
    bad = sorted(set(kv) - {"sinks", "window", "heavy", "group", "residual"})
    if bad or chunk < 1:
        raise SlimformerError(f"--kv-option {', '.join(bad) or f'chunk={chunk}'}; accepted keys: sinks, window, heavy, "
                              "group, residual, chunk (>= 1)")
    kind = a.kv_cache or "sinks"
    kv_cache(model, kind, **kv)                                     # checks the options and the model now
    return dataclasses.replace(opts, task=dataclasses.replace(opts.task, kv_cache=lambda: kv_cache(model, kind, **kv),
                                                              kv_chunk=chunk))


def _attention_options(a) -> dict:
    import yaml

    from ..core.errors import SlimformerError

    opts = {} if a.window is None else {"window": a.window}
    for item in a.attention_option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SlimformerError(f"--attention-option {item!r}; accepted: KEY=VALUE, e.g. buckets=8")
        v = yaml.safe_load(value)
        opts[key] = tuple(v) if isinstance(v, list) else (v,) if key == "global_tokens" and isinstance(v, int) else v
    return opts


def cmd_recipes(a) -> None:
    from ..recipes import builtin_recipes, load_recipe

    if a.methods:
        from ..core.config import METHODS

        for name in METHODS.names():
            traits = METHODS.get(name).traits.names()
            print(f"{name:20s} {', '.join(traits) or '-'}")
        return
    for name in sorted(builtin_recipes()):
        r = load_recipe(name)
        print(f"{name:20s} {r.description}")


def cmd_report(a) -> None:
    from ..report.files import write_report

    out = write_report(a.runs, a.out)
    print(f"wrote {out} ({len(a.runs)} run{'s' if len(a.runs) > 1 else ''}); open it in a browser")
