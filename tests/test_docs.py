"""The documentation site builds with mkdocs --strict (a broken link or a page missing from the
nav fails), its generated reference page matches the code, and the README stays short."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_reference_page_is_current():
    from slimformer.cli.reference import reference_markdown

    page = (ROOT / "docs" / "reference.md").read_text()
    assert page == reference_markdown(), ("docs/reference.md is stale: run "
                                          "`python -m slimformer.cli.reference > docs/reference.md`")


def test_docs_site_builds_strict(tmp_path):
    try:
        import material  # noqa: F401
        import mkdocs  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("CI must build the docs: pip install mkdocs-material")
        pytest.skip("mkdocs-material is not installed (pip install mkdocs-material)")
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "site" / "factorization" / "index.html").exists()


def test_readme_is_short_and_opens_with_the_two_commands():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    first = text.split("```")[1]
    assert "slimformer compress --recipe fastest" in first and "pytest -q" in first
