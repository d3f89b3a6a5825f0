"""Save a SlimModel atomically: safetensors + config + tokenizer (+ pooling) + slimformer.json."""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from ..core.errors import SlimformerError
from .._version import __version__
from .loading import META_FILE, quiet_transformers
from .wrapper import SlimModel


def save(sm: SlimModel, out_dir, extra_files: dict[str, str] | None = None) -> Path:
    """Write the model to `out_dir`, reloadable with `slimformer.load`.

    Everything is written to a temporary folder beside `out_dir` and renamed into place, so an
    interrupted save never leaves a half-written model. An existing `out_dir` is replaced only
    if it is empty or was written by slimformer (has slimformer.json); otherwise it is an error.
    extra_files: {relative name: text} written beside the weights (e.g. result.json, report.md).
    """
    out = Path(out_dir).expanduser().resolve()
    if out.exists():
        if not out.is_dir():
            raise SlimformerError(f"{out} exists and is a file; give a folder path for the saved model")
        if any(out.iterdir()) and not (out / META_FILE).exists():
            raise SlimformerError(
                f"{out} exists and holds files slimformer did not write; refusing to overwrite it "
                "(give a new or empty folder)"
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        with quiet_transformers():
            _write(sm, tmp)
        for name, text in (extra_files or {}).items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_text(text)
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _swap_into_place(tmp: Path, out: Path) -> None:
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{tmp.name.rsplit('-', 1)[-1]}"
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write(sm: SlimModel, folder: Path) -> None:
    model = sm.model
    cfg = model.config
    # a GGUF-loaded model was dequantized: its quantization_config no longer applies
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    model.save_pretrained(folder, safe_serialization=True)
    if sm.tokenizer is not None:
        sm.tokenizer.save_pretrained(folder)
    if sm.kind == "embedding" and sm.pooling is not None:
        _write_pooling(sm, folder)
    meta = dict(sm.meta)
    meta.update({"slimformer_version": __version__, "kind": sm.kind, "source": sm.source})
    (folder / META_FILE).write_text(json.dumps(meta, indent=2, default=str))


def _write_pooling(sm: SlimModel, folder: Path) -> None:
    """sentence-transformers layout, so the folder also loads with SentenceTransformer(folder)."""
    p = sm.pooling
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if p.normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (folder / "2_Normalize").mkdir(exist_ok=True)
    (folder / "modules.json").write_text(json.dumps(modules, indent=2))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    modes = {"cls": "pooling_mode_cls_token", "mean": "pooling_mode_mean_tokens", "max": "pooling_mode_max_tokens",
             "mean_sqrt_len": "pooling_mode_mean_sqrt_len_tokens", "last": "pooling_mode_lasttoken"}
    pcfg = {"word_embedding_dimension": sm.model.config.hidden_size}
    pcfg.update({v: (k == p.mode) for k, v in modes.items()})
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pcfg, indent=2))
    if p.max_seq_length:
        (folder / "sentence_bert_config.json").write_text(
            json.dumps({"max_seq_length": p.max_seq_length, "do_lower_case": False}, indent=2))
