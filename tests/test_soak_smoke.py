"""Smoke test of the soak test: `python -m benchmarks.soak` with a few clients for a few seconds.

It keeps the command from rotting: the run must pass its own invariants and its JSON must show
uploads that were created, cut, resumed, deleted and verified, with nothing lost, corrupted or
answered with a 5xx. Nothing about speed is asserted. A few seconds have no steady state, so the
RSS verdict gets a tolerance that cannot fail here (the real soak runs for minutes).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TINY = ["--clients", "10", "--duration", "5s", "--max-size", "1M", "--sample-interval", "1s",
        "--rss-tolerance", "100"]


def soak(tmp_path: Path, *extra: str) -> dict[str, Any]:
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.soak", *TINY, *extra, "--out", str(out),
         "--tmp-dir", str(tmp_path / "uploads")],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "**PASS**" in proc.stdout
    assert (out / "soak.md").read_text() == proc.stdout.rstrip("\n") + "\n"
    report: dict[str, Any] = json.loads((out / "soak.json").read_text())
    return report


def assert_clean(report: dict[str, Any]) -> None:
    counts = report["counts"]
    assert report["ok"] is True
    assert counts["lost"] == 0 and counts["corrupt"] == 0, report["examples"]
    assert counts["server_errors_5xx"] == 0, report["statuses"]
    assert report["server_log"]["access_5xx"] == {}, report["server_log"]
    assert report["unexpected"] == {} and report["transport_errors"] == {}, report["examples"]
    assert all(check["ok"] for check in report["invariants"].values()), report["invariants"]
    assert counts["created"] > 0 and counts["verified"] > 0
    assert counts["verified"] == counts["finished"]
    assert counts["bytes_verified"] == counts["bytes_finished"]
    assert counts["interruptions"] > 0 and counts["deleted"] > 0
    assert report["rss"]["measured"] and report["rss"]["peak_mib"] > 0
    assert report["fds"]["measured"] and report["fds"]["leaked"] <= 0


def test_soak_single_process(tmp_path: Path) -> None:
    report = soak(tmp_path)
    assert_clean(report)
    assert report["fds"]["processes"] == 1
    assert any(key.startswith("GET 200") for key in report["statuses"])     # verified by download


def test_soak_workers_without_downloads(tmp_path: Path) -> None:
    """Two worker processes are summed, and with GET disabled the stored files are compared."""
    report = soak(tmp_path, "--workers", "2", "--server-arg=--disable-download")
    assert_clean(report)
    assert report["fds"]["processes"] == 3                          # supervisor and two workers
    assert report["statuses"].get("GET 405", 0) >= 1                # then it reads the files
    assert "GET 200" not in report["statuses"]
