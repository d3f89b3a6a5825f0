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
