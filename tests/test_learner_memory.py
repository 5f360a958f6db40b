"""Precision and memory on the learner: chunked log-probs, micro-batches that give the full batch's
gradient, bf16, gradient checkpointing, dropout off, the device every tensor goes to.
Real DeepSpeed engines on a tiny model built on the spot."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from tiller.config import Config, DPOConfig, LearnerConfig, ModelConfig, PGConfig
from tiller.learner.coordinator import ScoredPrompt
from tiller.learner.dpo import dpo_step
from tiller.learner.pg import pg_step
from tiller.learner.trainer import PolicyTrainer
from tiller.training.logprobs import taken_logprobs

K = 4


def judged(n=4, k=K, seed=0) -> list[ScoredPrompt]:
    """n judged prompts of k samples of different lengths, each with a preference pair."""
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        responses = [rng.integers(3, 34, int(rng.integers(2, 9))).astype(np.int32) for _ in range(k)]
        logprobs = [-rng.random(len(r)).astype(np.float32) - 2.5 for r in responses]
        scores = rng.random(k).astype(np.float32)
        best, worst = int(scores.argmax()), int(scores.argmin())
        items.append(ScoredPrompt(i, 1, 0, rng.integers(3, 34, int(rng.integers(3, 7))).astype(np.int32),
                                  responses, logprobs, scores, np.zeros(k, bool), pairs=((best, worst),)))
    return items


def trainer_for(model_dir, algorithm="online_dpo", **learner) -> tuple[Config, PolicyTrainer]:
    learner = {"lr": 1e-3, "batch_size": 4, "pg": PGConfig(ppo_epochs=1, minibatches=1, critic_lr=1e-3)} | learner
    cfg = Config(model=ModelConfig(path=str(model_dir)), learner=LearnerConfig(algorithm=algorithm, **learner))
    return cfg, PolicyTrainer(cfg, model_dir, with_critic=algorithm == "ppo")


def gradients_of_one_step(engine, run_step) -> tuple[dict, dict]:
    """Run one step; return (the gradient the optimizer was handed, the step's metrics)."""
    captured = {}
    original = engine.step

    def step_and_capture(*args, **kwargs):
        if not captured:
            captured.update({n: p.grad.detach().clone() for n, p in engine.module.named_parameters()
                             if p.grad is not None})
        return original(*args, **kwargs)

    engine.step = step_and_capture
    try:
        torch.manual_seed(0)  # minibatch order
        metrics = run_step()
    finally:
        engine.step = original
    return captured, metrics


# --------------------------------------------------------------------------- chunked log-probs


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_chunked_logprobs_and_entropy_equal_the_plain_computation(dtype):
    torch.manual_seed(0)
    n, t, v, temperature = 3, 9, 61, 0.7
    logits = torch.randn(n, t, v, dtype=dtype, requires_grad=True)
    ids = torch.randint(0, v, (n, t))
    mask = torch.rand(n, t - 1) > 0.3
    weights = torch.randn(2, n, t - 1)
    # chunks of 2 positions: many chunks, a ragged last one
    logp, entropy = taken_logprobs(logits, ids, mask, temperature, with_entropy=True, chunk_bytes=4 * v * 2)
    (logp * weights[0] + entropy * weights[1]).sum().backward()
    chunked_grad, logits.grad = logits.grad.clone(), None

    plain = torch.log_softmax(logits[:, :-1].float() / temperature, dim=-1)
    plain_logp = plain.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1) * mask
    plain_entropy = -(plain.exp() * plain).sum(-1) * mask
    (plain_logp * weights[0] + plain_entropy * weights[1]).sum().backward()

    assert torch.allclose(logp, plain_logp.float(), atol=1e-5)
    assert torch.allclose(entropy, plain_entropy.float(), atol=1e-5)
    assert torch.allclose(chunked_grad, logits.grad, atol=1e-5)
    assert chunked_grad.dtype == dtype
    assert (logp[~mask] == 0).all() and (chunked_grad[:, -1] == 0).all()  # unselected: no value, no gradient


def test_chunked_logprobs_keep_bf16_gradients_in_bf16():
    logits = torch.randn(2, 5, 40, dtype=torch.bfloat16, requires_grad=True)
    logp, _ = taken_logprobs(logits, torch.randint(0, 40, (2, 5)))
    logp.sum().backward()
    assert logp.dtype == torch.float32 and logits.grad.dtype == torch.bfloat16


# --------------------------------------------------------------------------- micro-batches


