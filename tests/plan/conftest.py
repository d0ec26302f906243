import pytest


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Never read or write the user's ~/.cache/fmforge from tests."""
    monkeypatch.setenv("FMFORGE_CACHE_DIR", str(tmp_path / "cache"))
