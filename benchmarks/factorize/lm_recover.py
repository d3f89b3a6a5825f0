"""SmolLM2-135M: recipe lowrank-svdllm (SVD-LLM keeping 80% of the decoder layers' linear parameters,
then distillation from the original on WikiText-2 valid), run through `slimformer.compress` as a
user runs it; WikiText-2 test perplexity of the original, after the one-shot step and after recovery.

    python benchmarks/factorize/lm_recover.py --threads 2            # trains (resumable), then measures
    python benchmarks/factorize/lm_recover.py --max-steps 200         # a shorter recovery

Calibration and training text: WikiText-2 valid (the train split is not in ../shared/data; never the
test text). Decode speed:
greedy tokens/s over the original's, interleaved in this run (batch 1, 32 tokens after 64)."""
from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import slimformer as sf  # noqa: E402
from common import CACHE, base_parser, greedy_decode, interleaved, write  # noqa: E402
from slimformer.evaluate import EvalOptions, TaskOptions  # noqa: E402
from slimformer.evaluate.efficiency import saved_bytes  # noqa: E402
from slimformer.recipes import load_recipe  # noqa: E402
from slimformer.report.markdown import table  # noqa: E402
from slimformer.testing.packaged import smollm2_gguf  # noqa: E402


def main() -> None:
    ap = base_parser(__doc__)
    ap.add_argument("--recipe", default="lowrank-svdllm")
    ap.add_argument("--max-steps", type=int, default=0, help="override the distill step's max_steps (0: the recipe's)")
    ap.add_argument("--ppl-max-tokens", type=int, default=8192)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--name", default="factorize_lm_recover")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    task = sf.load_task("lm", a.data / "wikitext2raw" / "wiki.test.raw")
    lines = lambda f: [t for t in (a.data / "wikitext2" / f).read_text().splitlines() if len(t.split()) > 8]  # noqa: E731
    recipe = load_recipe(a.recipe)
    if a.max_steps:
        recipe = dataclasses.replace(recipe, steps=[dataclasses.replace(c, max_steps=a.max_steps)
                                                    if c.method == "distill" else c for c in recipe.steps])
    out = CACHE / a.name
    opts = sf.CompressOptions(
        evaluate=EvalOptions(task=TaskOptions(ppl_window=1024, ppl_stride=512, ppl_max_tokens=a.ppl_max_tokens),
                             efficiency=False, threads=a.threads),
        calibration_source=lines("valid.txt")[:2000], calibration_samples=2000, unlabeled=lines("valid.txt"),
        progress=True)
    t0 = time.perf_counter()
    res = sf.compress(sf.load(smollm2_gguf()), recipe, task, out, opts)
    secs = time.perf_counter() - t0
    base, rec = sf.load(smollm2_gguf()), sf.load(out)
    ids = base.tokenizer(" ".join(lines("valid.txt")[:20]), return_tensors="pt")["input_ids"][:, :64]
    speed = interleaved({"float": greedy_decode(base, ids), "recovered": greedy_decode(rec, ids)}, a.rounds) \
        if a.rounds else {}
    fppl = res.baseline.metrics["perplexity"]
    stages = res.stages
    tr = next((s.details for s in res.steps if s.method == "distill"), {})
    payload = {"recipe": res.recipe, "float_perplexity": fppl,
               "stages": [{"method": s["method"], "perplexity": s["metrics"]["perplexity"]} for s in stages
                          if "metrics" in s],
               "bytes": saved_bytes(rec)["bytes"], "bytes_float": saved_bytes(base)["bytes"],
               "params": rec.num_params(), "params_float": base.num_params(),
               "decode_speedup": speed["float"] / speed["recovered"] if speed else None,
               "training": {k: v for k, v in tr.items() if k != "curve"}, "seconds_this_invocation": secs}
    rows = [["float (dequantized GGUF)", fppl, 1.0]]
    rows += [[f"after {p['method']}", p["perplexity"], p["perplexity"] / fppl] for p in payload["stages"]]
    md = "\n".join([
        f"# SmolLM2-135M: {a.recipe}", "",
        f"`python benchmarks/factorize/lm_recover.py {' '.join(sys.argv[1:])}` ({a.threads} threads). WikiText-2 "
        f"raw test perplexity (first {a.ppl_max_tokens} tokens, window 1024, stride 512). Recovery: "
        f"{tr.get('steps')} distillation steps from the original on WikiText-2 valid paragraphs, precision "
        f"{tr.get('precision')}, {tr.get('seconds', 0) / 60:.1f} min of training. Parameters "
        f"{payload['params'] / 1e6:.1f}M vs {payload['params_float'] / 1e6:.1f}M; "
        f"{payload['bytes'] / 1e6:.0f} MB vs {payload['bytes_float'] / 1e6:.0f} MB; greedy decode "
        f"{payload['decode_speedup'] or float('nan'):.2f}x the original's tokens/s (interleaved, batch 1).", "",
        table(["model", "perplexity", "ppl / float"], rows),
    ])
    write(a.name, payload, md, a.out)


if __name__ == "__main__":
    main()
