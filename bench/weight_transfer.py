"""Weights from the learner into a running vLLM engine, over loopback ZeroMQ, against the ceilings of
the same bytes measured in the same run: a plain memory copy, and raw zero-copy ZeroMQ frames
between the same two processes, in the same buckets.

    python bench/weight_transfer.py                     # 10M, 100M and 500M parameters (float32)
    python bench/weight_transfer.py --sizes 10M 100M    # fewer

For each size a random Qwen2-shaped model is built on the spot. This process plays the learner: a
real `LearnerServer` (socket thread, coordinator) serving a `WeightSnapshot` in 256 MiB buckets. A
second process plays the actor, with a `VLLMEngine` on the model. Each round it
- receives the same bytes as raw frames, bucket by bucket (the socket ceiling);
- fetches the snapshot with the actor's own `WeightStream`, letting each bucket go (fetch);
- streams the snapshot into the engine, as an actor syncs (`load_weights(WeightStream(...))`);
- fetches the whole snapshot, then loads it (the actor's path until 2026-11-29: the baseline).
Goal (issue #12): fetching at >= 0.8x the raw socket ceiling. Writes bench/results/weight_transfer.json.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from tiller.models import TinyShape, random_causal_lm

SHAPES = {  # name -> (vocabulary, shape) of about that many parameters
    "10M": (8000, TinyShape(hidden_size=256, num_layers=8, num_heads=4, num_kv_heads=2, intermediate_size=1024)),
    "100M": (32000, TinyShape(hidden_size=768, num_layers=9, num_heads=12, num_kv_heads=4, intermediate_size=3072)),
    "500M": (32000, TinyShape(hidden_size=1024, num_layers=31, num_heads=16, num_kv_heads=4, intermediate_size=4096)),
}
BUCKET_BYTES = 256 << 20
ROUNDS = 5  # timed rounds of each kind, the kinds taking turns; medians are reported (this host's loopback
# swings by 2x between runs, so the kinds are measured interleaved, under the same conditions)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_model(size: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=f"tiller-wt-{size}-"))
    random_causal_lm(*SHAPES[size]).save_pretrained(str(path))
    return path


def buckets_of(path: Path) -> list[tuple[list[str], list]]:
    """The model's weights as the learner publishes them: (names, tensors) buckets of ~256 MiB."""
    from safetensors.torch import load_file

    state = {}
    for file in sorted(path.glob("*.safetensors")):
        state.update(load_file(str(file)))
    buckets, names, tensors, size = [], [], [], 0
    for name, tensor in state.items():
        names.append(name)
        tensors.append(tensor.contiguous())
        size += tensor.numel() * tensor.element_size()
        if size >= BUCKET_BYTES:
            buckets.append((names, tensors))
            names, tensors, size = [], [], 0
    if names:
        buckets.append((names, tensors))
    return buckets


def memcpy_gbps(buckets, repeats: int = 3) -> float:
    import torch

    sources = [t for _, ts in buckets for t in ts]
    targets = [torch.empty_like(t) for t in sources]
    total = sum(t.numel() * t.element_size() for t in sources)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for target, source in zip(targets, sources):
            target.copy_(source)
        best = min(best, time.perf_counter() - started)
    return total / best / 1e9


