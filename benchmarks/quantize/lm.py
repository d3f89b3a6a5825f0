"""SmolLM2-135M weight-only quantization on WikiText-2 raw test: perplexity, weight bytes, time.

    python benchmarks/quantize/lm.py                    # every row below (about 100 minutes on 2 cores)
    python benchmarks/quantize/lm.py --only "int4 GPTQ g64" --append   # one row, merged into the results
    python benchmarks/quantize/lm.py --ppl-max-tokens 16384

Calibration for GPTQ and AWQ (rotation needs none) uses WikiText-2 *valid* (wikitext2/valid.txt; 64 sequences of 512 tokens), never the
test text. "quantize s" is the wall time of quantize_ (for GPTQ: calibration + GPTQ).
"""
from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import slimformer as sf  # noqa: E402
from common import base_parser, smollm2_wikitext, write  # noqa: E402
from slimformer.core import step_details  # noqa: E402
from slimformer.evaluate.efficiency import saved_bytes  # noqa: E402
from slimformer.report.markdown import table  # noqa: E402

GPTQ = dict(bits=4, group_size=128, algorithm="gptq", act_order=True, clip=True, refit=True, calibration_samples=64)
ROT = dict(GPTQ, cd_passes=3)  # after a rotate step = scheme w4-gptq-rot (with calibration_samples=64)
AWQ = sf.AwqConfig(bits=4, group_size=128, calibration_samples=64)
MIXED = "mixed int4 GPTQ / int8: the most sensitive layers int8 (mixed_precision, fallback int8)"
MIXED32 = "mixed group sizes, all int4: GPTQ g128, the most sensitive layers g32 (fallback int4-g32)"
W = sf.WeightOnlyConfig
# row -> the steps it runs (float re-parametrisations first, the quantizer last)
SCHEMES = {
    "int8 RTN g128": [W(bits=8, group_size=128, algorithm="rtn")],
    "int4 RTN g128": [W(bits=4, group_size=128, algorithm="rtn")],
    "int4 GPTQ g128 (layer by layer, act-order, clip, refit)": [W(**GPTQ)],
    "int4 GPTQ g128 without refit": [W(**{**GPTQ, "refit": False})],
    "int4 RTN g128 + AWQ scaling (w4-awq)": [AWQ, W(bits=4, group_size=128, algorithm="rtn", calibration_samples=64)],
    "int4 GPTQ g128 + AWQ scaling": [AWQ, W(**GPTQ)],
    "int4 RTN g128 + Hadamard rotation": [sf.RotateConfig(), W(bits=4, group_size=128, algorithm="rtn")],
    "int4 GPTQ g128 + Hadamard rotation, no coordinate descent": [sf.RotateConfig(), W(**GPTQ)],
    "int4 GPTQ g128 + Hadamard rotation, no coordinate descent, seed 1": [sf.RotateConfig(seed=1), W(**GPTQ)],
    "int4 GPTQ g128 + Hadamard rotation, no coordinate descent, seed 2": [sf.RotateConfig(seed=2), W(**GPTQ)],
    "int4 GPTQ g128 + Hadamard rotation + coordinate descent (w4-gptq-rot)": [sf.RotateConfig(), W(**ROT)],
    "int4 GPTQ g128 + Hadamard rotation + coordinate descent, seed 1": [sf.RotateConfig(seed=1), W(**ROT)],
    "int4 GPTQ g128 + Hadamard rotation + coordinate descent, seed 2": [sf.RotateConfig(seed=2), W(**ROT)],
    "int4 GPTQ g128 + coordinate descent (3 passes), no rotation": [W(**GPTQ, cd_passes=3)],
    MIXED: None,  # built from --mixed-max-drop / --mixed-max-kept
    MIXED32: None,  # built from --mixed32-max-drop / --mixed32-max-kept
    "int4 GPTQ g64": [W(**{**GPTQ, "group_size": 64})],
    "int4 RTN g32 (for scale: 4x the groups)": [W(bits=4, group_size=32, algorithm="rtn")],
    "int4 RTN g32, float zeros (the GGUF's own Q4_1 grid)": [W(bits=4, group_size=32, algorithm="rtn", float_zeros=True)],
}


