"""`tui-infer batch --ray`: the batched decoder on a Ray cluster's actors.

RayRunner has BatchRunner's run() and close(), so `tui-infer batch` keeps everything
else (input, keys, the run in the store, rows written as results arrive, output) and
only the decoding moves. The prompts become a Ray Data dataset; map_batches sends
them to a fixed pool of actors (ActorPoolStrategy), each of which loads the model
once into a BatchRunner with `parallel` sequences and `threads` threads (its
num_cpus) and yields one row per finished prompt, so rows reach the store as they
finish, not per batch.

A node reads the model from the driver's path when that file is there and has the
run's sha256; otherwise (or always, with send_model) it receives the file once per
node in chunks from a ModelSource actor pinned to the driver's node, checks the
sha256 and keeps it in a per-node cache under the model's sha256.

Ray is an optional extra: it is imported inside functions only, so the core imports
and `tui-infer --help` run without it.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import logging
import math
import os
import pickle
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tui_infer.core.errors import ModelFileError, TuiInferError
from tui_infer.core.inference.batched import BatchItem, BatchProgress, BatchResult
from tui_infer.core.inference.types import LoadOptions, SamplingParams

RAY_HINT = "pip install 'tui-infer[ray]'"
CHUNK_BYTES = 8 << 20  # one object of the model's transfer
_PREFETCH = 4  # chunks requested ahead of the one being written


class ModelTransferError(ModelFileError):
    """The model a node received does not have the run's sha256."""


def ray_version() -> str | None:
    """The installed Ray's version, or None (for `doctor`)."""
    import importlib.metadata as md

    try:
        return md.version("ray")
    except md.PackageNotFoundError:
        return None


def import_ray() -> Any:
    """`ray` with Ray Data, or a one-line error saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise TuiInferError(f"--ray needs Ray, which is not installed: {RAY_HINT}") from None
    return ray


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def has_model(path: Path, sha256: str, size: int) -> bool:
    """Whether this node's `path` is the run's model (same size, then same sha256)."""
    try:
        if not path.is_file() or path.stat().st_size != size:
            return False
        return sha256_of(path) == sha256
    except OSError:
        return False


def default_cache_dir() -> Path:
    return Path(tempfile.gettempdir()) / "tui-infer-ray"


class ModelSource:
    """The model file, served in chunks to the nodes that lack it (a Ray actor)."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._streams = 0

    def size(self) -> int:
        return os.path.getsize(self._path)

    def chunk(self, index: int) -> bytes:
        if index == 0:
            self._streams += 1
        with open(self._path, "rb") as f:
            f.seek(index * CHUNK_BYTES)
            return f.read(CHUNK_BYTES)

    def streams(self) -> int:
        """How many times the file was sent (one per node that lacked it)."""
        return self._streams


def receive_model(source: Any, sha256: str, size: int, cache_dir: Path) -> Path:
    """This node's copy of the model: received once through Ray, checked by sha256.

    Actors of the same node wait on one lock; the first receives the file, the others
    find it in the cache. A file whose sha256 differs is deleted and is an error.
    """
    import ray
    from filelock import FileLock

    cache_dir.mkdir(parents=True, exist_ok=True)
    dest = cache_dir / f"{sha256}.gguf"
    with FileLock(str(dest) + ".lock"):
        if dest.is_file() and dest.stat().st_size == size:
            return dest  # checked before it was renamed into place
        part = dest.with_name(dest.name + ".part")
        n = max(1, math.ceil(size / CHUNK_BYTES))
        h = hashlib.sha256()
        pending = [source.chunk.remote(i) for i in range(min(n, _PREFETCH))]
        with part.open("wb") as f:
            for i in range(n):
                data = ray.get(pending.pop(0))
                if i + _PREFETCH < n:
                    pending.append(source.chunk.remote(i + _PREFETCH))
                h.update(data)
                f.write(data)
        if h.hexdigest() != sha256:
            part.unlink()
            raise ModelTransferError(
                f"the model received on this node has sha256 {h.hexdigest()[:12]}, not "
                f"{sha256[:12]}: the file changed on the driver's machine; rerun the batch"
            )
        os.replace(part, dest)
    return dest


def _encode(items: Iterable[BatchItem]) -> list[dict[str, Any]]:
    """Dataset rows: each item pickled whole, so every field it has reaches the actor."""
    return [{"id": b.id, "item": pickle.dumps(b)} for b in items]


def _decode(batch: dict[str, Any]) -> list[BatchItem]:
    return [pickle.loads(bytes(x)) for x in batch["item"]]