def learner_side(size: str) -> dict:
    """Serve `size`'s weights; run the actor process; collect its measurements."""
    import zmq

    from tiller.config import LearnerConfig, RolloutConfig
    from tiller.learner.coordinator import Coordinator
    from tiller.learner.prompts import PromptStream
    from tiller.learner.server import LearnerServer, WeightSnapshot

    model = build_model(size)
    buckets = buckets_of(model)
    total = sum(t.numel() * t.element_size() for _, ts in buckets for t in ts)
    params = sum(t.numel() for _, ts in buckets for t in ts)
    print(f"{size}: {params / 1e6:.0f}M parameters, {total / 1e9:.2f} GB in {len(buckets)} buckets", flush=True)
    address = f"tcp://127.0.0.1:{free_port()}"
    coordinator = Coordinator(PromptStream([np.array([3, 4], np.int32)], [""]), LearnerConfig(), RolloutConfig())
    server = LearnerServer(coordinator, address)
    server.publish(WeightSnapshot(0, buckets))
    server.start()
    # the raw ceiling: the same tensors as zero-copy frames on a plain REP socket, sent when the actor asks
    raw = zmq.Context.instance().socket(zmq.REP)
    raw_port = raw.bind_to_random_port("tcp://127.0.0.1")
    # one message per bucket, asked for one at a time, as the actor fetches: only the codec, the learner's
    # socket thread and its bookkeeping are left out
    frames = [[memoryview(t.view(-1).numpy()) for t in ts] for _, ts in buckets]

    def serve_raw() -> None:
        for _ in range(2 + ROUNDS):  # a warm-up round, the timed ones, one for memory
            for bucket in frames:
                raw.recv()
                raw.send_multipart(bucket, copy=False)

    server_thread = threading.Thread(target=serve_raw, daemon=True)
    server_thread.start()
    actor = subprocess.Popen([sys.executable, __file__, "--actor", address, str(model), str(raw_port), str(len(buckets))],
                             stdout=subprocess.PIPE, text=True)
    try:
        out, _ = actor.communicate(timeout=900)
    finally:
        server.close()
        if actor.poll() is None:
            actor.kill()
    server_thread.join(5)
    raw.close(linger=0)
    result = json.loads(out.strip().splitlines()[-1])
    result.update(size=size, parameters=params, bytes=total, memcpy_gbps=memcpy_gbps(buckets))
    return result


class PeakMemory:
    """The most this process's resident memory grew above its level at entry, sampled every 5 ms."""

    def __init__(self) -> None:
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.peak = 0

    def rss(self) -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * self.page

    def __enter__(self) -> "PeakMemory":
        self.base, self.peak, self._done = self.rss(), 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._done.wait(0.005):
            self.peak = max(self.peak, self.rss() - self.base)

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss() - self.base)


