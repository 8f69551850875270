"""`--workers N`: N server processes sharing one port through SO_REUSEPORT, under a supervisor that
forwards SIGTERM/SIGINT and restarts a worker that dies unexpectedly."""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import socket
import time
from dataclasses import replace
from multiprocessing.process import BaseProcess
from types import FrameType

from .config import Config
from .http.server import bind_unix

log = logging.getLogger("tusfast")

RESTART_BACKOFF = 1.0
PR_SET_PDEATHSIG = 1


def run_workers(config: Config) -> int:
    shared, config = _reserve_address(config)
    context = multiprocessing.get_context("fork")   # the parent runs no event loop, so fork is safe
    workers = [_spawn(context, config, shared) for _ in range(config.workers)]
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for worker in workers:
            if worker.pid and worker.is_alive():
                os.kill(worker.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not stopping:
        time.sleep(0.2)
        for index, worker in enumerate(workers):
            if not worker.is_alive() and not stopping:
                log.error("worker %s exited with %s; starting a new one", worker.pid, worker.exitcode)
                time.sleep(RESTART_BACKOFF)
                workers[index] = _spawn(context, config, shared)
    return _wait_all(workers, config.shutdown_timeout + 10)


def _reserve_address(config: Config) -> tuple[socket.socket | None, Config]:
    """Unix sockets are bound once and inherited. TCP ports are bound by each worker with
    SO_REUSEPORT; a bound, non-listening socket here turns port 0 into one fixed port for all."""
    if config.unix_socket:
        return bind_unix(config.unix_socket), config
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    holder = socket.socket(family, socket.SOCK_STREAM)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    holder.bind((config.host, config.port))
    return None, replace(config, port=holder.getsockname()[1])


def _spawn(context: multiprocessing.context.BaseContext, config: Config,
           shared: socket.socket | None) -> BaseProcess:
    process: BaseProcess = context.Process(  # type: ignore[attr-defined]
        target=_worker_main, args=(config, shared, os.getpid()))
    process.start()
    return process


def _worker_main(config: Config, shared: socket.socket | None, parent: int) -> None:
    from .cli import run
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    _exit_with_parent(parent)
    os._exit(run(config, sock=shared))


def _exit_with_parent(parent: int) -> None:
    """A worker whose supervisor was killed (-9) must not keep serving the port on its own: ask the
    kernel for SIGTERM (a graceful stop) when the parent dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        log.warning("cannot tie workers to the supervisor's life on this platform")
    if os.getppid() != parent:      # the parent died before prctl took effect
        os._exit(1)


def _wait_all(workers: list[BaseProcess], timeout: float) -> int:
    deadline = time.monotonic() + timeout
    for worker in workers:
        worker.join(max(0.0, deadline - time.monotonic()))
        if worker.is_alive():
            log.warning("worker %s did not stop in time; killing it", worker.pid)
            worker.kill()
            worker.join()
    return 0
