"""Results: per-run samples, their medians and ratios, and the Markdown, JSON and PNG outputs."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .scenarios import UPLOADS_PER_S, Scenario
from .servers import ServerSpec

GIB = 1 << 30
MIB = 1 << 20


@dataclass(frozen=True)
class Sample:
    """One timed run of one server."""

    wall: float
    nbytes: int
    uploads: int
    server_cpu: float
    loadgen_cpu: float
    peak_rss: int
    aux_cpu: float = 0.0                # a helper server's (Redis, S3) CPU, not in server_cpu


@dataclass
class Row:
    server: ServerSpec
    status: str = "ok"                  # ok, n/a or error
    note: str = ""
    verified: str = ""
    samples: list[Sample] = field(default_factory=list)

    def fail(self, status: str, note: str) -> None:
        self.status, self.note = status, note


@dataclass
class ScenarioResult:
    scenario: Scenario
    rows: list[Row]

    @property
    def per_upload(self) -> bool:
        return self.scenario.unit == UPLOADS_PER_S


# -- numbers ----------------------------------------------------------------------------------------

def rate(sample: Sample, per_upload: bool) -> float:
    return (sample.uploads if per_upload else sample.nbytes / 1e6) / sample.wall


def cost(cpu: float, sample: Sample, per_upload: bool) -> float:
    """CPU seconds per GiB, or CPU milliseconds per upload."""
    return cpu * 1000 / sample.uploads if per_upload else cpu / (sample.nbytes / GIB)


def ratios(row: Row, peers: list[Row], per_upload: bool) -> dict[str, float | None]:
    """Median over repetitions of this row's rate / the peer's rate in the same repetition."""
    found: dict[str, float | None] = {}
    for peer in peers:
        pairs = list(zip(row.samples, peer.samples))
        usable = row.status == peer.status == "ok" and pairs
        found[peer.server.label] = statistics.median(
            rate(mine, per_upload) / rate(theirs, per_upload) for mine, theirs in pairs) if usable else None
    return found


def summarize(row: Row, peers: list[Row], per_upload: bool) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "server": row.server.label, "kind": row.server.kind, "fsync": row.server.fsync,
        "version": row.server.version, "status": row.status, "note": row.note,
        "verified": row.verified, "unit": UPLOADS_PER_S if per_upload else "MB/s",
        "instances": getattr(row.server, "instances", 1),
    }
    if row.status != "ok" or not row.samples:
        return summary
    samples = row.samples
    cpu_key = "ms_per_upload" if per_upload else "s_per_gib"
    rates = [rate(sample, per_upload) for sample in samples]
    summary.update({
        "median": statistics.median(rates),
        "runs": rates,
        "uploads_per_s": statistics.median(s.uploads / s.wall for s in samples),
        f"server_cpu_{cpu_key}": statistics.median(cost(s.server_cpu, s, per_upload) for s in samples),
        f"loadgen_cpu_{cpu_key}": statistics.median(cost(s.loadgen_cpu, s, per_upload) for s in samples),
        "server_cpu_cores": statistics.median(s.server_cpu / s.wall for s in samples),
        "loadgen_cpu_cores": statistics.median(s.loadgen_cpu / s.wall for s in samples),
        "peak_rss_mib": max(s.peak_rss for s in samples) / MIB,
        "samples": [sample.__dict__ for sample in samples],
    })
    if helper := getattr(row.server, "helper_label", ""):
        summary["helper"] = helper
        summary[f"helper_cpu_{cpu_key}"] = statistics.median(cost(s.aux_cpu, s, per_upload) for s in samples)
    if not row.server.is_peer:
        summary["ratios"] = ratios(row, peers, per_upload)
    return summary


def to_json(results: list[ScenarioResult], meta: dict[str, Any]) -> dict[str, Any]:
    scenarios = []
    for result in results:
        peers = [row for row in result.rows if row.server.is_peer]
        scenarios.append({
            "number": result.scenario.number, "title": result.scenario.title,
            "unit": result.scenario.unit,
            "rows": [summarize(row, peers, result.per_upload) for row in result.rows],
        })
    return {"meta": meta, "scenarios": scenarios}


# -- Markdown -------------------------------------------------------------------------------------

def _number(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _cells(summary: dict[str, Any], peer_labels: list[str], per_upload: bool) -> list[str]:
    if summary["status"] != "ok":
        text = f"{summary['status']}: {summary['note']}".replace("|", "/").replace("\n", " ")
        return [text[:120]] + [""] * (len(peer_labels) + 4)
    unit = "up/s" if per_upload else "MB/s"
    key = "ms_per_upload" if per_upload else "s_per_gib"
    cpu_unit = "ms/upload" if per_upload else "s/GiB"
    found = summary.get("ratios", {})
    versus = [("—" if label not in found else
               "n/a" if found[label] is None else f"{found[label]:.2f}×") for label in peer_labels]
    runs = summary["runs"]
    helper = (f" (+ {summary['helper']} {summary[f'helper_cpu_{key}']:.3g})"
              if summary.get("helper") else "")
    several = not per_upload and summary["samples"][0]["uploads"] > 1    # scenarios 3 and 7
    return [
        f"{_number(summary['median'])} {unit}" + (f" ({summary['uploads_per_s']:.3g} up/s)" if several else ""),
        f"{_number(min(runs))}–{_number(max(runs))}" if len(runs) > 1 else "",
        *versus,
        f"{summary[f'server_cpu_{key}']:.3g} {cpu_unit}{helper}",
        f"{summary['peak_rss_mib']:,.0f} MiB",
        f"{summary[f'loadgen_cpu_{key}']:.3g} {cpu_unit} ({summary['loadgen_cpu_cores']:.2f} cores)",
    ]


def markdown_table(report: dict[str, Any]) -> str:
    peer_labels = list(dict.fromkeys(row["server"] for scenario in report["scenarios"]
                                     for row in scenario["rows"] if row["kind"] != "tusfast"))
    header = ["scenario", "server", "fsync", "median", "runs (min–max)",
              *[f"vs {label}" for label in peer_labels], "server CPU", "peak RSS", "load-gen CPU"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for scenario in report["scenarios"]:
        per_upload = scenario["unit"] == UPLOADS_PER_S
        for index, row in enumerate(scenario["rows"]):
            title = f"{scenario['number']}. {scenario['title']}" if index == 0 else ""
            cells = [title, row["server"], row["fsync"], *_cells(row, peer_labels, per_upload)]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(report: dict[str, Any]) -> str:
    meta = report["meta"]
    parts = [markdown_table(report), "",
             (f"Medians of {meta['repeat']} run(s) per server, servers interleaved in every "
              "repetition. `vs X`: median over repetitions of (this server's rate / X's rate in the "
              "same repetition). Server CPU: utime+stime of the server's process tree per GiB moved "
              "(per upload in scenario 4). Load-gen CPU: this harness's own CPU, in the same unit, "
              "and the cores it kept busy. Rows with several instances sum their CPU and peak RSS; "
              "a helper server's CPU (Redis, the S3 server) is shown apart as `(+ Redis x)`.")]
    parts += [f"- {note}" for note in meta["notes"]]
    return "\n".join(parts) + "\n"


# -- files ------------------------------------------------------------------------------------------

def write_json(report: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(report, indent=2) + "\n")


def write_chart(report: dict[str, Any], path: Path) -> bool:
    """One row per scenario: throughput (median, whiskers min–max) and CPU per unit of work."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    scenarios = report["scenarios"]
    figure, axes = plt.subplots(len(scenarios), 2, figsize=(13, 2.2 + 1.9 * len(scenarios)),
                                squeeze=False)
    for (left, right), scenario in zip(axes, scenarios):
        _plot_scenario(left, right, scenario)
    figure.suptitle(f"tusfast benchmarks — medians of {report['meta']['repeat']} run(s), "
                    f"{report['meta']['machine']}", fontsize=11)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def _plot_scenario(left: Any, right: Any, scenario: dict[str, Any]) -> None:
    rows = [row for row in scenario["rows"] if row["status"] == "ok"]
    labels = [f"{row['server']} ({row['fsync']})" for row in rows]
    positions = list(range(len(rows)))
    per_upload = scenario["unit"] == UPLOADS_PER_S
    medians = [row["median"] for row in rows]
    whiskers = [[m - min(row["runs"]) for m, row in zip(medians, rows)],
                [max(row["runs"]) - m for m, row in zip(medians, rows)]]
    colors = ["tab:blue" if row["kind"] == "tusfast" else "tab:gray" for row in rows]
    left.barh(positions, medians, xerr=whiskers, color=colors, capsize=3)
    left.set_yticks(positions, labels, fontsize=8)
    left.invert_yaxis()
    missing = [f"{row['server']}: {row['status']}" for row in scenario["rows"] if row["status"] != "ok"]
    title = f"{scenario['number']}. {scenario['title']}" + (f"  ({'; '.join(missing)})" if missing else "")
    left.set_title(title, fontsize=9, loc="left")
    left.set_xlabel(scenario["unit"], fontsize=8)
    key, unit = ("ms_per_upload", "CPU ms per upload") if per_upload else ("s_per_gib", "CPU s per GiB")
    unit += ": server (upper bar), load generator (orange)"
    height = 0.4
    right.barh([p - height / 2 for p in positions], [row[f"server_cpu_{key}"] for row in rows],
               height, color=colors)
    right.barh([p + height / 2 for p in positions], [row[f"loadgen_cpu_{key}"] for row in rows],
               height, color="tab:orange", alpha=0.6)
    right.set_yticks(positions, labels, fontsize=8)
    right.invert_yaxis()
    right.set_xlabel(unit, fontsize=8)
    for axis in (left, right):
        axis.tick_params(axis="x", labelsize=8)
        if not rows:
            axis.text(0.5, 0.5, "no results", ha="center", va="center", transform=axis.transAxes)
