"""CompressionResult and StepRecord: what a compress run did and what it cost, as plain data."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from ..evaluate.result import EvalResult


@dataclass
class StepRecord:
    method: str
    config: dict
    params_before: int
    params_after: int
    bytes_before: int
    bytes_after: int
    seconds: float
    warnings: list[str] = field(default_factory=list)
    details: dict = field(default_factory=dict)
    traits: list[str] = field(default_factory=list)  # the method's traits (e.g. bytes_only: saves bytes, not time)


@dataclass
class CompressionResult:
    recipe: dict
    steps: list[StepRecord]
    baseline: EvalResult | None
    compressed: EvalResult | None
    recovery: dict = field(default_factory=dict)
    model: str = ""
    stages: list = field(default_factory=list)  # per step of a multi-step recipe: {step, method, metrics, efficiency}
    resumed: bool = False  # the run continued an interrupted one (its training checkpoints)
    module_bytes: dict = field(default_factory=dict)  # bytes of the final model's tensors by part (report)

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "recipe": self.recipe,
            "steps": [asdict(s) for s in self.steps],
            "baseline": self.baseline.to_dict() if self.baseline is not None else None,
            "compressed": self.compressed.to_dict() if self.compressed is not None else None,
            "recovery": self.recovery,
            "stages": self.stages,
            "resumed": self.resumed,
            "module_bytes": self.module_bytes,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "CompressionResult":
        return cls(
            recipe=d["recipe"],
            steps=[StepRecord(**s) for s in d["steps"]],
            baseline=EvalResult.from_dict(d["baseline"]) if d.get("baseline") else None,
            compressed=EvalResult.from_dict(d["compressed"]) if d.get("compressed") else None,
            recovery=dict(d.get("recovery", {})),
            model=d.get("model", ""),
            stages=list(d.get("stages", [])),
            resumed=bool(d.get("resumed", False)),
            module_bytes=dict(d.get("module_bytes", {})),
        )

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, default=str)

    @classmethod
    def from_json(cls, text: str) -> "CompressionResult":
        return cls.from_dict(json.loads(text))
