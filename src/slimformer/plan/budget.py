"""What the planner may spend and must keep: the quality budget, the objective, the search budget.

Quality is in explicit units: `max_drop` task-metric points (Spearman x100, accuracy x100),
`min_recovery` (compressed / original, lower-is-better metrics inverted), or `max_ppl_ratio`
(perplexity / original perplexity, language models). The objective is measured on this machine at
the user's batch and sequence length: throughput (higher is better), latency (batch 1), bytes on
disk or peak memory (lower is better), each as a ratio to the original model timed in the same
process. The search stops at `time` seconds or after `trials` trials, whichever comes first."""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

from ..core.errors import ConfigError

OBJECTIVES = ("throughput", "latency", "bytes", "memory")
QUALITY_METRIC = {"stsb": "spearman", "classification": "accuracy", "lm": "perplexity"}
_UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_time(text) -> float:
    """'90s', '5m', '1.5h', '1h30m' or a number of seconds -> seconds."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        secs = float(text)
    else:
        s = str(text).strip().lower()
        parts = re.findall(r"(\d+(?:\.\d+)?)\s*([smh]?)", s)
        if not s or not parts or re.sub(r"(\d+(?:\.\d+)?)\s*([smh]?)", "", s).strip():
            raise ConfigError(f"--time {text!r}: expected a duration like 90s, 5m, 1h or 1h30m")
        secs = sum(float(n) * _UNITS[u or "s"] for n, u in parts)
    if not math.isfinite(secs) or secs <= 0:
        raise ConfigError(f"--time {text!r}: expected a positive duration like 90s, 5m, 1h")
    return secs


@dataclass(frozen=True)
class Budget:
    """One of max_drop / min_recovery / max_ppl_ratio (default: max_drop 1.0, or max_ppl_ratio
    1.10 for language models); objective one of OBJECTIVES; time (seconds) and/or trials."""

    max_drop: float | None = None
    min_recovery: float | None = None
    max_ppl_ratio: float | None = None
    objective: str = "throughput"
    time: float | None = 3600.0
    trials: int | None = None
    batch_size: int = 32
    seq_len: int = 128

    def __post_init__(self) -> None:
        given = [k for k in ("max_drop", "min_recovery", "max_ppl_ratio") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ConfigError(f"give one quality budget, not {' and '.join('--' + k.replace('_', '-') for k in given)}")
        if self.max_drop is not None and not (0 <= self.max_drop <= 100):
            raise ConfigError(f"--max-drop {self.max_drop}: expected task-metric points in [0, 100] (e.g. 1.0 = one "
                              "Spearman or accuracy point)")
        if self.min_recovery is not None and not (0 < self.min_recovery <= 1):
            raise ConfigError(f"--min-recovery {self.min_recovery}: expected a ratio in (0, 1] (0.99 = keep 99%)")
        if self.max_ppl_ratio is not None and not (self.max_ppl_ratio >= 1 and math.isfinite(self.max_ppl_ratio)):
            raise ConfigError(f"--max-ppl-ratio {self.max_ppl_ratio}: expected a ratio >= 1 (1.10 = perplexity at "
                              "most 10% above the original's)")
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"--objective {self.objective!r}; accepted: {', '.join(OBJECTIVES)}")
        if self.time is None and self.trials is None:
            raise ConfigError("give a search budget: --time (e.g. 60m) and/or --trials N")
        if self.time is not None and not (self.time > 0 and math.isfinite(self.time)):
            raise ConfigError(f"--time {self.time}: expected a positive number of seconds")
        if self.trials is not None and (isinstance(self.trials, bool) or not isinstance(self.trials, int)
                                        or self.trials < 1):
            raise ConfigError(f"--trials {self.trials!r}: expected an integer >= 1")
        for k in ("batch_size", "seq_len"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"--{k.replace('_', '-')} {v!r}: expected an integer >= 1")

    def for_task(self, kind: str) -> "Budget":
        """The budget checked against a task kind: defaults filled in, units the task can measure."""
        if kind not in QUALITY_METRIC:
            raise ConfigError(f"the planner measures quality on stsb, classification or lm tasks; got {kind!r}")
        lm = kind == "lm"
        if self.max_drop is not None and lm:
            raise ConfigError("--max-drop is in task-metric points (Spearman, accuracy); for perplexity give "
                              "--max-ppl-ratio (e.g. 1.10) or --min-recovery")
        if self.max_ppl_ratio is not None and not lm:
            raise ConfigError(f"--max-ppl-ratio applies to language models (task lm); for {kind} give --max-drop "
                              "(points) or --min-recovery")
        if self.max_drop is None and self.min_recovery is None and self.max_ppl_ratio is None:
            return Budget(**{**asdict(self), **({"max_ppl_ratio": 1.10} if lm else {"max_drop": 1.0})})
        return self

    def metric(self, kind: str) -> str:
        return QUALITY_METRIC[kind]

    def loss(self, kind: str, base: float, value: float) -> float:
        """How far `value` is from the budget's limit, in the budget's unit: <= 0 inside it."""
        lower = QUALITY_METRIC[kind] == "perplexity"
        if value is None or not math.isfinite(value):
            return math.inf
        if self.max_drop is not None:
            return (base - value) - self.max_drop
        if self.max_ppl_ratio is not None:
            return value / base - self.max_ppl_ratio
        rec = base / value if lower else value / base
        return self.min_recovery - rec

    def describe(self) -> str:
        if self.max_drop is not None:
            q = f"at most {self.max_drop:g} points below the original"
        elif self.max_ppl_ratio is not None:
            q = f"perplexity at most {self.max_ppl_ratio:g}x the original's"
        else:
            q = f"at least {self.min_recovery:.1%} of the original's quality"
        return f"{self.objective}, {q}"

    def to_dict(self) -> dict:
        return asdict(self)
