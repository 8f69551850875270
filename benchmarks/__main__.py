"""python -m benchmarks: tusfast against tusd and @tus/server on this machine's loopback.

See benchmarks/README.md. Quick run: python -m benchmarks --quick
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

from tusfast.storage.mounts import mount_of

from . import s3, scaleout
from .cluster import make_server, unavailable
from .loadgen import ProtocolError, SourceFile
from .report import (
    Row,
    Sample,
    ScenarioResult,
    markdown,
    markdown_table,
    to_json,
    write_chart,
    write_json,
)
from .scenarios import Scenario, Sizes, build, warm_up
from .servers import (
    RunningServer,
    ServerError,
    ServerSpec,
    tus_node_spec,
    tusd_spec,
    tusfast_specs,
)

FULL = {"size": "1G", "chunk": "8M", "concurrency": 32, "each_size": "64M", "small_count": 2000,
        "small_size": "16K", "repeat": 3}
QUICK = {"size": "64M", "chunk": "4M", "concurrency": 8, "each_size": "8M", "small_count": 200,
         "small_size": "16K", "repeat": 2}
FSYNC_MODES = ("complete", "every-patch", "never")
DIRECT_IO_MODES = ("auto", "off")
PEERS = ("tusd", "tus-node")
RUN_ERRORS = (ProtocolError, ServerError, OSError, ConnectionError, ValueError)


# -- command line -----------------------------------------------------------------------------------

def parse_size(text: str) -> int:
    """1048576, 16K, 8M, 1G, 2GiB, 64MB: binary units."""
    value = text.strip().upper().removesuffix("IB").removesuffix("B")
    shift = {"K": 10, "M": 20, "G": 30, "T": 40}.get(value[-1:], 0)
    number = value[:-1] if shift else value
    if not number.isdigit() or int(number) <= 0:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}")
    return int(number) << shift


def parse_list(text: str, allowed: tuple[str, ...]) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    for item in items:
        if item not in allowed:
            raise argparse.ArgumentTypeError(f"{item!r} is not one of {', '.join(allowed)}")
    return items


def parse_scenarios(text: str) -> list[int]:
    if text == "all":
        return [1, 2, 3, 4, 5, 6, 7, 8]
    return sorted({int(item) for item in parse_list(text, ("1", "2", "3", "4", "5", "6", "7", "8"))})


def parse_peers(text: str) -> list[str] | None:
    """None: every peer that can be found; [] for none; else the names given."""
    if text == "auto":
        return None
    if text == "none":
        return []
    aliases = {"node": "tus-node", "@tus/server": "tus-node"}
    return [aliases.get(name, name) for name in parse_list(text, (*PEERS, *aliases))]


def parser() -> argparse.ArgumentParser:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tusfast-bench"
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="small preset (" + ", ".join(f"{k}={v}" for k, v in QUICK.items())
                   + "); explicit flags still win")
    p.add_argument("--size", type=parse_size, help=f"upload size of scenarios 1, 2, 5, 6, 8 ({FULL['size']})")
    p.add_argument("--chunk", type=parse_size, help=f"PATCH size of scenarios 2, 6, 8 ({FULL['chunk']})")
    p.add_argument("--concurrency", type=int, help=f"connections in scenarios 3, 4, 7 ({FULL['concurrency']})")
    p.add_argument("--each-size", type=parse_size,
                   help=f"size of each upload in scenarios 3, 7 ({FULL['each_size']}, at most --size)")
    p.add_argument("--small-count", type=int, help=f"uploads in scenario 4 ({FULL['small_count']})")
    p.add_argument("--small-size", type=parse_size,
                   help=f"size of each upload in scenario 4 ({FULL['small_size']})")
    p.add_argument("--repeat", type=int, help=f"timed runs per server and scenario ({FULL['repeat']})")
    p.add_argument("--scenarios", type=parse_scenarios, default="all", help="e.g. 1,2,5")
    p.add_argument("--peers", type=parse_peers, default="auto",
                   help="auto (whatever is available), none, or a list of tusd,tus-node")
    p.add_argument("--tusd", help="tusd binary (default: $TUSD_BIN, then the PATH)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="--workers of the second tusfast configuration")
    p.add_argument("--fsync", type=lambda text: parse_list(text, FSYNC_MODES), default="complete",
                   help="tusfast --fsync mode(s), comma-separated: complete, every-patch, never")
    p.add_argument("--direct-io", type=lambda text: parse_list(text, DIRECT_IO_MODES), default="auto",
                   help="tusfast --direct-io mode(s), comma-separated: auto (O_DIRECT where the upload "
                        "directory takes it), off (splice through the page cache)")
    p.add_argument("--no-sha256", dest="sha256", action="store_false",
                   help="skip the SHA-256 check of the stored file in scenario 1")
    p.add_argument("--out", type=Path, default=Path("bench-results"), help="where results go")
    p.add_argument("--cache-dir", type=Path, default=cache,
                   help="random source file and the npm install of @tus/server")
    p.add_argument("--tmp-dir", type=Path, default=None,
                   help="parent of the servers' upload directories (default: the system's temp dir)")
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    args = parser().parse_args(argv)
    preset = QUICK if args.quick else FULL
    for name, value in preset.items():
        if getattr(args, name) is None:
            setattr(args, name, parse_size(value) if isinstance(value, str) else value)
    args.each_size = min(args.each_size, args.size)
    args.chunk = min(args.chunk, args.size)
    for name in ("concurrency", "small_count", "repeat", "workers"):
        if getattr(args, name) < 1:
            parser().error(f"--{name.replace('_', '-')} must be at least 1")
    return args


# -- progress ---------------------------------------------------------------------------------------

class Progress:
    """A one-line progress bar on stderr (a line per step when stderr is not a terminal)."""

    def __init__(self, total: int, stream: TextIO = sys.stderr) -> None:
        self.total, self.done, self.stream = max(total, 1), 0, stream
        self.tty = stream.isatty()
        self.started = time.monotonic()

    def show(self, text: str) -> None:
        width = 24
        filled = width * self.done // self.total
        elapsed = time.monotonic() - self.started
        eta = f" ~{elapsed / self.done * (self.total - self.done):.0f}s left" if self.done else ""
        line = f"[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total}{eta}  {text}"
        if self.tty:
            self.stream.write("\r\033[K" + line[:160])
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def advance(self) -> None:
        self.done += 1

    def message(self, text: str) -> None:
        self.stream.write(("\r\033[K" if self.tty else "") + text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\r\033[K")
            self.stream.flush()


# -- running ----------------------------------------------------------------------------------------

def choose_servers(args: argparse.Namespace, notes: list[str]) -> list[ServerSpec]:
    specs = tusfast_specs(args.workers, args.fsync, notes, args.direct_io)
    wanted = args.peers if args.peers is not None else list(PEERS)
    if "tusd" in wanted and (spec := tusd_spec(args.tusd, notes)):
        specs.append(spec)
    if "tus-node" in wanted and (spec := tus_node_spec(args.cache_dir, notes)):
        specs.append(spec)
    return specs


def measure(server: RunningServer, scenario: Scenario, source: SourceFile,
            sizes: Sizes) -> tuple[Sample, str]:
    """One timed run; cleaning, syncing and checking happen outside the timed part."""
    server.clean(scenario.keep(server))
    os.sync()                           # no dirty pages of an earlier run are written back during this one
    server.reset_peak_rss()
    before, aux_before = server.usage(), server.aux_usage()
    run = scenario.run(server, source, sizes)
    after, aux_after = server.usage(), server.aux_usage()
    server.check_alive()
    verified = scenario.verify(server, source, sizes, run)
    return Sample(run.wall, run.nbytes, run.uploads, after.cpu - before.cpu, run.loadgen_cpu,
                  after.peak_rss, aux_after.cpu - aux_before.cpu), verified


def start_server(row: Row, scenario: Scenario, source: SourceFile, sizes: Sizes,
                 workdir: Path) -> RunningServer | None:
    """Start, check, warm up and prepare one server; None (and the row marked) if it can't run."""
    if absent := unavailable(row.server):
        row.fail("n/a", absent)
        return None
    server = make_server(row.server, workdir)
    try:
        server.start()
        if reason := scenario.missing(server):
            row.fail("n/a", reason)
            server.stop()
            return None
        warm_up(server, source, sizes)
        server.clean()
        if scenario.prepare is not None:
            scenario.prepare(server, source, sizes)
        return server
    except RUN_ERRORS as error:
        row.fail("error", f"start: {error}")
        server.stop()
        return None


