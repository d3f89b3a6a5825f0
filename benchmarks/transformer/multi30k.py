"""The reference Transformer on Multi30k: train en->de (cached), then compress it with every family.

    python benchmarks/transformer/multi30k.py                 # train (~2 h on 2 cores), evaluate, compress
    python benchmarks/transformer/multi30k.py --epochs 1      # a quick look (a new cache entry per setting)

Training: `slimformer.train.translation` defaults (joint 8k BPE, d_model 256, 3+3 layers, 4 heads,
FFN 1024, dropout 0.1, label smoothing 0.1, inverse-sqrt schedule, 4096 tokens a batch, the last
3 epochs averaged). Kept in .cache/bench/transformer/ and reused. Test: test_2016_flickr (1,000
pairs), sacreBLEU cased and lowercased (published Multi30k figures are lowercased), chrF, beam 5.
Compression rows, each measured on the same test set: int8 dynamic (PyTorch), int4 weight-only
(group 64), 20% of attention heads removed (magnitude), and a sequence-level KD student (the
teacher's encoder layers 0 and 2, decoder layer 0: half of the 6 layers; trained on the teacher's beam translations of the training
sources). Speed: sentences/s translating 256 test sentences, batch 1 and batch 32, greedy and beam
5, as ratios to the float model in this run.
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
from slimformer.adapters import get_adapter  # noqa: E402
from common import base_parser, write  # noqa: E402
from slimformer.evaluate import EvalOptions, TaskOptions  # noqa: E402
from slimformer.evaluate.efficiency import saved_bytes  # noqa: E402
from slimformer.evaluate.result import cpu_info  # noqa: E402
from slimformer.report.markdown import table  # noqa: E402
from slimformer.train.translation import TranslationConfig, train_translation  # noqa: E402

CACHE = Path(__file__).resolve().parents[2] / ".cache" / "bench" / "transformer"


def run_folder(pair, epochs: float, dropout: float, average_last: int) -> Path:
    tag = "" if (dropout, average_last) == (0.1, 3) else f"-d{dropout:g}-a{average_last}"
    return CACHE / f"{pair[0]}-{pair[1]}-e{epochs:g}{tag}"


def trained(data: Path, pair, epochs: float, dropout: float = 0.1, average_last: int = 3) -> tuple[object, dict]:
    folder = run_folder(pair, epochs, dropout, average_last)
    if (folder / "model" / "config.json").exists():
        return sf.load(folder / "model"), json.loads((folder / "training.json").read_text())
    train = sf.load_task("translation", str(data / "multi30k" / "train"), pair=pair)
    valid = sf.load_task("translation", str(data / "multi30k" / "val"), pair=pair)
    t0 = time.perf_counter()
    sm, res = train_translation(train, valid, TranslationConfig(epochs=epochs, dropout=dropout, average_last=average_last),
                                out_dir=folder / "run")
    info = {"seconds": time.perf_counter() - t0, "steps": res.steps, "dropout": dropout, "average_last": average_last, "epochs": res.epochs, "precision": res.precision,
            "curve": [h["eval"] for h in res.history if "eval" in h]}
    sf.save(sm, folder / "model")
    (folder / "training.json").write_text(json.dumps(info, indent=2))
    return sm, info


def quality(sm, test, beams: int) -> dict:
    r = sf.evaluate(sm, test, None, EvalOptions(task=TaskOptions(gen_num_beams=beams, gen_max_new_tokens=100,
                                                                 progress=False), efficiency=False))
    return {**r.metrics, "signature": r.env.get("task_settings", {}).get("bleu_signature")}


@torch.inference_mode()
def speed(models: dict, sources: list[str], rounds: int = 3) -> dict:
    """sentences/s per model for (batch, beams) in (1, 1), (32, 1), (32, 5): interleaved, medians."""
    import statistics

    out = {}
    for batch, beams in ((1, 1), (32, 1), (32, 5)):
        n = 16 if batch == 1 else 256
        times = {k: [] for k in models}
        for _ in range(rounds):
            for k, m in models.items():
                t0 = time.perf_counter()
                for i in range(0, n, batch):
                    enc = m.tokenize(sources[i:i + batch], 128)
                    m.model.generate(**enc, num_beams=beams, max_new_tokens=100, do_sample=False)
                times[k].append(n / (time.perf_counter() - t0))
        for k in models:
            out.setdefault(k, {})[f"b{batch}_beam{beams}"] = statistics.median(times[k])
    return out


def main() -> None:
    ap = base_parser(__doc__)
    ap.add_argument("--epochs", type=float, default=20.0)
    ap.add_argument("--pair", default="en,de")
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--average-last", type=int, default=3, help="checkpoints (epochs) averaged at the end")
    ap.add_argument("--skip-compression", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    pair = tuple(a.pair.split(","))
    base, info = trained(a.data, pair, a.epochs, a.dropout, a.average_last)
    test = sf.load_task("translation", str(a.data / "multi30k" / "test_2016_flickr"), pair=pair)
    train = sf.load_task("translation", str(a.data / "multi30k" / "train"), pair=pair)
    variants = {"float (trained here)": base}
    if not a.skip_compression:
        calib = [p[0] for p in train.examples[:128]]
        for name, cfg in (("int8 dynamic (PyTorch)", sf.Int8DynamicConfig()),
                          ("int4 weight-only g64", sf.WeightOnlyConfig(bits=4, group_size=64)),
                          ("20% of heads removed (magnitude)", sf.HeadPruningConfig(amount=0.2, importance="magnitude"))):
            m = copy.deepcopy(base)
            (sf.prune_ if cfg.method.startswith("prune") else sf.quantize_)(m, cfg, calib)
            variants[name] = m
        # efficient attention, no training: self-attention sees +-7 positions (source sentences
        # average 15 BPE tokens here, so this shows what a local band costs, not a speed-up)
        m = copy.deepcopy(base)
        sf.set_attention_(m, "sliding_window", window=8)
        variants["sliding-window attention w8 (no training)"] = m
        stacks = get_adapter(base.model).layer_containers(base.model)
        # half the layers: every other encoder layer and the first decoder layer (3 of 6 here)
        student = sf.shrink_layers(base, {"encoder": list(range(0, len(stacks["encoder"]), 2)), "decoder": [0]})
        hyps = []
        srcs = [p[0] for p in train.examples]
        for i in range(0, len(srcs), 64):
            enc = base.tokenize(srcs[i:i + 64], 128)
            out = base.model.generate(**enc, num_beams=5, max_new_tokens=100)
            hyps += [h.strip() for h in base.tokenizer.batch_decode(out, skip_special_tokens=True)]
        kd = sf.Task("translation", list(zip(srcs, hyps)), "teacher beam outputs")
        valid = sf.load_task("translation", str(a.data / "multi30k" / "val"), pair=pair)
        train_translation(kd, valid, TranslationConfig(epochs=max(1.0, a.epochs / 4), warmup_steps=200, lr=5e-4),
                          out_dir=run_folder(pair, a.epochs, a.dropout, a.average_last) / "student", init=student)
        variants["student: half the layers, sequence-level KD"] = student
    q = {k: {"beam5": quality(m, test, 5), "greedy": quality(m, test, 1), "bytes": saved_bytes(m)["bytes"],
             "params": m.num_params()} for k, m in variants.items()}
    sp = speed(variants, [p[0] for p in test.examples])
    f = "float (trained here)"
    rows = []
    for k, v in q.items():
        rows.append([k, v["beam5"]["bleu"], v["beam5"]["bleu_lowercase"], v["beam5"]["chrf"], v["greedy"]["bleu"],
                     v["params"] / 1e6, v["bytes"] / 1e6] + [sp[k][s] / sp[f][s] for s in sp[f]])
    payload = {"cpu": cpu_info(), "threads": a.threads, "pair": pair, "training": info, "variants": q, "speed": sp}
    md = "\n".join([
        f"# The reference Transformer on Multi30k {pair[0]}->{pair[1]}", "",
        f"`python benchmarks/transformer/multi30k.py {' '.join(sys.argv[1:])}` ({a.threads} threads, CPU "
        f"{payload['cpu'].get('cpu_model', '?')}). Trained {info['epochs']:.1f} epochs ({info['steps']} steps) in "
        f"{info['seconds'] / 60:.0f} min here. test_2016_flickr, sacreBLEU (signature in the JSON).", "",
        table(["model", "BLEU beam 5", "BLEU lowercased", "chrF", "BLEU greedy", "params M", "MB",
               "speed b1 greedy", "speed b32 greedy", "speed b32 beam 5"], rows),
    ])
    tag = "" if (a.dropout, a.average_last) == (0.1, 3) else f"_d{a.dropout:g}_a{a.average_last}"
    write(f"transformer_multi30k_{pair[0]}_{pair[1]}{tag}", payload, md, a.out)


if __name__ == "__main__":
    main()