def actor_side(address: str, model: str, raw_port: int) -> None:
    """The actor process: engine up, then rounds of raw receive, fetch, streamed sync, whole sync."""
    import zmq

    from tiller.actors.engine import VLLMEngine
    from tiller.actors.weight_stream import WeightStream
    from tiller.config import RolloutConfig
    from tiller.protocol.transport import LearnerClient

    engine = VLLMEngine(model, RolloutConfig(max_model_len=256, kv_cache_gib=0.25), seed=0)
    req = zmq.Context.instance().socket(zmq.REQ)
    req.connect(f"tcp://127.0.0.1:{raw_port}")
    buckets = int(sys.argv[5])
    client = LearnerClient(address)
    known = [-1, -1]  # learner incarnation and version: unknown until the warm-up round, then known, as a
    # lease reply tells an actor

    def raw() -> int:
        received = 0
        for _ in range(buckets):
            req.send(b"go")
            received += sum(len(f.buffer) for f in req.recv_multipart(copy=False))
        return received

    def streamed(use) -> int:
        weights = WeightStream(client, *known, timeout_s=600)
        use(weights)
        assert weights.complete, weights.failure
        known[:] = [weights.learner, weights.version]
        return weights.bytes

    def drain(weights: WeightStream) -> None:
        for _ in weights:  # each bucket let go once iterated, as the engine lets it go once loaded
            pass

    kinds = {
        "raw": raw,
        "fetch": lambda: streamed(drain),
        "sync_streamed": lambda: streamed(engine.load_weights),  # as an actor syncs
        "sync_whole": lambda: streamed(lambda weights: engine.load_weights(list(weights))),  # the old way
    }
    seconds: dict[str, list[float]] = {kind: [] for kind in kinds}
    sizes: dict[str, int] = {}
    for round_ in range(1 + ROUNDS):  # a warm-up round of each (connections, allocations), then the timed ones
        for kind, run in kinds.items():
            started = time.perf_counter()
            sizes[kind] = run()
            if round_:
                seconds[kind].append(time.perf_counter() - started)
    # Then one untimed round of each for memory, each begun with the C heap's free memory handed back to the
    # system (so that growth is not hidden by memory an earlier kind freed but kept); not done in the timed
    # rounds, whose allocations should meet the heap as an actor's do.
    trim = ctypes.CDLL("libc.so.6").malloc_trim
    peaks = {}
    for kind, run in kinds.items():
        trim(0)
        with PeakMemory() as memory:
            run()
        peaks[kind] = memory.peak
    result = {}
    for kind, times in seconds.items():
        median = float(np.median(times))
        result.update({f"{kind}_s": median, f"{kind}_gbps": sizes[kind] / median / 1e9, f"{kind}_s_rounds": times,
                       f"{kind}_peak_gb": peaks[kind] / 1e9})
    result["fetch_vs_socket"] = result["fetch_gbps"] / result["raw_gbps"]
    result["streamed_vs_whole"] = result["sync_whole_s"] / result["sync_streamed_s"]
    print(json.dumps(result), flush=True)
    client.close()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--actor":
        actor_side(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    args = parser.parse_args()
    results = [learner_side(size) for size in args.sizes]
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "weight_transfer.json").write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "runs": results},
                                                         indent=2))
    print(f"\n{'size':>6}{'GB':>7}{'memcpy':>9}{'raw zmq':>9}{'fetch':>8}{'fetch/raw':>11}"
          f"{'sync streamed':>15}{'sync whole':>12}{'streamed/whole':>16}   (GB/s; sync = fetch + load into vLLM)")
    for r in results:
        print(f"{r['size']:>6}{r['bytes'] / 1e9:>7.2f}{r['memcpy_gbps']:>9.2f}{r['raw_gbps']:>9.2f}"
              f"{r['fetch_gbps']:>8.2f}{r['fetch_vs_socket']:>10.2f}x{r['sync_streamed_gbps']:>15.2f}"
              f"{r['sync_whole_gbps']:>12.2f}{r['streamed_vs_whole']:>15.2f}x")
    print("\nthe actor's resident memory at most grew by (GB):")
    print(f"{'size':>6}{'raw':>8}{'fetch':>8}{'sync streamed':>15}{'sync whole':>12}")
    for r in results:
        print(f"{r['size']:>6}{r['raw_peak_gb']:>8.2f}{r['fetch_peak_gb']:>8.2f}{r['sync_streamed_peak_gb']:>15.2f}"
              f"{r['sync_whole_peak_gb']:>12.2f}")
    print("goal: fetch >= 0.8x the raw socket ceiling")
    print(f"written: {out / 'weight_transfer.json'}")
    from report import write_result
    write_result("weight_transfer", ["size", "GB", "memcpy GB/s", "raw ZeroMQ GB/s", "fetch GB/s", "fetch / raw",
                                     "sync streamed GB/s", "sync whole GB/s", "streamed / whole",
                                     "actor memory growth, streamed / whole (GB)"],
                 [[r["size"], r["bytes"] / 1e9, r["memcpy_gbps"], r["raw_gbps"], r["fetch_gbps"],
                   f"{r['fetch_vs_socket']:.2f}×", r["sync_streamed_gbps"], r["sync_whole_gbps"],
                   f"{r['streamed_vs_whole']:.2f}×", f"{r['sync_streamed_peak_gb']:.2f} / {r['sync_whole_peak_gb']:.2f}"]
                  for r in results],
                 note="Goal (fetch ≥ 0.8× the raw socket): " + ("met at every size." if all(
                     r["fetch_vs_socket"] >= 0.8 for r in results) else "not met at every size."),
                 data={"date": time.strftime("%Y-%m-%d"), "runs": results})


if __name__ == "__main__":
    main()
