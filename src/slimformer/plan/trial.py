"""One trial: build a candidate with `compress` (a recipe run like any other) and measure it.

Quality is measured on the search part of the data (what the sampler sees) and on the
confirmation part (what the final choice is checked on); the objective as a ratio to the original
model timed interleaved with it in this process (threads pinned), at the plan's batch and
sequence length; bytes on disk; peak memory of one forward."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..data.tasks import Task
from ..train.trainer import Callback
from .budget import Budget
from .space import Candidate


class Pruned(Exception):
    """The candidate stopped at its short rung (multi-fidelity); its figures so far are attached."""

    def __init__(self, why: str, figures: dict):
        super().__init__(why)
        self.figures = figures


@dataclass
class PlanSpec:
    """Everything a worker needs, written once to OUT/.plan/spec.json."""

    model: str
    task_kind: str
    search: str  # task files (JSON) of the two parts
    confirm: str
    budget: dict
    info: dict
    baseline: dict = field(default_factory=dict)  # quality on each part, bytes, memory
    unlabeled: str | None = None
    threads: int = 1
    seed: int = 0

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2, default=str)

    @classmethod
    def read(cls, path) -> "PlanSpec":
        return cls(**json.loads(Path(path).read_text()))

    @property
    def budget_obj(self) -> Budget:
        return Budget(**self.budget)


def write_task(task: Task, path: Path) -> str:
    path.write_text(json.dumps({"kind": task.kind, "examples": task.examples, "source": task.source,
                                "meta": task.meta}, default=str))
    return str(path)


def read_task(path) -> Task:
    d = json.loads(Path(path).read_text())
    return Task(d["kind"], [tuple(e) if isinstance(e, list) else e for e in d["examples"]], d["source"], d["meta"])


class Worker:
    """Runs candidates for one plan in this process (the model, tasks and original kept loaded)."""

    def __init__(self, spec: PlanSpec):
        from ..models.loading import load

        self.spec = spec
        torch.set_num_threads(spec.threads)
        self.search = read_task(spec.search)
        self.confirm = read_task(spec.confirm)
        self.original = load(spec.model)
        self.original.model.eval()
        self.budget = spec.budget_obj

    def options(self, callbacks=()):
        from ..evaluate.api import EvalOptions
        from ..evaluate.runners import TaskOptions
        from ..recipes.compress import CompressOptions

        cache = Path(self.spec.search).parent / "cache"
        return CompressOptions(evaluate=EvalOptions(task=TaskOptions(progress=False), threads=self.spec.threads),
                               evaluation=False, unlabeled=self.spec.unlabeled, seed=self.spec.seed,
                               callbacks=tuple(callbacks), cache_dir=cache)

    def run(self, cand: Candidate, folder: Path, promote=None) -> dict:
        """Build `cand` into folder/model and measure it. A candidate that trains is checked after
        its short rung: promote(figures) -> None, or why it stops there (raises Pruned)."""
        import copy

        from ..recipes.compress import compress

        t0 = time.perf_counter()
        folder.mkdir(parents=True, exist_ok=True)
        sm = copy.deepcopy(self.original)
        rung = self.spec.info.get("rung_steps")
        callbacks = [RungCheck(self, sm, rung, promote, t0)] if cand.trains and promote and rung else []
        compress(sm, cand.steps(), self.search, folder / "model", self.options(callbacks))
        figures = self.measure(self._load(folder / "model"))
        for cb in callbacks:
            figures.update(cb.seen)
        figures["seconds"] = time.perf_counter() - t0
        return figures

    def measure(self, sm) -> dict:
        """Quality on both parts, speed against the original, bytes and memory."""
        return {**self.quality(sm, self.search, "search"), **self.quality(sm, self.confirm, "confirm"),
                **self.speed(sm), **self.size(sm)}

    def inputs(self, batch: int) -> dict:
        """A batch x seq_len batch of the search part's tokens (made once per batch size)."""
        from ..evaluate.efficiency import make_inputs

        cache = self.__dict__.setdefault("_inputs", {})
        if batch not in cache:
            cache[batch] = make_inputs(self.original, self.search.texts(), batch, self.budget.seq_len)
        return dict(cache[batch])

    def _load(self, folder: Path):
        from ..export.options import ONNX_META_FILE
        from ..export.runtime import load_onnx
        from ..models.loading import load

        if (folder / ONNX_META_FILE).exists():
            return load_onnx(folder, threads=self.spec.threads, spin=False)
        return load(folder)

    def quality(self, sm, task: Task, part: str) -> dict:
        from ..evaluate.api import EvalOptions, evaluate
        from ..evaluate.runners import TaskOptions

        r = evaluate(sm, task, None, EvalOptions(task=TaskOptions(progress=False), efficiency=False,
                                                threads=self.spec.threads))
        metric = self.budget.metric(self.spec.task_kind)
        return {f"{part}_{metric}": float(r.metrics[metric])}

    def speed(self, sm) -> dict:
        """Throughput (batch x seq) and batch-1 latency as ratios to the original, interleaved here."""
        from ..evaluate.efficiency import interleaved_seconds

        b = self.budget
        models = {"original": self.original, "candidate": sm}
        big, one = self.inputs(b.batch_size), self.inputs(1)
        for enc in (big, one):
            if "token_type_ids" not in _input_names(sm):
                enc.pop("token_type_ids", None)
        with torch.inference_mode():
            tp = interleaved_seconds(models, big, rounds=5)
            lat = interleaved_seconds(models, one, rounds=10)
        return {"throughput_x": tp["original"] / tp["candidate"], "latency_x": lat["original"] / lat["candidate"],
                "latency_ms": lat["candidate"] * 1e3, "throughput": b.batch_size / tp["candidate"]}

    def size(self, sm) -> dict:
        from ..evaluate.efficiency import peak_memory_mb, saved_bytes

        enc = self.inputs(self.budget.batch_size)
        if "token_type_ids" not in _input_names(sm):
            enc.pop("token_type_ids", None)
        nbytes = saved_bytes(sm)["bytes"]
        mem = peak_memory_mb(sm, enc)
        return {"bytes": nbytes, "bytes_x": nbytes / self.spec.baseline["bytes"], "peak_memory_mb": mem,
                "memory_x": mem / self.spec.baseline["peak_memory_mb"]}


class RungCheck(Callback):
    """A trainer callback: after `rung` steps, the student (the model being trained, in place) is
    measured on the search part; promote(figures) says whether it trains on."""

    def __init__(self, worker: Worker, sm, rung: int, promote, t0: float):
        self.worker, self.sm, self.rung, self.promote, self.t0 = worker, sm, int(rung), promote, t0
        self.seen: dict = {}

    def on_step_end(self, trainer, step: int) -> None:
        if step != self.rung:
            return
        net = self.sm.model
        was = net.training
        net.eval()
        try:
            q = self.worker.quality(self.sm, self.worker.search, "search")
        finally:
            net.train(was)
        key = next(iter(q))  # search_<metric>
        self.seen = {"rung": self.rung, key.replace("search_", "rung_", 1): q[key],
                     "rung_seconds": time.perf_counter() - self.t0}
        why = self.promote({**q, "seconds": time.perf_counter() - self.t0})
        if why:
            raise Pruned(why, dict(self.seen))


def _input_names(sm) -> set:
    meta = getattr(sm, "meta", None) or {}
    if isinstance(meta.get("inputs"), list):  # an ONNX export names its inputs
        return {i["name"] for i in meta["inputs"]}
    return {"input_ids", "attention_mask", "token_type_ids"}
