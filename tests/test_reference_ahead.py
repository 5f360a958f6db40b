"""The reference's log-probs computed ahead of the batch (tiller/learner/reference_ahead.py) are the numbers
the steps would compute themselves, laid out where the steps read them; the thread keeps the order,
pins itself and survives its own failure; `run.lend_actor_cores: auto` decides from the probe steps."""

from __future__ import annotations

import queue

import numpy as np
import pytest
import torch

from tiller.config import Config, LearnerConfig, ModelConfig, RolloutConfig, RunConfig
from tiller.learner.coordinator import ScoredPrompt
from tiller.learner.reference_ahead import ReferenceAhead, needed_candidates, with_reference
from tiller.training.logprobs import taken_logprobs


def judged(n=5, k=3, seed=0, pairs=((0, 1),)) -> list[ScoredPrompt]:
    """n judged prompts of different lengths with k responses each."""
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        responses = [rng.integers(3, 34, int(rng.integers(2, 9))).astype(np.int32) for _ in range(k)]
        logprobs = [-rng.random(len(r)).astype(np.float32) for r in responses]
        items.append(ScoredPrompt(i, 1, 0, rng.integers(3, 34, int(rng.integers(2, 7))).astype(np.int32),
                                  responses, logprobs, rng.random(k).astype(np.float32), np.zeros(k, bool),
                                  pairs=pairs))
    return items


@pytest.fixture(scope="module")
def reference(tiny_policy_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_policy_dir, dtype=torch.float32).eval()


def logprob_fn(model, temperature=1.0):
    def fn(ids, attn, mask):
        with torch.no_grad():
            return taken_logprobs(model(input_ids=ids, attention_mask=attn).logits, ids, mask, temperature)[0]
    return fn


def test_pairs_need_both_sides_and_samples_need_all():
    item = judged(1, k=3, pairs=((2, 0),))[0]
    assert needed_candidates(item, "pairs") == [0, 2]
    assert needed_candidates(item, "samples") == [0, 1, 2]
    assert needed_candidates(judged(1, pairs=())[0], "pairs") == []  # no preference: nothing to train


def test_dpo_sums_equal_the_steps_own_reference_pass(reference):
    from tiller.learner.dpo import reference_ahead
    from tiller.training.pairs import build_pair_batch, pair_logprobs

    items = with_reference(judged(pairs=((0, 1), (2, 1))), logprob_fn(reference), "pairs")
    pairs = [(p, c, r) for p in items for c, r in p.pairs]
    batch = build_pair_batch([(p.prompt, p.candidate(c), p.candidate(r)) for p, c, r in pairs], pad_id=0)
    own = pair_logprobs(logprob_fn(reference), batch)  # what dpo_step computes without them
    ahead = reference_ahead(pairs)
    assert ahead.shape == own.shape == (2 * len(pairs),)
    torch.testing.assert_close(ahead, own, atol=1e-4, rtol=1e-5)
    assert reference_ahead(pairs[:-1] + [(judged(1)[0], 0, 1)]) is None  # one pair without: the step computes all


def test_pg_layout_equals_the_steps_own_reference_pass(reference):
    from tiller.learner.pg import build_sample_batch, reference_ahead

    temperature = 0.7
    items = with_reference(judged(), logprob_fn(reference, temperature), "samples")
    batch = build_sample_batch(items, pad_id=0)
    own = logprob_fn(reference, temperature)(batch.input_ids, batch.attention_mask, batch.mask) * batch.mask
    ahead = reference_ahead(items, batch)
    assert ahead.shape == batch.mask.shape
    torch.testing.assert_close(ahead, own, atol=1e-4, rtol=1e-5)
    assert (ahead[batch.mask == 0] == 0).all()  # nothing outside the response tokens
    assert reference_ahead(items[:-1] + judged(1), build_sample_batch(items[:-1] + judged(1), 0)) is None


@pytest.mark.slow
def test_a_dpo_step_skips_its_reference_pass_only_when_every_pair_has_it(tiny_policy_dir):
    from tiller.learner.dpo import dpo_step
    from tiller.learner.trainer import PolicyTrainer

    cfg = Config(model=ModelConfig(path=str(tiny_policy_dir)), learner=LearnerConfig(lr=1e-3, batch_size=4))
    trainer = PolicyTrainer(cfg, tiny_policy_dir)
    passes = []
    own_pass = trainer.reference_logprobs
    trainer.reference_logprobs = lambda *a, **kw: passes.append(1) or own_pass(*a, **kw)
    items = judged(4, k=2)
    ahead = with_reference(items, trainer.reference_pass, "pairs")
    first = dpo_step(trainer, ahead, cfg, pad_id=0)
    assert passes == [] and first["kl/sequence"] == pytest.approx(0.0, abs=1e-4)  # policy == reference at step 0
    dpo_step(trainer, items, cfg, pad_id=0)
    assert passes  # without them the step runs the reference itself


