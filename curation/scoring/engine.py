"""Where the work runs: this process (``--engine local``, the default) or Ray (``--engine ray``).

On Ray, a scoring pass's chunks go to a pool of actors, each loading the model once (by path) and
running the project's own :func:`curation.scoring.losses.score_examples` on one chunk at a time; the driver
commits every chunk into the score cache as it comes back, exactly as the local pass does, so
resume, the refusal to mix runs and the cache work unchanged.  An actor that dies is restarted and
its chunk re-run (``max_restarts`` / ``max_task_retries``); a chunk is committed once, never lost.
Training runs the project's loop on Ray Train workers (:meth:`RayEngine.run_ddp` starts the worker
function :mod:`curation.runs.training` gives it) under gloo (nccl on GPUs), every step's
micro-batches dealt over the workers and the gradients summed, so the global batch is what the
config says.

Chosen over Ray Data's ``map_batches``: the actor pool keeps the driver's chunks (bit-identical
results; Ray Data regroups rows into other batches), its retry unit is our commit unit, it starts
faster, and it cannot starve read tasks of CPUs (the README's Ray section has the measurements).

A local instance (no ``--ray-address``) belongs to the job that starts it:

* ``ray.init(address="local")`` (never joins another cluster), ``num_cpus`` = workers x threads,
  no dashboard, a capped object store, a private temp folder;
* one torch thread per CPU a worker owns (``OMP_NUM_THREADS`` and ``torch.set_num_threads``): N
  processes with all cores' threads each thrash a small machine;
* the job's SIGTERM handler is put back after ``ray.init`` (which replaces it), and Ray work runs in
  a thread while the main thread waits, so a cancel takes effect at once;
* a watchdog process (its own session) kills every process holding a file open in the instance's
  private folder once the job's process is gone, so a driver killed with SIGKILL leaves no Ray
  work running.  ``ray.shutdown()`` ends the instance on every other way out.

Models and data reach the workers by path (the model folder, the run folder: on a cluster these
must be on a filesystem every node sees) and as packed numpy arrays in the task arguments.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from curation.data.templates import pack_encoded, unpack_encoded
from curation.scoring.losses import ExampleLoss
from curation.system import PROJECT_ROOT, process_start_time

REPO = str(PROJECT_ROOT)
TEMP_ROOT = "/tmp/ray-curation"  # short: Ray's socket paths must stay under 107 bytes
OBJECT_STORE_MB = 512


class EngineError(ValueError):
    """Ray cannot run as asked (not installed, no cluster at that address, no resources)."""


@contextmanager
def open_engine(cfg):
    """The engine a config asks for: None (this process) or a :class:`RayEngine`, for the block."""
    if getattr(cfg, "engine", "local") != "ray":
        yield None
        return
    with ray_instance(cfg) as info:
        yield RayEngine(info, threads=info["threads_per_worker"], workers=info["workers"],
                        gpus_per_worker=cfg.gpus_per_worker)


# ----------------------------------------------------------------------------------------------
# The Ray instance


@contextmanager
def ray_instance(cfg):
    """Start (or join, with ``--ray-address``) Ray for the block; yields a small info dict."""
    # No auto-init: a Ray call made after ray.shutdown() (by a work thread a cancel left behind)
    # would otherwise start a new default instance in /tmp/ray that nothing owns or stops.
    os.environ["RAY_ENABLE_AUTO_CONNECT"] = "0"  # read when ray is first imported
    try:
        import ray
    except ImportError:  # pragma: no cover - ray is in requirements.txt
        raise EngineError("--engine ray needs the ray package: pip install 'ray[data,train]'") from None
    try:  # ray imported earlier in this process read the variable already
        from ray._private import auto_init_hook

        auto_init_hook.enable_auto_connect = False
    except (ImportError, AttributeError):  # pragma: no cover - another Ray layout: the variable is enough
        pass
    previous = signal.getsignal(signal.SIGTERM)
    threads = 1
    workers = cfg.workers or max(1, (os.cpu_count() or 1) // threads)
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([REPO] + [p for p in [os.environ.get("PYTHONPATH")] if p]),
           "RAY_AUTH_MODE": "disabled"}
    for k in ("CURATION_CACHE", "CURATION_SCORE_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(k):
            env[k] = os.environ[k]
    watchdog, temp_dir = None, None
    t0 = time.time()
    if cfg.ray_address:  # a cluster that outlives us: join it, do not own it
        check_address(cfg.ray_address)
        try:
            ray.init(address=cfg.ray_address, runtime_env={"env_vars": env}, log_to_driver=False,
                     logging_level="WARNING")
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise EngineError(f"--ray-address {cfg.ray_address}: could not join the Ray cluster ({e})") from None
        if cfg.workers is None:
            workers = max(1, int(ray.cluster_resources().get("GPU" if cfg.gpus_per_worker else "CPU", 1)
                                 // (cfg.gpus_per_worker or threads)))
    else:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        # The raylet starts its workers at niceness 15 unless told otherwise: on a busy machine they
        # would crawl behind everything else, while the local engine's work runs at normal priority.
        os.environ.setdefault("RAY_worker_niceness", "0")
        temp_dir = os.path.join(TEMP_ROOT, uuid.uuid4().hex[:12])
        os.makedirs(temp_dir, exist_ok=True)
        # Started before ray.init, so a driver killed even during ray.init leaves nothing behind.
        watchdog = subprocess.Popen([sys.executable, "-m", "curation.scoring.watchdog", str(os.getpid()),
                                     str(process_start_time(os.getpid())), temp_dir],
                                    stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    start_new_session=True, cwd=REPO)
        gpus = None
        if cfg.gpus_per_worker:
            import torch

            gpus = torch.cuda.device_count()
        # address="local": always a new instance (with None, ray.init would join a cluster named
        # by RAY_ADDRESS or an earlier instance's marker file).
        ray.init(address="local", num_cpus=workers * threads, num_gpus=gpus, include_dashboard=False,
                 object_store_memory=OBJECT_STORE_MB << 20, log_to_driver=False, logging_level="WARNING",
                 _temp_dir=temp_dir, runtime_env={"env_vars": env})
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, previous)  # ray.init replaced the job's cancel handler
    try:
        yield {"workers": workers, "threads_per_worker": threads, "init_s": round(time.time() - t0, 2),
               "address": cfg.ray_address or "local", "temp_dir": temp_dir}
    finally:
        try:
            ray.shutdown()
        finally:
            if watchdog is not None:
                watchdog.stdin.close()  # a clean end: the watchdog sweeps (nothing should be left) and exits
                try:
                    watchdog.wait(timeout=40)
                except subprocess.TimeoutExpired:
                    watchdog.kill()


def check_address(address: str, timeout: float = 3.0) -> None:
    """Fail at once, with one line, when nothing can answer at ``address`` (``ray.init`` would retry
    for minutes), and when ``ray://`` needs Ray Client's packages that are not installed."""
    import socket

    if address == "auto":
        return
    if address.startswith("ray://"):
        try:
            import grpc  # noqa: F401 - Ray Client's transport
        except ImportError:
            raise EngineError(f"--ray-address {address}: Ray Client (ray://) needs pip install 'ray[client]', which this "
                              "installation does not have; or run the job on a node of the cluster with "
                              "--ray-address auto") from None
        address = address[len("ray://"):]
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise EngineError(f"--ray-address {address}: expected HOST:PORT, ray://HOST:PORT or auto")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise EngineError(f"--ray-address {address}: nothing answers there ({e.strerror or e}); start the cluster "
                          f"(ray start --head --port={port}) or check the address") from None


