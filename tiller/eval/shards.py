"""Generation split over engine processes (`generation.workers` > 1), for evaluation and data generation.

`tiller eval`, `tiller redteam`, `tiller rlaif-data` and `tiller cai-data` ask one model many prompts. With
`workers: N` the model is served by N vLLM engines, each in an OS process of its own (`python -m
tiller.eval.shards`), placed like `tiller run`'s actors: the cores this process may use, split into N
contiguous groups, one group per engine (OS affinity and vLLM's OpenMP binding; unpinned engines sharing
cores were measured 7x slower in total, tiller/placement.py), or one CUDA device each on a GPU machine.
The parent keeps the tokenizer: it encodes, splits the prompts into N contiguous shards, and decodes.

Wire: JSON lines and nothing else, so no Python object crosses it. The parent writes one request per call on a worker's stdin,
    {"prompts": [[id, ...], ...], "k", "max_new_tokens", "temperature", "top_p", "seed", "logprobs", "chunk"}
and the worker writes on its stdout
    {"ready": true}                                   once, when its engine is built
    {"progress": n}                                   after each chunk of n prompts (the parent's progress bar)
    {"result": {"tokens", "lengths", "logprobs", "truncated"}}   `Generation`'s flat layout
Token ids travel rather than texts: the engines then see exactly the prompts the parent checked against
max_model_len, and one request serves `Generator.answer`/`sample` and datagen's conversations alike (it
calls `generator.engine.generate` with ids).

Seeds: a shard that starts at prompt `lo` samples with seed + lo*k, so every prompt draws with the seed one
engine would give it (seed + i*k, `VLLMEngine.generate`): answers do not depend on N.

Failures: a worker that exits, writes a line that is not one of the above, or sends nothing for `timeout_s`
is an error naming it, with the end of its stderr, and the pool kills every worker. Workers are also killed
at `close`, at interpreter exit (atexit), and by the kernel if this process dies (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import atexit
import ctypes
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Callable, NoReturn

import numpy as np

from tiller.actors.engine import Generation
from tiller.config import ConfigError
from tiller.eval.generate import Generator, split_responses
from tiller.model_files import eos_ids

if TYPE_CHECKING:
    from tiller.placement import Slot

log = logging.getLogger(__name__)

WORKER_MODULE = "tiller.eval.shards"  # what each worker runs (`python -m`); tests swap in fakes
PR_SET_PDEATHSIG = 1  # linux/prctl.h
_PRCTL = getattr(ctypes.CDLL(None), "prctl", None)  # Linux; looked up here, so the child only calls it


class GenerationWorkerError(RuntimeError):
    """A generation worker died, wrote something that is not the protocol, or went silent."""


# ----------------------------------------------------------------------------- planning (pure)


def shard_bounds(n: int, workers: int) -> list[tuple[int, int]]:
    """[lo, hi) of each worker's contiguous shard of n items, in order: sizes differ by at most one (the
    larger first); workers beyond n get empty shards."""
    base, extra = divmod(n, workers)
    bounds, lo = [], 0
    for i in range(workers):
        hi = lo + base + (i < extra)
        bounds.append((lo, hi))
        lo = hi
    return bounds


def shard_seed(seed: int | None, lo: int, k: int) -> int | None:
    """The seed of a shard starting at prompt `lo`: its prompt i then draws with seed + (lo + i)*k, as in one engine."""
    return None if seed is None else seed + lo * k


def core_groups(cores, workers: int) -> list[tuple[int, ...]]:
    """The cores split into `workers` contiguous groups (sizes differ by at most one); with fewer cores than
    workers, one core each, round-robin (some share)."""
    cores = sorted(cores)
    if len(cores) < workers:
        return [(cores[i % len(cores)],) for i in range(workers)]
    return [tuple(cores[lo:hi]) for lo, hi in shard_bounds(len(cores), workers)]


def plan_slots(workers: int, cores=None, gpus: int | None = None) -> list[Slot]:
    """One `placement.Slot` per worker: a CUDA device each on a GPU machine, else a group of this process's cores."""
    from tiller.placement import Slot, gpu_count

    gpus = gpu_count() if gpus is None else gpus
    if gpus > 0:
        if workers > gpus:
            raise ConfigError(f"generation.workers: {workers} engines, but {gpus} CUDA device(s); one engine per "
                              f"device")
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        names = visible.split(",") if visible else [str(i) for i in range(gpus)]
        return [Slot(f"generator{i}", (), names[i]) for i in range(workers)]
    groups = core_groups(os.sched_getaffinity(0) if cores is None else cores, workers)
    return [Slot(f"generator{i}", group) for i, group in enumerate(groups)]