def run_scenario(scenario: Scenario, specs: list[ServerSpec], source: SourceFile, sizes: Sizes,
                 args: argparse.Namespace, tmp_root: Path, progress: Progress,
                 log_notes: dict[str, list[str]]) -> ScenarioResult:
    repeat = args.repeat
    rows = [Row(spec) for spec in specs]
    servers: dict[str, RunningServer] = {}
    try:
        for index, row in enumerate(rows):
            progress.show(f"{scenario.number}. starting {row.server.label}")
            workdir = tmp_root / f"s{scenario.number}-{index}-{row.server.kind}"
            if server := start_server(row, scenario, source, sizes, workdir):
                servers[row.server.label] = server
        for repetition in range(repeat):
            for row in rows:                    # interleaved: A B C, A B C, ...
                progress.show(f"{scenario.number}. {scenario.title} · {row.server.label} · "
                              f"run {repetition + 1}/{repeat}")
                if row.status == "ok":
                    run_once(row, servers[row.server.label], scenario, source, sizes, repetition)
                progress.advance()
    finally:
        for server in servers.values():
            server.stop()
            keep_log(server, scenario, args.out / "logs", log_notes)
            shutil.rmtree(server.workdir, ignore_errors=True)
    for row in rows:
        if row.status != "ok":
            progress.message(f"scenario {scenario.number}, {row.server.label}: {row.status}: {row.note}")
    return ScenarioResult(scenario, rows)