def run_cancellable(fn, *args, progress=None, poll_s: float = 0.5, **kwargs):
    """Run ``fn(*args, progress=put, **kwargs)`` in a thread and return its result.

    While Ray blocks (``ray.wait``, ``TorchTrainer.fit``) a signal handler in that thread would not
    run; here the calling thread only waits on a queue, so a cancel (SIGTERM -> JobCancelled)
    propagates at once, and ``progress`` is called in the calling thread (the job store's
    connection belongs to it)."""
    import queue

    q: queue.Queue = queue.Queue()
    box: dict = {}

    def target():
        try:
            box["result"] = fn(*args, progress=lambda **p: q.put(("progress", p)), **kwargs)
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            box["error"] = e
        finally:
            q.put(("done", None))

    t = threading.Thread(target=target, name="ray-work", daemon=True)
    t.start()
    while True:
        try:
            kind, payload = q.get(timeout=poll_s)
        except queue.Empty:
            continue
        if kind == "progress":
            if progress is not None:
                progress(**payload)
            continue
        t.join()
        if "error" in box:
            raise box["error"]
        return box.get("result")


# ----------------------------------------------------------------------------------------------
# Scoring on an actor pool


class ChunkScorer:
    """A Ray actor: loads the model once, scores packed chunks with curation.scoring.losses.score_examples."""

    def __init__(self, source, threads: int, batch_tokens: int):
        import torch

        torch.set_num_threads(threads)
        if source.device.startswith("cuda"):
            import ray

            source.device = "cuda" if ray.get_gpu_ids() else "cpu"
        self.model = source.load()
        self.batch_tokens = batch_tokens

    def pid(self) -> int:
        return os.getpid()

    def score(self, packed: dict, plan: list[list[int]] | None = None) -> dict:
        from curation.scoring.losses import score_examples

        return pack_losses(score_examples(self.model, unpack_encoded(packed), self.batch_tokens, plan=plan))


