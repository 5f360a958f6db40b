"""The wire codec on a rollout of 256 responses x 512 tokens with their behaviour log-probs: encode +
decode time of Tiller's codec (arrays as zero-copy frames, every field checked on decode) against
msgpack of the same data as Python lists (what a plain msgpack protocol would send), in one run.

    python bench/codec.py            # prints a table, writes bench/results/codec.json

Goal (issue #12): under 0.2 ms per encode + decode. The decode side receives `zmq.Frame`-like
buffers exactly as the learner does (memoryviews of the encoded frames), so it pays no copy the
real path would not pay.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import msgpack
import numpy as np

from tiller.protocol.codec import Decoder, encode
from tiller.protocol.messages import REGISTRY, Rollout


def rollout(responses: int = 256, tokens: int = 512, seed: int = 0) -> Rollout:
    rng = np.random.default_rng(seed)
    n = responses * tokens
    return Rollout("actor-0", 1, 7, 1, 3, rng.integers(0, 150_000, n, dtype=np.int32),
                   np.full(responses, tokens, np.int32), -rng.random(n, dtype=np.float32),
                   np.zeros(responses, bool), 1.5, 0.1, 0.2)


class _Frame:
    """What pyzmq hands a receiver with copy=False: an object exposing `.buffer`."""

    def __init__(self, data):
        self.buffer = memoryview(data)
        self.bytes = bytes(data) if len(self.buffer) < 1024 else None


def best_of(fn, repeats: int) -> float:
    """Median seconds of `repeats` calls (after one warm-up)."""
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def main() -> None:
    message = rollout()
    decoder = Decoder(REGISTRY)

    def tiller_round_trip():
        frames = [_Frame(f) for f in encode(message)]
        decoded = decoder.decode(frames)
        assert decoded.response_tokens.shape == message.response_tokens.shape

    as_lists = [message.actor_id, message.incarnation, message.lease_id, message.seq, message.policy_version,
                message.response_tokens.tolist(), message.response_lengths.tolist(), message.logprobs.tolist(),
                message.truncated.tolist(), message.generate_seconds, message.load_seconds, message.idle_seconds]

    def msgpack_round_trip():
        decoded = msgpack.unpackb(msgpack.packb(as_lists))
        assert len(decoded[5]) == len(as_lists[5])

    tiller_s = best_of(tiller_round_trip, 200)
    lists_s = best_of(msgpack_round_trip, 10)
    payload = sum(memoryview(f).nbytes for f in encode(message))
    result = {"date": time.strftime("%Y-%m-%d"), "responses": 256, "tokens": 512, "payload_bytes": payload,
              "tiller_ms": tiller_s * 1e3, "msgpack_lists_ms": lists_s * 1e3, "speedup": lists_s / tiller_s,
              "goal_ms": 0.2, "goal_met": tiller_s * 1e3 < 0.2}
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "codec.json").write_text(json.dumps(result, indent=2))
    print(f"rollout of 256 x 512 tokens + log-probs ({payload / 1e6:.1f} MB on the wire)")
    print(f"{'':28}{'encode + decode':>16}")
    print(f"{'msgpack of Python lists':28}{lists_s * 1e3:>13.2f} ms")
    print(f"{'Tiller codec (zero-copy)':28}{tiller_s * 1e3:>13.3f} ms   {lists_s / tiller_s:,.0f}x faster; "
          f"goal < 0.2 ms: {'met' if result['goal_met'] else 'NOT met'}")
    print(f"written: {out / 'codec.json'}")
    from report import write_result
    write_result("codec", ["payload", "msgpack of Python lists (ms)", "Tiller codec (ms)", "Tiller faster by",
                           "goal < 0.2 ms"],
                 [[f"{payload / 1e6:.1f} MB", lists_s * 1e3, tiller_s * 1e3, f"{lists_s / tiller_s:,.0f}×",
                   "met" if result["goal_met"] else "not met"]],
                 note=f"A rollout of 256 × 512 tokens encodes and decodes in {tiller_s * 1e3:.2f} ms, "
                      f"{lists_s / tiller_s:,.0f}× faster than msgpack of Python lists.", data=result)


if __name__ == "__main__":
    main()
