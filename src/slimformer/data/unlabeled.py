"""Unlabeled training sentences: text files (one sentence a line) or task files whose texts are used."""
from __future__ import annotations

from pathlib import Path

from ..core.errors import DataError
from .readers import read_text
from .tasks import load_task


def training_texts(spec: str) -> list[str]:
    """Sentences from one or several (comma-separated) files: a text file gives its lines; a task
    file (.tsv classification, .csv STS-B pairs) gives its texts."""
    out: list[str] = []
    for part in str(spec).split(","):
        p = Path(part.strip()).expanduser()
        if p.suffix in (".tsv", ".csv"):
            kind = "classification" if p.suffix == ".tsv" else "stsb"
            out += load_task(kind, p).texts()
        else:
            out += _texts_from(str(p))
    seen, uniq = set(), []
    for t in out:
        if t not in seen:
            seen.add(t)
            uniq.append(t)
    return uniq


def _texts_from(path: str) -> list[str]:
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{path}: no such file (unlabeled sentences: a text file, one sentence a line)")
    return [t.strip() for t in read_text(p).split("\n") if t.strip()]
