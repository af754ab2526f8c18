from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No hub traffic and no weights from the machine's caches."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("CXRCLF_WEIGHTS", raising=False)
