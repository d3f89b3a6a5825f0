"""The reference Transformer against straightforward references on tiny sizes: attention vs an
eager softmax, incremental decoding vs full recomputation, beam 1 vs greedy, save -> load, and the
compression families applying to it like to any HF model."""
import math

import pytest
import torch
import transformers as tf

import slimformer as sf
from slimformer.models.transformer import (Attention, SlimTransformerConfig, SlimTransformerForSeq2SeqLM,
                                           sinusoidal_positions)
from slimformer.testing import tiny_slim
from slimformer.testing.conformance import check_method

TEXTS = sf.sample_sentences()[:16]


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = SlimTransformerConfig(vocab_size=50, d_model=32, encoder_layers=2, decoder_layers=2,
                                encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=48,
                                decoder_ffn_dim=48, max_position_embeddings=64, dropout=0.0, **kw)
    return SlimTransformerForSeq2SeqLM(cfg).eval()


def _src():
    ids = torch.randint(3, 50, (3, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0  # a padded source
    ids[1, 6:] = 0
    return ids, mask


def test_attention_matches_an_eager_softmax_with_padding_and_causal_masks():
    torch.manual_seed(0)
    att = Attention(32, 4).eval()
    x = torch.randn(2, 5, 32)
    keep = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]).bool()
    causal = torch.ones(5, 5).tril().bool()
    mask = keep[:, None, None, :] & causal
    q = att.q_proj(x).view(2, 5, 4, 8).transpose(1, 2)
    k = att.k_proj(x).view(2, 5, 4, 8).transpose(1, 2)
    v = att.v_proj(x).view(2, 5, 4, 8).transpose(1, 2)
    s = (q @ k.transpose(-1, -2)) / math.sqrt(8)
    s = s.masked_fill(~mask, float("-inf"))
    ref = att.out_proj((s.softmax(-1) @ v).transpose(1, 2).reshape(2, 5, 32))
    torch.testing.assert_close(att(x, mask=mask), ref, atol=1e-5, rtol=1e-5)


def test_sinusoidal_positions_follow_the_paper():
    pe = sinusoidal_positions(10, 8)
    assert pe[3, 0] == pytest.approx(math.sin(3)) and pe[3, 1] == pytest.approx(math.cos(3))
    assert pe[5, 2] == pytest.approx(math.sin(5 / 10000 ** (2 / 8)), abs=1e-6)


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_incremental_decoding_equals_full_recomputation(norm):
    m = _model(norm=norm, positions="learned" if norm == "post" else "sinusoidal")
    ids, mask = _src()
    tgt = torch.randint(3, 50, (3, 7), generator=torch.Generator().manual_seed(2))
    full = torch.log_softmax(m(ids, mask, decoder_input_ids=tgt).logits, -1)       # (B, T, V)
    memory = m.model.encoder(ids, mask)
    cache = [{} for _ in m.model.decoder.layers]
    for t in range(tgt.shape[1]):
        step = m.decode_step(tgt[:, t:t + 1], memory, mask, cache, start=t)
        torch.testing.assert_close(step, full[:, t], atol=1e-4, rtol=1e-4)


def _greedy_reference(m, ids, mask, max_len):
    """Greedy decoding by full recomputation at every step (no cache)."""
    out = torch.full((ids.shape[0], 1), m.config.decoder_start_token_id)
    done = torch.zeros(ids.shape[0], dtype=torch.bool)
    for _ in range(max_len):
        nxt = m(ids, mask, decoder_input_ids=out).logits[:, -1].argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, m.config.pad_token_id), nxt)
        out = torch.cat([out, nxt[:, None]], 1)
        done |= nxt == m.config.eos_token_id
        if done.all():
            break
    return out


def test_beam_one_equals_greedy_and_more_beams_score_at_least_as_well():
    m = _model(seed=3)
    with torch.no_grad():  # make EOS likely after a few tokens so hypotheses end
        m.lm_head.weight.data[m.config.eos_token_id] *= 3
    ids, mask = _src()
    got = m.generate(ids, mask, max_new_tokens=12, num_beams=1)
    ref = _greedy_reference(m, ids, mask, 12)
    for g, r in zip(got.tolist(), ref.tolist()):
        strip = lambda s: [t for t in s if t != m.config.pad_token_id]  # noqa: E731
        assert strip(g)[:len(strip(r))] == strip(r)

    def score(seq, b):
        seq = torch.tensor(seq)[None]
        lp = torch.log_softmax(m(ids[b:b + 1], mask[b:b + 1], decoder_input_ids=seq[:, :-1]).logits, -1)
        return lp[0, torch.arange(seq.shape[1] - 1), seq[0, 1:]].sum().item()

    beams = m.generate(ids, mask, max_new_tokens=12, num_beams=4, length_penalty=0.0)
    for b in range(ids.shape[0]):
        strip = [t for t in beams[b].tolist() if t != m.config.pad_token_id]
        gstrip = [t for t in got[b].tolist() if t != m.config.pad_token_id]
        assert score(strip, b) >= score(gstrip, b) - 1e-4  # beam search finds a sequence at least as likely


def test_label_smoothed_loss_and_shift_right():
    m = _model()
    ids, mask = _src()
    labels = torch.randint(3, 50, (3, 6), generator=torch.Generator().manual_seed(4))
    labels[0, 4:] = -100
    out = m(ids, mask, labels=labels)
    dec = m.shift_right(labels)
    assert dec[0, 0] == m.config.decoder_start_token_id and dec[0, 5] == m.config.pad_token_id
    logp = torch.log_softmax(out.logits, -1)
    eps, keep = 0.1, labels != -100
    nll = -logp.gather(-1, labels.clamp(min=0)[..., None])[..., 0]
    smooth = -logp.mean(-1)
    ref = ((1 - eps) * nll + eps * smooth)[keep].mean()
    assert out.loss.item() == pytest.approx(ref.item(), rel=1e-5)


def test_save_and_reload_with_slimformer_and_plain_transformers(tmp_path):
    sm = tiny_slim("slim-transformer", "seq2seq-lm")
    folder = sf.save(sm, tmp_path / "m")
    again = sf.load(folder)
    plain = tf.AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
    ids, mask = _src()
    ids = ids.clamp(max=98)
    dec = ids[:, :4]
    ref = sm.model(ids, mask, decoder_input_ids=dec).logits
    assert type(again.model).__name__ == "SlimTransformerForSeq2SeqLM" and again.kind == "seq2seq-lm"
    assert torch.equal(again.model(ids, mask, decoder_input_ids=dec).logits, ref)
    assert torch.equal(plain(ids, mask, decoder_input_ids=dec).logits, ref)
    assert plain.lm_head.weight.data_ptr() == plain.model.shared.weight.data_ptr()  # still tied


@pytest.mark.parametrize("cfg", [sf.Int8DynamicConfig(), sf.WeightOnlyConfig(bits=4, group_size=16),
                                 sf.HeadPruningConfig(amount=0.25, importance="magnitude"),
                                 sf.FFNPruningConfig(amount=0.25, importance="magnitude")],
                         ids=lambda c: c.method)
def test_compression_families_apply(tmp_path, cfg):
    check_method(cfg, "slim-transformer", "seq2seq-lm", tmp_path, data=TEXTS)
