"""`journeys networks update/show/reset/sources`: refresh from saved texts, fail clearly offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from cli import networks as networks_cli

ROOT = Path(__file__).resolve().parents[2]

AWS = {
    "syncToken": "1",
    "createDate": "2026-11-01-00-00-00",
    "prefixes": [
        {"ip_prefix": "3.5.140.0/22", "region": "ap-northeast-2", "service": "EC2"},
        {"ip_prefix": "3.5.136.0/22", "region": "ap-northeast-2", "service": "EC2"},
        {"ip_prefix": "52.95.0.0/20", "region": "us-east-1", "service": "S3"},
    ],
    "ipv6_prefixes": [{"ipv6_prefix": "2600:1f00::/40", "region": "us-east-1", "service": "EC2"}],
}
MIMECAST_US = '"v=spf1 ip4:205.139.110.0/24 ip4:207.211.30.0/24 ip4:198.51.77.0/24 ~all"'


def journeys(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), JOURNEYS_HOME=str(home))
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=home,
        timeout=120,
    )


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    d = tmp_path / "saved"
    d.mkdir()
    (d / "ip-ranges.amazonaws.com_ip-ranges.json").write_text(json.dumps(AWS))
    (d / "dns-txt_us._netblocks.mimecast.com.txt").write_text(MIMECAST_US)
    return d


def test_update_from_dir_writes_a_dated_list_the_classifier_uses(
    tmp_path: Path, saved: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    out = journeys(home, "networks", "update", "--from-dir", str(saved), "--keep-missing")
    assert out.returncode == 0, out.stderr
    assert "2 of 12 sources refreshed" in out.stdout
    doc = json.loads((home / "scanner_networks.json").read_text())
    cidrs = {e["cidr"]: e for e in doc["entries"]}
    assert cidrs["198.51.77.0/24"]["owner"] == "Mimecast (US)"
    assert cidrs["3.5.136.0/21"]["scope"] == "cloud"  # the two /22s collapsed
    assert "52.95.0.0/20" not in cidrs  # S3 is not the selected service
    shipped_mpp = [e for e in doc["entries"] if e["scope"] == "mpp_proxy"]
    assert shipped_mpp, "sources not refreshed keep their entries"

    show = journeys(home, "networks", "show")
    assert str(home / "scanner_networks.json") in show.stdout
    line = {
        "id": "e1",
        "kind": "click",
        "message_id": "m1",
        "link": "book",
        "links_in_message": 1,
        "sent_at": "2026-11-20T10:00:00Z",
        "at": "2026-11-20T11:00:00Z",
        "ip": "198.51.77.20",
        "user_agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
        "(KHTML, like Gecko) Chrome/143.0.0.0 Safari/537.36",
        "headers": {"accept": "text/html"},
    }
    env = dict(os.environ, PYTHONPATH=str(ROOT), JOURNEYS_HOME=str(home))
    verdict = subprocess.run(
        [sys.executable, "-m", "cli.main", "classify"],
        input=json.dumps(line),
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert json.loads(verdict.stdout)["reason"] == "link_scanner"

    reset = journeys(home, "networks", "reset")
    assert reset.returncode == 0 and not (home / "scanner_networks.json").exists()


def test_from_dir_without_every_source_names_what_is_missing(tmp_path: Path, saved: Path) -> None:
    out = journeys(tmp_path, "networks", "update", "--from-dir", str(saved))
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1
    assert "10 of 12 sources are not in" in out.stderr and "--keep-missing" in out.stderr
    assert not (tmp_path / "scanner_networks.json").exists()


def test_from_dir_with_nothing_usable_fails(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    out = journeys(tmp_path, "networks", "update", "--from-dir", str(empty))
    assert out.returncode == 2 and out.stderr.startswith("error: no saved source")


def test_a_source_that_yields_nothing_writes_nothing(tmp_path: Path) -> None:
    d = tmp_path / "bad"
    d.mkdir()
    (d / "dns-txt_us._netblocks.mimecast.com.txt").write_text('"v=spf1 include:elsewhere ~all"')
    out = journeys(tmp_path, "networks", "update", "--from-dir", str(d), "--keep-missing")
    assert out.returncode == 2
    assert "yielded no networks" in out.stderr and "nothing written" in out.stderr
    assert not (tmp_path / "scanner_networks.json").exists()


def test_offline_update_fails_with_one_clear_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def offline(fetch: str, seconds: float) -> str:
        raise httpx.ConnectError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(networks_cli, "_fetch_one", offline)
    monkeypatch.setenv("JOURNEYS_HOME", str(tmp_path))
    from cli.main import app
    from core.config import get_settings

    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["networks", "update"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(
        "error: cannot fetch any published network source (no network access?)"
    )
    assert "--from-dir" in lines[0]
    assert not (tmp_path / "scanner_networks.json").exists()


def test_partial_fetch_failure_writes_nothing_unless_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def some(fetch: str, seconds: float) -> str:
        if fetch == "https://ip-ranges.amazonaws.com/ip-ranges.json":
            return json.dumps(AWS)
        raise httpx.ConnectError("down")

    monkeypatch.setattr(networks_cli, "_fetch_one", some)
    monkeypatch.setenv("JOURNEYS_HOME", str(tmp_path))
    from cli.main import app
    from core.config import get_settings

    get_settings.cache_clear()
    try:
        refused = CliRunner().invoke(app, ["networks", "update"])
        assert refused.exit_code == 2 and "11 of 12 sources failed" in refused.stderr
        assert not (tmp_path / "scanner_networks.json").exists()
        kept = CliRunner().invoke(app, ["networks", "update", "--keep-missing"])
        assert kept.exit_code == 0, kept.stderr
        assert (tmp_path / "scanner_networks.json").exists()
    finally:
        get_settings.cache_clear()


def test_sources_lists_the_file_names_for_from_dir() -> None:
    out = journeys(ROOT, "networks", "sources")
    names = [line.split("\t")[0] for line in out.stdout.splitlines()]
    assert "ip-ranges.amazonaws.com_ip-ranges.json" in names
    assert "dns-txt_spf.protection.outlook.com.txt" in names
    assert len(names) == len(set(names)) == 12