def pack_losses(results, embeddings: bool = True) -> dict:
    """Example losses (:class:`curation.scoring.losses.ExampleLoss`) as flat arrays: the sums and
    counts, each example's token losses and positions end to end with their ``offsets``, and (with
    ``embeddings``) the embedding rows (NaN: none), RDS+ rows and prompt RDS+ rows: a compact
    message from a Ray worker, the inverse of :func:`unpack_losses`."""
    n = np.array([r.n_tokens for r in results], dtype=np.int64)
    offsets = np.zeros(len(results) + 1, dtype=np.int64)
    np.cumsum(n, out=offsets[1:])
    out = {"loss_sum": np.array([r.loss_sum for r in results], dtype=np.float64), "n_tokens": n, "offsets": offsets,
           "token_losses": np.concatenate([r.token_losses for r in results]) if results else np.zeros(0, np.float32),
           "positions": np.concatenate([r.positions for r in results]) if results else np.zeros(0, np.int32)}
    if embeddings:
        width = next((len(r.embedding) for r in results if r.embedding is not None), 0)
        emb = np.full((len(results), width), np.nan, dtype=np.float32)  # NaN row: no target token
        for j, r in enumerate(results):
            if r.embedding is not None:
                emb[j] = r.embedding
        out["embeddings"] = emb
        for kind in ("rds", "prompt_rds"):
            out[kind] = (np.stack([getattr(r, kind) for r in results]).astype(np.float32) if results
                         else np.zeros((0, 0), np.float32))
    return out


def unpack_losses(packed: dict) -> list[ExampleLoss]:
    """The example losses :func:`pack_losses` packed (without embeddings when it left them out)."""
    o, emb, rds, prompt = packed["offsets"], packed.get("embeddings"), packed.get("rds"), packed.get("prompt_rds")
    return [ExampleLoss(float(packed["loss_sum"][j]), int(packed["n_tokens"][j]),
                        packed["token_losses"][o[j]:o[j + 1]], packed["positions"][o[j]:o[j + 1]],
                        None if emb is None or not emb.shape[1] or np.isnan(emb[j]).any() else emb[j],
                        None if rds is None else rds[j], None if prompt is None else prompt[j])
            for j in range(len(o) - 1)]