def join(parts: list[Generation], seconds: float) -> Generation:
    """Shards' generations as one, in shard order (the prompts' order)."""
    return Generation(np.concatenate([p.tokens for p in parts]).astype(np.int32),
                      np.concatenate([p.lengths for p in parts]).astype(np.int32),
                      np.concatenate([p.logprobs for p in parts]).astype(np.float32),
                      np.concatenate([p.truncated for p in parts]).astype(bool), seconds)


def _generation(result, samples: int) -> Generation:
    """A worker's result, checked: ValueError, TypeError or KeyError where it is not one of `samples` samples."""
    lengths, tokens = np.asarray(result["lengths"]), np.asarray(result["tokens"])
    logprobs, truncated = np.asarray(result["logprobs"], np.float64), np.asarray(result["truncated"])
    whole = all(a.size == 0 or a.dtype.kind == "i" for a in (lengths, tokens))  # no floats, strings or bools
    if (not whole or lengths.shape != (samples,) or tokens.ndim != 1 or len(tokens) != lengths.sum()
            or (lengths < 0).any() or logprobs.ndim != 1 or len(logprobs) not in (0, len(tokens))
            or truncated.shape != (samples,) or truncated.dtype != bool):
        raise ValueError(f"not {samples} samples")
    return Generation(tokens.astype(np.int32), lengths.astype(np.int32), logprobs.astype(np.float32), truncated, 0.0)


# ----------------------------------------------------------------------------- the parent's side


@dataclass
class _Worker:
    index: int
    slot: Slot
    process: subprocess.Popen
    stderr: IO[bytes]  # an unnamed temporary file: read back for errors, never a pipe that could fill up

    def where(self) -> str:
        s = self.slot
        return f"cuda:{s.device}" if s.device is not None else f"cores {','.join(map(str, s.cores))}"

    def tail(self, chars: int = 3000) -> str:
        try:  # pread: the worker shares the file's offset, so it must not move
            size = os.fstat(self.stderr.fileno()).st_size
            text = os.pread(self.stderr.fileno(), chars, max(0, size - chars)).decode(errors="replace")
        except (OSError, ValueError):
            return "(stderr unreadable)"
        return text.strip() or "(stderr empty)"


