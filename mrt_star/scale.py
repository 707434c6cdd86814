"""Scale-out on Ray: N engine replicas as Ray actors turn whole shards into rows; the driver writes them.

Why whole shards: the stages already cut their work into numbered shards whose seeds derive from the run
seed and the shard index (never from a worker), so a shard gives the same rows on any worker and the
dataset is the same for 1 or N workers, local or Ray. The driver writes every shard through the stage's
`Store` (atomically), so a re-run resumes at the missing shards, and the shard of a worker that dies is
sent again to a live one (the dead actor is replaced), so no row is lost or written twice.

A worker is any class with `run(index, payload) -> rows` (and optionally `close()`), named as
"module:Class" and built inside the actor: e.g. `mrt_star.generate:TraceShards`. Ray is imported only
here and only when `--backend ray` is used.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from mrt_star.errors import UserError

RAY_HINT = "pip install 'mrt-star[ray]'"
SHARD_ATTEMPTS = 3  # a shard whose worker dies this many times stops the run (something kills every worker)
# Where shards run never changes what they hold, so these keys stay out of the config a resume compares.
SCALE_KEYS = ("backend", "ray_address", "workers")


def check_scale(cfg: Any) -> None:
    """Raise UserError for scale options no run can use (one way to scale: Ray workers)."""
    if cfg.backend == "local" and cfg.workers > 1:
        raise UserError(f"workers {cfg.workers}: several engine replicas need --backend ray "
                        f"(--backend ray --workers {cfg.workers})")
    if cfg.backend == "local" and cfg.ray_address:
        raise UserError("ray_address: only used with --backend ray")


def without_scale(config: dict[str, Any]) -> dict[str, Any]:
    """Return a stage's config without the scale options: a Ray run resumes a local one and back."""
    return {k: v for k, v in config.items() if k not in SCALE_KEYS}


