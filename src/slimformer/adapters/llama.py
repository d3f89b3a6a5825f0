"""Llama-family decoders: Llama (SmolLM2 is model_type "llama"), Mistral, Qwen2, Gemma 3.

Pre-LN (RMSNorm) decoder layers at `model.layers[i]`:

  self_attn.{q_proj,k_proj,v_proj,o_proj}   q: (hidden -> heads*head_dim),
                                            k, v: (hidden -> kv_heads*head_dim)   (GQA)
  mlp.{gate_proj,up_proj,down_proj}          down(act(gate(x)) * up(x))
  input_layernorm                            norm before attention
  post_attention_layernorm                   Llama/Mistral/Qwen2: norm before the MLP (!)
                                             Gemma 3: norm on the attention output
  pre_feedforward_layernorm, post_feedforward_layernorm   Gemma 3 only

Attention modules in transformers 5.x keep no `num_heads` attribute: head counts come from the
projection shapes and `head_dim`. Gemma 3's RMSNorm scales by (1 + weight).
"""
from __future__ import annotations

from torch import nn

from .base import (Adapter, AttentionBlock, FFNBlock, LayerInfo, is_uniform, out_features,
                   reindex_layers, unwrap, write_layer_sizes)


class LlamaAdapter(Adapter):
    name = "llama"
    model_types = ("llama", "mistral", "qwen2")
    norm_position = "pre"
    kv_heads_in_config = True

    def base(self, model: nn.Module) -> nn.Module:
        base = unwrap(model).base_model  # LlamaModel inside LlamaForCausalLM
        return getattr(base, "language_model", base)  # Gemma3ForConditionalGeneration

    def layer_containers(self, model: nn.Module) -> dict[str, nn.ModuleList]:
        return {"decoder": self.base(model).layers}

    def layers(self, model: nn.Module) -> list[LayerInfo]:
        return [self._layer(i, layer) for i, layer in enumerate(self.base(model).layers)]

    def _layer(self, i: int, layer: nn.Module) -> LayerInfo:
        a, m = layer.self_attn, layer.mlp
        hd = a.head_dim
        attn = AttentionBlock(module=a, q=a.q_proj, k=a.k_proj, v=a.v_proj, o=a.o_proj,
                              num_heads=out_features(a.q_proj) // hd,
                              num_kv_heads=out_features(a.k_proj) // hd, head_dim=hd)
        ffn = FFNBlock(module=m, up=m.up_proj, down=m.down_proj, gate=m.gate_proj,
                       intermediate_size=out_features(m.up_proj))
        norms = {"attn": layer.input_layernorm, "ffn": layer.post_attention_layernorm}
        return LayerInfo(i, "decoder", layer, attn, ffn, norms=norms)

    def embeddings(self, model: nn.Module) -> nn.Embedding:
        return self.base(model).embed_tokens  # (vocab, hidden)

    def rope(self, model: nn.Module):
        rot = getattr(self.base(model), "rotary_emb", None)
        if rot is None or not hasattr(rot, "inv_freq"):
            return None
        return rot.inv_freq, float(getattr(rot, "attention_scaling", 1.0))

    def lm_head(self, model: nn.Module) -> nn.Module | None:
        return getattr(unwrap(model), "lm_head", None)

    def final_norm(self, model: nn.Module) -> nn.Module | None:
        return getattr(self.base(model), "norm", None)

    def fix_config(self, model: nn.Module) -> None:
        """Write the real sizes back to the (text) config.

        Sets num_hidden_layers, num_attention_heads, num_key_value_heads, intermediate_size and
        head_dim (always explicit, so a reload does not derive it from hidden / heads). Rebuilds
        `layer_types` from the surviving layers (sliding / full attention) and renumbers
        `layer_idx` for the KV cache. When layers differ (non-uniform pruning) the global values
        are the maximum over layers and `config.slimformer_layer_sizes` holds one dict per layer
        ({"stack", "heads", "kv_heads", "head_dim", "intermediate"}); otherwise it is removed.
        Also updates each attention's `num_key_value_groups` (heads per kv head).
        """
        model = unwrap(model)
        layers = self.base(model).layers
        reindex_layers(layers)
        sizes = self.layer_sizes(model)
        infos = self.layers(model)
        for li in infos:
            if li.attention.num_kv_heads:
                li.attention.module.num_key_value_groups = li.attention.num_heads // li.attention.num_kv_heads
        for cfg in _configs(model, self.base(model)):
            cfg.num_hidden_layers = len(sizes)
            if sizes:
                cfg.num_attention_heads = max(s["heads"] for s in sizes)
                cfg.num_key_value_heads = max(s["kv_heads"] for s in sizes)
                cfg.intermediate_size = max(s["intermediate"] for s in sizes)
                cfg.head_dim = max(s["head_dim"] for s in sizes)
            types = [getattr(li.attention.module, "layer_type", None) for li in infos]
            if getattr(cfg, "layer_types", None) is not None and None not in types:
                cfg.layer_types = types  # "sliding_attention" / "full_attention" per layer
            write_layer_sizes(cfg, sizes, needed=not is_uniform(sizes))


class Gemma3Adapter(LlamaAdapter):
    name = "gemma3"
    model_types = ("gemma3", "gemma3_text")
    norm_weight_offset = 1.0  # Gemma3RMSNorm: x_hat * (1 + weight)

    def _layer(self, i: int, layer: nn.Module) -> LayerInfo:
        info = super()._layer(i, layer)
        info.norms = {"attn": layer.input_layernorm, "ffn": layer.pre_feedforward_layernorm,
                      "attn_out": layer.post_attention_layernorm,
                      "ffn_out": layer.post_feedforward_layernorm}
        return info


def _configs(model: nn.Module, base: nn.Module) -> list:
    """The text config (Gemma 3 multimodal keeps it in config.text_config) and the base model's."""
    out = [model.config.get_text_config()]
    if base.config is not out[0]:
        out.append(base.config)
    return out