def keep_log(server: RunningServer, scenario: Scenario, logs: Path, log_notes: dict[str, list[str]]) -> None:
    """Copy the log of a server that logged errors into the results, and remember its lines."""
    problems = server.problems()
    if not problems:
        return
    logs.mkdir(parents=True, exist_ok=True)
    name = f"scenario{scenario.number}-{server.spec.label.replace(' ', '_').replace('/', '_')}.log"
    shutil.copyfile(server.log_path, logs / name)
    log_notes.setdefault(server.spec.label, []).extend(f"{scenario.number}: {line}" for line in problems)


def log_summary(log_notes: dict[str, list[str]]) -> list[str]:
    notes = []
    for label, lines in log_notes.items():
        scenarios = sorted({line.split(":", 1)[0] for line in lines}, key=int)
        notes.append(f"{label} logged {len(lines)} error line(s) in scenario(s) {', '.join(scenarios)} "
                     f"(copies in logs/); first: `{lines[0].split(': ', 1)[1][:160]}`")
    return notes


def run_once(row: Row, server: RunningServer, scenario: Scenario, source: SourceFile,
             sizes: Sizes, repetition: int) -> None:
    try:
        sample, row.verified = measure(server, scenario, source, sizes)
        row.samples.append(sample)
    except RUN_ERRORS as error:
        detail = f"run {repetition + 1}: {type(error).__name__}: {error}"
        if not isinstance(error, ServerError):
            detail += f" (server log: {server.log_tail(3)!r})" if server.log_tail(3) else ""
        row.fail("error", detail)
        server.stop()


# -- context for the report ---------------------------------------------------------------------------

