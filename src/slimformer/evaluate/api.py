"""slimformer.evaluate: task metrics + efficiency + fidelity in one EvalResult."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .efficiency import TimingOptions, measure
from .fidelity import fidelity
from .result import EvalResult, environment
from .runners import RUNNERS, TaskOptions, check_task


@dataclass(frozen=True)
class EvalOptions:
    """How to evaluate. `efficiency=False` skips timing (quality only); `fidelity_texts` caps the
    number of texts used for fidelity."""

    task: TaskOptions = field(default_factory=TaskOptions)
    timing: TimingOptions = field(default_factory=TimingOptions)
    efficiency: bool = True
    fidelity_texts: int = 256
    threads: int | None = None


def _texts_for(task, n: int) -> list[str]:
    from ..data import sample_sentences

    if task is None:
        return sample_sentences()[:n]
    texts = task.texts()
    if task.kind == "lm":  # lines of running text: keep the longer ones
        texts = [t for t in texts if len(t.split()) >= 8]
    return texts[:n] if texts else sample_sentences()[:n]


def evaluate(model, task=None, reference=None, options: EvalOptions | None = None) -> EvalResult:
    """Evaluate `model` (a SlimModel) on `task` (a data.Task, or None: only efficiency and, with
    a reference, fidelity on the packaged sample sentences)."""
    opts = options or EvalOptions()
    prev = torch.get_num_threads()
    threads = opts.threads or prev
    torch.set_num_threads(threads)
    try:
        res = EvalResult(env=environment(threads))
        res.env["model"] = model.source
        res.env["kind"] = model.kind
        config = getattr(getattr(model, "model", None), "config", None)
        res.env["attention"] = (getattr(model, "meta", None) or {}).get("attention") or {
            "impl": getattr(config, "_attn_implementation", None) or "n/a", "options": {}}
        from ..core.kernels import kernels_of

        res.env["kernels"] = kernels_of(model)
        runtime = getattr(model, "runtime", None)   # an exported folder: which runtime ran it, and how
        res.env["runtime"] = ({"name": runtime, **getattr(getattr(model, "session", None), "config", {})}
                              if runtime else "pytorch")
        res.env["task"] = task.kind if task is not None else None
        res.env["data"] = task.source if task is not None else "packaged sample sentences (no task metrics)"
        if task is not None:
            check_task(model, task.kind)
            metrics, settings = RUNNERS[task.kind](model, task, opts.task)
            res.metrics.update(metrics)
            res.env["task_settings"] = settings
        texts = _texts_for(task, opts.fidelity_texts)
        if reference is not None:
            res.fidelity.update(fidelity(model, reference, texts, max_length=opts.task.max_length))
            res.env["reference"] = reference.source
        if getattr(model, "stream", None) is not None:  # streamed from its shards: size and this process's peak
            import resource

            res.efficiency.update({"bytes": model.stream.reader.nbytes(),
                                   "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
            res.env["timing"] = {"note": "streamed layer by layer: no timing (the model does not fit in memory)"}
        elif opts.efficiency:
            timing = TimingOptions(**{**opts.timing.__dict__, "threads": threads})
            eff, settings = measure(model, texts, timing)
            res.efficiency.update(eff)
            res.env["timing"] = settings
    finally:
        torch.set_num_threads(prev)
    return res
