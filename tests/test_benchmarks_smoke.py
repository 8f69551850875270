"""Smoke test of the benchmark suite: `python -m benchmarks` with tiny sizes, tusfast only.

It checks that the harness runs end to end and writes its outputs; it asserts nothing about speed.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = ["--size", "4M", "--chunk", "1M", "--concurrency", "4", "--each-size", "1M",
        "--small-count", "20", "--repeat", "1", "--peers", "none"]


def test_benchmarks_quick_run(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", *TINY, "--out", str(out),
         "--cache-dir", str(tmp_path / "cache"), "--tmp-dir", str(tmp_path / "uploads")],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "| scenario | server |" in proc.stdout

    report = json.loads((out / "results.json").read_text())
    assert [scenario["number"] for scenario in report["scenarios"]] == [1, 2, 3, 4, 5, 6]
    for scenario in report["scenarios"]:
        rows = scenario["rows"]
        assert {row["kind"] for row in rows} == {"tusfast"}
        assert len(rows) == 2, rows                     # defaults and --workers
        for row in rows:
            assert row["status"] == "ok", row
            assert row["median"] > 0 and all(rate > 0 for rate in row["runs"])
            assert row["peak_rss_mib"] > 0
            assert row["verified"]
            for key in row:
                if "_cpu_" in key:
                    assert row[key] >= 0, (key, row)
            for sample in row["samples"]:
                assert sample["wall"] > 0 and sample["nbytes"] > 0 and sample["uploads"] > 0
    assert (out / "results.md").read_text().startswith("| scenario |")
    if importlib.util.find_spec("matplotlib") is not None:      # the chart needs the bench extra
        assert (out / "results.png").stat().st_size > 0
