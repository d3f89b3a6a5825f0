"""The packaged sample sentences (samples/sentences.txt)."""
from __future__ import annotations

from functools import lru_cache
from importlib import resources


@lru_cache(maxsize=1)
def _samples() -> tuple[str, ...]:
    text = (resources.files("slimformer.data") / "samples" / "sentences.txt").read_text("utf-8")
    return tuple(s.strip() for s in text.splitlines() if s.strip())


def sample_sentences() -> list[str]:
    """The packaged English sentences (samples/sentences.txt), for calibration and fidelity
    checks when the user gives no data."""
    return list(_samples())
