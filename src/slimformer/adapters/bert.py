"""BERT-family encoders: BERT (all-MiniLM-L6-v2), RoBERTa, XLM-RoBERTa, ELECTRA, DistilBERT, MPNet.

Post-LN layers. Three module layouts, all with separate q/k/v Linear layers:

  bert/roberta/xlm-roberta/electra  encoder.layer[i].attention.self.{query,key,value}
                                    .attention.output.{dense,LayerNorm}
                                    .intermediate.dense (up)  .output.{dense (down),LayerNorm}
  mpnet                             encoder.layer[i].attention.attn.{q,k,v,o}  .attention.LayerNorm
                                    .intermediate.dense  .output.{dense,LayerNorm}
  distilbert                        transformer.layer[i].attention.{q_lin,k_lin,v_lin,out_lin}
                                    .sa_layer_norm  .ffn.{lin1,lin2}  .output_layer_norm

transformers 5.x dropped `pruned_heads` and `prune_heads()`; attention reshapes with
`view(..., -1, head_size)`, so a layer with fewer heads runs as long as the per-module head
attributes are kept in step, which `fix_config` does.
"""
from __future__ import annotations

from torch import nn

from .base import (Adapter, AttentionBlock, FFNBlock, LayerInfo, is_uniform, out_features,
                   reindex_layers, unwrap, write_layer_sizes)


class BertAdapter(Adapter):
    name = "bert"
    model_types = ("bert", "roberta", "xlm-roberta", "electra", "distilbert", "mpnet")
    norm_position = "post"
    ort_model_type = "bert"
    derived_head_keys = ("num_attention_heads", "n_heads")

    def base(self, model: nn.Module) -> nn.Module:
        return unwrap(model).base_model  # BertModel inside BertForX (HF base_model_prefix)

    def layer_containers(self, model: nn.Module) -> dict[str, nn.ModuleList]:
        base = self.base(model)
        stack = base.transformer if _type(model) == "distilbert" else base.encoder
        return {"encoder": stack.layer}

    def layers(self, model: nn.Module) -> list[LayerInfo]:
        read = {"distilbert": _distilbert_layer, "mpnet": _mpnet_layer}.get(_type(model), _bert_layer)
        infos = [read(i, layer) for i, layer in enumerate(self.layer_containers(model)["encoder"])]
        rel_bias = getattr(getattr(self.base(model), "encoder", None), "relative_attention_bias", None)
        for info in infos:  # MPNet: one (buckets, heads) table for all layers
            info.attention.rel_bias = rel_bias
        return infos

    def embeddings(self, model: nn.Module) -> nn.Embedding:
        return self.base(model).embeddings.word_embeddings  # (vocab, hidden)

    def fix_config(self, model: nn.Module) -> None:
        """Write the real sizes back to the config.

        Sets num_hidden_layers, num_attention_heads and intermediate_size (DistilBERT: n_layers,
        n_heads, hidden_dim). When layers differ (non-uniform pruning) the global values are the
        maximum over layers and `config.slimformer_layer_sizes` holds one dict per layer
        ({"stack", "heads", "kv_heads", "head_dim", "intermediate"}). It is also written when
        heads * head_dim != hidden_size, since transformers derives head_dim from
        hidden_size / num_attention_heads and could not rebuild such a layer from the config
        alone. Also updates the head-count attributes the attention modules keep.
        """
        model = unwrap(model)
        cfg = model.config
        layers = self.layer_containers(model)["encoder"]
        reindex_layers(layers)
        sizes = self.layer_sizes(model)
        cfg.num_hidden_layers = len(sizes)
        if sizes:
            heads = max(s["heads"] for s in sizes)
            cfg.num_attention_heads = heads
            setattr(cfg, "hidden_dim" if cfg.model_type == "distilbert" else "intermediate_size",
                    max(s["intermediate"] for s in sizes))
            for li in self.layers(model):
                for a in (li.attention, li.cross_attention):
                    if a is not None:
                        _sync_heads(a.module, a.num_heads)
        expressible = all(s["heads"] * s["head_dim"] == cfg.hidden_size for s in sizes)
        write_layer_sizes(cfg, sizes, needed=not (is_uniform(sizes) and expressible))


def _type(model) -> str:
    return unwrap(model).config.model_type


def _attention(module, q, k, v, o, head_dim) -> AttentionBlock:
    heads = out_features(q) // head_dim
    return AttentionBlock(module=module, q=q, k=k, v=v, o=o, num_heads=heads,
                          num_kv_heads=out_features(k) // head_dim, head_dim=head_dim)


def _bert_layer(i: int, layer: nn.Module) -> LayerInfo:
    sa, out = layer.attention.self, layer.attention.output
    attn = _attention(sa, sa.query, sa.key, sa.value, out.dense, sa.attention_head_size)
    cross = None
    if getattr(layer, "crossattention", None) is not None:  # BERT used as a decoder
        ca = layer.crossattention
        cross = _attention(ca.self, ca.self.query, ca.self.key, ca.self.value, ca.output.dense,
                           ca.self.attention_head_size)
        cross.kind = "cross"
    up, down = layer.intermediate.dense, layer.output.dense
    ffn = FFNBlock(module=None, up=up, down=down, gate=None, intermediate_size=out_features(up))
    norms = {"attn": out.LayerNorm, "ffn": layer.output.LayerNorm}
    if cross is not None:
        norms["cross"] = layer.crossattention.output.LayerNorm
    return LayerInfo(i, "encoder", layer, attn, ffn, cross_attention=cross, norms=norms)


def _mpnet_layer(i: int, layer: nn.Module) -> LayerInfo:
    a = layer.attention.attn
    attn = _attention(a, a.q, a.k, a.v, a.o, a.attention_head_size)
    up, down = layer.intermediate.dense, layer.output.dense
    ffn = FFNBlock(module=None, up=up, down=down, gate=None, intermediate_size=out_features(up))
    norms = {"attn": layer.attention.LayerNorm, "ffn": layer.output.LayerNorm}
    return LayerInfo(i, "encoder", layer, attn, ffn, norms=norms)


def _distilbert_layer(i: int, layer: nn.Module) -> LayerInfo:
    a = layer.attention
    attn = _attention(a, a.q_lin, a.k_lin, a.v_lin, a.out_lin, a.attention_head_size)
    f = layer.ffn
    ffn = FFNBlock(module=f, up=f.lin1, down=f.lin2, gate=None, intermediate_size=out_features(f.lin1))
    norms = {"attn": layer.sa_layer_norm, "ffn": layer.output_layer_norm}
    return LayerInfo(i, "encoder", layer, attn, ffn, norms=norms)


def _sync_heads(attn: nn.Module, heads: int) -> None:
    """Keep the head-count attributes of a (pruned) self-attention module in step."""
    if hasattr(attn, "n_heads"):  # DistilBERT
        attn.n_heads = heads
    if hasattr(attn, "num_attention_heads"):  # BERT, RoBERTa, ELECTRA, MPNet
        attn.num_attention_heads = heads
        attn.all_head_size = heads * attn.attention_head_size  # MPNet reshapes with it