def main() -> None:
    ap = base_parser(__doc__)
    ap.add_argument("--ppl-max-tokens", type=int, default=8192)
    ap.add_argument("--calib-texts", type=int, default=2000, help="lines of wikitext2/valid.txt for calibration")
    ap.add_argument("--only", nargs="*", help="subset of scheme names")
    ap.add_argument("--name", default="quantize_lm", help="results file name (default quantize_lm)")
    ap.add_argument("--mixed-max-drop", type=float, default=0.0, help="KL budget of the mixed int4/int8 row (0: keep exactly --mixed-max-kept layers int8)")
    ap.add_argument("--mixed-max-kept", type=int, default=21, help="at most this many layers int8 (of 210)")
    ap.add_argument("--mixed32-max-drop", type=float, default=0.16,
                    help="KL budget (of the RTN search) of the mixed-group-size row")
    ap.add_argument("--mixed32-max-kept", type=int, default=120, help="at most this many layers g32 (of 210)")
    ap.add_argument("--mixed-calib-texts", type=int, default=8, help="texts for the sensitivity search")
    ap.add_argument("--append", action="store_true", help="merge the rows run into the existing results JSON")
    a = ap.parse_args()
    SCHEMES[MIXED] = [sf.MixedPrecisionConfig(scheme="w4-gptq", fallback="int8", max_drop=a.mixed_max_drop,
                                              max_float=a.mixed_max_kept, calibration_texts=a.mixed_calib_texts)]
    SCHEMES[MIXED32] = [sf.MixedPrecisionConfig(scheme="w4-gptq", fallback="int4-g32", max_drop=a.mixed32_max_drop,
                                                max_float=a.mixed32_max_kept, calibration_texts=a.mixed_calib_texts)]
    unknown = [n for n in a.only or [] if n not in SCHEMES]
    if unknown:
        raise SystemExit(f"--only: unknown rows {unknown}; accepted: {list(SCHEMES)}")
    torch.set_num_threads(a.threads)
    base, task, calib, opts = smollm2_wikitext(a)
    r = sf.evaluate(base, task, None, opts)
    fppl, fbytes = r.metrics["perplexity"], saved_bytes(base)["bytes"]
    payload = {"settings": r.env["task_settings"], "calibration": f"wikitext2/valid.txt first {a.calib_texts} lines",
               "float": {"perplexity": fppl, "bytes": fbytes}, "schemes": {}}
    path = a.out / f"{a.name}.json"
    if a.append and path.exists():
        old = json.loads(path.read_text())
        if old.get("settings") != payload["settings"] or abs(old["float"]["perplexity"] - fppl) > 1e-6 * fppl:
            raise SystemExit(f"--append: {path} was measured with other settings ({old.get('settings')}, float "
                             f"{old['float']['perplexity']:.4f}); run without --append")
        payload["schemes"] = old["schemes"]
    for name, steps in SCHEMES.items():
        if a.only and name not in a.only:
            continue
        m = copy.deepcopy(base)
        t0 = time.perf_counter()
        for cfg in steps:
            sf.quantize_(m, cfg, calib)
        secs = time.perf_counter() - t0
        ppl = sf.evaluate(m, task, None, opts).metrics["perplexity"]
        row = {"config": steps[-1].to_dict(), "steps": [c.to_dict() for c in steps], "perplexity": ppl,
               "bytes": saved_bytes(m)["bytes"], "seconds": secs}
        mp = step_details(m, "mixed_precision")
        if mp:
            kept = next(k for k in mp if k.startswith("kept_"))
            row["mixed"] = {"kept_as": kept[5:], "kept": mp[kept], "fidelity_drop": mp["fidelity_drop"],
                            "searched_drop": mp["searched_drop"], "max_drop": mp["max_drop"]}
        payload["schemes"][name] = row
        print(f"{name}: ppl {ppl:.2f} ({ppl / fppl - 1:+.1%}), {row['bytes'] / 1e6:.1f} MB, {secs:.0f} s", flush=True)
        del m
    rows = [["float32 (dequantized GGUF)", fppl, 1.0, fbytes / 1e6, 1.0, 0.0]]
    order = [n for n in SCHEMES if n in payload["schemes"]] + [n for n in payload["schemes"] if n not in SCHEMES]
    for name in order:
        row = payload["schemes"][name]
        label = name
        if "mixed" in row:
            mx = row["mixed"]
            label = (f"{name}: {len(mx['kept'])} of 210 layers {mx['kept_as'].replace('_', ' ')} "
                     f"(KL budget {mx['max_drop']:g}; KL final {mx['fidelity_drop']:.3f})")
        rows.append([label, row["perplexity"], row["perplexity"] / fppl, row["bytes"] / 1e6, row["bytes"] / fbytes,
                     row["seconds"]])
    s = r.env["task_settings"]
    md = "\n".join([
        "# Weight-only quantization of SmolLM2-135M", "",
        f"`python benchmarks/quantize/lm.py --ppl-max-tokens {a.ppl_max_tokens}`: WikiText-2 raw test, first "
        f"{s['ppl_tokens']} tokens, window {s['ppl_window']}, stride {s['ppl_stride']}; {a.threads} threads. "
        "The \"float\" model is SmolLM2-135M-Instruct dequantized from its Q4_1 GGUF: every Linear weight is already "
        "on a 4-bit grid of its own per 32 inputs (scale and min per block), which is why group 32 with float zero "
        "points reproduces it. 576-wide inputs at group 128 have a last group of 64. Weights = bytes of the saved "
        "safetensors (int4 packed two per byte, fp32 group scales, uint8 or fp32 zeros; embedding int8 per row, read "
        "by the tied LM head too). GPTQ calibrates on WikiText-2 valid. Mixed rows: sensitivities by int4 RTN of one "
        f"layer at a time on {a.mixed_calib_texts} texts, layers moved to the finer format from the most sensitive down "
        "until the RTN model's KL is within the budget (or the count limit); the final model is GPTQ; the layers are "
        "in the JSON. \"quantize s\" of mixed rows includes that search. Rows may come from separate `--append` "
        "runs on the same settings.", "",
        table(["scheme", "perplexity", "ppl / float", "MB", "bytes / float", "quantize s"], rows), "",
        "More ablations (refit, calibration length/count, damping, float zeros): "
        "benchmarks/results/quantize_lm_ablation.md; earlier GPTQ development runs: "
        "benchmarks/results/quantize_lm_history.md.",
    ])
    write(a.name, payload, md, a.out)


if __name__ == "__main__":
    main()
