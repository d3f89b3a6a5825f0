"""The search space, from the model's kind and size: what a trial may build.

A candidate is a recipe (a list of steps, as a recipe file holds them). One that trains (a
distilled student) is checked at its short rung: after `rung_steps` of its `full_steps`
distillation steps its quality decides whether it trains on (multi-fidelity).

Encoders (sentence embeddings, classifiers): runtimes and precisions (ONNX Runtime dynamic and
static int8, OpenVINO int8 weights and NNCF static int8, bf16 where the CPU has it natively), a
student of fewer layers (evenly strided, DistilBERT-style, or the bottom ones) distilled from the
model, attention heads and FFN neurons pruned before the distillation, and (when bytes are the
objective) its FFNs factorized (svd_llm) and its token embedding factorized.
Language models: int4 weight-only variants (RTN, GPTQ with or without the Hadamard rotation, AWQ;
group sizes), optionally after a light svd_llm factorization."""
from __future__ import annotations

from dataclasses import dataclass

from ..core.hardware import fast_bf16

ENCODER_RUNTIMES = {  # name -> the last step of the recipe
    "onnx-int8": {"method": "onnx", "quantize": "int8"},
    "onnx-int8-static": {"method": "onnx", "quantize": "int8-static"},
    "openvino-int8": {"method": "onnx", "quantize": "int8-weights"},
    "openvino-int8-static": {"method": "onnx", "quantize": "int8-nncf"},
    "bf16": {"method": "cast", "dtype": "bf16"},
    "deploy": {"method": "deploy"},  # all of the above that run here, timed, the fastest kept
}
DISTILL_LOSS = {"embedding": ["embedding_cosine"], "classification": ["kd"]}
DISTILL_LR = {"embedding": 0.0005, "classification": 0.0001}


@dataclass
class Candidate:
    label: str
    recipe: list[dict]
    family: str = "ptq"

    @property
    def trains(self) -> bool:
        return any(s["method"] in ("distill", "finetune") for s in self.recipe)

    def steps(self) -> list[dict]:
        return list(self.recipe)


@dataclass(frozen=True)
class SpaceInfo:
    """What the space depends on: the model's kind, layer count and what this machine can run."""

    kind: str
    layers: int
    runtimes: tuple[str, ...]
    can_train: bool  # unlabeled sentences were given (or the task's texts are enough)
    full_steps: int = 600
    rung_steps: int = 150
    hidden: int = 384  # the model's width (embedding ranks are fractions of it)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "layers": self.layers, "runtimes": list(self.runtimes),
                "can_train": self.can_train, "full_steps": self.full_steps, "rung_steps": self.rung_steps,
                "hidden": self.hidden}


def available_runtimes() -> tuple[str, ...]:
    from ..export.openvino import nncf_available
    from ..export.runtime import openvino_available

    out = ["onnx-int8", "onnx-int8-static"]
    if openvino_available():
        out.append("openvino-int8")
    if nncf_available():
        out.append("openvino-int8-static")
    if fast_bf16("cpu"):
        out.append("bf16")
    return tuple(out) + ("deploy",)