def worker_resources(cfg: Any, cluster: dict[str, float]) -> dict[str, float]:
    """Return one worker's Ray resources: its GPUs for vLLM or a GPU model, else an even share of the CPUs."""
    gpus = cluster.get("GPU", 0)
    if cfg.engine == "vllm":
        return {"num_cpus": 1, "num_gpus": cfg.tensor_parallel_size}
    device = str(getattr(cfg, "device", "auto"))
    if device.startswith("cuda") or (device == "auto" and gpus >= cfg.workers):
        return {"num_cpus": 1, "num_gpus": 1}
    return {"num_cpus": max(1, int(cluster.get("CPU", 1) // cfg.workers)), "num_gpus": 0}


# --- the cluster ----------------------------------------------------------------------------------------


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UserError(f"backend 'ray' needs Ray: {RAY_HINT}, or use --backend local") from None
    return ray


def _check_reachable(address: str) -> None:
    """Raise ConnectionError when a host:port address does not answer (Ray itself would wait for minutes)."""
    import socket

    host, _, port = address.rpartition(":")
    if address == "auto" or "://" in address or not host or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as err:
        raise ConnectionError(f"{host}:{port} does not answer ({err.strerror or err})") from None


@contextlib.contextmanager
def ray_session(cfg: Any) -> Iterator[Any]:
    """Yield the ray module connected to a cluster; shut down only what this call started or connected.

    Empty address: a private local cluster on 127.0.0.1 (as many logical CPUs as workers need, at least the
    machine's), stopped at the end. A driver that already called `ray.init` keeps its cluster untouched.
    """
    ray = _import_ray()
    if ray.is_initialized():
        yield ray
        return
    logs = {"log_to_driver": True, "logging_level": "WARNING"}  # workers' errors reach the driver; Ray's info does not
    try:
        if cfg.ray_address:
            _check_reachable(cfg.ray_address)
            ray.init(address=cfg.ray_address, **logs)
        else:
            ray.init(address="local", num_cpus=max(os.cpu_count() or 1, cfg.workers), include_dashboard=False,
                     _node_ip_address="127.0.0.1", **logs)
    except ConnectionError as err:
        raise UserError(f"ray_address {cfg.ray_address!r}: cannot connect ({str(err).splitlines()[0]}); start a "
                        f"cluster with `ray start --head`, or leave --ray-address empty for a local one") from None
    try:
        yield ray
    finally:
        ray.shutdown()


# --- the workers ----------------------------------------------------------------------------------------


class ShardWorker:
    """A Ray actor's body: builds one stage worker (one engine) and runs shards on it.

    A failure while building is kept and raised by `ready()`, so the driver shows the stage's own one-line
    error (a bad model, a missing engine) rather than Ray's "actor died".
    """

    def __init__(self, factory: str, args: tuple, threads: int):
        import torch

        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        torch.set_num_threads(max(1, threads))
        self.worker, self.error = None, None
        try:
            module, name = factory.split(":")
            self.worker = getattr(importlib.import_module(module), name)(*args)
        except Exception as err:  # raised again, as itself, by ready()
            self.error = err

    def ready(self) -> int:
        """Return this worker's process id, or raise what building it raised."""
        if self.error is not None:
            raise self.error
        return os.getpid()

    def call(self, method: str, *args: Any) -> Any:
        """Return the stage worker's `method(*args)` (e.g. generate's prompt preparation)."""
        return getattr(self.worker, method)(*args)

    def run(self, index: int, payload: Any) -> list[dict[str, Any]]:
        """Return the rows of shard `index`."""
        return self.worker.run(index, payload)

    def engine_stats(self) -> dict[str, Any]:
        """Return the counters of this worker's engine (empty when it has none)."""
        stats = getattr(getattr(self.worker, "engine", None), "stats", None)
        return stats.as_dict() if hasattr(stats, "as_dict") else {}

    def close(self) -> None:
        if self.worker is not None and hasattr(self.worker, "close"):
            self.worker.close()


def _unwrap(ray: Any, err: Exception) -> Exception:
    """Return the stage's own error inside a Ray task error (so a UserError stays one line)."""
    cause = getattr(err, "cause", None)
    return cause if isinstance(err, ray.exceptions.RayTaskError) and isinstance(cause, Exception) else err


class WorkerPool:
    """N `ShardWorker` actors on the connected cluster; `run` sends shards to them with driver-side retries."""

    def __init__(self, cfg: Any, factory: str, args: tuple, name: str = "stage"):
        self.ray = _import_ray()
        self.cfg, self.factory, self.args, self.name = cfg, factory, args, name
        self.resources = worker_resources(cfg, self.ray.cluster_resources())
        self._check_fits()
        self.actor_class = self.ray.remote(ShardWorker)
        self.actors = [self._start(k) for k in range(cfg.workers)]
        self.replaced = self.retried = 0
        self.pids = self._ready(self.actors)

    def _check_fits(self) -> None:
        have = self.ray.cluster_resources()
        for key, label in (("num_cpus", "CPU"), ("num_gpus", "GPU")):
            need = self.resources[key] * self.cfg.workers
            if need > have.get(label, 0):
                raise UserError(f"workers {self.cfg.workers}: they need {need:g} {label}s, the Ray cluster has "
                                f"{have.get(label, 0):g}; pass fewer --workers or add machines (`ray start`)")

    def _start(self, k: int) -> Any:
        options = {**self.resources, "max_restarts": 0, "max_concurrency": 1}
        threads = int(self.resources["num_cpus"])
        # Named per driver process, so two runs on one cluster never clash (and a test can find a worker).
        name = f"mrt-star-{self.name}-{os.getpid()}-{k}"
        return self.actor_class.options(name=name, **options).remote(self.factory, self.args, threads)

    def _ready(self, actors: list[Any]) -> list[int]:
        try:
            return self.ray.get([a.ready.remote() for a in actors])
        except self.ray.exceptions.RayTaskError as err:
            raise _unwrap(self.ray, err) from None

    def call_one(self, method: str, *args: Any) -> Any:
        """Return `method(*args)` of the first worker (work done once, before the shards)."""
        try:
            return self.ray.get(self.actors[0].call.remote(method, *args))
        except self.ray.exceptions.RayTaskError as err:
            raise _unwrap(self.ray, err) from None

    def run(self, jobs: list[tuple[int, Any]], on_result: Callable[[int, list[dict[str, Any]]], None]) -> None:
        """Run every (shard index, payload) job; call `on_result(index, rows)` in the driver as each finishes.

        Each worker holds one shard at a time. A worker that dies (killed, out of memory, its machine gone)
        is replaced and its shard goes back to the queue for the next free worker.
        """
        ray = self.ray
        queue, tries, running = deque(jobs), {}, {}

        def feed(slot: int) -> None:
            if queue:
                index, payload = queue.popleft()
                running[self.actors[slot].run.remote(index, payload)] = (slot, index, payload)

        for slot in range(len(self.actors)):
            feed(slot)
        while running:
            (ref,), _ = ray.wait(list(running), num_returns=1)
            slot, index, payload = running.pop(ref)
            try:
                rows = ray.get(ref)
            except ray.exceptions.RayActorError:
                tries[index] = tries.get(index, 0) + 1
                if tries[index] >= SHARD_ATTEMPTS:
                    raise UserError(f"shard {index}: its worker died {tries[index]} times; see the Ray logs "
                                    f"(/tmp/ray/session_latest/logs)") from None
                self.retried += 1
                queue.appendleft((index, payload))
                self._replace(slot)
                feed(slot)
                continue
            except ray.exceptions.RayTaskError as err:
                raise _unwrap(ray, err) from None
            on_result(index, rows)
            feed(slot)

    def _replace(self, slot: int) -> None:
        self.ray.kill(self.actors[slot], no_restart=True)
        self.replaced += 1
        self.actors[slot] = self._start(len(self.actors) + self.replaced - 1)
        self.pids[slot] = self._ready([self.actors[slot]])[0]

    def stats(self) -> dict[str, Any]:
        """Return what the manifest records about this pool: workers, resources, retried shards."""
        return {"backend": "ray", "workers": self.cfg.workers, "worker_resources": self.resources,
                "retried_shards": self.retried, "replaced_workers": self.replaced}

    def engine_stats(self) -> dict[str, Any]:
        """Return the engine counters summed over the live workers (a replaced worker's are lost with it)."""
        total: dict[str, Any] = {}
        for stats in self.ray.get([a.engine_stats.remote() for a in self.actors]):
            for key, value in stats.items():
                numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
                total[key] = round(total.get(key, 0) + value, 3) if numeric else total.get(key, value)
        return total

    def close(self) -> None:
        """Close every worker's engine, then end the actors."""
        with contextlib.suppress(Exception):
            self.ray.get([a.close.remote() for a in self.actors], timeout=60)
        for actor in self.actors:
            with contextlib.suppress(Exception):
                self.ray.kill(actor, no_restart=True)

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def record_scale(store: Any, pool: WorkerPool | None) -> None:
    """Add the pool's figures (retried shards, workers) to the manifest's timings."""
    if pool is not None:
        store.manifest.setdefault("timings", {})["scale"] = pool.stats()
