"""Scenario 7: the scenario-3 workload against one instance and against two instances sharing one
upload directory, locking through Redis (`--redis-url`), with the connections spread round-robin.

Rows, built from the common ones: tusfast alone, tusfast with Redis, two tusfast instances with
Redis, and tusfast --workers N for comparison (one host, no Redis); tusd alone and two tusd
processes on one directory (its file locker works between processes of one host only);
@tus/server is n/a (its locker lives in one process).
"""

from __future__ import annotations

from .cluster import as_cluster, endpoints, not_available, redis_missing
from .loadgen import Connection, ProtocolError, SourceFile, head_offset
from .scenarios import (
    MB_PER_S,
    Scenario,
    Sizes,
    Timed,
    human,
    in_threads,
    timed,
    upload_whole,
)
from .servers import RunningServer, ServerSpec

INSTANCES = 2
NODE_REASON = ("@tus/server keeps its upload locks in one process (MemoryLocker); several instances "
               "need a shared locker, which this peer setup does not have")


def scenario(sizes: Sizes) -> Scenario:
    title = (f"{sizes.concurrency} concurrent uploads of {human(sizes.each_size)}, 1 vs {INSTANCES} "
             "instances (round-robin)")
    return Scenario(7, title, MB_PER_S, spread_uploads, verify_elsewhere, servers=rows)


def rows(common: list[ServerSpec], notes: list[str]) -> list[ServerSpec]:
    tusfast = [spec for spec in common if spec.kind == "tusfast"]
    chosen: list[ServerSpec] = []
    if tusfast:
        chosen += tusfast_rows(tusfast, notes)
    for spec in common:
        if spec.kind == "tusd":
            chosen += [spec, as_cluster(spec, label=f"tusd ×{INSTANCES}", instances=INSTANCES)]
            notes.append(f"Scenario 7: tusd ×{INSTANCES} is {INSTANCES} tusd processes on one upload "
                         "directory with tusd's file locker (lock files next to the uploads), which "
                         "works between processes of one host; across hosts tusd needs another locker.")
        elif spec.kind == "tus-node":
            chosen.append(not_available(spec.label, spec.kind, NODE_REASON))
    return chosen


def tusfast_rows(specs: list[ServerSpec], notes: list[str]) -> list[ServerSpec]:
    """The first tusfast configuration (defaults, first --fsync mode) alone, with Redis, twice with
    Redis; and the --workers one as it is."""
    single, workers = specs[0], specs[1] if len(specs) > 1 else None
    redis_flags = ("--redis-url", "{redis}")
    missing = redis_missing()
    if missing:
        notes.append(f"scenario 7: the Redis rows are skipped: {missing}.")
    with_redis = [as_cluster(single, label=label, argv=(*single.argv, *redis_flags), instances=count,
                             helper="redis", unavailable=missing)
                  for label, count in ((f"{single.label} + Redis", 1),
                                       (f"{single.label} ×{INSTANCES} + Redis", INSTANCES))]
    chosen: list[ServerSpec] = [single, *with_redis]
    return chosen + ([workers] if workers else [])


def spread_uploads(server: RunningServer, source: SourceFile, sizes: Sizes) -> Timed:
    """Scenario 3's uploads (POST + one PATCH each, own connection), connection i to instance i mod N."""
    targets = endpoints(server)
    paths = [""] * sizes.concurrency

    def one(index: int) -> None:
        with Connection(*targets[index % len(targets)]) as conn:
            paths[index] = upload_whole(conn, server, source, sizes.each_size)

    def work() -> tuple[int, int, list[str]]:
        in_threads(sizes.concurrency, one)
        return sizes.each_size * sizes.concurrency, sizes.concurrency, paths

    return timed(work)


def verify_elsewhere(server: RunningServer, source: SourceFile, sizes: Sizes, run: Timed) -> str:
    """HEAD every upload on the instance after the one that received it (the same one if alone)."""
    targets = endpoints(server)
    for index, path in enumerate(run.paths):
        with Connection(*targets[(index + 1) % len(targets)]) as conn:
            offset = head_offset(conn, path)
        if offset != sizes.each_size:
            raise ProtocolError(f"HEAD {path}: offset {offset}, expected {sizes.each_size}")
    return "HEAD offset on another instance" if len(targets) > 1 else "HEAD offset"