class RayEngine:
    """Scoring passes on an actor pool, training on Ray Train (see the module docstring)."""

    distributed = True

    def __init__(self, info: dict, threads: int, workers: int, gpus_per_worker: float = 0.0,
                 max_restarts: int = 3, inflight_per_worker: int = 2):
        self.info, self.threads, self.workers = info, threads, workers
        self.gpus_per_worker = gpus_per_worker
        self.max_restarts, self.inflight = max_restarts, inflight_per_worker
        self.actors: list = []  # the current pass's actors (tests kill one)

    def score_chunks(self, source, chunks, batch_tokens: int, commit, tick) -> None:
        """Score ``chunks`` (``(n, ids, encoded, plan)``: the scorer's plan, or None) on the actor
        pool; ``commit(rows)`` each one in this process as it returns, and ``tick(n_units,
        n_tokens, committed=, workers=)`` (units: the plan's batches, else the examples)."""
        run_cancellable(self._score, source, chunks, batch_tokens, commit,
                        progress=lambda n_ex, n_tok, **p: tick(n_ex, n_tok, **p))

    def _score(self, source, chunks, batch_tokens, commit, progress) -> None:
        import ray

        from curation.scoring.passes import cache_rows

        opts = {"num_cpus": self.threads, "max_restarts": self.max_restarts, "max_task_retries": self.max_restarts}
        if self.gpus_per_worker:
            opts["num_gpus"] = self.gpus_per_worker
        Actor = ray.remote(**opts)(ChunkScorer)
        n_actors = max(1, min(self.workers, len(chunks)))
        self.actors = [Actor.remote(source, self.threads, batch_tokens) for _ in range(n_actors)]
        try:
            it, inflight, load, committed = iter(chunks), {}, [0] * n_actors, 0

            def submit() -> None:
                nxt = next(it, None)
                if nxt is None:
                    return
                k = min(range(n_actors), key=lambda j: load[j])  # the least loaded actor
                inflight[self.actors[k].score.remote(pack_encoded(nxt[2]), nxt[3])] = (nxt, k)
                load[k] += 1

            for _ in range(n_actors * self.inflight):
                submit()
            while inflight:
                ready, _ = ray.wait(list(inflight), num_returns=1)
                (n, ids, encs, plan), k = inflight.pop(ready[0])
                load[k] -= 1
                try:
                    out = ray.get(ready[0])  # raises once the chunk's retries are spent
                except ray.exceptions.RayError as e:
                    raise EngineError(f"a Ray worker failed on chunk {n} after {self.max_restarts} retries: "
                                      f"{type(e).__name__}: {ray_cause(e)[:300]}") from None
                submit()
                rows = cache_rows(ids, unpack_losses(out))
                commit(rows)
                committed += 1
                progress(n_ex=len(ids) if plan is None else len(plan), n_tok=sum(len(e.input_ids) for e in encs),
                         committed=committed, workers=live_workers(self.actors))
        finally:
            for a in self.actors:
                ray.kill(a)

    def run_tasks(self, fn, specs: list[dict], on_done, progress, done: int = 0, total: int | None = None) -> None:
        """Run ``fn(spec, threads, progress)`` for every spec as its own Ray task, each holding one
        worker's resources (its CPUs, or its GPU), as many at once as there are workers: independent
        work side by side, not one DDP job.  ``on_done(spec, result)`` runs in this process as each
        task finishes (commit there; it must not report progress).  ``progress`` sees the phase with
        ``done``/``total`` counting finished tasks (``done`` already finished before) and what each
        running task last reported."""
        run_cancellable(self._run_tasks, fn, specs, on_done, done, total or done + len(specs), progress=progress)

    def _run_tasks(self, fn, specs, on_done, done, total, progress):
        import ray
        from ray.util.queue import Empty, Queue

        queue = Queue(maxsize=10_000, actor_options={"num_cpus": 0})
        opts = {"num_cpus": self.threads, "max_retries": self.max_restarts}
        if self.gpus_per_worker:
            opts["num_gpus"] = self.gpus_per_worker
        remote = ray.remote(**opts)(task_entry)
        # At most `workers` tasks are submitted at a time: Ray lends a task's CPU to the next queued
        # task while the first blocks in a Ray call (its progress reports are such calls), so handing
        # Ray every task at once ran more trainings than cores side by side, each far slower.
        waiting = list(specs)
        pending = {}

        def submit():
            while waiting and len(pending) < self.workers:
                spec = waiting.pop(0)
                pending[remote.remote(fn, spec, self.threads, queue)] = spec

        submit()
        latest: dict[str, dict] = {}
        phase = f"training on {self.workers} Ray workers"
        progress(phase=phase, done=done, total=total, unit="trainings")
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
                while True:
                    try:
                        p = queue.get_nowait()
                    except Empty:
                        break
                    latest[p.pop("task")] = p
                for ref in ready:
                    spec = pending.pop(ref)
                    try:
                        result = ray.get(ref)
                    except ray.exceptions.RayError as e:
                        raise EngineError(f"Ray task {spec.get('label', '')!r} failed: {type(e).__name__}: "
                                          f"{ray_cause(e)[:300]}") from None
                    on_done(spec, result)
                    latest.pop(spec.get("label"), None)
                    done += 1
                submit()
                running = [f"{k} {v.get('done')}/{v.get('total')}" for k, v in latest.items() if v.get("total")]
                progress(phase=phase, done=done, total=total, unit="trainings", running="; ".join(running) or None,
                         tokens_per_s=sum(v.get("tokens_per_s") or 0 for v in latest.values()) or None)
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)

    def run_ddp(self, worker, config: dict, storage: Path, progress) -> None:
        """Run ``worker(config)`` on ``workers`` Ray Train processes under gloo (nccl on GPUs).

        ``config`` gains ``threads`` (torch threads per worker) and ``queue``: whatever rank 0 puts
        there (progress dicts) reaches ``progress`` in this process while training runs."""
        run_cancellable(self._run_ddp, worker, config, storage, progress=progress)

    def _run_ddp(self, worker, config, storage, progress):
        from ray.train import FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchConfig, TorchTrainer
        from ray.util.queue import Empty, Queue

        queue = Queue(maxsize=100_000, actor_options={"num_cpus": 0})
        stop = threading.Event()

        def pump():  # rank 0's step reports, forwarded while fit() runs
            while not stop.is_set() or not queue.empty():
                try:
                    progress(**queue.get(timeout=0.5))
                except Empty:
                    continue
                except Exception:  # noqa: BLE001 - Ray shutting down under us (a cancel)
                    return

        drain = threading.Thread(target=pump, name="train-progress", daemon=True)
        drain.start()
        gpu = bool(self.gpus_per_worker)
        trainer = TorchTrainer(
            worker, train_loop_config={**config, "threads": self.threads, "queue": queue},
            scaling_config=ScalingConfig(num_workers=self.workers, use_gpu=gpu,
                                         resources_per_worker={"CPU": self.threads,
                                                               **({"GPU": self.gpus_per_worker} if gpu else {})}),
            torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
            run_config=RunConfig(name=f"train-{uuid.uuid4().hex[:8]}", storage_path=str(storage),
                                 failure_config=FailureConfig(max_failures=0)))
        try:
            trainer.fit()
        except Exception as e:  # noqa: BLE001 - Ray wraps the worker's error
            raise EngineError(f"training on {self.workers} Ray workers failed: {type(e).__name__}: "
                              f"{ray_cause(e)[:400]}") from None
        finally:
            stop.set()
            drain.join(timeout=5)


def live_workers(actors) -> int:
    """How many actors are alive (the GCS's actor table; no dashboard needed, about 1 ms each)."""
    import ray

    n = 0
    for a in actors:
        try:
            state = ray._private.state.actors(a._actor_id.hex())
        except Exception:  # noqa: BLE001 - progress must never fail the pass
            continue
        n += bool(state) and state.get("State") in ("ALIVE", 2)
    return n


def ray_cause(e: Exception) -> str:
    """The line of a Ray error that says what went wrong: its last line (the exception), not the
    first (``ray::task_entry() (pid=..., ip=...)``)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[-1] if lines else type(e).__name__


def task_entry(fn, spec: dict, threads: int, queue):
    """A Ray task: ``fn(spec, threads, progress)`` with its progress sent to the driver's queue."""
    def progress(**p):
        try:
            queue.put_nowait({"task": spec.get("label"), **p})
        except Exception:  # noqa: BLE001 - a full queue or a driver going away must not fail the work
            pass

    return fn(spec, threads, progress)
