"""generation.workers > 1 (tiller/eval/shards.py): prompts split into contiguous shards over engine processes
and joined back in order; greedy answers equal one in-process Generator's; a worker that dies, babbles or
goes silent is a clear error, never a hang; the workers never outlive the pool."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from tiller.actors.engine import Generation
from tiller.config import ConfigError, load_config
from tiller.eval import shards
from tiller.eval.shards import EnginePool, GenerationWorkerError, core_groups, join, shard_bounds, shard_seed

ROOT = Path(__file__).resolve().parent.parent
TEXTS = [f"question {i}: what is {i} plus {i * 3}?" for i in range(13)] + ["Write a poem about the sea.", "Hi"]


# ----------------------------------------------------------------------------- pure


@pytest.mark.parametrize("n,workers", [(10, 2), (11, 2), (7, 3), (1, 2), (0, 2), (5, 5), (3, 4)])
def test_shards_are_contiguous_in_order_and_even(n, workers):
    bounds = shard_bounds(n, workers)
    assert len(bounds) == workers and bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    sizes = [hi - lo for lo, hi in bounds]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def test_shards_join_back_in_the_prompts_order_with_the_seeds_one_engine_would_use():
    n, k, seed, chunk = 11, 3, 100, 2
    # what one engine gives: sample j of prompt i is [i, j] and drew with seed + i*k + j
    prompts = [np.array([i], np.int32) for i in range(n)]
    parts = []
    for lo, hi in shard_bounds(n, 3):
        tokens, seeds = [], []
        s = shard_seed(seed, lo, k)
        for c in range(0, hi - lo, chunk):  # the worker's chunks, as `serve` seeds them
            chunk_seed = shard_seed(s, c, k)
            for i, p in enumerate(prompts[lo + c:min(hi, lo + c + chunk)]):
                for j in range(k):
                    tokens += [int(p[0]), j]
                    seeds.append(chunk_seed + i * k + j)
        assert seeds == [seed + i * k + j for i in range(lo, hi) for j in range(k)]
        m = (hi - lo) * k
        parts.append(Generation(np.array(tokens, np.int32), np.full(m, 2, np.int32), np.zeros(0, np.float32),
                                np.zeros(m, bool), 0.0))
    joined = join(parts, 1.0)
    assert joined.tokens.tolist() == [t for i in range(n) for j in range(k) for t in (i, j)]
    assert joined.lengths.tolist() == [2] * n * k and joined.truncated.shape == (n * k,)
    assert shard_seed(None, 5, 2) is None  # greedy: no seed at all


def test_cores_split_into_contiguous_groups_one_per_worker():
    assert core_groups({3, 1, 0, 2}, 2) == [(0, 1), (2, 3)]
    assert core_groups(range(5), 2) == [(0, 1, 2), (3, 4)]
    assert core_groups([0, 1], 2) == [(0,), (1,)]
    assert core_groups([0, 1], 3) == [(0,), (1,), (0,)]  # more workers than cores: they share, round-robin
    slots = shards.plan_slots(2, cores=[0, 1], gpus=0)
    assert [s.cores for s in slots] == [(0,), (1,)]
    assert slots[1].env()["VLLM_CPU_OMP_THREADS_BIND"] == "1" and "CUDA_VISIBLE_DEVICES" not in slots[1].env()
    assert [s.device for s in shards.plan_slots(2, gpus=2)] in (["0", "1"], os.environ.get("CUDA_VISIBLE_DEVICES",
                                                                                               "").split(",")[:2])
    with pytest.raises(ConfigError, match="one engine per device"):
        shards.plan_slots(3, gpus=2)


def test_workers_is_a_generation_setting_of_at_least_one():
    assert load_config(ROOT / "configs/eval/tiny.yaml", ["eval.generation.workers=2"]).eval.generation.workers == 2
    assert load_config(ROOT / "configs/eval/tiny.yaml").eval.generation.workers == 1
    with pytest.raises(ConfigError, match="workers"):
        load_config(ROOT / "configs/eval/tiny.yaml", ["eval.generation.workers=0"])


# ----------------------------------------------------------------------------- fake workers (no vLLM)

FAKE_WORKER = '''
import json, os, sys, time
mode = os.environ["FAKE_MODE"]
print("fake worker starting", file=sys.stderr, flush=True)
if mode == "dies_at_start":
    print("RuntimeError: no engine for you", file=sys.stderr, flush=True)
    sys.exit(3)
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    request = json.loads(line)
    if mode == "babbles":
        print("INFO 12-02 loading the model...", flush=True)  # a log line on the protocol channel
    elif mode == "silent":
        time.sleep(3600)
    elif mode == "short":
        print(json.dumps({"result": {"tokens": [], "lengths": [], "logprobs": [], "truncated": []}}), flush=True)
time.sleep(3600)  # idle until killed: the pool must kill what does not leave
'''


@pytest.fixture
def fake_worker(tmp_path, monkeypatch):
    (tmp_path / "fake_worker.py").write_text(FAKE_WORKER)
    monkeypatch.setattr(shards, "WORKER_MODULE", "fake_worker")
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")

    def start(mode: str, **kwargs) -> EnginePool:
        monkeypatch.setenv("FAKE_MODE", mode)
        pool = EnginePool(tmp_path, 2, 64, "float32", 1.0, 0, gpus=0, **kwargs)
        pool.wait_ready()
        return pool

    return start


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie is dead (its parent has not reaped it yet)


def wait_gone(pids: list[int], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not any(alive(p) for p in pids)


PROMPTS = [np.arange(3, dtype=np.int32)] * 4


@pytest.mark.parametrize("mode,error", [
    ("babbles", r"worker \d of 2 \(cores .*\) wrote a line that is not the protocol: b'INFO 12-02"),
    ("short", r"worker \d of 2 .* wrote a malformed result \(not 2 samples\)"),
])
def test_a_worker_writing_what_is_not_the_protocol_is_an_error_and_every_worker_is_killed(fake_worker, mode, error):
    pool = fake_worker(mode)
    start = time.monotonic()
    with pytest.raises(GenerationWorkerError, match=error) as caught:
        pool.generate(PROMPTS, 1, 4)
    assert "fake worker starting" in str(caught.value)  # the end of its stderr
    assert time.monotonic() - start < 10 and wait_gone(pool.pids, 5)
    with pytest.raises(GenerationWorkerError, match="closed"):
        pool.generate(PROMPTS, 1, 4)


def test_a_silent_worker_is_an_error_after_the_timeout_not_a_hang(fake_worker):
    pool = fake_worker("silent", timeout_s=1.5)
    start = time.monotonic()
    with pytest.raises(GenerationWorkerError, match=r"worker \d of 2 .* sent nothing for 1.5 s"):
        pool.generate(PROMPTS, 1, 4)
    assert time.monotonic() - start < 8 and wait_gone(pool.pids, 5)


def test_a_worker_that_dies_at_start_is_named_with_its_stderr(fake_worker):
    with pytest.raises(GenerationWorkerError, match=r"(?s)worker \d of 2 .* exited with code 3.*no engine for you"):
        fake_worker("dies_at_start")


def test_workers_do_not_outlive_their_parent(tmp_path, fake_worker):
    """At interpreter exit without close (atexit), and when the parent is killed outright (PR_SET_PDEATHSIG)."""
    script = textwrap.dedent(f'''
        import sys, time
        from tiller.eval import shards
        shards.WORKER_MODULE = "fake_worker"
        pool = shards.EnginePool({str(tmp_path)!r}, 2, 64, "float32", 1.0, 0, gpus=0)
        pool.wait_ready()
        print(" ".join(map(str, pool.pids)), flush=True)
        if sys.argv[1] == "hang":
            time.sleep(3600)
    ''')
    env = {**os.environ, "FAKE_MODE": "idle"}
    done = subprocess.run([sys.executable, "-c", script, "exit"], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    assert wait_gone([int(p) for p in done.stdout.split()], 15)

    parent = subprocess.Popen([sys.executable, "-c", script, "hang"], stdout=subprocess.PIPE, text=True, env=env)
    try:
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) == 2 and all(alive(p) for p in pids)
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        assert wait_gone(pids, 10)
    finally:
        parent.kill()


# ----------------------------------------------------------------------------- real vLLM, real processes


@pytest.fixture(scope="module")
def varied_model(tmp_path_factory) -> Path:
    """A tiny chat model whose greedy answers differ from prompt to prompt (weights drawn wider than the usual
    init: the default tiny model greedily repeats one token, which would make every comparison trivial)."""
    import torch
    from transformers import AutoModelForCausalLM

    from tiller.models import JUDGE_ALPHABET, TINY_CHAT_TEMPLATE, TinyShape, ensure_tiny_policy

    path = ensure_tiny_policy(tmp_path_factory.mktemp("shards") / "model", seed=0, alphabet=JUDGE_ALPHABET,
                              chat_template=TINY_CHAT_TEMPLATE, shape=TinyShape(max_positions=1024))
    model = AutoModelForCausalLM.from_pretrained(path)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.2)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def pool(varied_model):
    from tiller.eval.shards import GeneratorPool

    pool = GeneratorPool(varied_model, 2, seed=0, timeout_s=120, start_timeout_s=240)
    yield pool
    pool.close()


# Both tests below are marked vllm_inprocess, the first because it builds a Generator in this process, the
# second so that conftest's reordering keeps it after the first: it kills the pool they share (one start less).
@pytest.mark.slow
@pytest.mark.vllm_inprocess
def test_a_two_worker_pool_answers_as_one_generator_does(pool, varied_model):
    from tiller.eval.generate import Generator

    progress: list[int] = []
    pooled = pool.answer(TEXTS, 16, progress=progress.append, chunk=3)
    assert sum(progress) == len(TEXTS) and max(progress) <= 3  # per chunk of each worker: the bar moves
    sampled = pool.sample(TEXTS[:5], 3, 8, temperature=1.0, seed=7)
    answered = pool.answer(TEXTS[:6], 8, temperature=1.0, seed=3, chunk=2)
    ids = pool.encode(TEXTS[:7], 8)
    raw = pool.engine.generate(ids, 2, 8, temperature=1.0, seed=5)  # as datagen calls it: k samples, log-probs
    one = Generator(varied_model, seed=0)
    try:
        single = one.answer(TEXTS, 16, chunk=3)
        single_sampled = one.sample(TEXTS[:5], 3, 8, temperature=1.0, seed=7)
        single_answered = one.answer(TEXTS[:6], 8, temperature=1.0, seed=3, chunk=2)
        single_raw = one.engine.generate(ids, 2, 8, temperature=1.0, seed=5)
    finally:
        one.close()
    assert [r.tolist() for r in pooled.response_ids] == [r.tolist() for r in single.response_ids]
    assert pooled.texts == single.texts and pooled.truncated == single.truncated
    assert [p.tolist() for p in pooled.prompt_ids] == [p.tolist() for p in single.prompt_ids]
    assert len({tuple(r.tolist()) for r in pooled.response_ids}) > len(TEXTS) // 2  # not one answer to all
    # sampling draws each prompt with the seed one engine gives it, whichever worker serves it
    assert sampled.texts == single_sampled.texts and answered.texts == single_answered.texts
    assert raw.tokens.tolist() == single_raw.tokens.tolist() and raw.lengths.tolist() == single_raw.lengths.tolist()
    assert raw.truncated.tolist() == single_raw.truncated.tolist() and len(raw.logprobs) == len(raw.tokens)
    np.testing.assert_allclose(raw.logprobs, single_raw.logprobs, atol=1e-4)


@pytest.mark.slow
@pytest.mark.vllm_inprocess
def test_a_worker_killed_mid_run_is_a_clear_error_not_a_hang(pool):
    victim = pool.engine.pids[1]

    def kill_on_first_chunk(n: int) -> None:
        if alive(victim):
            os.kill(victim, signal.SIGKILL)

    start = time.monotonic()
    with pytest.raises(GenerationWorkerError, match=r"worker 1 of 2 \(cores .*\) exited with code -9 \(SIGKILL\)"):
        pool.answer(TEXTS * 8, 24, progress=kill_on_first_chunk, chunk=1)
    assert time.monotonic() - start < 60 and wait_gone(pool.engine.pids, 15)


def _eval(model: Path, out: Path, workers: int) -> subprocess.Popen:
    env = {**os.environ, "WANDB_MODE": "offline", "VLLM_CPU_KVCACHE_SPACE": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "tiller", "eval", str(ROOT / "configs/eval/tiny.yaml"), f"output_dir={out}",
         f"model.path={model}", "eval.max_prompts=1", "eval.kl_samples=0", "eval.generation.max_new_tokens=12",
         f"eval.generation.workers={workers}", "eval.generation.chunk=4"],
        cwd=out, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


@pytest.mark.slow
def test_tiller_eval_with_two_workers_writes_the_answers_of_one(varied_model, tmp_path):
    runs = {w: (tmp_path / f"w{w}") for w in (1, 2)}
    for out in runs.values():
        out.mkdir()
    procs = {w: _eval(varied_model, out, w) for w, out in runs.items()}  # side by side: one start's wait
    logs = {}
    for w, proc in procs.items():
        _, logs[w] = proc.communicate(timeout=400)
        assert proc.returncode == 0, logs[w][-3000:]
    assert "generator1 cores 1" in logs[2] and "generator0" not in logs[1]  # the pool printed its placement
    answers = {w: (out / "eval-tiny" / "answers.jsonl").read_text() for w, out in runs.items()}
    rows = [json.loads(line) for line in answers[2].splitlines()]
    assert len(rows) == 16 and len({r["model"]["answer"] for r in rows}) > 8  # distinct answers, not one repeated
    assert answers[2] == answers[1]
