"""Smoke test of the benchmark suite: `python -m benchmarks` with tiny sizes, tusfast only.

It checks that the harness runs end to end and writes its outputs; it asserts nothing about speed.
Scenarios 7 (several instances with Redis) and 8 (S3 on moto) start a real redis-server and moto.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TINY = ["--size", "4M", "--chunk", "1M", "--concurrency", "4", "--each-size", "1M",
        "--small-count", "20", "--repeat", "1", "--peers", "none"]


def run_benchmarks(tmp_path: Path, *flags: str, env: dict[str, str] | None = None
                   ) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", *TINY, *flags, "--out", str(out),
         "--cache-dir", str(tmp_path / "cache"), "--tmp-dir", str(tmp_path / "uploads")],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False, env=env)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "| scenario | server |" in proc.stdout
    return proc, json.loads((out / "results.json").read_text())


def assert_sane(row: dict[str, Any]) -> None:
    assert row["status"] == "ok", row
    assert row["median"] > 0 and all(rate > 0 for rate in row["runs"])
    assert row["peak_rss_mib"] > 0
    assert row["verified"]
    for key, value in row.items():
        if "_cpu_" in key:
            assert value >= 0, (key, row)
    for sample in row["samples"]:
        assert sample["wall"] > 0 and sample["nbytes"] > 0 and sample["uploads"] > 0
        assert sample["aux_cpu"] >= 0


def test_benchmarks_quick_run(tmp_path: Path) -> None:
    out = tmp_path / "out"
    _, report = run_benchmarks(tmp_path, "--scenarios", "1,2,3,4,5,6")
    assert [scenario["number"] for scenario in report["scenarios"]] == [1, 2, 3, 4, 5, 6]
    for scenario in report["scenarios"]:
        rows = scenario["rows"]
        assert {row["kind"] for row in rows} == {"tusfast"}
        assert len(rows) == 2, rows                     # defaults and --workers
        for row in rows:
            assert_sane(row)
    assert (out / "results.md").read_text().startswith("| scenario |")
    if importlib.util.find_spec("matplotlib") is not None:      # the chart needs the bench extra
        assert (out / "results.png").stat().st_size > 0


def test_benchmarks_scale_out_and_s3(tmp_path: Path) -> None:
    _, report = run_benchmarks(tmp_path, "--scenarios", "7,8", "--workers", "2")
    assert [scenario["number"] for scenario in report["scenarios"]] == [7, 8]
    scale_out, s3 = report["scenarios"]

    rows = {row["server"]: row for row in scale_out["rows"]}
    assert list(rows) == ["tusfast", "tusfast + Redis", "tusfast ×2 + Redis", "tusfast --workers 2"]
    for row in rows.values():
        assert_sane(row)
    assert [row["instances"] for row in rows.values()] == [1, 1, 2, 1]
    assert all(row["uploads_per_s"] > 0 for row in rows.values())
    assert rows["tusfast ×2 + Redis"]["verified"] == "HEAD offset on another instance"
    for label in ("tusfast + Redis", "tusfast ×2 + Redis"):
        assert rows[label]["helper"] == "Redis"
        assert rows[label]["helper_cpu_s_per_gib"] >= 0
    assert "helper" not in rows["tusfast"]
    for sample in rows["tusfast ×2 + Redis"]["samples"]:     # TINY: 4 uploads of 1 MiB
        assert sample["nbytes"] == 4 << 20 and sample["uploads"] == 4

    assert [row["server"] for row in s3["rows"]] == ["tusfast s3, one PATCH", "tusfast s3, 1 MiB PATCHes"]
    for row in s3["rows"]:
        assert_sane(row)
        assert row["helper"] == "moto (S3)" and row["helper_cpu_s_per_gib"] >= 0
        assert row["verified"] == "HEAD offset + S3 object size"
        assert row["samples"][0]["nbytes"] == 4 << 20


def test_missing_redis_skips_only_those_rows(tmp_path: Path) -> None:
    """Without redis-server on the PATH, the Redis rows say why and the rest still runs."""
    env = {**os.environ, "PATH": str(tmp_path / "empty-path")}
    proc, report = run_benchmarks(tmp_path, "--scenarios", "7", "--workers", "2", env=env)
    assert "redis-server is not on the PATH" in proc.stderr
    rows = {row["server"]: row for row in report["scenarios"][0]["rows"]}
    for label in ("tusfast + Redis", "tusfast ×2 + Redis"):
        assert rows[label]["status"] == "n/a"
        assert "redis-server is not on the PATH" in rows[label]["note"]
    assert_sane(rows["tusfast"])
    assert_sane(rows["tusfast --workers 2"])
