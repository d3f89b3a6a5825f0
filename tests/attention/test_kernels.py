"""Every attention implementation against the eager reference on tiny tensors: exact where it
must be, within a bound where it approximates, with padding masks, causal use, GQA and decoding."""
import pytest
import torch

from slimformer.attention import ATTENTION, options_of
from slimformer.attention import kernels as K
from slimformer.core.errors import ConfigError

B, H, HKV, T, D = 2, 4, 2, 37, 16


@pytest.fixture(scope="module")
def qkv():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, h, T, D, generator=g) for h in (H, HKV, HKV))
    km = torch.ones(B, T, dtype=torch.bool)
    km[1, 30:] = False                                   # the second sequence is padded
    return q, k, v, km


def err(out, ref, km):
    """max |out - ref| over real query positions."""
    return max((out - ref)[b][:, km[b]].abs().max().item() for b in range(B))


def test_registry_lists_every_implementation_with_options():
    assert set(ATTENTION.names()) == {"eager", "sdpa", "sliding_window", "block_sparse", "lsh", "linear", "nystrom",
                                      "pooled"}
    assert options_of("sliding_window") == {"window": 256, "global_tokens": ()}
    assert not ATTENTION.get("nystrom").causal and ATTENTION.get("lsh").causal


def test_eager_matches_a_hand_written_softmax(qkv):
    q, k, v, _ = qkv
    kk, vv = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    scores = q @ kk.transpose(-1, -2) / D ** 0.5
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    assert torch.allclose(K.eager(q, k, v, causal=True), torch.softmax(scores, -1) @ vv, atol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("name,opts", [
    ("sdpa", {}),
    ("sliding_window", {"window": T}),                                   # the window covers the sequence
    ("sliding_window", {"window": 4, "global_tokens": tuple(range(T))}),  # every token global
    ("block_sparse", {"block": 8, "random_blocks": 5}),                  # random blocks cover all 5
    ("lsh", {"buckets": 1}),                                              # one bucket
    ("nystrom", {"landmarks": 10 ** 6}),                                  # one landmark per token
    ("pooled", {"stride": 1}),
])
def test_exact_where_it_must_be(qkv, name, opts, causal):
    q, k, v, km = qkv
    if causal and not ATTENTION.get(name).causal:
        with pytest.raises(ConfigError, match="bidirectional only"):
            ATTENTION.get(name).fn(q, k, v, km, causal, None, **opts)
        return
    ref = K.eager(q, k, v, km, causal)
    assert err(ATTENTION.get(name).fn(q, k, v, km, causal, None, **opts), ref, km) < 1e-5


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("globals_", [(), (0, 5, -1)])
def test_blocked_window_equals_the_dense_band(qkv, causal, globals_):
    """The blocked kernel (T x window memory) computes exactly the banded attention."""
    q, k, v, km = qkv
    w = 6
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    band = ((i - j >= 0) & (i - j < w)) if causal else (i - j).abs() < w
    for p in (p % T for p in globals_):               # a global token sees and is seen by all (causally)
        band[:, p] |= (i[:, 0] >= p) if causal else True
        band[p, :] = (j[0] <= p) if causal else True
    allowed = band[None, None] & km[:, None, None, :]
    scores = (q @ k.repeat_interleave(2, 1).transpose(-1, -2)) / D ** 0.5
    ref = torch.softmax(scores.masked_fill(~allowed, float("-inf")), -1) @ v.repeat_interleave(2, 1)
    out = K.sliding_window(q, k, v, km, causal, window=w, global_tokens=globals_)
    assert err(out, ref, km) < 1e-5
    assert err(out, K.eager(q, k, v, km, causal), km) > 1e-2   # and it is not full attention


@pytest.mark.parametrize("name,opts", [("sdpa", {}), ("sliding_window", {"window": 5}),
                                       ("block_sparse", {"block": 8}), ("lsh", {"buckets": 4}),
                                       ("linear", {"feature_map": "elu"})])
def test_decoding_step_matches_the_last_row_of_the_full_pass(qkv, name, opts):
    """One query against cached keys (T < S) sees what the last position of a full pass sees."""
    q, k, v, km = qkv
    fn = ATTENTION.get(name).fn
    full = fn(q[:1], k[:1], v[:1], None, True, None, **opts)
    step = fn(q[:1, :, -1:], k[:1], v[:1], None, True, None, **opts)
    if name == "lsh":   # decoding attends to every key (one query is cheap)
        full = K.eager(q[:1], k[:1], v[:1], None, True)
    assert torch.allclose(step, full[:, :, -1:], atol=1e-5)


def test_lsh_approximates_and_more_rounds_help():
    g = torch.Generator().manual_seed(1)
    # clustered keys: LSH's premise (a query's large scores come from a few similar keys)
    centers = torch.randn(8, D, generator=g) * 2
    x = centers[torch.randint(0, 8, (1, 2, 128), generator=g)] + 0.1 * torch.randn(1, 2, 128, D, generator=g)
    v = torch.randn(1, 2, 128, D, generator=g)
    ref = K.eager(x, x, v)
    e1 = (K.lsh(x, x, v, buckets=8, rounds=1) - ref).abs().mean().item()
    e4 = (K.lsh(x, x, v, buckets=8, rounds=4) - ref).abs().mean().item()
    spread = (v.mean(2, keepdim=True) - ref).abs().mean().item()    # what uniform attention would give
    assert e4 <= e1 + 1e-6 and e4 < 0.5 * spread


def test_performer_error_falls_with_more_features(qkv):
    q, k, v, km = qkv
    q, k = q * 0.5, k * 0.5
    for causal in (False, True):
        ref = K.eager(q, k, v, km, causal)
        errs = [(K.linear(q, k, v, km, causal, feature_map="performer", features=m) - ref)[0].abs().mean().item()
                for m in (16, 4096)]
        assert errs[1] < 0.5 * errs[0] and errs[1] < 0.05


@pytest.mark.parametrize("causal", [False, True])
def test_elu_linear_attention_matches_its_formula(qkv, causal):
    """Chunked causal linear attention equals the dense formula phi(q) phi(k)^T v / normaliser."""
    q, k, v, km = qkv
    phi = lambda x: torch.nn.functional.elu(x) + 1  # noqa: E731
    a = phi(q) @ (phi(k.repeat_interleave(2, 1)) * km[:, None, :, None]).transpose(-1, -2)
    if causal:
        a = a * torch.ones(T, T).tril()
    ref = (a @ v.repeat_interleave(2, 1)) / a.sum(-1, keepdim=True)
    assert err(K.linear(q, k, v, km, causal, feature_map="elu", chunk=5), ref, km) < 1e-5


def test_nystrom_and_pooled_are_close_on_smooth_sequences():
    """Both assume neighbouring tokens are alike; on such a sequence they stay close to eager."""
    g = torch.Generator().manual_seed(2)
    x = (torch.randn(1, 1, 64, D, generator=g).cumsum(2) / 6).expand(1, 4, 64, D)
    v = torch.randn(1, 4, 64, D, generator=g)
    ref = K.eager(x, x, v)
    spread = (v.mean(2, keepdim=True) - ref).abs().mean().item()
    assert (K.nystrom(x, x, v, landmarks=16) - ref).abs().mean().item() < 0.25 * spread
    assert (K.pooled(x, x, v, stride=2) - ref).abs().mean().item() < 0.25 * spread


def test_padding_never_leaks(qkv):
    """Changing padded keys and values changes nothing for real queries, for every kernel."""
    q, k, v, km = qkv
    k2, v2 = k.clone(), v.clone()
    k2[1, :, 30:] += 5
    v2[1, :, 30:] -= 7
    for name in ATTENTION.names():
        opts = {"window": 6, "global_tokens": (0,)} if name == "sliding_window" else {}
        fn = ATTENTION.get(name).fn
        a, b = fn(q, k, v, km, False, None, **opts), fn(q, k2, v2, km, False, None, **opts)
        assert err(a, b, km) < 1e-4, name


@pytest.mark.parametrize("name,opts,match", [
    ("sliding_window", {"window": 0}, "window"), ("lsh", {"buckets": 3}, "buckets"),
    ("linear", {"feature_map": "relu"}, "feature_map"), ("block_sparse", {"block": 0}, "block"),
    ("nystrom", {"landmarks": 0}, "landmarks"), ("pooled", {"stride": 0}, "stride")])
def test_bad_options_are_one_line_errors(qkv, name, opts, match):
    q, k, v, km = qkv
    with pytest.raises(ConfigError, match=match):
        ATTENTION.get(name).fn(q, k, v, km, False, None, **opts)


@pytest.mark.parametrize("causal", [False, True])
def test_block_sparse_equals_attention_under_its_block_pattern(qkv, causal):
    """A partial pattern (window + global + random blocks) against dense attention masked by the
    same pattern expanded to positions; the global query blocks see every key."""
    q, k, v, km = qkv
    block, g, r = 4, 1, 1
    nb = -(-T // block)
    pat = K.block_pattern(nb, 3, g, r, 0, causal)
    pos = torch.arange(T) // block
    allowed = pat[pos][:, pos][None, None] & km[:, None, None, :]
    if causal:
        allowed = allowed & torch.ones(T, T, dtype=torch.bool).tril()
    kk, vv = (x.repeat_interleave(H // HKV, dim=1) for x in (k, v))
    s = (q @ kk.transpose(-1, -2)) * D ** -0.5
    ref = torch.softmax(s.masked_fill(~allowed, float("-inf")), -1).nan_to_num(0.0) @ vv
    out = K.block_sparse(q, k, v, km, causal, None, block=block, global_blocks=g, random_blocks=r)
    assert not bool(pat.all())                    # a real sparse pattern, not all blocks
    assert err(out, ref, km) < 1e-5


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("window,glob", [(150, ()), (150, (0, 7)), (40, (3,))])
def test_sliding_window_blocks_smaller_than_the_window_equal_the_masked_band(causal, window, glob):
    """Long enough that the query blocks (128) are smaller than the window and do not divide T."""
    t = 300
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, n, t, 8, generator=g) for n in (4, 2, 2))
    km = torch.ones(1, t, dtype=torch.bool)
    km[0, 290:] = False
    i, j = torch.arange(t)[:, None], torch.arange(t)[None, :]
    band = ((i - j >= 0) & (i - j < window)) if causal else (i - j).abs() < window
    if glob:
        gi = torch.zeros(t, dtype=torch.bool)
        gi[list(glob)] = True
        band = band | gi[None, :] | gi[:, None]
        if causal:
            band = band & (j <= i)
    allowed = band[None, None] & km[:, None, None, :]
    kk, vv = (x.repeat_interleave(2, dim=1) for x in (k, v))
    s = (q @ kk.transpose(-1, -2)) * 8 ** -0.5
    ref = torch.softmax(s.masked_fill(~allowed, float("-inf")), -1) @ vv
    out = K.sliding_window(q, k, v, km, causal, None, window=window, global_tokens=glob)
    assert (out - ref)[:, :, :290].abs().max() < 1e-5