class Decoder:
    """A Ray Data actor: loads the model once, then decodes each batch it is given."""

    def __init__(
        self,
        model_path: str,
        sha256: str,
        size: int,
        source: Any,
        options: LoadOptions,
        parallel: int,
        kv_unified: bool,
        sampling: SamplingParams,
        run_seed: int,
        system: str | None,
        send_model: bool,
        cache_dir: str | None,
    ) -> None:
        from tui_infer.core.inference.batched import BatchRunner

        # A failure here is kept and raised by the first call: an actor whose creation
        # fails reaches the driver as a bare ActorDiedError, a failed call as itself.
        self._error: TuiInferError | None = None
        self._runner: BatchRunner | None = None
        try:
            path = Path(model_path)
            if send_model or not has_model(path, sha256, size):
                cache = Path(cache_dir) if cache_dir else default_cache_dir()
                path = receive_model(source, sha256, size, cache)
            self._runner = BatchRunner.load(path, options, parallel=parallel, kv_unified=kv_unified)
        except TuiInferError as exc:
            self._error = exc
        self._sampling = sampling
        self._run_seed = run_seed
        self._system = system

    def __call__(self, batch: dict[str, Any]) -> Iterator[dict[str, list[Any]]]:
        if self._error is not None or self._runner is None:
            raise self._error or TuiInferError("the model was not loaded")
        for res in self._runner.run(_decode(batch), self._sampling, self._run_seed, self._system):
            # one block per finished prompt: the driver writes it to the store at once
            yield {"id": [res.id], "result": [pickle.dumps(res)]}


def send_saved_token() -> None:
    """Send this machine's Ray token to an explicit address, as ray.init does for 'auto'.

    Clusters that `ray start` makes (Ray 2.5x) require a token; ray.init sends the saved one
    (~/.ray/auth_token) only to a cluster it finds itself, unless RAY_AUTH_MODE=token was
    set before Ray was imported. An explicit RAY_AUTH_MODE is left as it is.
    """
    if "RAY_AUTH_MODE" in os.environ:
        return
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # another Ray: its own rules apply
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def _no_restarts() -> dict[str, Any]:
    """An actor that fails (a model that does not load) fails the batch, not again and again."""
    return {"max_restarts": 0}


def _result(batch: dict[str, Any], i: int) -> BatchResult:
    res = pickle.loads(bytes(batch["result"][i]))
    assert isinstance(res, BatchResult)
    return res


@dataclass
class RayStats:
    startup_s: float = 0.0  # connecting or starting Ray, and the model source
    first_result_s: float = 0.0  # from run() to the first row (actors starting, models loading)
    model_sends: int = 0  # nodes that received the model through Ray