class EnginePool:
    """`VLLMEngine.generate` over N engine processes: the prompts split into N contiguous shards, one per
    worker, generated at once, joined back in order. Also takes `chunk` (prompts per engine call within a
    shard) and `progress(n)` (called as each worker finishes a chunk of n prompts)."""

    def __init__(self, model_dir: str | Path, workers: int, max_model_len: int, dtype: str, kv_cache_gib: float,
                 seed: int, timeout_s: float = 900.0, start_timeout_s: float = 600.0, cores=None,
                 gpus: int | None = None):
        self.model_dir = Path(model_dir)
        self.eos_ids = eos_ids(self.model_dir)
        self.timeout_s = timeout_s  # longest silence of a busy worker (a chunk on a big model on a CPU is slow)
        self.start_timeout_s = start_timeout_s  # import vLLM and build the engine
        self.slots = plan_slots(workers, cores, gpus)
        self._lines: queue.Queue = queue.Queue()  # (worker index, line or None at its end), from reader threads
        self._workers: list[_Worker] = []
        self._closed = False
        self._busy = False  # a request is out: its workers cannot leave before it is done, so close kills them
        atexit.register(self._at_exit)
        from tiller.placement import describe

        log.info("generation %s", describe(self.slots).replace("placement:", "placement (one engine each):"))
        spec = json.dumps({"model": str(self.model_dir), "max_model_len": max_model_len, "dtype": dtype,
                           "kv_cache_gib": kv_cache_gib, "seed": seed})
        try:
            for i, slot in enumerate(self.slots):
                self._workers.append(self._spawn(i, slot, spec))
        except BaseException:
            self.close(kill=True)
            raise

    def _spawn(self, index: int, slot: Slot, spec: str) -> _Worker:
        env = {**os.environ, **slot.env(), "PYTHONUNBUFFERED": "1"}
        cores = set(slot.cores)

        def in_child() -> None:  # between fork and exec, as tiller/cli/run.py `_spawn` pins
            if cores:
                os.sched_setaffinity(0, cores)
            if _PRCTL is not None:  # killed when the thread that started it dies (a pool lives in its maker's thread)
                _PRCTL(PR_SET_PDEATHSIG, signal.SIGKILL)

        stderr = tempfile.TemporaryFile(prefix=f"tiller-generator{index}-")
        process = subprocess.Popen([sys.executable, "-m", WORKER_MODULE, spec], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=stderr, env=env, preexec_fn=in_child,
                                   start_new_session=True)  # its own group: killed with anything it starts
        worker = _Worker(index, slot, process, stderr)
        threading.Thread(target=self._read, args=(worker,), daemon=True, name=f"generator{index}-reader").start()
        return worker

    def _read(self, worker: _Worker) -> None:
        for line in worker.process.stdout:
            self._lines.put((worker.index, line))
        self._lines.put((worker.index, None))

    @property
    def pids(self) -> list[int]:
        return [w.process.pid for w in self._workers]

    def wait_ready(self) -> None:
        self._receive("ready", set(range(len(self._workers))), None)

    def generate(self, prompts: list[np.ndarray], k: int, max_new_tokens: int, temperature: float = 1.0,
                 top_p: float = 1.0, seed: int | None = None, logprobs: bool = True, chunk: int | None = None,
                 progress: Callable[[int], None] | None = None) -> Generation:
        if self._closed:
            raise GenerationWorkerError("the generation pool is closed (closed, or one of its workers failed)")
        start = time.monotonic()
        busy = {i: (lo, hi) for i, (lo, hi) in enumerate(shard_bounds(len(prompts), len(self._workers))) if hi > lo}
        if not busy:
            return Generation(np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.float32),
                              np.zeros(0, bool), 0.0)
        self._busy = True
        for i, (lo, hi) in busy.items():
            self._send(i, {"prompts": [[int(t) for t in p] for p in prompts[lo:hi]], "k": k,
                           "max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p,
                           "seed": shard_seed(seed, lo, k), "logprobs": logprobs, "chunk": chunk or (hi - lo)})
        results = self._receive("result", set(busy), progress)
        self._busy = False
        parts = []
        for i, (lo, hi) in busy.items():
            try:
                parts.append(_generation(results[i], (hi - lo) * k))
            except (KeyError, TypeError, ValueError) as exc:
                self._fail(self._workers[i], f"wrote a malformed result ({exc})")
        return join(parts, time.monotonic() - start)

    def _send(self, index: int, request: dict) -> None:
        """Written from a thread of its own: a worker that stopped reading cannot block this one past the
        silence bound (it then sends nothing, and `_receive` gives up on it)."""
        worker = self._workers[index]
        if worker.process.poll() is not None:
            self._fail(worker, "exited")

        def write(data: bytes) -> None:
            try:
                worker.process.stdin.write(data)
                worker.process.stdin.flush()
            except (OSError, ValueError):  # it died (no reader on the pipe) or the pool closed: the reader sees it
                pass

        threading.Thread(target=write, args=(json.dumps(request).encode() + b"\n",), daemon=True,
                         name=f"generator{index}-writer").start()

    def _receive(self, want: str, pending: set[int], progress: Callable[[int], None] | None) -> dict[int, object]:
        """Each pending worker's `want` message; progress lines on the way go to `progress`."""
        got: dict[int, object] = {}
        limit = self.start_timeout_s if want == "ready" else self.timeout_s
        heard = dict.fromkeys(pending, time.monotonic())
        while len(got) < len(pending):
            try:
                index, line = self._lines.get(timeout=0.5)
            except queue.Empty:
                index, line = None, b""
            if index is not None:
                worker = self._workers[index]
                if line is None:
                    self._fail(worker, "exited")
                message = _message(line)
                if message is None or index not in pending or index in got:
                    self._fail(worker, f"wrote a line that is not the protocol: {line[:200]!r}")
                (key, value), = message.items()
                heard[index] = time.monotonic()
                if key == "progress" and want == "result" and type(value) is int:
                    if progress is not None:
                        progress(value)
                elif key == want:
                    got[index] = value
                else:
                    self._fail(worker, f"wrote {key!r} where {want!r} was due: {line[:200]!r}")
            now = time.monotonic()
            for i in pending - got.keys():
                if now - heard[i] > limit:
                    self._fail(self._workers[i], f"sent nothing for {limit:g} s (stuck?)")
        return got

    def _fail(self, worker: _Worker, what: str) -> NoReturn:
        if what == "exited":
            try:
                code = worker.process.wait(5)
                what = f"exited with code {code}" + (f" ({signal.Signals(-code).name})" if code < 0 else "")
            except (subprocess.TimeoutExpired, ValueError):
                what = "closed its output"
        message = (f"generation worker {worker.index} of {len(self._workers)} ({worker.where()}, pid "
                   f"{worker.process.pid}) {what}; the end of its stderr:\n{worker.tail()}")
        self.close(kill=True)
        raise GenerationWorkerError(message)

    def close(self, kill: bool = False, grace_s: float = 10.0) -> None:
        """Stop every worker: asked to leave (stdin closed, they close their engines) and killed after
        `grace_s`, or killed at once with `kill` or while a request is out (a busy worker reads no stdin)."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self._at_exit)
        if kill or self._busy:  # first: a writer thread blocked on a full pipe then fails and lets go of stdin
            for w in self._workers:
                _kill_group(w.process)
        for w in self._workers:
            try:
                w.process.stdin.close()
            except OSError:
                pass
        deadline = time.monotonic() + grace_s
        for w in self._workers:
            try:
                w.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _kill_group(w.process)
                w.process.wait()
            w.stderr.close()

    def _at_exit(self) -> None:  # a pool left open: the interpreter is leaving, so a shorter grace
        self.close(grace_s=2.0)


def _kill_group(process: subprocess.Popen) -> None:
    """SIGKILL to the worker's process group (it and anything it started), while its pid is still its own:
    not yet reaped by us (alive, or a zombie that holds the pid)."""
    if process.returncode is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _message(line: bytes) -> dict | None:
    """A protocol line: a JSON object with one key; else None."""
    try:
        message = json.loads(line)
    except ValueError:
        return None
    return message if isinstance(message, dict) and len(message) == 1 else None


class GeneratorPool(Generator):
    """`Generator`'s interface (answer, sample, encode, tokenizer, close) over an `EnginePool` of `workers`
    engine processes on the same model. Greedy answers equal one engine's; sampled ones draw with the same
    per-prompt seeds. A whole `answer` call is split once (each worker takes its shard `chunk` prompts at a
    time), so the workers never wait for each other between chunks."""

    def __init__(self, model_dir: str | Path, workers: int, max_model_len: int = 1024, dtype: str = "float32",
                 kv_cache_gib: float = 1.0, seed: int = 0, system_prompt: str | None = None,
                 timeout_s: float = 900.0, start_timeout_s: float = 600.0):
        if not (Path(model_dir) / "config.json").exists():
            raise ConfigError(f"{model_dir}: no config.json (not a model directory)")
        pool = EnginePool(model_dir, workers, max_model_len, dtype, kv_cache_gib, seed, timeout_s, start_timeout_s)
        try:  # the tokenizer loads while the workers start
            super().__init__(model_dir, max_model_len, dtype, kv_cache_gib, seed, system_prompt, engine=pool)
            pool.wait_ready()
        except BaseException:
            pool.close(kill=True)
            raise

    def _greedy_or_sampled(self, prompts: list[np.ndarray], max_new_tokens: int, progress, chunk: int,
                           temperature: float, seed: int) -> list[np.ndarray]:
        gen = self.engine.generate(prompts, 1, max_new_tokens, temperature=temperature,
                                   seed=None if temperature == 0 else seed, logprobs=False, chunk=chunk,
                                   progress=progress)
        return split_responses(gen.tokens, gen.lengths)


# ----------------------------------------------------------------------------- the worker's side


def serve(spec: dict) -> None:
    """One engine answering requests from stdin until it closes. Only protocol lines reach the real stdout:
    everything else written there (vLLM's logs, stray prints) is sent to stderr."""
    out = os.fdopen(os.dup(1), "w", buffering=1)  # line-buffered: each message leaves whole, at once
    os.dup2(2, 1)
    from tiller.actors.engine import VLLMEngine
    from tiller.config import RolloutConfig

    engine = VLLMEngine(Path(spec["model"]), RolloutConfig(max_model_len=spec["max_model_len"], dtype=spec["dtype"],
                                                           kv_cache_gib=spec["kv_cache_gib"]), seed=spec["seed"])

    def send(message: dict) -> None:
        out.write(json.dumps(message) + "\n")

    send({"ready": True})
    for line in sys.stdin:
        req = json.loads(line)
        prompts = [np.asarray(p, np.int32) for p in req["prompts"]]
        k, chunk, seed = req["k"], req["chunk"], req["seed"]
        parts = []
        for lo in range(0, len(prompts), chunk):
            part = prompts[lo:lo + chunk]
            parts.append(engine.generate(part, k, req["max_new_tokens"], temperature=req["temperature"],
                                         top_p=req["top_p"], seed=shard_seed(seed, lo, k), logprobs=req["logprobs"]))
            send({"progress": len(part)})
        gen = join(parts, 0.0)
        send({"result": {"tokens": gen.tokens.tolist(), "lengths": gen.lengths.tolist(),
                         "logprobs": gen.logprobs.tolist(), "truncated": gen.truncated.tolist()}})
    engine.close()
    out.close()
    os._exit(0)  # Python's teardown of torch and vLLM only delays the parent's close


if __name__ == "__main__":
    serve(json.loads(sys.argv[1]))
