"""A small pool of symbolic grading worker processes with a hard per-item timeout.

Why not multiprocessing.Pool: a pool worker stuck in sympy cannot be killed and replaced without losing the
pool, and math-verify's own timeout (SIGALRM) only works on the main thread and cannot interrupt C code
such as a huge integer power. Here each worker is a plain subprocess talking JSON lines over pipes (no
pickle, no re-import of the caller's __main__); the parent times every item from the moment the previous
one finished, and SIGKILLs and replaces a worker whose item runs past the limit. Works from any thread.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import time
import weakref
from collections import deque
from collections.abc import Sequence
from pathlib import Path

from mrt_star.grading._errors import WorkerStartError

# Generous: a worker imports sympy and math-verify (about a second, more on a loaded machine).
START_TIMEOUT_S = 120.0
# Consecutive workers that die before saying "ready" before the pool gives up (a broken install).
MAX_START_FAILURES = 3
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
_WORKER_CODE = "from mrt_star.grading._worker import main; main()"


class _Worker:
    """One worker process and what it is doing: the chunk in flight and how far it got."""

    def __init__(self, timeout_s: float, memory_mb: int):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
        # Own session: a Ctrl-C in the terminal reaches the parent only, which then closes the pool.
        self.proc = subprocess.Popen([sys.executable, "-c", _WORKER_CODE, repr(timeout_s), str(memory_mb)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
                                     start_new_session=True)
        self.fd = self.proc.stdout.fileno()
        self.buffer = b""
        self.ready = False
        self.dead = False
        self.started = time.monotonic()
        self.since = self.started  # when the item now running began
        self.chunk: list[int] | None = None
        self.pos = 0

    def send(self, chunk: list[int], items: Sequence[tuple[str, str]]) -> None:
        """Hand the worker a chunk of item indices (a dead pipe marks the worker dead)."""
        self.chunk, self.pos, self.since = chunk, 0, time.monotonic()
        try:
            self.proc.stdin.write(json.dumps([list(items[i]) for i in chunk]).encode() + b"\n")
            self.proc.stdin.flush()
        except OSError:
            self.dead = True

    def read_lines(self) -> list[bytes]:
        """Return the complete lines the worker wrote since the last call (EOF marks the worker dead)."""
        try:
            data = os.read(self.fd, 1 << 16)
        except OSError:
            data = b""
        if not data:
            self.dead = True
            return []
        *lines, self.buffer = (self.buffer + data).split(b"\n")
        return lines

    def kill(self) -> None:
        """Stop the worker now and reap it."""
        _stop(self.proc)


def _stop(proc: subprocess.Popen) -> None:
    """SIGKILL one worker process and reap it (an idle worker holds no state worth a graceful exit)."""
    for stream in (proc.stdin, proc.stdout):
        try:
            stream.close()
        except OSError:
            pass
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def _stop_all(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        _stop(proc)


class WorkerPool:
    """Grade (answer, reference) pairs in worker processes; start workers lazily and reuse them."""

    def __init__(self, size: int, timeout_s: float, memory_mb: int = 4096):
        self.size = max(1, int(size))
        self.timeout_s = float(timeout_s)
        self.memory_mb = int(memory_mb)
        self.restarts = 0  # workers killed on a timeout or found dead
        self._workers: list[_Worker] = []
        self._procs: list[subprocess.Popen] = []  # shared with the finalizer, which must not hold self
        self._start_failures = 0
        self._selector = selectors.DefaultSelector()
        self._finalizer = weakref.finalize(self, _stop_all, self._procs)

    def run(self, items: Sequence[tuple[str, str]], chunk_size: int = 32) -> list[tuple[bool, str]]:
        """Return (correct, reason) per item; a timed-out item gets "timeout", a crashed one "error"."""
        results: list[tuple[bool, str] | None] = [None] * len(items)
        per_chunk = max(1, min(chunk_size, -(-len(items) // (2 * self.size))))  # keep every worker busy
        pending = deque(list(range(i, min(i + per_chunk, len(items)))) for i in range(0, len(items), per_chunk))
        try:
            while pending or any(w.chunk for w in self._workers):
                self._grow(len(pending))
                for worker in self._workers:
                    if pending and worker.ready and not worker.chunk and not worker.dead:
                        worker.send(pending.popleft(), items)
                for key, _ in self._selector.select(self._wait_s()):
                    self._receive(key.data, results)
                self._reap(results, pending)
        except BaseException:
            # Interrupted mid-batch: busy workers would answer items nobody waits for any more.
            for worker in [w for w in self._workers if w.chunk]:
                self._remove(worker)
            raise
        return results  # type: ignore[return-value]

    def close(self) -> None:
        """Stop every worker."""
        for worker in list(self._workers):
            self._selector.unregister(worker.fd)
            worker.kill()
        self._workers.clear()
        self._procs.clear()

    def _grow(self, pending_chunks: int) -> None:
        busy = sum(1 for w in self._workers if w.chunk)
        while len(self._workers) < min(self.size, busy + pending_chunks):
            worker = _Worker(self.timeout_s, self.memory_mb)
            self._workers.append(worker)
            self._procs.append(worker.proc)
            self._selector.register(worker.fd, selectors.EVENT_READ, worker)

    def _wait_s(self) -> float:
        """Return how long select may block: until the earliest item or start-up deadline."""
        now, deadlines = time.monotonic(), []
        for w in self._workers:
            if not w.ready:
                deadlines.append(w.started + START_TIMEOUT_S)
            elif w.chunk:
                deadlines.append(w.since + self.timeout_s)
        return max(0.0, min(deadlines, default=now + 1.0) - now) + 0.001

    def _receive(self, worker: _Worker, results: list[tuple[bool, str] | None]) -> None:
        for line in worker.read_lines():
            try:
                message = json.loads(line)
            except ValueError:  # garbage on the channel: treat the worker as broken
                worker.dead = True
                return
            if message == "ready":
                worker.ready, self._start_failures = True, 0
            elif worker.chunk:
                results[worker.chunk[worker.pos]] = (bool(message[0]), str(message[1]))
                worker.pos += 1
                worker.since = time.monotonic()
                if worker.pos == len(worker.chunk):
                    worker.chunk = None

    def _reap(self, results: list[tuple[bool, str] | None], pending: deque[list[int]]) -> None:
        """Replace workers that died, overran an item, or never started; requeue what they still owed."""
        now = time.monotonic()
        for worker in list(self._workers):
            overran = worker.chunk is not None and now - worker.since > self.timeout_s
            stuck = not worker.ready and now - worker.started > START_TIMEOUT_S
            if not (worker.dead or overran or stuck):
                continue
            if not worker.ready:
                self._start_failures += 1
            if worker.chunk:
                # The item in hand is blamed even if the worker died some other way: every item then
                # ends in bounded time, and a poison item cannot kill worker after worker.
                results[worker.chunk[worker.pos]] = (False, "timeout" if overran and not worker.dead else "error")
                rest = worker.chunk[worker.pos + 1:]
                if rest:
                    pending.appendleft(rest)
            self._remove(worker)
            self.restarts += 1
        if self._start_failures >= MAX_START_FAILURES:
            failures, self._start_failures = self._start_failures, 0  # a later call may try again
            raise WorkerStartError(f"{failures} grading workers died before they were ready "
                                   f"(is math-verify installed for {sys.executable}?)")

    def _remove(self, worker: _Worker) -> None:
        self._selector.unregister(worker.fd)
        worker.kill()
        self._workers.remove(worker)
        self._procs.remove(worker.proc)
