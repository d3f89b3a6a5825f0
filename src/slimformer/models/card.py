"""The model card (README.md) slimformer writes beside a saved model: what was done to it, the
resolved recipe, and the figures measured, rendered from the model's metadata."""
from __future__ import annotations

import json

from .._version import __version__


def model_card(sm, sentence_transformers: bool) -> str:
    meta = sm.meta or {}
    library = "sentence-transformers" if sentence_transformers else "transformers"
    lines = ["---", f"library_name: {library}", "tags:", "- slimformer", f"- {sm.kind}", "---", "",
             f"# {sm.source or 'a model'}, compressed with slimformer", "",
             f"Saved by slimformer {__version__}. Kind: {sm.kind}."]
    steps = meta.get("steps") or []
    if steps:
        lines += ["", "## What was done", ""]
        for i, st in enumerate(steps, 1):
            opts = {k: v for k, v in st.items() if k not in ("method", "details", "version") and v not in ((), [], "", None)}
            lines.append(f"{i}. `{st.get('method')}`" + (f" {json.dumps(opts, default=str)}" if opts else ""))
    result = meta.get("result") or {}
    base, comp = result.get("baseline") or {}, result.get("compressed") or {}
    rows = []
    for section in ("metrics", "fidelity", "efficiency"):
        for k, v in (comp.get(section) or {}).items():
            b = (base.get(section) or {}).get(k)
            if isinstance(v, (int, float)):
                rows.append(f"| {k} | {b if b is not None else ''} | {v:.6g} |".replace("| None |", "|  |"))
    if rows:
        env = comp.get("env") or {}
        lines += ["", "## Measured", "", f"On {env.get('cpu_model', 'this machine')} ({env.get('threads', '?')} threads); "
                  "the original model is the baseline.", "", "| figure | original | compressed |", "|---|---|---|", *rows]
    if meta.get("recipe"):
        lines += ["", "## Recipe", "", "```json", json.dumps(meta["recipe"], indent=2, default=str), "```"]
    lines += ["", "## Use", "", "```python", "import slimformer as sf", "model = sf.load(\"PATH\")", "```"]
    if sentence_transformers:
        lines += ["", "```python", "from sentence_transformers import SentenceTransformer",
                  "model = SentenceTransformer(\"PATH\")", "```"]
    return "\n".join(lines) + "\n"