def filesystem_of(path: Path) -> str:
    mount = mount_of(path)
    return "?" if mount is None else f"{mount.type} ({mount.source} on {mount.point})"


def machine() -> str:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30)
    return f"{os.cpu_count()} CPUs, {memory:.0f} GiB RAM, Linux {platform.release()}"


def standing_notes(args: argparse.Namespace, tmp_root: Path) -> list[str]:
    return [
        (f"Machine: {machine()}; uploads on {filesystem_of(tmp_root)}. The load generator and the "
         f"servers share the {os.cpu_count()} CPUs."),
        ("The page cache is not dropped between runs (that needs root tricks): the source file is "
         "read from memory, and scenario 5 serves a file that was just written and downloaded once, "
         "so it is cached too. Before every run the previous run's files are deleted and `sync` is called."),
        ("tusd and @tus/server never fsync; tusfast in fsync mode 'complete' fdatasyncs every "
         "finished upload before answering, so in scenarios 1-3 and 6 it also waits for the disk."),
    ]


def meta_for(args: argparse.Namespace, sizes: Sizes, specs: list[ServerSpec],
             notes: list[str]) -> dict[str, Any]:
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(), "python": platform.python_version(), "command": sys.argv,
        "repeat": args.repeat, "sizes": sizes.__dict__,
        "servers": [{"label": s.label, "kind": s.kind, "fsync": s.fsync, "version": s.version,
                     "argv": list(s.argv)} for s in specs],
        "notes": notes,
    }


# -- main -------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = Sizes(args.size, args.chunk, args.concurrency, args.each_size, args.small_count,
                  args.small_size, args.sha256)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.tmp_dir is not None:
        args.tmp_dir.mkdir(parents=True, exist_ok=True)
    tmp_root = Path(tempfile.mkdtemp(prefix="tusfast-bench-", dir=args.tmp_dir))
    notes = standing_notes(args, tmp_root)
    standing = len(notes)
    specs = choose_servers(args, notes)
    every = [*build(sizes), scaleout.scenario(sizes), s3.scenario(sizes)]
    scenarios = [scenario for scenario in every if scenario.number in args.scenarios]
    rows_of = {scenario.number: scenario.servers(specs, notes) if scenario.servers else specs
               for scenario in scenarios}
    for note in notes[standing:]:         # skipped peers, missing flags, missing Redis or moto
        print(note, file=sys.stderr)
    progress = Progress(sum(len(rows_of[scenario.number]) for scenario in scenarios) * args.repeat)
    progress.show(f"preparing a {sizes.source_size >> 20} MiB random source file in {args.cache_dir}")
    source = SourceFile(args.cache_dir / "source.bin", sizes.source_size).open()
    log_notes: dict[str, list[str]] = {}
    try:
        results = [run_scenario(scenario, rows_of[scenario.number], source, sizes, args, tmp_root, progress,
                                log_notes) for scenario in scenarios]
    finally:
        progress.close()
        source.close()
        shutil.rmtree(tmp_root, ignore_errors=True)
    notes += log_summary(log_notes)
    return write_outputs(results, meta_for(args, sizes, specs, notes), args.out)


def write_outputs(results: list[ScenarioResult], meta: dict[str, Any], out: Path) -> int:
    report = to_json(results, meta)
    write_json(report, out / "results.json")
    (out / "results.md").write_text(markdown(report))
    charted = write_chart(report, out / "results.png")
    print(markdown_table(report))
    print()
    for note in meta["notes"]:
        print(f"- {note}")
    print(f"\nwrote {out / 'results.json'}, {out / 'results.md'}"
          + (f", {out / 'results.png'}" if charted else " (no PNG: pip install matplotlib)"),
          file=sys.stderr)
    failed = [f"{result.scenario.number}/{row.server.label}" for result in results
              for row in result.rows if row.status == "error" and not row.server.is_peer]
    if failed:
        print(f"tusfast failed in: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
