"""EvalResult: one evaluation as plain data with a JSON round-trip."""
from __future__ import annotations

import json
import platform
from dataclasses import asdict, dataclass, field

from ..core.hardware import cpu_info  # noqa: F401  (re-exported; recorded in every result)

# metrics where a smaller number is better (recovery is baseline / compressed for these)
LOWER_IS_BETTER = frozenset({"perplexity", "kl", "latency_ms_p50", "latency_ms_p95", "bytes", "params",
                             "peak_memory_mb"})


@dataclass
class EvalResult:
    """{"metrics": task metrics, "efficiency": size/speed/memory, "fidelity": vs a reference, "env": how}."""

    metrics: dict = field(default_factory=dict)
    efficiency: dict = field(default_factory=dict)
    fidelity: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "EvalResult":
        unknown = set(d) - {"metrics", "efficiency", "fidelity", "env"}
        if unknown:
            raise ValueError(f"EvalResult: unknown keys {sorted(unknown)}; accepted: metrics, efficiency, fidelity, env")
        return cls(**{k: dict(d.get(k, {})) for k in ("metrics", "efficiency", "fidelity", "env")})

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> "EvalResult":
        return cls.from_dict(json.loads(text))


def environment(threads: int) -> dict:
    import torch
    import transformers

    from .._version import __version__

    return {
        "slimformer": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "threads": threads,
        "device": "cpu",
        **cpu_info(),
    }


def recovery(baseline: EvalResult, compressed: EvalResult) -> dict:
    """compressed / baseline per task metric (baseline / compressed where lower is better), so 1.0 = no loss."""
    out = {}
    for k, b in baseline.metrics.items():
        c = compressed.metrics.get(k)
        if not isinstance(b, (int, float)) or not isinstance(c, (int, float)) or b == 0 or c == 0:
            continue
        out[k] = (b / c) if k in LOWER_IS_BETTER else (c / b)
    return out
