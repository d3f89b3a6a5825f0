"""Greedy decoding of quantized SmolLM2 across kernels and runtimes: how many tokens agree before
the first difference, against the float model's own bf16 / fp32 divergence as the yardstick.

    python benchmarks/runtime/greedy_agreement.py --threads 2

Prompts: the first 20 WikiText-2 test lines of at least 12 words, cut to their first 12 words;
20 new tokens each, greedy. Pairs: float32 vs bfloat16 PyTorch (the same float weights: what
rounding alone does); w4-g32-fz with slimformer's default kernels on this CPU (int4 weights on
torch's int4 kernel, the tied int8 head on torch._int_mm with int8 activations) vs the reference
kernels (dequantized weights, float head); the default kernels vs ONNX Runtime running the same codes
(`export --onnx`, MatMulNBits, accuracy level 4: int8 activations per block).
"""
from __future__ import annotations

import copy
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import slimformer as sf  # noqa: E402
from common import base_parser, write  # noqa: E402
from slimformer.core.kernels import use_kernels  # noqa: E402
from slimformer.report.markdown import table  # noqa: E402
from slimformer.testing.packaged import smollm2_gguf  # noqa: E402

REFERENCE = dict(int4_linear="dequant", int8_head="float", int8_linear="float")


def greedy(model, ids: list[int], n: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                             pad_token_id=0)
    return out[0, len(ids):].tolist()


def agreement(a: list[list[int]], b: list[list[int]]) -> dict:
    first = []
    for x, y in zip(a, b):
        k = next((i for i, (u, v) in enumerate(zip(x, y)) if u != v), len(x))
        first.append(k)
    return {"mean_tokens_before_first_difference": sum(first) / len(first),
            "prompts_identical": sum(k == len(x) for k, x in zip(first, a)), "per_prompt": first}


def main() -> None:
    ap = base_parser(__doc__)
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--new", type=int, default=20, help="new tokens per prompt")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    base = sf.load(smollm2_gguf())
    lines = [line.strip() for line in (a.data / "wikitext2raw" / "wiki.test.raw").read_text().splitlines()
             if len(line.split()) >= 12 and not line.strip().startswith("=")]
    prompts = [base.tokenizer(" ".join(line.split()[:12]))["input_ids"] for line in lines[: a.prompts]]
    runs = {}
    runs["float32"] = [greedy(base.model, p, a.new) for p in prompts]
    bf = copy.deepcopy(base)
    bf.model.to(torch.bfloat16)
    runs["bfloat16"] = [greedy(bf.model, p, a.new) for p in prompts]
    del bf
    q = copy.deepcopy(base)
    sf.quantize_(q, sf.WeightOnlyConfig(bits=4, group_size=32, float_zeros=True))
    runs["w4-g32-fz, default kernels"] = [greedy(q.model, p, a.new) for p in prompts]
    with use_kernels(**REFERENCE):
        runs["w4-g32-fz, reference kernels"] = [greedy(q.model, p, a.new) for p in prompts]
    with use_kernels(int8_head="float"):
        runs["w4-g32-fz, default kernels but a float head"] = [greedy(q.model, p, a.new) for p in prompts]
    with tempfile.TemporaryDirectory() as d:
        from slimformer.export import export_onnx_lm, load_onnx

        lm = load_onnx(export_onnx_lm(q, Path(d) / "ort", accuracy_level=4), threads=a.threads)
        runs["w4-g32-fz, ONNX Runtime (level 4)"] = [lm.generate(torch.tensor([p]), a.new)[0, len(p):].tolist()
                                                    for p in prompts]
    pairs = [("float32", "bfloat16"),
             ("w4-g32-fz, default kernels", "w4-g32-fz, reference kernels"),
             ("w4-g32-fz, default kernels but a float head", "w4-g32-fz, reference kernels"),
             ("w4-g32-fz, ONNX Runtime (level 4)", "w4-g32-fz, reference kernels"),
             ("w4-g32-fz, default kernels", "w4-g32-fz, ONNX Runtime (level 4)")]
    results = {f"{x} vs {y}": agreement(runs[x], runs[y]) for x, y in pairs}
    rows = [[k, f"{v['mean_tokens_before_first_difference']:.1f} of {a.new}", f"{v['prompts_identical']} of "
             f"{len(prompts)}"] for k, v in results.items()]
    md = "\n".join([
        "# SmolLM2 greedy decoding: agreement across kernels and runtimes", "",
        f"`python benchmarks/runtime/greedy_agreement.py {' '.join(sys.argv[1:])}` ({a.threads} threads). "
        f"{len(prompts)} WikiText-2 prompts of 12 words, {a.new} new tokens each, greedy; the mean number of tokens "
        "that agree before the first difference, and how many prompts agree on every token.", "",
        table(["pair", "tokens before the first difference", "prompts identical"], rows)])
    write("greedy_agreement", {"prompts": len(prompts), "new_tokens": a.new, "pairs": results}, md, a.out)


if __name__ == "__main__":
    main()
