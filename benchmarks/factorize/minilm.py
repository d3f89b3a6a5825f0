"""MiniLM: a factorization recipe (encoder-lowrank: rank-128 token embedding + FFN at 70% of its
parameters, distilled, deployed; share-layers: layers sharing weights in pairs, distilled), run
through `slimformer.compress` as a user runs it.

    python benchmarks/factorize/minilm.py --recipe encoder-lowrank --name factorize_minilm_lowrank
    python benchmarks/factorize/minilm.py --recipe share-layers --name factorize_minilm_share

STS-B dev Spearman x100 of the output; throughput at batch 32 x 128 as a ratio to the original,
timed interleaved in this run (medians); bytes of the saved model, and of the layers' weights
(what weight sharing shrinks). Trains once (resumable; cached in .cache/bench/NAME), then measures.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import slimformer as sf  # noqa: E402
from common import base_parser, minilm_recipe_run, throughput_ratio, write  # noqa: E402
from slimformer.evaluate.efficiency import make_inputs, saved_bytes  # noqa: E402
from slimformer.evaluate.result import cpu_info  # noqa: E402
from slimformer.evaluate.runners import TaskOptions, run_stsb  # noqa: E402
from slimformer.report.markdown import table  # noqa: E402


def out_folder(sm):
    from slimformer.models.loading import default_model_path

    return Path(default_model_path())


def layer_bytes(folder) -> int | None:
    """Bytes of the saved tensors of the Transformer layers (names with '.layer.' / '.layers.')."""
    from safetensors import safe_open

    files = list(Path(folder).glob("*.safetensors"))
    if not files:
        return None
    n = 0
    for f in files:
        with safe_open(str(f), "pt") as st:
            for k in st.keys():
                if ".layer." in k or ".layers." in k:
                    t = st.get_slice(k)
                    numel = 1
                    for d in t.get_shape():
                        numel *= d
                    n += numel * {"F32": 4, "F16": 2, "BF16": 2, "I8": 1, "U8": 1}.get(t.get_dtype(), 4)
    return n


def main() -> None:
    ap = base_parser(__doc__)
    ap.add_argument("--recipe", default="encoder-lowrank", help="built-in recipe or YAML file (default encoder-lowrank)")
    ap.add_argument("--name", default="factorize_minilm_lowrank", help="results file name")
    ap.add_argument("--rounds", type=int, default=9, help="interleaved timing rounds")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    res, secs, task, out = minilm_recipe_run(a, a.recipe)
    original, pruned = sf.load(), sf.load(out)
    sp_o = run_stsb(original, task, TaskOptions(progress=False))[0]["spearman"]
    sp_p = run_stsb(pruned, task, TaskOptions(progress=False))[0]["spearman"]
    enc = make_inputs(original, task.texts(), 32, 128)
    tx = throughput_ratio(original, pruned, enc, rounds=a.rounds)
    b_o, b_p = saved_bytes(original)["bytes"], saved_bytes(pruned)["bytes"]
    lb_o, lb_p = layer_bytes(out_folder(original)), layer_bytes(out)
    steps = {s.method: s.details for s in res.steps}
    payload = {"recipe": res.recipe, "spearman_original": sp_o, "spearman": sp_p, "throughput_x": tx,
               "bytes": b_p, "bytes_original": b_o, "layer_bytes": lb_p, "layer_bytes_original": lb_o,
               "params": pruned.num_params() if hasattr(pruned, "num_params") else None,
               "params_original": original.num_params(), "seconds_this_invocation": secs,
               "steps": {k: {kk: vv for kk, vv in v.items() if kk not in ("curve", "per_layer")}
                         for k, v in steps.items()}}
    rows = [["original", sp_o, "", 1.0, b_o / 1e6, lb_o / 1e6],
            [a.recipe, sp_p, f"{sp_p - sp_o:+.2f}", tx, b_p / 1e6, lb_p / 1e6 if lb_p else "-"]]
    tr = steps.get("distill", {})
    md = "\n".join([
        f"# MiniLM: {a.recipe}", "",
        f"`python benchmarks/factorize/minilm.py {' '.join(sys.argv[1:])}` ({a.threads} threads, "
        f"{cpu_info().get('cpu_model', '?')}). The recipe ran through `slimformer.compress` on "
        f"the ~106k unlabeled sentences of the distillation benchmarks ({tr.get('steps')} steps, precision "
        f"{tr.get('precision')}, {tr.get('seconds', 0) / 60:.0f} min of training). STS-B dev Spearman x100; "
        f"throughput at batch 32 x 128 as a ratio to the original, interleaved in this run ({a.rounds} rounds, "
        "medians); MB of the saved weights, and of the Transformer layers' tensors alone (what weight sharing "
        "shrinks; '-' for an exported graph).", "",
        table(["model", "spearman", "vs original", "throughput x", "MB", "layers MB"], rows),
    ])
    write(a.name, payload, md, a.out)


if __name__ == "__main__":
    main()
