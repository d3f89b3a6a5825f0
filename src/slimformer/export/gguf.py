"""Write a Llama-family model quantized by slimformer as a GGUF file for llama.cpp.

    from slimformer.export import export_gguf
    export_gguf(model, "out/smollm2-q4_1.gguf")

Each weight goes into the GGUF type whose grid holds our codes (the codes carried over; the
block scale and minimum are stored as float16, as GGUF requires):

- int4, groups of 32 along the input, float or integer zero points (`w4-g32-fz`, `w4` / GPTQ at
  `group_size: 32`): Q4_1 (value = d * q + m, with d = scale, m = -zero * scale);
  with every zero point at 8 (symmetric): Q4_0 (value = d * (q - 8));
- int8, groups of 32 with zero 128, or per output channel (`Int8Linear` weights, the int8 token
  embedding): Q8_0 (value = d * q; a per-row scale is repeated in each block of 32);
- float layers: F32; norms: F32.

Refused with the reason: group sizes other than 32 (llama.cpp's blocks are 32 wide), int8 with
zero points, Hadamard rotations (`rotate`: their run-time transforms are not in llama.cpp's graph),
sparse storage, per-layer sizes, and architectures other than Llama (Llama, SmolLM2: `model_type`
llama). Activation quantization is not stored: llama.cpp quantizes activations its own way.

The tokenizer: copied from the source GGUF when the model was loaded from one (the packaged
SmolLM2), else written from the model's byte-level BPE `tokenizer.json` (vocabulary, merges,
special tokens).
"""
from __future__ import annotations

import logging

import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..core.errors import ConfigError, SlimformerError
from ..core.packing import unpack_int4
from .._version import __version__
from ..adapters import get_adapter
from .portable import check_portable

BLOCK = 32
_log = logging.getLogger(__name__)
MARK = "slimformer.version"      # marks files we wrote (the only ones we overwrite)


def _f16(x: torch.Tensor) -> np.ndarray:
    return x.detach().float().numpy().astype(np.float16).view(np.uint8).reshape(*x.shape, 2)


def q4_blocks(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, symmetric: bool) -> tuple[np.ndarray, str]:
    """codes (rows, cols) in 0..15, scales / zeros (rows, cols / 32) -> (rows, bytes) Q4_0 or Q4_1
    blocks: [d f16][m f16 (Q4_1 only)][16 bytes: element j in the low nibble of byte j, element
    j + 16 in its high nibble]."""
    rows, cols = codes.shape
    nb = cols // BLOCK
    q = codes.to(torch.uint8).view(rows, nb, BLOCK)
    qs = (q[..., :16] | (q[..., 16:] << 4)).numpy()                      # (rows, nb, 16)
    d = _f16(scales)                                                       # (rows, nb, 2)
    if symmetric:
        return np.concatenate([d, qs], -1).reshape(rows, -1), "Q4_0"
    m = _f16(-zeros.float() * scales)
    return np.concatenate([d, m, qs], -1).reshape(rows, -1), "Q4_1"


def q8_blocks(codes: torch.Tensor, scales: torch.Tensor) -> np.ndarray:
    """Signed int8 codes (rows, cols), scales (rows, cols / 32) -> (rows, bytes) Q8_0 blocks
    [d f16][32 int8]."""
    rows, cols = codes.shape
    nb = cols // BLOCK
    qs = codes.to(torch.int8).numpy().view(np.uint8).reshape(rows, nb, BLOCK)
    return np.concatenate([_f16(scales), qs], -1).reshape(rows, -1)


