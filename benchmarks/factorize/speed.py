"""Where low rank saves time and where only bytes: MiniLM (PyTorch fp32) with its layers' linears
factorized at several ratios, throughput at batch 32 x 128 and batch-1 latency as ratios to the
original, timed interleaved in this run; and the factorized token embedding (bytes only: a lookup
costs nothing to begin with).

    python benchmarks/factorize/speed.py --threads 2

A rank-r pair replacing an m x n weight does r (m + n) multiply-adds per token instead of m n: it
is cheaper only when r < m n / (m + n). At ratio R every layer keeps R of its parameters, so its
multiply-adds fall to R too; what the clock shows depends on whether the thin products run as fast
per multiply-add as the square ones (quality is not measured here: svd without recovery)."""
from __future__ import annotations

import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import slimformer as sf  # noqa: E402
from common import base_parser, interleaved, write  # noqa: E402
from slimformer.evaluate.efficiency import make_inputs, saved_bytes  # noqa: E402
from slimformer.report.markdown import table  # noqa: E402


def main() -> None:
    ap = base_parser(__doc__)
    ap.add_argument("--ratios", nargs="*", type=float, default=[0.9, 0.7, 0.5, 0.3])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--name", default="factorize_speed")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    base = sf.load()
    texts = sf.sample_sentences()
    big = make_inputs(base, texts, 32, 128)
    one = make_inputs(base, texts, 1, 128)
    models = {}
    for r in a.ratios:
        m = copy.deepcopy(base)
        sf.factorize_(m, sf.SvdConfig(ratio=r))
        models[f"layers' linears at {r:g}"] = m
    m = copy.deepcopy(base)
    sf.factorize_(m, sf.EmbeddingFactorConfig(rank=128))
    models["token embedding at rank 128"] = m

    def fwd(sm, enc):
        def run():
            with torch.inference_mode():
                sm.model(**enc)
        return run

    rows, payload = [], {"rows": {}}
    b0 = saved_bytes(base)["bytes"]
    for name, m in models.items():
        tb = interleaved({"original": fwd(base, big), name: fwd(m, big)}, a.rounds)
        t1 = interleaved({"original": fwd(base, one), name: fwd(m, one)}, a.rounds)
        row = {"throughput_x": tb["original"] / tb[name], "latency_x": t1["original"] / t1[name],
               "params": m.num_params(), "bytes": saved_bytes(m)["bytes"]}
        payload["rows"][name] = row
        rows.append([name, row["params"] / base.num_params(), row["bytes"] / b0, row["throughput_x"],
                     row["latency_x"]])
        print(name, row, flush=True)
    md = "\n".join([
        "# Low rank on MiniLM: where it saves time, where only bytes", "",
        f"`python benchmarks/factorize/speed.py {' '.join(sys.argv[1:])}` ({a.threads} threads, PyTorch fp32). "
        f"Throughput at batch 32 x 128 and batch-1 latency (128 tokens) over the original's, interleaved in this "
        f"run ({a.rounds} rounds, medians); plain SVD, no recovery (speed does not depend on the method).", "",
        table(["factorized", "params / original", "bytes / original", "throughput x", "batch-1 speed x"], rows),
    ])
    write(a.name, payload, md, a.out)


if __name__ == "__main__":
    main()
