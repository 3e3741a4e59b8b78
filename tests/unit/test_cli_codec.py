"""`journeys codec keys|rotate`: dev secrets updated in place, production values printed."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.codec import app
from core.codec import KeyRing
from core.config import get_settings


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("JOURNEYS_HOME", str(tmp_path))
    for var in ("CODEC_KEYS", "CODEC_ACTIVE_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)  # no .env from the checkout
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


def test_rotate_in_dev_adds_an_active_key_and_keeps_the_old(home: Path) -> None:
    runner = CliRunner()
    first = runner.invoke(app, ["keys"])
    assert first.exit_code == 0 and first.output.strip() == "k1  (active)"
    before = json.loads((home / "secrets.json").read_text())

    r = runner.invoke(app, ["rotate"])
    assert r.exit_code == 0, r.output
    after = json.loads((home / "secrets.json").read_text())
    assert after["codec_active_key"] == "k2"
    assert after["codec_keys"].startswith(before["codec_keys"] + ",k2:")
    assert after["api_key_pepper"] == before["api_key_pepper"]
    assert stat.S_IMODE((home / "secrets.json").stat().st_mode) == 0o600
    ring = KeyRing.from_spec(after["codec_keys"], after["codec_active_key"])
    assert set(ring.keys) == {"k1", "k2"}
    assert "k2:" not in r.output  # no key material on screen in dev

    get_settings.cache_clear()
    assert runner.invoke(app, ["keys"]).output.splitlines() == ["k1", "k2  (active)"]
    assert runner.invoke(app, ["rotate", "--id", "k1"]).exit_code != 0


def test_rotate_with_configured_keys_prints_new_values(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = f"prod-a:{KeyRing.generate_key_b64()}"
    monkeypatch.setenv("CODEC_KEYS", spec)
    monkeypatch.setenv("CODEC_ACTIVE_KEY", "prod-a")
    get_settings.cache_clear()
    r = CliRunner().invoke(app, ["rotate", "--id", "prod-b"])
    assert r.exit_code == 0, r.output
    lines = dict(line.split("=", 1) for line in r.output.splitlines() if "=" in line)
    assert lines["CODEC_ACTIVE_KEY"] == "prod-b"
    assert lines["CODEC_KEYS"].startswith(spec + ",prod-b:")
    KeyRing.from_spec(lines["CODEC_KEYS"], "prod-b")
