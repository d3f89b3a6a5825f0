"""`slimformer report`: read runs' result.json files and write one HTML page."""
from __future__ import annotations

import json
from pathlib import Path

from ..core.errors import DataError

MARK = 'id="slimformer-data"'  # in every page render_html / render_comparison writes


def read_result(path) -> tuple[str, dict]:
    """(label, result dict) of a run folder (its result.json), a result JSON file, or a .gguf
    written by slimformer (its X.result.json). One-line error for anything else."""
    p = Path(path).expanduser()
    candidates = [p / "result.json"] if p.is_dir() else [p.with_name(p.stem + ".result.json")] \
        if p.suffix == ".gguf" else [p]
    f = candidates[0]
    if not f.is_file():
        raise DataError(f"{p}: no result.json there; give run folders written by slimformer (compress, quantize, ...) "
                        "or their result.json files")
    try:
        d = json.loads(f.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{f}: not JSON ({type(e).__name__}); accepted: a slimformer result.json") from None
    if not isinstance(d, dict) or "steps" not in d or "recipe" not in d:
        raise DataError(f"{f}: not a slimformer run result (no recipe / steps); accepted: the result.json that "
                        "compress, quantize, prune, factorize, distill and export write")
    label = p.name if p.is_dir() else p.stem.removesuffix(".result")
    return label, d


def write_report(paths, out) -> Path:
    """One run: its page (what report.html beside result.json shows); several: the runs on one
    quality / speed / bytes front and one table. Written atomically to `out` (a new file, or a page
    slimformer wrote)."""
    from ..models.saving import write_file_atomically
    from .html import render_comparison, render_html

    runs = [read_result(p) for p in paths]
    if not runs:
        raise DataError("give at least one run folder or result.json")
    labels = [lbl for lbl, _ in runs]
    runs = [(f"{lbl} ({i + 1})" if labels.count(lbl) > 1 else lbl, d) for i, (lbl, d) in enumerate(runs)]
    page = render_html(runs[0][1]) if len(runs) == 1 else render_comparison(runs)

    def ours(f: Path) -> bool:
        try:
            return MARK in f.read_text(errors="ignore")[-2_000_000:]
        except OSError:
            return False

    return write_file_atomically(out, page, ours)
