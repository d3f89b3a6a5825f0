"""MiniLM: recipe encoder-movement (50% of FFN neurons removed by movement pruning during one
epoch of distillation from the original), run through `slimformer.compress` as a user runs it.

    python benchmarks/prune/movement.py --threads 2           # trains (resumable), then measures

STS-B dev Spearman x100 of the output; throughput at batch 32 x 128 as a ratio to the original,
timed interleaved in this run (medians); bytes of the saved model. The one-shot + recovery figure it
is compared with is benchmarks/prune/minilm_recover.py's (50% FFN + 25% heads, taylor, 1 epoch).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import slimformer as sf  # noqa: E402
from common import RESULTS, base_parser, minilm_recipe_run, throughput_ratio, write  # noqa: E402
from slimformer.evaluate.efficiency import make_inputs, saved_bytes  # noqa: E402
from slimformer.evaluate.result import cpu_info  # noqa: E402
from slimformer.evaluate.runners import TaskOptions, run_stsb  # noqa: E402
from slimformer.report.markdown import table  # noqa: E402


def main() -> None:
    ap = base_parser(__doc__)
    ap.add_argument("--recipe", default="encoder-movement", help="built-in recipe or YAML file (default encoder-movement)")
    ap.add_argument("--name", default="prune_movement", help="results file name")
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
    sizes = [li["ffn"] for li in sf.summarize(pruned)["layers"]]
    recover = json.loads((RESULTS / "prune_minilm_recover.json").read_text())["rows"]
    one_shot = recover.get("ffn 50% + heads 25% (taylor)", {})
    steps = {s.method: s.details for s in res.steps}
    payload = {"recipe": res.recipe, "spearman_original": sp_o, "spearman": sp_p, "throughput_x": tx,
               "bytes": b_p, "bytes_original": b_o, "ffn_sizes": sizes, "seconds_this_invocation": secs,
               "training": {k: v for k, v in steps.get("distill", {}).items() if k != "curve"},
               "one_shot_recovery": one_shot}
    rows = [["original", sp_o, "", 1.0, b_o / 1e6],
            [a.recipe, sp_p, f"{sp_p - sp_o:+.2f}", tx, b_p / 1e6]]
    if one_shot:
        rows.append(["one-shot 50% FFN + 25% heads (taylor) + 1 epoch recovery (prune_minilm_recover.md)",
                     one_shot["spearman_recovered"], f"{one_shot['spearman_recovered'] - sp_o:+.2f}",
                     one_shot["throughput_x"], one_shot["bytes"] / 1e6])
    tr = payload["training"]
    md = "\n".join([
        f"# MiniLM: {a.recipe}", "",
        f"`python benchmarks/prune/movement.py {' '.join(sys.argv[1:])}` ({a.threads} threads, "
        f"{cpu_info().get('cpu_model', '?')}). The recipe ran through `slimformer.compress` on "
        f"the ~106k unlabeled sentences of the distillation benchmarks ({tr.get('steps')} steps, precision "
        f"{tr.get('precision')}, {tr.get('seconds', 0) / 60:.0f} min of training). STS-B dev Spearman x100; "
        f"throughput at batch 32 x 128 as a ratio to the original, interleaved in this run ({a.rounds} rounds, "
        "medians); MB of the saved weights.", "",
        table(["model", "spearman", "vs original", "throughput x", "MB"], rows), "",
        f"FFN sizes after pruning: {sizes}",
    ])
    write(a.name, payload, md, a.out)


if __name__ == "__main__":
    main()
