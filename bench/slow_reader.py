"""A peer that asks and never reads, against a live demo run: steps trained before, while and after it sits.

    python bench/slow_reader.py                  # the CPU demo (configs/demo.yaml), 20 s windows

The peer is what any local process can be without CURVE: a DEALER socket with a receive high-water mark of 1
that sends 1,200 weight requests and reads none of the answers, for one window, then closes. Before the
learner's sends were made non-blocking, one such peer froze its socket thread: 122 steps in the 30 s before,
1 while it sat, 0 after it left (the run never recovered). Prints steps per window and the ratios against the
window before, in one run; writes bench/results/slow_reader.json.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zmq

sys.path.insert(0, str(Path(__file__).parents[1]))
from bench._runs import ROOT, save  # noqa: E402
from tiller.protocol import encode  # noqa: E402
from tiller.protocol.messages import Status, StatusRequest, WeightsRequest  # noqa: E402
from tiller.protocol.transport import LearnerClient  # noqa: E402


def free_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def steps_done(metrics: Path) -> int:
    return len(metrics.read_text().splitlines()) if metrics.exists() else 0


def status(address: str) -> Status:
    client = LearnerClient(address)
    try:
        reply = client.request(StatusRequest("bench"), timeout_s=5)
    finally:
        client.close()
    if not isinstance(reply, Status):
        raise SystemExit(f"the learner did not answer a status request within 5 s ({reply!r})")
    return reply


def main(window_s: float = 20.0, config: str = "configs/demo.yaml") -> dict:
    address, out = free_address(), Path(tempfile.mkdtemp(prefix="slow-reader-"))
    metrics = out / "bench" / "metrics.jsonl"
    run = subprocess.Popen([sys.executable, "-m", "tiller", "run", config, "name=bench", f"output_dir={out}",
                            f"learner.address={address}", "learner.steps=100000", "metrics.wandb=disabled"],
                           cwd=ROOT, stdout=(out / "run.log").open("w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while steps_done(metrics) < 5:  # past start-up
            if run.poll() is not None or time.monotonic() > deadline:
                raise SystemExit((out / "run.log").read_text()[-3000:])
            time.sleep(0.5)
        counts, answer_ms = [], []
        for phase in ("before", "while", "after"):
            peer = None
            if phase == "while":
                learner = status(address)
                peer = zmq.Context.instance().socket(zmq.DEALER)
                peer.setsockopt(zmq.RCVHWM, 1)
                peer.connect(address)
                for _ in range(1200):
                    peer.send_multipart(encode(WeightsRequest(learner.policy_version, 0,
                                                              learner.learner_incarnation)), copy=False)
            first = steps_done(metrics)
            time.sleep(window_s / 2)
            asked = time.monotonic()
            status(address)  # an honest status request in the middle of the window
            answer_ms.append(1000 * (time.monotonic() - asked))
            time.sleep(window_s / 2)
            counts.append(steps_done(metrics) - first)
            if peer is not None:
                peer.close(linger=0)
            print(f"{phase:>6} the non-reading peer: {counts[-1]:4d} steps in {window_s:.0f} s; "
                  f"a status request answered in {answer_ms[-1]:.0f} ms", flush=True)
        dropped = json.loads(metrics.read_text().splitlines()[-1]).get("system/protocol/send_dropped", 0)
    finally:
        run.send_signal(signal.SIGINT)
        try:
            run.wait(timeout=60)
        except subprocess.TimeoutExpired:
            run.kill()
    result = {"window_s": window_s, "steps": dict(zip(("before", "while", "after"), counts)),
              "status_answer_ms": answer_ms, "replies_dropped": dropped,
              "while_over_before": counts[1] / max(counts[0], 1), "after_over_before": counts[2] / max(counts[0], 1)}
    print(f"steps while / before: {result['while_over_before']:.2f}x; after / before: "
          f"{result['after_over_before']:.2f}x; replies dropped for the peer: {dropped:.0f}")
    print(f"wrote {save(result, 'slow_reader')}")
    from report import write_result
    write_result("slow_reader", ["window", "steps trained", "vs before", "status answered in (ms)"],
                 [[label, n, f"{n / max(counts[0], 1):.2f}×", ms] for label, n, ms in
                  zip(("before the peer", "while it sits", "after it leaves"), counts, answer_ms)],
                 note=f"{window_s:.0f} s windows; {dropped:,.0f} replies dropped for the peer that never reads.",
                 data=result)
    return result


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 20.0)