def _permute(t: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp's row order for q / k (rotary pairs interleaved, as convert_hf_to_gguf writes)."""
    return t.reshape(heads, 2, t.shape[0] // heads // 2, *t.shape[1:]).swapaxes(1, 2).reshape(t.shape)


def _weight_entry(mod, name: str, heads: int | None):
    """(array, GGML type name) for one module's weight."""
    from ..quantize.modules import GroupQuantLinear, Int8Embedding, Int8Linear

    perm = (lambda t: _permute(t, heads)) if heads else (lambda t: t)
    if isinstance(mod, GroupQuantLinear):
        if mod.group_size != BLOCK or mod.in_features % BLOCK:
            raise ConfigError(f"GGUF blocks are 32 wide; {name} has groups of {mod.group_size} over {mod.in_features} "
                              "inputs: quantize with group_size 32 (e.g. scheme w4-g32-fz)")
        if mod.input_rotation is not None:
            raise ConfigError(f"GGUF cannot hold {name}'s run-time Hadamard rotation")
        if mod.bits == 4:
            codes = perm(unpack_int4(mod.qweight, mod.in_features))
            zeros = perm(mod.zeros)
            sym = (not mod.float_zeros) and bool((zeros == 8).all())
            return q4_blocks(codes, perm(mod.scales), zeros, sym)
        if mod.float_zeros or not bool((mod.zeros == 128).all()):
            raise ConfigError(f"GGUF's Q8_0 is symmetric; {name} is int8 with zero points: quantize int8 with "
                              "symmetric: true")
        return q8_blocks(perm(mod.qweight.to(torch.int16) - 128), perm(mod.scales)), "Q8_0"
    if isinstance(mod, (Int8Linear, Int8Embedding)):
        if getattr(mod, "input_scale", None) is not None:
            raise ConfigError(f"GGUF cannot hold {name}'s SmoothQuant input scale")
        w = perm(mod.weight_int8)
        if w.shape[1] % BLOCK:
            raise ConfigError(f"GGUF blocks are 32 wide; {name} has {w.shape[1]} inputs")
        scales = perm(mod.weight_scale.float()).view(-1, 1).expand(-1, w.shape[1] // BLOCK)
        return q8_blocks(w, scales), "Q8_0"
    w = getattr(mod, "weight", None)
    if w is None or type(mod).__module__.startswith("slimformer"):
        raise ConfigError(f"GGUF export cannot hold {name} ({type(mod).__name__})")
    return perm(w.detach().float()).numpy(), "F32"


# llama.cpp names the pre-tokenizer (its splitting regex) of a BPE vocabulary by the hash of the token
# ids a tokenizer gives a fixed probe text (convert_hf_to_gguf.py, get_vocab_base_pre): the same probe
# and the names of the families slimformer exports (Llama-architecture LMs)
PRE_PROBE = ("\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n\U0001f680 (normal) \U0001f636\u200d\U0001f32b\ufe0f (multiple emojis "
             "concatenated) \u2705 \U0001f999\U0001f999 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 "
             "\u1780\u17b6\u1793\u17cb\u178f\u17c2\u1796\u17b7\u179f\u17c1\u179f\u17a2\u17b6\u1785\U0001f601 "
             "?\u6211\u60f3\u5728apple\u5de5\u4f5c1314151\u5929\uff5e ------======= "
             "\u043d\u0435\u0449\u043e \u043d\u0430 \u0411\u044a\u043b\u0433\u0430\u0440\u0441\u043a\u0438 "
             + "'" * 6 + "`" * 7 + '"' * 4
             + "......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, "
             "'D you like some tea? We'Ve a'lL")
KNOWN_PRE = {
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # Llama 3
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",     # SmolLM / SmolLM2
}


def pre_tokenizer_name(tokenizer) -> str | None:
    """llama.cpp's name for this tokenizer's pre-tokenizer, or None when it is not one we know."""
    import hashlib

    ids = tokenizer.encode(PRE_PROBE)  # as the converter does (a BOS the tokenizer adds is part of it)
    return KNOWN_PRE.get(hashlib.sha256(str(ids).encode()).hexdigest())


def _tokenizer_fields(sm, writer) -> None:
    import gguf

    src = Path(str(sm.source or ""))
    if src.suffix == ".gguf" and src.is_file():
        reader = gguf.GGUFReader(str(src))
        for field in reader.fields.values():
            if not field.name.startswith("tokenizer."):
                continue
            main = field.types[0]
            sub = field.types[-1] if main == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(field.name, field.contents(), main, sub_type=sub)
        return
    if sm.tokenizer is None:
        raise SlimformerError("the model has no tokenizer to write into the GGUF file")
    with tempfile.TemporaryDirectory() as d:
        sm.tokenizer.save_pretrained(d)
        spec = json.loads((Path(d) / "tokenizer.json").read_text()) if (Path(d) / "tokenizer.json").exists() else {}
        if spec.get("model", {}).get("type") != "BPE":
            raise ConfigError("GGUF export writes byte-level BPE tokenizers (GPT-2 / Llama-3 / SmolLM2 style); this "
                              f"model's tokenizer is {spec.get('model', {}).get('type', 'not a tokenizers BPE')}")
        vocab = gguf.vocab.BpeVocab(Path(d))
        tokens, types = [], []
        for text, _score, ttype in vocab.all_tokens():
            tokens.append(text)
            types.append(ttype)
        writer.add_tokenizer_model("gpt2")
        pre = pre_tokenizer_name(sm.tokenizer)
        if pre is None:
            _log.warning("GGUF export: llama.cpp does not know this tokenizer's pre-tokenizer by its probe hash; "
                         "wrote tokenizer.ggml.pre 'default' (llama.cpp may split text differently)")
        writer.add_tokenizer_pre(pre or "default")
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        special = gguf.SpecialVocab(Path(d), load_merges=True, n_vocab=len(tokens))
        special.add_to_gguf(writer, quiet=True)
        tok = sm.tokenizer
        if not any(k in (special.add_special_token or {}) for k in ("bos",)):  # what encode() really does
            first = tok("a")["input_ids"][:1]
            writer.add_add_bos_token(tok.bos_token_id is not None and first == [tok.bos_token_id])
        writer.add_add_space_prefix(False)  # byte-level BPE: a leading space is a token of its own


def export_gguf(sm, out_file) -> Path:
    """Write `sm` (a Llama-family causal LM, quantized by slimformer or float) to `out_file`
    (.gguf); see the module docstring for the types used and what is refused."""
    import gguf

    net = sm.model
    cfg = net.config
    out = Path(out_file).expanduser().resolve()
    if out.suffix != ".gguf":
        raise ConfigError(f"{out.name}: the GGUF output must be a file ending in .gguf")
    if out.exists():
        if not out.is_file():
            raise ConfigError(f"{out} exists and is not a file")
        try:
            ours = MARK in gguf.GGUFReader(str(out)).fields
        except Exception:     # not a GGUF file at all
            ours = False
        if not ours:
            raise ConfigError(f"{out} exists and was not written by slimformer; refusing to overwrite it (give a new path)")
    if sm.kind != "causal-lm" or getattr(cfg, "model_type", None) != "llama":
        raise ConfigError(f"GGUF export takes Llama-architecture causal LMs (Llama, SmolLM2); this is "
                          f"{type(net).__name__} ({getattr(cfg, 'model_type', '?')})")
    check_portable(sm, "GGUF", "e.g. w4-g32-fz")
    layers = get_adapter(net).layers(net)
    n_layers, att = len(layers), layers[0].attention
    heads, kv, head_dim = att.num_heads, att.num_kv_heads, att.head_dim
    # llama.cpp's rotary row order for q / k: the modules by identity, from the adapter
    row_heads = {id(L.attention.q): heads for L in layers} | {id(L.attention.k): kv for L in layers}
    rope = getattr(cfg, "rope_theta", None) or (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta", 10000.0)
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layers)
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    head_mod = net.get_output_embeddings()

    entries, types = [], set()
    for name, mod in net.named_modules():
        if any(True for _ in mod.children()) or not mod.state_dict():
            continue                                  # containers; rotary tables (not saved)
        if mod is head_mod and tied:
            continue                                  # llama.cpp reads token_embd when output is absent
        gname = tmap.get_name(name + ".weight", try_suffixes=(".weight",))
        if gname is None:
            raise ConfigError(f"GGUF export: no llama.cpp tensor for {name} ({type(mod).__name__})")
        arr, qtype = _weight_entry(mod, name, row_heads.get(id(mod)))
        entries.append((gname, arr, qtype))
        types.add(qtype)
        if getattr(mod, "bias", None) is not None:
            raise ConfigError(f"GGUF llama tensors have no bias; {name} has one")

    def write(path: Path) -> None:
        w = gguf.GGUFWriter(str(path), "llama")
        general = dict((sm.meta or {}).get("gguf_general") or {})  # names of a model first loaded from a GGUF
        w.add_name(str(general.pop("general.name", None) or Path(str(sm.source or "model")).stem))
        for key, value in general.items():
            if key not in ("general.architecture", "general.file_type", "general.quantization_version",
                           "general.alignment"):
                w.add_array(key, value) if isinstance(value, list) else w.add_string(key, str(value))
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        w.add_string(MARK, __version__)
        w.add_context_length(cfg.max_position_embeddings)
        w.add_embedding_length(cfg.hidden_size)
        w.add_block_count(n_layers)
        w.add_feed_forward_length(cfg.intermediate_size)
        w.add_head_count(heads)
        w.add_head_count_kv(kv)
        w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
        w.add_rope_freq_base(float(rope))
        w.add_rope_dimension_count(head_dim)
        w.add_vocab_size(cfg.vocab_size)
        ftype = {"Q4_1": gguf.LlamaFileType.MOSTLY_Q4_1, "Q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
                 "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}
        w.add_file_type(next((ftype[t] for t in ("Q4_1", "Q4_0", "Q8_0") if t in types), gguf.LlamaFileType.ALL_F32))
        _tokenizer_fields(sm, w)
        for gname, arr, qtype in entries:
            raw = None if qtype == "F32" else getattr(gguf.GGMLQuantizationType, qtype)
            w.add_tensor(gname, np.ascontiguousarray(arr), raw_dtype=raw)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        write(tmp)
        tmp.replace(out)              # never a half-written .gguf at the output path
    finally:
        tmp.unlink(missing_ok=True)
    return out


def tensor_types(path) -> list[str]:
    """The GGML types of the tensors in a .gguf file (e.g. ["F32", "Q4_1", "Q8_0"])."""
    import gguf

    return sorted({t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors})
