"""Save a quantized model in the compressed-tensors format, which plain `transformers` (with the
`compressed-tensors` package) and vLLM load.

    from slimformer.export import export_compressed_tensors
    export_compressed_tensors(model, "out/smollm2-w4-ct")
    # elsewhere: AutoModelForCausalLM.from_pretrained("out/smollm2-w4-ct")

What it can hold, carried over exactly (the same codes and scales, not re-quantized):
- group-wise int4 / int8 weights (`weight_only`, RTN or GPTQ) with integer zero points, or
  symmetric: format `pack-quantized` (codes packed 8 (int4) or 4 (int8) per int32, little end
  first, stored as code + 2^(bits-1); zero points packed the same way along the output dim);
- W8A8 dynamic int8 (`int8_dynamic`): int8 weights per output channel with int8 activations
  quantized per token at run time: format `int-quantized` (compressed-tensors' per-token scale is
  absmax / 127.5 where ours is absmax / 127, so activations round slightly differently);
- int8 weight-only per channel (an `Int8Linear` without activation quantization): `int-quantized`.

What it refuses, with the reason (one-line ConfigError naming the first module):
- float zero points (`float_zeros`, scheme w4-g32-fz): compressed-tensors' zero points are integers;
- a group size that does not divide a layer's input width (SmolLM2's 576 at group 128): it needs
  whole groups;
- a Hadamard rotation (`rotate`, scheme w4-gptq-rot): the rotation's run-time Hadamard on the down
  projection's input and around the final norm is not in the transformers model code (its transform
  config would need a matching online rotation); quantize without `rotate` for this format;
- static int8 activations, SmoothQuant input scales, sparse storage, per-layer sizes after structured
  pruning, and any other module plain transformers does not have.

The int8 token-embedding table is written dequantized (float32): compressed-tensors quantizes
Linear layers; an LM head that reads the table stays tied, and one quantized on its own
(`int8_dynamic` gives the head its own int8 weight) is written untied (`tie_word_embeddings`
false), or transformers would tie it to the float table and decompress that as codes (SmolLM2
scored perplexity 45,904 that way; 14.20 now, ours 14.19).

Asymmetric group-wise int4 (integer zero points: schemes w4, w4-gptq*) is written as the format
specifies (zero points packed along the output dimension), but transformers 5.24 with
compressed-tensors 0.20.1 builds its placeholders with unpacked zero points and refuses the file;
the symmetric scheme `w4-g32-sym` exports and loads (SmolLM2: perplexity within 0.5% of ours).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..core.errors import ConfigError
from ..core.packing import unpack_int4
from ..models.saving import MARKERS, atomic_folder
from .portable import check_portable

MARKER = "slimformer_export.json"
FORMAT = "compressed-tensors"


def pack_int32(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Unsigned codes (rows, cols) in [0, 2^bits) -> (rows, ceil(cols * bits / 32)) int32, element i
    at bit i * bits of the row's little-endian words (compressed-tensors' `pack_to_int32` layout,
    which stores signed values + 2^(bits-1): our unsigned codes already are that)."""
    if bits not in (4, 8):
        raise ValueError(f"bits={bits}; accepted: 4, 8")
    per = 32 // bits
    rows, cols = codes.shape
    c = codes.to(torch.int64)
    pad = -cols % per
    if pad:
        c = torch.nn.functional.pad(c, (0, pad))
    c = c.view(rows, -1, per)
    shifts = torch.arange(per, dtype=torch.int64) * bits
    words = (c << shifts).sum(-1)                           # (rows, words) in [0, 2^32)
    words = torch.where(words >= 2**31, words - 2**32, words)
    return words.to(torch.int32).contiguous()


def _scheme(bits: int, strategy: str, group: int | None, symmetric: bool, act: bool) -> dict:
    w = {"num_bits": bits, "type": "int", "symmetric": symmetric, "strategy": strategy, "group_size": group,
         "dynamic": False, "observer": "minmax"}
    a = ({"num_bits": 8, "type": "int", "symmetric": True, "strategy": "token", "dynamic": True, "observer": None}
         if act else None)
    return {"weights": w, "input_activations": a, "output_activations": None}


