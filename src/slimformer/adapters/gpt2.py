"""GPT-2: pre-LN decoder, fused qkv, transformers `Conv1D` projections (weight stored (in, out)).

  transformer.h[i].ln_1                  norm before attention
  transformer.h[i].attn.c_attn           Conv1D hidden -> 3 * heads*head_dim   (q | k | v)
  transformer.h[i].attn.c_proj           Conv1D heads*head_dim -> hidden
  transformer.h[i].ln_2                  norm before the MLP
  transformer.h[i].mlp.c_fc / .c_proj    Conv1D hidden -> n_inner -> hidden
  (add_cross_attention: .crossattention.{q_attn, c_attn (k | v), c_proj}, .ln_cross_attn)
"""
from __future__ import annotations

from torch import nn

from .base import (Adapter, AttentionBlock, FFNBlock, LayerInfo, is_uniform, out_features,
                   reindex_layers, unwrap, write_layer_sizes)


class GPT2Adapter(Adapter):
    name = "gpt2"
    ort_model_type = "gpt2"
    derived_head_keys = ("n_head",)
    hidden_key = "n_embd"
    model_types = ("gpt2",)
    norm_position = "pre"

    def base(self, model: nn.Module) -> nn.Module:
        return unwrap(model).base_model  # GPT2Model inside GPT2LMHeadModel

    def layer_containers(self, model: nn.Module) -> dict[str, nn.ModuleList]:
        return {"decoder": self.base(model).h}

    def layers(self, model: nn.Module) -> list[LayerInfo]:
        return [_layer(i, block) for i, block in enumerate(self.base(model).h)]

    def embeddings(self, model: nn.Module) -> nn.Embedding:
        return self.base(model).wte  # (vocab, hidden)

    def final_norm(self, model: nn.Module) -> nn.Module | None:
        return getattr(self.base(model), "ln_f", None)

    def lm_head(self, model: nn.Module) -> nn.Module | None:
        return getattr(unwrap(model), "lm_head", None)

    def fix_config(self, model: nn.Module) -> None:
        """Write the real sizes back to the config: n_layer, n_head, n_inner.

        When layers differ (non-uniform pruning) or heads * head_dim != n_embd (GPT-2 derives
        head_dim = n_embd / n_head), the global values are the maximum over layers and
        `config.slimformer_layer_sizes` holds one dict per layer ({"stack", "heads",
        "kv_heads", "head_dim", "intermediate"}); otherwise it is removed. Also updates each
        attention's `num_heads` and `split_size` (the width of q, k, v inside `c_attn`).
        """
        model = unwrap(model)
        cfg = model.config
        reindex_layers(self.base(model).h)
        sizes = self.layer_sizes(model)
        for li in self.layers(model):
            for a in (li.attention, li.cross_attention):
                if a is not None:
                    a.module.num_heads = a.num_heads
                    a.module.split_size = a.num_kv_heads * a.head_dim  # k and v widths
        cfg.n_layer = len(sizes)
        if sizes:
            cfg.n_head = max(s["heads"] for s in sizes)
            cfg.n_inner = max(s["intermediate"] for s in sizes)
        expressible = all(s["heads"] * s["head_dim"] == cfg.n_embd for s in sizes)
        write_layer_sizes(cfg, sizes, needed=not (is_uniform(sizes) and expressible))


def _layer(i: int, block: nn.Module) -> LayerInfo:
    a = block.attn
    width = out_features(a.c_attn) // 3  # heads * head_dim
    attn = AttentionBlock(module=a, q=None, k=None, v=None, o=a.c_proj,
                          num_heads=width // a.head_dim, num_kv_heads=width // a.head_dim,
                          head_dim=a.head_dim, qkv=a.c_attn, fused_qkv_split=(width, width, width))
    norms = {"attn": block.ln_1, "ffn": block.ln_2}
    cross = None
    if hasattr(block, "crossattention"):
        c = block.crossattention
        kv = out_features(c.c_attn) // 2
        heads = out_features(c.q_attn) // c.head_dim
        cross = AttentionBlock(module=c, q=c.q_attn, k=None, v=None, o=c.c_proj, num_heads=heads,
                               num_kv_heads=kv // c.head_dim, head_dim=c.head_dim, kind="cross",
                               qkv=c.c_attn, fused_qkv_split=(0, kv, kv))  # q is q_attn
        norms["cross"] = block.ln_cross_attn
    m = block.mlp
    ffn = FFNBlock(module=m, up=m.c_fc, down=m.c_proj, gate=None,
                   intermediate_size=out_features(m.c_fc))
    return LayerInfo(i, "decoder", block, attn, ffn, cross_attention=cross, norms=norms)