def first_candidates(info: SpaceInfo, objective: str) -> list[dict]:
    """Optuna params of the candidates tried first: every runtime on the untouched model (no
    training, seconds each), then students of half and two thirds of the depth (deployed in the
    fastest runtime here; for bytes, ONNX Runtime int8 with its 4-bit token table; for speed, also
    the two-thirds student with half its FFN neurons pruned). For language
    models: int4 RTN and GPTQ, and the rotated GPTQ of `int4-gptq-rot` with groups of 128, 64 and
    one per row."""
    if info.kind == "causal-lm":
        return [{"family": "int4", "rotate": r, "algorithm": a, "group_size": g, "svd_ratio": 1.0}
                for r, a, g in ((False, "rtn", 128), (False, "gptq", 128), (True, "gptq", 128), (True, "gptq", -1),
                                (True, "gptq", 64))]
    first = [{"family": "ptq", "runtime": r} for r in info.runtimes if r != "deploy"]
    if info.can_train and info.layers > 1:  # the DistilBERT-style students of half and two thirds of the depth,
        rt = "onnx-int8" if objective == "bytes" else "deploy"  # in the fastest runtime here (or the smallest)
        students = [{"family": "student", "depth": depth, "layers": "strided", "ffn_prune": 0.0,
                     "head_prune": 0.0, "runtime": rt,  # bytes: the token table is most of a small encoder
                     **({"embedding_rank": 0.33, "ffn_lowrank": 1.0} if objective == "bytes" else {})}
                    for depth in sorted({max(1, info.layers // 2), max(1, (2 * info.layers) // 3)})]
        if objective != "bytes" and info.layers > 2:  # speed: two thirds of the depth with half the FFN neurons,
            students.insert(1, {"family": "student", "depth": max(1, (2 * info.layers) // 3), "layers": "strided",
                                "ffn_prune": 0.5, "head_prune": 0.0, "runtime": "deploy"})  # near half depth's cost
        first += students
    return first


def suggest(trial, info: SpaceInfo, objective: str) -> Candidate:
    """Define-by-run: the candidate this Optuna trial builds."""
    if info.kind == "causal-lm":
        return _suggest_lm(trial)
    families = ["ptq", "student"] if info.can_train and info.layers > 1 else ["ptq"]
    family = trial.suggest_categorical("family", families)
    if family == "ptq":
        runtime = trial.suggest_categorical("runtime", list(info.runtimes))
        return Candidate(f"{runtime}", [dict(ENCODER_RUNTIMES[runtime])], family="ptq")
    depth = trial.suggest_int("depth", 1, info.layers - 1)
    which = trial.suggest_categorical("layers", ["strided", "bottom"])
    ffn = trial.suggest_categorical("ffn_prune", [0.0, 0.25, 0.5])
    heads = trial.suggest_categorical("head_prune", [0.0, 0.25])
    share = trial.suggest_categorical("embedding_rank", [0.0, 0.33, 0.17]) if objective == "bytes" else 0.0
    rank = max(1, int(info.hidden * share)) if share else 0  # MiniLM (384 wide): 126 or 65
    lowrank = trial.suggest_categorical("ffn_lowrank", [1.0, 0.7, 0.5]) if objective == "bytes" else 1.0
    runtime = trial.suggest_categorical("runtime", list(info.runtimes))
    keep = strided_layers(info.layers, depth) if which == "strided" else list(range(depth))
    steps = [{"method": "shrink_layers", "keep": keep}]
    if heads:
        steps.append({"method": "prune_heads", "amount": heads, "importance": "taylor"})
    if ffn:
        steps.append({"method": "prune_ffn", "amount": ffn, "importance": "taylor"})
    if lowrank < 1.0:
        steps.append({"method": "svd_llm", "ratio": lowrank, "parts": "ffn"})
    if rank:
        steps.append({"method": "factorize_embedding", "rank": rank})
    loss, lr = DISTILL_LOSS.get(info.kind, ["embedding_cosine"]), DISTILL_LR.get(info.kind, 0.0005)
    steps.append({"method": "distill", "losses": loss, "lr": lr, "max_steps": info.full_steps})
    steps.append(dict(ENCODER_RUNTIMES[runtime]))
    label = (f"{depth}-layer student" + ("" if which == "strided" else " (bottom layers)")
             + (f", heads -{heads:.0%}" if heads else "") + (f", FFN -{ffn:.0%}" if ffn else "")
             + (f", FFN low rank {lowrank:g}" if lowrank < 1 else "") + (f", embedding rank {rank}" if rank else "")
             + f", {runtime}")
    return Candidate(label, steps, family="student")


def _suggest_lm(trial) -> Candidate:
    rotate = trial.suggest_categorical("rotate", [False, True])
    algorithm = trial.suggest_categorical("algorithm", ["rtn", "gptq", "awq"])
    group = trial.suggest_categorical("group_size", [32, 64, 128, -1])
    ratio = trial.suggest_categorical("svd_ratio", [1.0, 0.95, 0.9])
    steps = []
    if ratio < 1.0:
        steps.append({"method": "svd_llm", "ratio": ratio, "parts": "ffn", "rank_multiple": 16})
    if rotate:
        steps.append({"method": "rotate", "seed": 0})
    if algorithm == "awq":  # AWQ's scaling, then round to nearest on the scaled weights
        g = group if group > 0 else 128
        steps += [{"method": "awq", "bits": 4, "group_size": g},
                  {"method": "weight_only", "bits": 4, "group_size": g}]
    else:
        extra = {"act_order": True, "clip": True, "refit": True, "cd_passes": 3} if algorithm == "gptq" else {}
        steps.append({"method": "weight_only", "bits": 4, "group_size": group, "algorithm": algorithm, **extra})
    label = (f"svd_llm {ratio:g} + " if ratio < 1 else "") + ("rotated " if rotate else "") + (
        f"int4 {algorithm} " + (f"g{group}" if group > 0 else "per row"))
    return Candidate(label, steps, family="int4")


def strided_layers(n: int, depth: int) -> list[int]:
    """`depth` of `n` layers, evenly strided from the bottom (3 of 6: 0, 2, 4, as DistilBERT)."""
    return sorted({min(n - 1, round(i * n / depth)) for i in range(depth)})