def _plan(sm) -> tuple[dict, dict]:
    """({module name: (scheme key, format, tensors)}, {scheme key: scheme}) or a ConfigError."""
    from ..quantize.modules import GroupQuantLinear, Int8Embedding, Int8Linear, Int8TiedHead

    net = sm.model
    check_portable(sm, "compressed-tensors", "w4, w4-gptq, w4-gptq-g64/g32, w8, int8_dynamic")
    plan, schemes = {}, {}
    for name, mod in net.named_modules():
        if isinstance(mod, GroupQuantLinear):
            where = f"{name} ({mod.in_features} inputs, group {mod.group_size})"
            if mod.float_zeros:
                raise ConfigError(f"compressed-tensors cannot hold float zero points ({name}: float_zeros, scheme "
                                  "w4-g32-fz): its zero points are integers; accepted: integer or no zero points")
            if mod.in_features % mod.group_size:
                raise ConfigError(f"compressed-tensors needs whole groups; {where} leaves a short last group: "
                                  "quantize with a group size that divides every input width (e.g. 64 or 32)")
            if mod.input_rotation is not None:
                raise ConfigError(f"compressed-tensors cannot hold {name}'s run-time Hadamard rotation")
            sym = bool((mod.zeros.float() == 2 ** (mod.bits - 1)).all())
            key = f"w{mod.bits}-g{mod.group_size}-{'sym' if sym else 'asym'}"
            schemes[key] = ("pack-quantized", _scheme(mod.bits, "group", mod.group_size, sym, False))
            q = unpack_int4(mod.qweight, mod.in_features) if mod.bits == 4 else mod.qweight
            t = {"weight_packed": pack_int32(q, mod.bits), "weight_scale": mod.scales.float().clone(),
                 "weight_shape": torch.tensor([mod.out_features, mod.in_features])}
            if not sym:   # packed along the output dim
                t["weight_zero_point"] = pack_int32(mod.zeros.to(torch.int64).t(), mod.bits).t().contiguous()
            if mod.bias is not None:
                t["bias"] = mod.bias.detach().float().clone()
            plan[name] = (key, t)
        elif isinstance(mod, Int8Linear):
            if mod.act == "static":
                raise ConfigError(f"compressed-tensors export takes dynamic int8 activations; {name} has a static "
                                  "activation scale (int8_static): accepted: int8_dynamic, weight_only")
            if mod.input_scale is not None:
                raise ConfigError(f"compressed-tensors cannot hold {name}'s SmoothQuant input scale: quantize "
                                  "without smoothquant for this format")
            act = mod.act == "token"
            key = "w8a8-channel-token" if act else "w8-channel"
            schemes[key] = ("int-quantized", _scheme(8, "channel", None, True, act))
            t = {"weight": mod.weight_int8.clone(), "weight_scale": mod.weight_scale.float().view(-1, 1).clone()}
            if mod.bias is not None:
                t["bias"] = mod.bias.detach().float().clone()
            plan[name] = (key, t)
        elif isinstance(mod, Int8Embedding):
            plan[name] = (None, {"weight": mod.weight.detach().float().clone()})
        elif isinstance(mod, Int8TiedHead):
            if not getattr(net.config, "tie_word_embeddings", False):
                raise ConfigError(f"{name} reads the embedding table but the config does not tie them")
            plan[name] = (None, {})
        elif type(mod).__module__.startswith("slimformer"):
            raise ConfigError(f"compressed-tensors cannot hold {name} ({type(mod).__name__}): plain transformers has "
                              "no such module; accepted: weight_only (integer zero points, whole groups) and "
                              "int8_dynamic models")
    with torch.device("meta"):        # what plain transformers builds at each name
        fresh = dict(type(net)(net.config).named_modules())
    for name, (key, _) in plan.items():
        want = torch.nn.Linear if key else (torch.nn.Embedding, torch.nn.Linear)
        if not isinstance(fresh.get(name), want):
            raise ConfigError(f"compressed-tensors quantizes nn.Linear layers; {name} is a "
                              f"{type(fresh.get(name)).__name__} in {type(net).__name__} (GPT-2's Conv1D, say)")
    if not schemes:
        raise ConfigError("nothing in this model is quantized: save it with slimformer.save (a float model loads "
                          "with plain transformers as it is)")
    return plan, schemes


def compressed_tensors_config(schemes: dict, plan: dict) -> dict:
    """The `quantization_config` block of config.json: one config group per scheme, its targets the
    exact module names."""
    groups = {}
    formats = {fmt for fmt, _ in schemes.values()}
    for i, (key, (fmt, scheme)) in enumerate(sorted(schemes.items())):
        targets = sorted(n for n, (k, _) in plan.items() if k == key)
        groups[f"group_{i}"] = {"targets": targets, **scheme, **({"format": fmt} if len(formats) > 1 else {})}
    return {"quant_method": "compressed-tensors", "format": formats.pop() if len(formats) == 1 else "mixed-precision",
            "quantization_status": "compressed", "config_groups": groups, "ignore": [], "kv_cache_scheme": None}


def export_compressed_tensors(sm, out_dir) -> Path:
    """Write `sm` (quantized by slimformer) to `out_dir` in the compressed-tensors format; see the
    module docstring for what it holds and refuses."""
    from safetensors.torch import save_file

    plan, schemes = _plan(sm)
    net = sm.model
    state = {}
    for key, value in net.state_dict().items():
        owner = key.rsplit(".", 1)[0]
        if any(owner == n or owner.startswith(n + ".") for n in plan):
            continue
        state[key] = value.detach().contiguous().clone()
    for name, (_, tensors) in plan.items():
        for k, v in tensors.items():
            state[f"{name}.{k}"] = v.contiguous()
    cfg = net.config.to_dict()
    if getattr(net.config, "tie_word_embeddings", False):
        head = net.get_output_embeddings()
        hname = next((n for n, m in net.named_modules() if m is head), None)
        if hname and plan.get(hname, (None,))[0] is not None:
            # the head was quantized on its own (int8_dynamic gives it its own int8 weight): untied in
            # the file, or transformers would tie it to the float table and decompress that as codes
            cfg["tie_word_embeddings"] = False
        elif hname:
            state.pop(f"{hname}.weight", None)                   # transformers re-ties the head on load
    for k in list(cfg):
        if k.startswith("slimformer"):
            cfg.pop(k)
    cfg["quantization_config"] = compressed_tensors_config(schemes, plan)

    def write(tmp: Path) -> None:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, default=str))
        gen = getattr(net, "generation_config", None)
        if gen is not None:
            gen.save_pretrained(tmp)
        if sm.tokenizer is not None:
            sm.tokenizer.save_pretrained(tmp)
        (tmp / MARKER).write_text(json.dumps({"format": FORMAT, "source": sm.source,
                                              "schemes": sorted(schemes), "layers": len(plan)}, indent=2))

    return atomic_folder(out_dir, write, markers=(*MARKERS, MARKER))
