"""Scenario 8: one --size upload with `--storage s3` against moto's S3 server, in one PATCH and in
--chunk PATCHes (one row each). Server CPU is tusfast's alone; moto's is reported apart.

Peers: tusd's s3store only if the tusd binary has it (`-s3-bucket` in its -help); @tus/server is n/a
(the peer is installed with @tus/file-store only).
"""

from __future__ import annotations

import subprocess
from dataclasses import replace

from .cluster import (
    S3_CREDENTIALS,
    Cluster,
    ClusterSpec,
    as_cluster,
    moto_missing,
    not_available,
)
from .loadgen import ProtocolError, SourceFile
from .scenarios import (
    MB_PER_S,
    Scenario,
    Sizes,
    Timed,
    connect,
    human,
    timed,
    upload_chunked,
    upload_whole,
    verify_offsets,
)
from .servers import RunningServer, ServerSpec

S3_FLAGS = ("--storage", "s3", "--s3-endpoint", "{s3_endpoint}", "--s3-bucket", "{s3_bucket}")
NODE_REASON = "the @tus/server peer is installed with @tus/file-store only (no @tus/s3-store)"


def scenario(sizes: Sizes) -> Scenario:
    title = f"one {human(sizes.size)} upload to S3 (moto): one PATCH / {human(sizes.chunk)} PATCHes"
    return Scenario(8, title, MB_PER_S, s3_upload, verify_s3, servers=lambda common, notes: rows(common, notes,
                                                                                                   sizes))


def rows(common: list[ServerSpec], notes: list[str], sizes: Sizes) -> list[ServerSpec]:
    chosen: list[ServerSpec] = []
    tusfast = [spec for spec in common if spec.kind == "tusfast"]
    if tusfast:
        chosen += tusfast_rows(tusfast[0], notes, sizes)
    for spec in common:
        if spec.kind == "tusd":
            chosen.append(not_available(spec.label, spec.kind, tusd_reason(spec)))
        elif spec.kind == "tus-node":
            chosen.append(not_available(spec.label, spec.kind, NODE_REASON))
    return chosen


def tusfast_rows(base: ServerSpec, notes: list[str], sizes: Sizes) -> list[ServerSpec]:
    """tusfast's defaults (minus --fsync, which file storage alone has) with --storage s3."""
    argv = _without_fsync(base.argv) + S3_FLAGS
    missing = moto_missing()
    if missing:
        notes.append(f"scenario 8 is skipped: {missing}.")
    one = as_cluster(base, label="tusfast s3, one PATCH", fsync="n/a", argv=argv, helper="moto",
                     env=S3_CREDENTIALS, unavailable=missing)
    return [one, replace(one, label=f"tusfast s3, {human(sizes.chunk)} PATCHes", chunk=sizes.chunk)]


def _without_fsync(argv: tuple[str, ...]) -> tuple[str, ...]:
    if "--fsync" not in argv:
        return argv
    at = argv.index("--fsync")
    return argv[:at] + argv[at + 2:]


def tusd_reason(spec: ServerSpec) -> str:
    try:
        proc = subprocess.run([spec.argv[0], "-help"], capture_output=True, text=True, timeout=30, check=False)
        help_text = proc.stdout + proc.stderr
    except (OSError, subprocess.SubprocessError) as error:
        return f"cannot run `{spec.argv[0]} -help`: {error}"
    if "-s3-bucket" in help_text:
        return "this tusd has s3store, but the harness does not drive it yet"
    return f"this tusd build ({spec.version or spec.argv[0]}) has no s3store (`-help` lists no -s3-bucket)"


def s3_upload(server: RunningServer, source: SourceFile, sizes: Sizes) -> Timed:
    chunk = server.spec.chunk if isinstance(server.spec, ClusterSpec) else 0
    with connect(server) as conn:
        if chunk:
            chunked = replace(sizes, chunk=chunk)
            return timed(lambda: (sizes.size, 1, [upload_chunked(conn, server, source, chunked, False)]))
        return timed(lambda: (sizes.size, 1, [upload_whole(conn, server, source, sizes.size)]))


def verify_s3(server: RunningServer, source: SourceFile, sizes: Sizes, run: Timed) -> str:
    checked = verify_offsets(server, source, sizes, run)
    if not isinstance(server, Cluster):
        return checked
    stored = server.s3_object_size(run.paths[0])
    if stored != sizes.size:
        raise ProtocolError(f"S3 object of {run.paths[0]} holds {stored} bytes, not {sizes.size}")
    return checked + " + S3 object size"