class RayRunner:
    """BatchRunner's interface, with the decoding on `actors` Ray actors."""

    def __init__(
        self,
        ray: Any,
        started_here: bool,
        source: Any,
        model_path: Path,
        sha256: str,
        size: int,
        options: LoadOptions,
        parallel: int,
        kv_unified: bool,
        actors: int,
        send_model: bool,
        cache_dir: Path | None,
        stats: RayStats,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self._ray = ray
        self._log = log
        self._started_here = started_here
        self._source = source
        self.model_path = model_path
        self.sha256 = sha256
        self.size = size
        self.options = options
        self.parallel = parallel
        self.kv_unified = kv_unified
        self.actors = actors
        self.send_model = send_model
        self.cache_dir = cache_dir
        self.stats = stats
        self._closed = False

    @classmethod
    def start(
        cls,
        address: str | None,
        model_path: Path,
        sha256: str,
        options: LoadOptions,
        parallel: int,
        kv_unified: bool = False,
        actors: int = 1,
        send_model: bool = False,
        cache_dir: Path | None = None,
        log: Callable[[str], None] | None = None,
    ) -> RayRunner:
        """Join the cluster at `address` (or start a local Ray) and check it can hold the pool.

        A process already connected to Ray (ray.init earlier) keeps its connection. `log`
        gets a line saying where the batch runs, and one with Ray's figures at close().
        """
        if actors < 1:
            raise TuiInferError(f"--ray-actors must be at least 1, got {actors}")
        t0 = time.perf_counter()
        ray = import_ray()
        started_here = False
        if not ray.is_initialized():
            logging.getLogger("ray").setLevel(logging.ERROR)
            common: dict[str, Any] = dict(
                include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR
            )
            address = address or os.environ.get("RAY_ADDRESS") or None
            if address:
                send_saved_token()
            try:
                if address:
                    ray.init(address=address, **common)
                else:  # "local": a new instance even when `ray start` runs on this machine
                    need = actors * options.threads
                    ray.init(address="local", num_cpus=max(os.cpu_count() or 1, need), **common)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = f"the Ray cluster at {address}" if address else "a local Ray instance"
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc)
                raise TuiInferError(
                    f"could not reach {where}: {first}; check the address ('ray status' on "
                    "the head node) or leave it out to start Ray here"
                ) from None
            started_here = True
        try:
            cpus = float(ray.cluster_resources().get("CPU", 0))
            need = actors * options.threads
            if need > cpus:
                raise TuiInferError(
                    f"{actors} Ray actor(s) of {options.threads} threads need {need} CPUs; the "
                    f"cluster has {cpus:g}: lower --ray-actors or --threads"
                )
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            here = ray.get_runtime_context().get_node_id()
            source = (
                ray.remote(ModelSource)
                .options(
                    num_cpus=0,
                    scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=here, soft=False),
                )
                .remote(str(model_path))
            )
            size = model_path.stat().st_size
        except BaseException:
            if started_here:
                ray.shutdown()
            raise
        stats = RayStats(startup_s=time.perf_counter() - t0)
        runner = cls(
            ray,
            started_here,
            source,
            model_path,
            sha256,
            size,
            options,
            parallel,
            kv_unified,
            actors,
            send_model,
            cache_dir,
            stats,
            log,
        )
        if log is not None:
            if not started_here:
                where = "the Ray cluster this process is connected to"
            elif address:
                where = f"the Ray cluster at {address}"
            else:
                where = "a local Ray instance"
            log(describe(runner, where))
        return runner

    def run(
        self,
        items: Iterable[BatchItem],
        sampling: SamplingParams,
        run_seed: int = 0,
        system: str | None = None,
        cancel: threading.Event | None = None,
        progress: BatchProgress | None = None,
    ) -> Iterator[BatchResult]:
        """Yield a BatchResult as each item finishes on any actor (not in input order)."""
        if self._closed:
            raise TuiInferError("the Ray runner was closed")
        import ray.data

        rows = _encode(items)
        if not rows:
            return
        progress = progress or BatchProgress()
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        ctx.target_max_block_size = 1  # every row the actors yield is its own block
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        # one batch per actor keeps each actor's slots full to the end, as a local run's;
        # bounded so that a long input still spreads over the pool as actors free up
        per_actor = math.ceil(len(rows) / self.actors)
        batch_size = max(1, min(per_actor, max(256, self.parallel * 16)))
        source = ray.data.from_items(rows, override_num_blocks=math.ceil(len(rows) / batch_size))
        extra: dict[str, Any] = {}
        if "ray_remote_args_fn" in inspect.signature(source.map_batches).parameters:
            extra["ray_remote_args_fn"] = _no_restarts  # deprecated in 2.5x, gone in 2.64
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Ray's deprecation notices are not the user's
            ds = self._map(ray, source, batch_size, extra, sampling, run_seed, system)
        t0 = time.perf_counter()
        batches = ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=0)
        try:
            for batch in batches:
                for i in range(len(batch["id"])):
                    res = _result(batch, i)
                    if not self.stats.first_result_s:
                        self.stats.first_result_s = time.perf_counter() - t0
                    progress.done += 1
                    progress.generated_tokens += res.generated_tokens
                    progress.prompt_tokens += res.prompt_tokens
                    yield res
                if cancel is not None and cancel.is_set():
                    return
        except Exception as exc:
            if isinstance(exc, TuiInferError):
                raise
            cause = _user_error(exc)
            if cause is not None:
                raise cause from None
            raise
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()
        self.stats.model_sends = int(self._ray.get(self._source.streams.remote()))

    def _map(
        self,
        ray: Any,
        source: Any,
        batch_size: int,
        extra: dict[str, Any],
        sampling: SamplingParams,
        run_seed: int,
        system: str | None,
    ) -> Any:
        """The dataset of results: `source` through the pool of Decoder actors."""
        return source.map_batches(
            Decoder,
            batch_size=batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=self.actors),
            num_cpus=self.options.threads,
            **extra,
            fn_constructor_kwargs=dict(
                model_path=str(self.model_path),
                sha256=self.sha256,
                size=self.size,
                source=self._source,
                options=self.options,
                parallel=self.parallel,
                kv_unified=self.kv_unified,
                sampling=sampling,
                run_seed=run_seed,
                system=system,
                send_model=self.send_model,
                cache_dir=str(self.cache_dir) if self.cache_dir else None,
            ),
        )

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._log is not None and self.stats.first_result_s:
            self._log(report(self))
        with contextlib.suppress(Exception):  # the cluster may already be gone
            self._ray.kill(self._source)
        if self._started_here:
            self._ray.shutdown()

    def __enter__(self) -> RayRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _user_error(exc: BaseException) -> TuiInferError | None:
    """A TuiInferError raised in an actor (a bad model, a failed transfer), unwrapped."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, TuiInferError):
            return e
        inner = getattr(e, "cause", None)
        e = inner if isinstance(inner, BaseException) else (e.__cause__ or e.__context__)
    return None


def describe(runner: RayRunner, where: str) -> str:
    """The one stderr line saying where the batch runs."""
    return (
        f"tui-infer: decoding on {where}: {runner.actors} actor(s) x {runner.options.threads} "
        f"thread(s), {runner.parallel} sequences each (Ray ready in {runner.stats.startup_s:.1f} s)"
    )


def report(runner: RayRunner) -> str:
    """The stderr line with Ray's own costs, after the run."""
    s = runner.stats
    sent = f"; model sent to {s.model_sends} node(s), sha256 checked" if s.model_sends else ""
    return (
        f"tui-infer: Ray: first row after {s.first_result_s:.1f} s (actors starting, "
        f"models loading){sent}"
    )
