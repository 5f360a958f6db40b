"""Weights from the learner into a running vLLM engine, over loopback ZeroMQ, against the ceilings of
the same bytes measured in the same run: a plain memory copy, and raw zero-copy ZeroMQ frames
between the same two processes, in the same buckets.

    python bench/weight_transfer.py                     # 10M, 100M and 500M parameters (float32)
    python bench/weight_transfer.py --sizes 10M 100M    # fewer

For each size a random Qwen2-shaped model is built on the spot. This process plays the learner: a
real `LearnerServer` (socket thread, coordinator) serving a `WeightSnapshot` in 256 MiB buckets. A
second process plays the actor: it builds a `VLLMEngine` on the model, receives the same bytes as
raw frames first (the socket ceiling), then fetches the snapshot with the actor's own
`fetch_weights` and loads it into the engine with `load_weights`. Goal (issue #12): fetching at
>= 0.8x the raw socket ceiling. Writes bench/results/weight_transfer.json.
"""

from __future__ import annotations

import argparse
import json
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
ROUNDS = 7  # timed transfers of each kind, raw and fetch taking turns; medians are reported (this host's
# loopback swings by 2x between runs, so the two are measured interleaved, under the same conditions)


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
        for _ in range(1 + ROUNDS):  # a warm-up round, then the timed ones
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


def actor_side(address: str, model: str, raw_port: int) -> None:
    """The actor process: engine up, raw receive (ceiling), then the real fetch and load."""
    import zmq

    from tiller.actors.engine import VLLMEngine
    from tiller.actors.rollout import fetch_weights
    from tiller.config import RolloutConfig
    from tiller.protocol.transport import LearnerClient

    engine = VLLMEngine(model, RolloutConfig(max_model_len=256, kv_cache_gib=0.25), seed=0)
    req = zmq.Context.instance().socket(zmq.REQ)
    req.connect(f"tcp://127.0.0.1:{raw_port}")
    buckets = int(sys.argv[5])
    client = LearnerClient(address)
    raw_times, fetch_times = [], []
    learner = version = -1  # unknown until the warm-up fetch; after it, known, as a lease reply tells an actor
    for _ in range(1 + ROUNDS):  # a warm-up round of each (connections, allocations), then the timed ones
        named = None  # each kind of round starts with the previous fetch's memory free, not held
        started = time.perf_counter()
        raw_bytes = 0
        for _ in range(buckets):
            req.send(b"go")
            raw_bytes += sum(len(f.buffer) for f in req.recv_multipart(copy=False))
        raw_times.append(time.perf_counter() - started)
        named = None
        started = time.perf_counter()
        learner, version, named = fetch_weights(client, learner, version, 600)
        fetch_times.append(time.perf_counter() - started)
    raw_s, fetch_s = float(np.median(raw_times[1:])), float(np.median(fetch_times[1:]))
    started = time.perf_counter()
    engine.load_weights(named)
    load_s = time.perf_counter() - started
    fetched = sum(t.numel() * t.element_size() for _, t in named)
    print(json.dumps({"raw_socket_gbps": raw_bytes / raw_s / 1e9, "fetch_gbps": fetched / fetch_s / 1e9,
                      "fetch_s": fetch_s, "load_s": load_s, "load_gbps": fetched / load_s / 1e9,
                      "fetch_vs_socket": (fetched / fetch_s) / (raw_bytes / raw_s),
                      "raw_s_rounds": raw_times[1:], "fetch_s_rounds": fetch_times[1:]}), flush=True)
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
    print(f"\n{'size':>6}{'GB':>7}{'memcpy':>9}{'raw zmq':>9}{'fetch':>8}{'fetch/raw':>11}{'load':>8}  (GB/s)")
    for r in results:
        print(f"{r['size']:>6}{r['bytes'] / 1e9:>7.2f}{r['memcpy_gbps']:>9.2f}{r['raw_socket_gbps']:>9.2f}"
              f"{r['fetch_gbps']:>8.2f}{r['fetch_vs_socket']:>10.2f}x{r['load_gbps']:>8.2f}")
    print("goal: fetch >= 0.8x the raw socket ceiling")
    print(f"written: {out / 'weight_transfer.json'}")


if __name__ == "__main__":
    main()
