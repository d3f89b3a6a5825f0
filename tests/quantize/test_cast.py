"""The `cast` step: bf16 / fp16 models, kept in that dtype through save and load; "auto" casts only
where bf16 is native."""
import pytest
import torch

import slimformer as sf
from slimformer.core import hardware
from slimformer.core.config import apply_method
from slimformer.core.errors import ConfigError
from slimformer.testing import tiny_slim
from slimformer.testing.conformance import check_method


@pytest.mark.parametrize("family,kind", [("bert", "embedding"), ("llama", "causal-lm")])
def test_cast_bf16_conformance_and_reload_in_bf16(tmp_path, family, kind):
    sm, step = check_method(sf.CastConfig(dtype="bf16"), family, kind, tmp_path, min_sqnr=20.0)
    assert step.details["dtype"] == "bfloat16" and step.bytes_after < 0.6 * step.bytes_before
    again = sf.load(tmp_path / "conformance")
    assert next(again.model.parameters()).dtype == torch.bfloat16


def test_cast_auto_follows_the_cpu(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_flags", lambda: {"avx2"})
    sm = tiny_slim()
    out = apply_method(sm, sf.CastConfig())
    assert next(sm.model.parameters()).dtype == torch.float32 and "kept float32" in out.warnings[0]
    monkeypatch.setattr(hardware, "cpu_flags", lambda: {"avx512f", "amx_bf16"})
    apply_method(sm, sf.CastConfig())
    assert next(sm.model.parameters()).dtype == torch.bfloat16
    assert sm.embed(["a sentence"]).dtype == torch.float32  # embeddings come back as float32
    with pytest.raises(ConfigError, match="dtype"):
        sf.CastConfig(dtype="int8")


def test_methods_without_architecture_knowledge_take_a_plain_module():
    """As torchao's quantize_: a plain torch module with nn.Linear layers, changed in place."""
    import torch
    from torch import nn

    from slimformer.prune import SparseLinear
    from slimformer.quantize.modules import GroupQuantLinear, Int8Linear
    from slimformer.testing.conformance import sqnr_db

    torch.manual_seed(0)
    x = torch.randn(16, 64)
    for cfg, cls, min_db in ((sf.Int8DynamicConfig(), Int8Linear, 30), (sf.WeightOnlyConfig(bits=4, group_size=32),
                                                                         GroupQuantLinear, 15)):
        m = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 32))
        ref = m(x).detach()
        sf.quantize_(m, cfg)
        assert [type(m[0]), type(m[2])] == [cls, cls] and sqnr_db(ref, m(x).detach()) > min_db
    m = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 32))
    sf.prune_(m, sf.MagnitudeConfig(amount=0.5))
    assert isinstance(m[0], SparseLinear) and isinstance(m[2], SparseLinear)
