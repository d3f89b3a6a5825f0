"""SmolLM2-135M weight-only quantization on WikiText-2 raw test: perplexity, weight bytes, time.

    python benchmarks/quantize/lm.py                    # float, int8 RTN, int4 RTN, int4 GPTQ (g128)
    python benchmarks/quantize/lm.py --ppl-max-tokens 16384

Calibration for GPTQ uses WikiText-2 *valid* (wikitext2/valid.txt; 64 sequences of 512 tokens), never the
test text. "quantize s" is the wall time of quantize_ (for GPTQ: calibration + GPTQ).
"""
from __future__ import annotations

import copy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import slimformer as sf  # noqa: E402
from common import base_parser, write  # noqa: E402
from slimformer.evaluate import EvalOptions, TaskOptions  # noqa: E402
from slimformer.evaluate.efficiency import saved_bytes  # noqa: E402
from slimformer.report.markdown import table  # noqa: E402
from slimformer.testing.packaged import smollm2_gguf  # noqa: E402

GPTQ = dict(bits=4, group_size=128, algorithm="gptq", act_order=True, clip=True, refit=True, calibration_samples=64)
MIXED = "mixed int4 GPTQ / int8: the most sensitive layers int8 (mixed_precision, fallback int8)"
SCHEMES = {
    "int8 RTN g128": sf.WeightOnlyConfig(bits=8, group_size=128, algorithm="rtn"),
    "int4 RTN g128": sf.WeightOnlyConfig(bits=4, group_size=128, algorithm="rtn"),
    "int4 GPTQ g128 (layer by layer, act-order, clip, refit)": sf.WeightOnlyConfig(**GPTQ),
    "int4 GPTQ g128 without refit": sf.WeightOnlyConfig(**{**GPTQ, "refit": False}),
    MIXED: None,  # built from --mixed-max-drop / --mixed-max-kept
    "int4 RTN g32 (for scale: 4x the groups)": sf.WeightOnlyConfig(bits=4, group_size=32, algorithm="rtn"),
}


def main() -> None:
    ap = base_parser(__doc__)
    ap.add_argument("--ppl-max-tokens", type=int, default=8192)
    ap.add_argument("--calib-texts", type=int, default=2000, help="lines of wikitext2/valid.txt for calibration")
    ap.add_argument("--only", nargs="*", help="subset of scheme names")
    ap.add_argument("--mixed-max-drop", type=float, default=0.0, help="KL budget of the mixed int4/int8 row (0: keep exactly --mixed-max-kept layers int8)")
    ap.add_argument("--mixed-max-kept", type=int, default=21, help="at most this many layers int8 (of 210)")
    ap.add_argument("--mixed-calib-texts", type=int, default=8, help="texts for the sensitivity search")
    a = ap.parse_args()
    SCHEMES[MIXED] = sf.MixedPrecisionConfig(scheme="w4-gptq", fallback="int8", max_drop=a.mixed_max_drop,
                                             max_float=a.mixed_max_kept, calibration_texts=a.mixed_calib_texts)
    torch.set_num_threads(a.threads)
    base = sf.load(smollm2_gguf())
    task = sf.load_task("lm", a.data / "wikitext2raw" / "wiki.test.raw")
    calib = [l for l in (a.data / "wikitext2" / "valid.txt").read_text().splitlines() if l.strip()][: a.calib_texts]
    opts = EvalOptions(task=TaskOptions(ppl_window=1024, ppl_stride=512, ppl_max_tokens=a.ppl_max_tokens),
                       efficiency=False, threads=a.threads)
    r = sf.evaluate(base, task, None, opts)
    fbytes = saved_bytes(base)["bytes"]
    rows = [["float32 (dequantized GGUF)", r.metrics["perplexity"], 1.0, fbytes / 1e6, 1.0, 0.0]]
    payload = {"settings": r.env["task_settings"], "calibration": f"wikitext2/valid.txt first {a.calib_texts} lines",
               "float": {"perplexity": r.metrics["perplexity"], "bytes": fbytes}, "schemes": {}}
    for name, cfg in SCHEMES.items():
        if a.only and name not in a.only:
            continue
        m = copy.deepcopy(base)
        t0 = time.perf_counter()
        sf.quantize_(m, cfg, calib)
        secs = time.perf_counter() - t0
        q = sf.evaluate(m, task, None, opts)
        b = saved_bytes(m)["bytes"]
        ppl = q.metrics["perplexity"]
        payload["schemes"][name] = {"config": cfg.to_dict(), "perplexity": ppl, "bytes": b, "seconds": secs}
        if "mixed_precision" in m.meta:
            mp = m.meta["mixed_precision"]
            payload["schemes"][name]["mixed"] = {k: mp[k] for k in ("kept_int8", "fidelity_drop", "searched_drop")}
            name = f"{name}: {len(mp['kept_int8'])} of 210 layers int8"
        rows.append([name, ppl, ppl / r.metrics["perplexity"], b / 1e6, b / fbytes, secs])
        print(rows[-1], flush=True)
        del m
    s = r.env["task_settings"]
    md = "\n".join([
        "# Weight-only quantization of SmolLM2-135M", "",
        f"`python benchmarks/quantize/lm.py --ppl-max-tokens {a.ppl_max_tokens}`: WikiText-2 raw test, first "
        f"{s['ppl_tokens']} tokens, window {s['ppl_window']}, stride {s['ppl_stride']}; {a.threads} threads. "
        "576-wide inputs at group 128 have a last group of 64. Weights = bytes of the saved safetensors (int4 packed two per byte, fp32 group scales, uint8 zeros; "
        "embedding int8 per row, read by the tied LM head too). GPTQ calibrates on WikiText-2 valid. "
        f"Mixed: KL budget {a.mixed_max_drop}, at most {a.mixed_max_kept} layers int8, sensitivities by int4 RTN of "
        f"one layer at a time on {a.mixed_calib_texts} texts; the layers it kept are in the JSON.", "",
        table(["scheme", "perplexity", "ppl / float", "MB", "bytes / float", "quantize s"], rows),
    ])
    write("quantize_lm", payload, md, a.out)


if __name__ == "__main__":
    main()
