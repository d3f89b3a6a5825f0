"""Shared test helpers. Real evaluation data lives outside the repo, in ../shared/data."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_data_dir() -> Path:
    """The real-data folder (../shared/data from the repo root). Missing: skip the test, except
    under CI (env CI=true), where a missing folder is a failure, not a silent skip."""
    if SHARED_DATA.is_dir():
        return SHARED_DATA
    reason = "../shared/data not found (real-data tests need it)"
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(f"{reason}; CI=true, so this is an error", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return shared_data_dir()
