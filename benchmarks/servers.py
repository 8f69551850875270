"""The servers under test: what to start, how to start and stop them, and what they cost.

Each server runs as its own process group on 127.0.0.1 with a fresh upload directory. CPU time and
peak RSS come from /proc and cover the server process and every process below it (tusfast's
--workers are children of a supervisor).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .loadgen import Connection, options

HOST = "127.0.0.1"
COLLECTION = "/files/"
REPO = Path(__file__).resolve().parents[1]
PEERS_DIR = Path(__file__).resolve().parent / "peers"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PROBLEM = re.compile(r"uncaught|traceback|panic|\berror\b", re.IGNORECASE)


class ServerError(Exception):
    """A server would not start, or died."""


@dataclass(frozen=True)
class ServerSpec:
    """How to start one server; {port} and {dir} in argv are filled in at start."""

    label: str                  # unique name in the report, e.g. "tusfast --workers 2"
    kind: str                   # "tusfast", "tusd" or "tus-node"
    fsync: str                  # when it syncs uploads to disk: complete, every-patch or never
    argv: tuple[str, ...]
    version: str = ""
    cwd: Path | None = None
    env: tuple[tuple[str, str], ...] = ()      # added to this process's environment

    @property
    def is_peer(self) -> bool:
        return self.kind != "tusfast"


@dataclass(frozen=True)
class Usage:
    cpu: float                  # utime+stime (+ reaped children) seconds, summed over the tree
    peak_rss: int               # VmHWM bytes, summed over the tree


# -- /proc ----------------------------------------------------------------------------------------

def _stat_fields(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rfind(")") + 2:].split()      # fields from 3 (state) on; comm may hold spaces


def _process_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                children.setdefault(int(_stat_fields(int(entry.name))[1]), []).append(int(entry.name))
            except (OSError, IndexError, ValueError):
                pass                                # the process ended meanwhile
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def process_tree(root: int) -> list[int]:
    """root and every process below it (tusfast's supervisor and its --workers)."""
    return _process_tree(root)


def _cpu_seconds(pid: int) -> float:
    fields = _stat_fields(pid)
    return sum(int(value) for value in fields[11:15]) / CLOCK_TICKS   # utime stime cutime cstime


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def tree_usage(root: int) -> Usage:
    cpu, rss = 0.0, 0
    for pid in _process_tree(root):
        try:
            cpu += _cpu_seconds(pid)
            rss += _peak_rss(pid)
        except (OSError, IndexError, ValueError):
            pass
    return Usage(cpu, rss)


def reset_peak_rss(root: int) -> bool:
    """Start VmHWM afresh for every process in the tree (echo 5 > /proc/PID/clear_refs)."""
    done = True
    for pid in _process_tree(root):
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        except OSError:
            done = False
    return done


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


# -- a running server --------------------------------------------------------------------------------

@dataclass
class RunningServer:
    spec: ServerSpec
    workdir: Path
    port: int = 0
    extensions: set[str] = field(default_factory=set)
    checksum_algorithms: set[str] = field(default_factory=set)
    prepared: dict[str, str] = field(default_factory=dict)     # scenario state, e.g. a finished upload
    _proc: subprocess.Popen[bytes] | None = None

    host = HOST
    collection = COLLECTION

    @property
    def upload_dir(self) -> Path:
        return self.workdir / "uploads"

    @property
    def log_path(self) -> Path:
        return self.workdir / "server.log"

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def start(self) -> RunningServer:
        self.upload_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        argv = [arg.format(port=self.port, dir=self.upload_dir) for arg in self.spec.argv]
        with open(self.log_path, "ab") as log:
            env = {**os.environ, **dict(self.spec.env)} if self.spec.env else None
            self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                          cwd=self.spec.cwd, env=env, start_new_session=True)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                with Connection(self.host, self.port) as conn:
                    reply = options(conn, self.collection)
            except (OSError, ConnectionError):
                time.sleep(0.1)
                continue
            self.extensions = _header_set(reply.headers.get("tus-extension", ""))
            self.checksum_algorithms = _header_set(reply.headers.get("tus-checksum-algorithm", ""))
            return
        self.stop()
        raise ServerError(f"{self.spec.label} did not answer OPTIONS within {START_TIMEOUT:.0f} s\n"
                          + self.log_tail())

    def check_alive(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            raise ServerError(f"{self.spec.label} exited with {self._proc.returncode}\n" + self.log_tail())

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def problems(self) -> list[str]:
        """Log lines that look like errors (the servers run at warning level or quieter)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return []
        return [line.strip() for line in text.splitlines() if PROBLEM.search(line)]

    def usage(self) -> Usage:
        return tree_usage(self.pid)

    def aux_usage(self) -> Usage:
        """CPU of a helper server the server under test relies on (Redis, S3): none here."""
        return Usage(0.0, 0)

    def reset_peak_rss(self) -> bool:
        return reset_peak_rss(self.pid)

    def stored_file(self, upload_path: str) -> Path:
        """Where tusfast, tusd and @tus/file-store keep an upload's data: <dir>/<id>."""
        return self.upload_dir / upload_path.rstrip("/").rsplit("/", 1)[-1]

    def clean(self, keep: Collection[str] = ()) -> None:
        """Delete the uploads of earlier runs (data and sidecar files), except the ids in keep."""
        for entry in os.scandir(self.upload_dir):
            upload_id = entry.name.split(".", 1)[0]
            if entry.is_file(follow_symlinks=False) and upload_id and upload_id not in keep:
                os.unlink(entry.path)

    def stop(self) -> None:
        if self._proc is not None:
            stop_group(self._proc)


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM a process started in its own session, SIGKILL it if it lingers, then whatever it left
    behind in its group (tusfast's --workers, a helper's children)."""
    if proc.poll() is not None:
        return
    _signal_group(proc.pid, signal.SIGTERM)
    try:
        proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        _signal_group(proc.pid, signal.SIGKILL)
        proc.wait(STOP_TIMEOUT)
    _signal_group(proc.pid, signal.SIGKILL)


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass


def _header_set(value: str) -> set[str]:
    return {item.strip().lower() for item in value.split(",") if item.strip()}


# -- which servers ----------------------------------------------------------------------------------

def _run(argv: list[str], cwd: Path | None = None, timeout: float = 60) -> str:
    proc = subprocess.run(argv, check=False, capture_output=True, text=True, cwd=cwd, timeout=timeout)
    return proc.stdout + proc.stderr


def tusfast_specs(workers: int, fsync_modes: list[str], notes: list[str],
                  direct_io_modes: Sequence[str] = ("auto",)) -> list[ServerSpec]:
    """tusfast with its defaults and with --workers, once per fsync mode and --direct-io mode."""
    base = [sys.executable, "-m", "tusfast", "serve", "--host", HOST, "--port", "{port}",
            "--upload-dir", "{dir}", "--log-level", "warning", "--expire-after", "0"]
    version = _run([sys.executable, "-m", "tusfast", "--version"], cwd=REPO).strip()
    help_text = _run([*base[:4], "--help"], cwd=REPO)
    has_fsync = "--fsync" in help_text
    if not has_fsync:
        notes.append("`tusfast serve` has no --fsync flag yet: it ran without it, labelled "
                     "'complete' (its built-in behaviour: fdatasync before completing an upload).")
        fsync_modes = ["complete"]
    if "--direct-io" not in help_text and list(direct_io_modes) != ["auto"]:
        notes.append("`tusfast serve` has no --direct-io flag: it ran with its built-in write path only.")
        direct_io_modes = ["auto"]
    specs = []
    for mode in fsync_modes:
        for direct in direct_io_modes:
            suffix = (f" --fsync {mode}" if len(fsync_modes) > 1 else "") + \
                     (f" --direct-io {direct}" if direct != "auto" else "")
            extra = (("--fsync", mode) if has_fsync else ()) + (("--direct-io", direct) if direct != "auto" else ())
            specs.append(ServerSpec(f"tusfast{suffix}", "tusfast", mode, (*base, *extra), version, REPO))
            specs.append(ServerSpec(f"tusfast --workers {workers}{suffix}", "tusfast", mode,
                                    (*base, "--workers", str(workers), *extra), version, REPO))
    return specs


def tusd_spec(binary: str | None, notes: list[str]) -> ServerSpec | None:
    """tusd from --tusd or $TUSD_BIN (or the PATH); None, with a note, when there is none."""
    path = binary or os.environ.get("TUSD_BIN") or shutil.which("tusd")
    if not path or not os.access(path, os.X_OK):
        notes.append(f"tusd skipped: no tusd binary ({path or 'pass --tusd PATH or set TUSD_BIN'}).")
        return None
    help_text = _run([path, "-help"])
    for flag in ("-host", "-port", "-upload-dir", "-base-path"):
        if flag not in help_text:
            notes.append(f"tusd skipped: `{path} -help` does not list {flag}.")
            return None
    argv = [path, "-host", HOST, "-port", "{port}", "-upload-dir", "{dir}", "-base-path", COLLECTION]
    if "-verbose" in help_text:
        argv.append("-verbose=false")           # one log line per request would cost it CPU
    if "-show-greeting" in help_text:
        argv.append("-show-greeting=false")
    version = next((line.split(":", 1)[1].strip() for line in _run([path, "-version"]).splitlines()
                    if line.lower().startswith("version")), "")
    return ServerSpec("tusd", "tusd", "never", tuple(argv), version)


def tus_node_spec(cache_dir: Path, notes: list[str]) -> ServerSpec | None:
    """@tus/server + @tus/file-store, npm-installed into cache_dir/node on first use."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        notes.append("@tus/server skipped: node and npm are not on the PATH.")
        return None
    target = cache_dir / "node"
    try:
        _install_node_packages(npm, target)
    except (OSError, subprocess.SubprocessError) as error:
        notes.append(f"@tus/server skipped: npm install in {target} failed: {error}")
        return None
    script = target / "tus_node_server.mjs"
    shutil.copyfile(PEERS_DIR / "tus_node_server.mjs", script)    # imports resolve from its folder
    manifest = json.loads((target / "node_modules/@tus/server/package.json").read_text())
    return ServerSpec("@tus/server", "tus-node", "never", (node, str(script), "{port}", "{dir}"),
                      f"{manifest['version']} (node {_run([node, '--version']).strip()})", target)


def _install_node_packages(npm: str, target: Path) -> None:
    manifest = (PEERS_DIR / "package.json").read_text()
    installed = target / "package.json"
    if (installed.is_file() and installed.read_text() == manifest
            and (target / "node_modules/@tus/server/package.json").is_file()
            and (target / "node_modules/@tus/file-store/package.json").is_file()):
        return
    target.mkdir(parents=True, exist_ok=True)
    installed.write_text(manifest)
    print(f"installing @tus/server into {target} (npm install) ...", file=sys.stderr)
    proc = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--omit=dev"], check=False,
                          cwd=target, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        installed.unlink()
        raise subprocess.SubprocessError(f"exit {proc.returncode}: {proc.stderr.strip()[-500:]}")