def test_the_thread_keeps_the_order_pins_itself_and_batches_what_waits(reference):
    source: queue.Queue = queue.Queue()
    items = judged(6)
    for item in items:
        source.put(item)
    pinned, calls = [], []
    fn = logprob_fn(reference)
    ahead = ReferenceAhead(lambda *a: calls.append(len(a[0])) or fn(*a), source, cores=[1], needs="pairs",
                           max_rows=4, pin=pinned.append)
    ahead.start()
    try:
        out = [ahead.scored.get(timeout=30) for _ in items]
    finally:
        ahead.stop()
    assert [p.prompt_id for p in out] == [p.prompt_id for p in items] and pinned == [[1]]
    assert all(set(p.reference) == {0, 1} for p in out)
    assert calls == [4, 4, 4]  # two prompts of two rows per pass: what waited together went together
    metrics = ahead.step_metrics()
    assert metrics["reference_ahead/prompts"] == 6 and metrics["reference_ahead/busy_s"] > 0
    assert ahead.step_metrics()["reference_ahead/prompts"] == 0  # since the last call


def test_a_failing_reference_pass_loses_no_prompt():
    source: queue.Queue = queue.Queue()
    items = judged(3)
    for item in items:
        source.put(item)

    def broken(*_):
        raise RuntimeError("out of memory")

    ahead = ReferenceAhead(broken, source, cores=[1], needs="pairs", max_rows=2, pin=lambda cores: None)
    ahead.start()
    try:
        out = [ahead.scored.get(timeout=30) for _ in items]
    finally:
        ahead.stop()
    assert [p.prompt_id for p in out] == [0, 1, 2] and all(not p.reference for p in out)
    assert ahead.failed == "RuntimeError: out of memory"


class FakeServer:
    def __init__(self):
        self.scored: queue.Queue = queue.Queue()
        self.public = {"queues": {"generating": 0}}


class FakeTrainer:
    def reference_pass(self, ids, attn, mask, temperature=1.0):
        return torch.zeros(mask.shape)


@pytest.mark.parametrize("actors_idle,learner_idle,starts", [(0.6, 0.02, True), (0.1, 0.02, False),
                                                                (0.6, 0.5, False)])
def test_auto_lends_the_actors_cores_to_the_reference_only_when_training_is_the_bottleneck(
        monkeypatch, capsys, actors_idle, learner_idle, starts):
    from tiller.learner import lending as lending_module

    monkeypatch.setenv("TILLER_LENT_CORES", "1")
    monkeypatch.delenv("TILLER_CORES", raising=False)  # no own cores named: this test's thread stays unpinned
    cfg = Config(run=RunConfig(lend_actor_cores="auto"), rollout=RolloutConfig(temperature=1.0))
    server = FakeServer()
    lending = lending_module.Lending(cfg, FakeTrainer(), server, needs="pairs")
    assert lending.scored is server.scored
    phases = {"actors/idle_frac": actors_idle, "learner/idle_frac": learner_idle}
    try:
        rows = [lending.after_step(step, phases) for step in range(1, 7)]
        assert [r["reference_ahead/on"] for r in rows] == [0, 0, 0, float(starts), float(starts), float(starts)]
        said = capsys.readouterr().out
        assert ("computed ahead of each batch" in said) == starts
        assert ("stays on its own cores" in said) != starts
        assert f"actors idled {actors_idle:.0%}" in said
        if starts:
            assert lending.scored is lending.ahead.scored
            server.scored.put(judged(1)[0])
            assert set(lending.scored.get(timeout=10).reference) == {0, 1}
    finally:
        lending.close()


def test_auto_probes_the_first_steps_of_a_resumed_start(monkeypatch, capsys):
    from tiller.learner import lending as lending_module

    monkeypatch.setenv("TILLER_LENT_CORES", "1")
    monkeypatch.delenv("TILLER_CORES", raising=False)
    cfg = Config(run=RunConfig(lend_actor_cores="auto"), rollout=RolloutConfig(temperature=1.0))
    lending = lending_module.Lending(cfg, FakeTrainer(), FakeServer(), needs="pairs")
    phases = {"actors/idle_frac": 0.6, "learner/idle_frac": 0.02}
    try:  # resumed after step 40: steps 42-44 are the probe, not the run's 2-4 (long past)
        rows = [lending.after_step(step, phases) for step in range(41, 47)]
        assert [r["reference_ahead/on"] for r in rows] == [0, 0, 0, 1, 1, 1]
        assert "over steps 42-44" in capsys.readouterr().out
    finally:
        lending.close()


def test_without_lent_cores_nothing_is_lent(monkeypatch):
    from tiller.learner.lending import Lending

    monkeypatch.delenv("TILLER_LENT_CORES", raising=False)
    server = FakeServer()
    lending = Lending(Config(run=RunConfig(lend_actor_cores="reference")), FakeTrainer(), server, needs="pairs")
    assert lending.mode == "off" and lending.scored is server.scored and lending.after_step(3, {}) == {}
    lending.close()
