"""GPTQ ablations on SmolLM2-135M: perplexity of variants of one base config, on a shorter slice.

    python benchmarks/quantize/lm_ablation.py                           # the default variant set
    python benchmarks/quantize/lm_ablation.py --variant "refit=True" --variant "refit=True,damp=0.1"

Each --variant is a comma-separated list of WeightOnlyConfig overrides applied to the base
(int4 g128 GPTQ, act-order, clip, 64 x 512 calibration tokens from WikiText-2 valid); "base" is
the base itself. Perplexity: WikiText-2 raw test, first --ppl-max-tokens tokens (4096), window
1024, stride 512. Writes benchmarks/results/quantize_lm_ablation.{json,md}; --append merges into
an existing JSON so variants can be run in several sittings.
"""
from __future__ import annotations

import ast
import copy
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import slimformer as sf  # noqa: E402
from common import base_parser, write  # noqa: E402
from slimformer.evaluate import EvalOptions, TaskOptions  # noqa: E402
from slimformer.report.markdown import table  # noqa: E402
from slimformer.testing.packaged import smollm2_gguf  # noqa: E402

BASE = dict(bits=4, group_size=128, algorithm="gptq", act_order=True, clip=True, calibration_samples=64)
DEFAULT_VARIANTS = ["base", "refit=True"]


def parse_variant(text: str) -> dict:
    if text == "base":
        return {}
    out = {}
    for part in text.split(","):
        key, _, val = part.partition("=")
        if not _:
            raise SystemExit(f"--variant {text!r}: expected key=value[,key=value...] or 'base'")
        try:
            out[key.strip()] = ast.literal_eval(val.strip())
        except (ValueError, SyntaxError):
            out[key.strip()] = val.strip()
    return out


def main() -> None:
    ap = base_parser(__doc__)
    ap.add_argument("--ppl-max-tokens", type=int, default=4096)
    ap.add_argument("--calib-texts", type=int, default=2000, help="lines of wikitext2/valid.txt for calibration")
    ap.add_argument("--variant", action="append", help="WeightOnlyConfig overrides (repeatable)")
    ap.add_argument("--append", action="store_true", help="merge into the existing results JSON")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    variants = a.variant or DEFAULT_VARIANTS
    cfgs = {v: sf.WeightOnlyConfig(**{**BASE, **parse_variant(v)}) for v in variants}  # validate all first
    base = sf.load(smollm2_gguf())
    task = sf.load_task("lm", a.data / "wikitext2raw" / "wiki.test.raw")
    calib = [l for l in (a.data / "wikitext2" / "valid.txt").read_text().splitlines() if l.strip()][: a.calib_texts]
    opts = EvalOptions(task=TaskOptions(ppl_window=1024, ppl_stride=512, ppl_max_tokens=a.ppl_max_tokens),
                       efficiency=False, threads=a.threads)
    path = a.out / "quantize_lm_ablation.json"
    payload = json.loads(path.read_text()) if a.append and path.exists() else {"variants": {}}
    fppl = sf.evaluate(base, task, None, opts).metrics["perplexity"]
    payload.update({"base": BASE, "float_perplexity": fppl, "ppl_tokens": a.ppl_max_tokens,
                    "calibration": f"wikitext2/valid.txt first {a.calib_texts} lines"})
    for v, cfg in cfgs.items():
        m = copy.deepcopy(base)
        t0 = time.perf_counter()
        sf.quantize_(m, cfg, calib)
        secs = time.perf_counter() - t0
        ppl = sf.evaluate(m, task, None, opts).metrics["perplexity"]
        payload["variants"][v] = {"perplexity": ppl, "vs_float": ppl / fppl - 1, "seconds": secs}
        print(f"{v}: ppl {ppl:.2f} ({ppl / fppl - 1:+.1%}), {secs:.0f} s", flush=True)
        del m
    rows = [[v, r["perplexity"], f"{r['vs_float']:+.1%}", r["seconds"]] for v, r in payload["variants"].items()]
    md = "\n".join([
        "# GPTQ ablations, SmolLM2-135M", "",
        f"`python benchmarks/quantize/lm_ablation.py --variant ...`: base {BASE}; WikiText-2 raw test, first "
        f"{a.ppl_max_tokens} tokens, window 1024, stride 512; float perplexity {fppl:.2f}; {a.threads} threads.", "",
        table(["variant (overrides of the base)", "perplexity", "vs float", "quantize s"], rows),
    ])
    write("quantize_lm_ablation", payload, md, a.out)


if __name__ == "__main__":
    main()