@pytest.mark.slow
@pytest.mark.parametrize("zero_stage", [0, 2])
def test_dpo_micro_batches_give_the_full_batch_gradient(tiny_policy_dir, zero_stage):
    items = judged()
    _, whole = trainer_for(tiny_policy_dir, zero_stage=zero_stage)
    cfg, micro = trainer_for(tiny_policy_dir, zero_stage=zero_stage, micro_batch_size=2)  # one pair at a time
    if zero_stage:  # ZeRO keeps gradients in its partitions: compare the norm it reports and the step's metrics
        m_whole = dpo_step(whole, items, cfg, pad_id=0)
        m_micro = dpo_step(micro, items, cfg, pad_id=0)
        assert m_micro["grad_norm"] == pytest.approx(m_whole["grad_norm"], rel=1e-5)
    else:
        g_whole, m_whole = gradients_of_one_step(whole.engine, lambda: dpo_step(whole, items, cfg, 0))
        g_micro, m_micro = gradients_of_one_step(micro.engine, lambda: dpo_step(micro, items, cfg, 0))
        assert g_whole.keys() == g_micro.keys() and g_whole
        for name in g_whole:
            assert torch.allclose(g_micro[name], g_whole[name], atol=1e-5, rtol=1e-4), name
    assert m_micro["loss"] == pytest.approx(m_whole["loss"], abs=1e-6)
    assert m_micro["rewards/accuracy"] == m_whole["rewards/accuracy"]


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])
def test_policy_gradient_micro_batches_give_the_full_batch_gradient(tiny_policy_dir, algorithm):
    """Token-mean losses: each micro-batch weighted by its share of the minibatch's tokens."""
    items = judged()
    cfg, whole = trainer_for(tiny_policy_dir, algorithm)
    _, micro = trainer_for(tiny_policy_dir, algorithm, micro_batch_size=3)  # 16 samples in 6 ragged pieces
    g_whole, m_whole = gradients_of_one_step(whole.engine, lambda: pg_step(whole, items, cfg, 0))
    g_micro, m_micro = gradients_of_one_step(micro.engine, lambda: pg_step(micro, items, cfg, 0))
    for name in g_whole:
        assert torch.allclose(g_micro[name], g_whole[name], atol=1e-5, rtol=1e-4), name
    for key in ("loss", "policy/approx_kl", "entropy", "grad_norm"):
        assert m_micro[key] == pytest.approx(m_whole[key], rel=1e-4, abs=1e-6), key
    if algorithm == "ppo":
        assert m_micro["loss/value"] == pytest.approx(m_whole["loss/value"], rel=1e-5)
        assert m_micro["critic/grad_norm"] == pytest.approx(m_whole["critic/grad_norm"], rel=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("zero_stage", [0, 2])
def test_a_nan_in_a_later_micro_batch_skips_the_whole_step(tiny_policy_dir, zero_stage):
    cfg, trainer = trainer_for(tiny_policy_dir, "grpo", zero_stage=zero_stage, micro_batch_size=4)
    items = judged()
    items[-1].logprobs[0][:] = np.nan  # only the last micro-batch sees it
    before = {n: t.clone() for b in trainer.weight_buckets(1 << 30) for n, t in b}
    metrics = pg_step(trainer, items, cfg, pad_id=0)
    assert metrics["skipped"] == 1.0 and trainer.guard.skipped == 1
    after = {n: t for b in trainer.weight_buckets(1 << 30) for n, t in b}
    assert all(torch.equal(before[n], after[n]) for n in before)
    metrics = pg_step(trainer, judged(seed=1), cfg, pad_id=0)  # clean data trains again
    assert metrics["skipped"] == 0.0 and trainer.guard.in_a_row == 0


# --------------------------------------------------------------------------- bf16, checkpointing, dropout


@pytest.mark.slow
@pytest.mark.parametrize("algorithm,variant", [("online_dpo", "sigmoid"), ("online_dpo", "ipo"),
                                               ("online_dpo", "simpo"), ("ppo", None), ("grpo", None),
                                               ("rloo", None)])
def test_every_algorithm_trains_in_bf16_with_micro_batches_and_checkpointing(tiny_policy_dir, algorithm, variant):
    # lr 1e-2: an Adam step of 1e-3 is below bf16's resolution at 1.0 (2^-8), so norm weights would not move
    cfg, trainer = trainer_for(tiny_policy_dir, algorithm, precision="bf16", micro_batch_size=4, lr=1e-2,
                               gradient_checkpointing=True, dpo=DPOConfig(variant=variant or "sigmoid"))
    assert trainer.precision == "bf16"
    assert {p.dtype for p in trainer.engine.module.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in trainer.reference.parameters()} == {torch.bfloat16}
    assert trainer.engine.module.is_gradient_checkpointing
    before = {n: p.detach().float().clone() for n, p in trainer.engine.module.named_parameters()}
    step = dpo_step if algorithm == "online_dpo" else pg_step
    for seed in range(2):
        metrics = step(trainer, judged(seed=seed), cfg, pad_id=0)
        assert metrics["skipped"] == 0.0 and np.isfinite(metrics["loss"]) and np.isfinite(metrics["grad_norm"])
    changed = [n for n, p in trainer.engine.module.named_parameters() if not torch.equal(p.detach().float(), before[n])]
    assert len(changed) == len(before)


@pytest.fixture(scope="module")
def policy_with_dropout(tiny_policy_dir, tmp_path_factory):
    """The tiny policy, but configured with attention dropout 0.5 (as some checkpoints ship)."""
    path = tmp_path_factory.mktemp("models") / "dropout-policy"
    shutil.copytree(tiny_policy_dir, path)
    config = json.loads((path / "config.json").read_text())
    config["attention_dropout"] = 0.5
    (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.mark.slow
def test_dropout_is_off_so_the_first_ppo_epoch_has_ratio_exactly_one(policy_with_dropout):
    cfg, trainer = trainer_for(policy_with_dropout, "ppo", precision="fp32")
    assert trainer.engine.module.config.attention_dropout == 0.0
    assert trainer.critic.module.config.attention_dropout == 0.0
    metrics = pg_step(trainer, judged(), cfg, pad_id=0)
    assert metrics["policy/ratio_mean"] == 1.0 and metrics["policy/approx_kl"] == 0.0
    assert metrics["kl/mean"] == 0.0  # policy == reference, both without dropout


# --------------------------------------------------------------------------- devices


@pytest.mark.slow
def test_precision_auto_is_fp32_on_a_cpu_and_the_reference_can_be_offloaded(tiny_policy_dir):
    cfg, trainer = trainer_for(tiny_policy_dir, reference_offload=True)
    assert trainer.precision == "fp32" and trainer.device.type == "cpu"
    assert trainer.reference_device.type == "cpu"
    assert dpo_step(trainer, judged(), cfg, pad_id=0)["skipped"] == 0.0


def _cuda():
    return pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.gpu
@_cuda()
@pytest.mark.parametrize("algorithm", ["online_dpo", "ppo", "grpo", "rloo"])
def test_one_step_of_every_algorithm_on_cuda_in_bf16(tiny_policy_dir, algorithm):
    cfg, trainer = trainer_for(tiny_policy_dir, algorithm, micro_batch_size=4)
    assert trainer.precision == "bf16" and trainer.device.type == "cuda"
    assert next(trainer.reference.parameters()).device.type == "cuda"
    step = dpo_step if algorithm == "online_dpo" else pg_step
    metrics = step(trainer, judged(), cfg, pad_id=0)
    assert metrics["skipped"] == 0.0 and np.isfinite(metrics["loss"])


@pytest.mark.gpu
@_cuda()
def test_reference_offloaded_to_the_cpu_beside_a_cuda_policy(tiny_policy_dir):
    cfg, trainer = trainer_for(tiny_policy_dir, "grpo", reference_offload=True)
    assert trainer.device.type == "cuda" and next(trainer.reference.parameters()).device.type == "cpu"
    assert pg_step(trainer, judged(), cfg, pad_id=0)["skipped"] == 0.0


@pytest.mark.gpu
@_cuda()
def test_a_half_billion_parameter_dpo_step_needs_no_more_memory_than_plain_pytorch():
    """Qwen2-0.5B's shape, 16 pairs x 512 tokens in bf16: the step that failed on the first GPU run.
    Its peak memory is compared with the hand-written step of bench/learner_gpu.py, in the same process."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("learner_gpu", Path(__file__).parents[1] / "bench/learner_gpu.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    device = torch.device("cuda", 0)
    model_dir = bench.build_model_dir("0.5b", 512)
    items = bench.make_items(16, 128, 384, bench.SHAPES["0.5b"][0])
    bench.reset_peak(device)
    step, state = bench.plain_dpo(model_dir, items, device, torch.bfloat16)
    step()
    plain_peak = bench.peak_gib(device)
    del step, state
    bench.reset_peak(device)
    cfg, trainer = trainer_for(model_dir, zero_stage=1, batch_size=16)
    metrics = dpo_step(trainer, items, cfg, pad_id=0)
    assert metrics["skipped"] == 0.0 and np.isfinite(metrics["loss"])
    assert bench.peak_gib(device) <= plain_peak, (bench.peak_gib(device), plain_peak)
