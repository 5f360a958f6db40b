"""The DeepSpeed side of the learner: policy engine, frozen reference, one online-DPO step.

Single-process DeepSpeed (world size 1) with the ZeRO stage from config; on CPU it uses
the gloo backend. Two first-run compiles are avoided on purpose (platform notes): the
shared-memory comm op is disabled before `init_distributed`, and the optimizer is torch's
AdamW (`torch_adam`) rather than DeepSpeed's JIT-compiled CPU FusedAdam.
"""

from __future__ import annotations

import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from tiller.config import Config, DPOConfig
from tiller.learner import losses


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_single_process_distributed() -> None:
    """Set the rank variables DeepSpeed needs (else it tries MPI discovery) and init gloo."""
    for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(key, value)
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    import deepspeed

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # an 85 s compile on cold machines
    deepspeed.init_distributed(dist_backend="gloo" if not torch.cuda.is_available() else "nccl")


@dataclass
class PairBatch:
    """Chosen rows first, then rejected rows: one forward pass for both. Shapes [2B, T] / [2B]."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor
    response_lengths: torch.Tensor

    @property
    def num_pairs(self) -> int:
        return self.input_ids.shape[0] // 2


def build_pair_batch(pairs: list[tuple], pad_id: int) -> PairBatch:
    """pairs: (prompt, chosen, rejected) int arrays. Right-padded to the longest sequence."""
    rows = [(p, c) for p, c, _ in pairs] + [(p, r) for p, _, r in pairs]
    width = max(len(p) + len(r) for p, r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    response = torch.zeros((len(rows), width), dtype=torch.float32)
    for i, (prompt, resp) in enumerate(rows):
        n_p, n_r = len(prompt), len(resp)
        input_ids[i, :n_p] = torch.as_tensor(prompt, dtype=torch.long)
        input_ids[i, n_p:n_p + n_r] = torch.as_tensor(resp, dtype=torch.long)
        attention[i, :n_p + n_r] = 1
        response[i, n_p:n_p + n_r] = 1
    lengths = response.sum(-1).clamp(min=1)
    return PairBatch(input_ids, attention, response, lengths)


def preference_loss(policy: torch.Tensor, reference: torch.Tensor, lengths: torch.Tensor, cfg: DPOConfig):
    """Split [2B] sequence log-probs into chosen/rejected halves and apply the configured variant."""
    b = policy.shape[0] // 2
    pc, pr, rc, rr, lc, lr = policy[:b], policy[b:], reference[:b], reference[b:], lengths[:b], lengths[b:]
    if cfg.variant == "sigmoid":
        return losses.dpo_sigmoid_loss(pc, pr, rc, rr, cfg.beta, cfg.label_smoothing)
    if cfg.variant == "ipo":
        return losses.ipo_loss(pc, pr, rc, rr, lc, lr, cfg.beta)
    return losses.simpo_loss(pc, pr, lc, lr, cfg.beta, cfg.simpo_gamma)


class PolicyTrainer:
    """Owns the DeepSpeed policy engine and the frozen reference model."""

    def __init__(self, cfg: Config, model_dir: str | Path):
        from transformers import AutoModelForCausalLM
        import deepspeed

        init_single_process_distributed()
        self.cfg = cfg
        torch.manual_seed(cfg.seed)
        policy = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
        self.reference = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
        self.reference.eval().requires_grad_(False)
        lc = cfg.learner
        ds_config = {
            "train_micro_batch_size_per_gpu": lc.batch_size,
            "gradient_accumulation_steps": 1,
            "gradient_clipping": lc.max_grad_norm,
            "optimizer": {
                "type": "AdamW",
                "params": {"lr": lc.lr, "weight_decay": lc.weight_decay, "torch_adam": True},
            },
            "zero_optimization": {"stage": lc.zero_stage, "stage3_param_persistence_threshold": 0},
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }
        self.engine, *_ = deepspeed.initialize(model=policy, model_parameters=policy.parameters(), config=ds_config)
        self.engine.train()

    @property
    def module(self) -> torch.nn.Module:
        return self.engine.module

    def step(self, batch: PairBatch) -> dict[str, float]:
        """One optimizer step of the configured DPO variant on a batch of pairs."""
        dpo = self.cfg.learner.dpo
        logits = self.engine(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        policy_logps = losses.sequence_logprobs(logits, batch.input_ids, batch.response_mask)
        with torch.no_grad():
            if dpo.variant == "simpo":  # reference-free: skip the reference forward
                ref_logps = torch.zeros_like(policy_logps)
            else:
                ref_logits = self.reference(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
                ref_logps = losses.sequence_logprobs(ref_logits, batch.input_ids, batch.response_mask)
        loss, metrics = preference_loss(policy_logps, ref_logps, batch.response_lengths, dpo)
        self.engine.backward(loss)
        self.engine.step()
        metrics["loss"] = loss.item()
        metrics["grad_norm"] = float(self.engine.get_global_grad_norm() or 0.0)
        # Sequence-level KL(policy || reference) estimate on the sampled responses (k1).
        metrics["kl/sequence"] = (policy_logps.detach() - ref_logps).mean().item()
        return metrics

    def weight_buckets(self, bucket_bytes: int) -> Iterator[list[tuple[str, torch.Tensor]]]:
        """Full weights as (name, cpu tensor) buckets of about `bucket_bytes`.

        Under ZeRO-3 each bucket's parameters are gathered together, never the whole model
        at once and never one tensor at a time.
        """
        # remove_duplicate=False: tied weights (lm_head = embed_tokens) go under both names,
        # as in a checkpoint, so the engine's loader finds every tensor it expects.
        named = list(self.module.named_parameters(remove_duplicate=False))
        persistent = set(self.module.state_dict())
        buffers = [(n, b) for n, b in self.module.named_buffers() if n in persistent]
        bucket: list[tuple[str, torch.nn.Parameter]] = []
        size = 0
        for name, param in named:
            numel = param.ds_numel if hasattr(param, "ds_numel") else param.numel()
            bucket.append((name, param))
            size += numel * param.element_size()
            if size >= bucket_bytes:
                yield self._gather(bucket)
                bucket, size = [], 0
        if bucket:
            yield self._gather(bucket)
        if buffers:
            yield [(n, b.detach().cpu().clone()) for n, b in buffers]

    def _gather(self, bucket: list[tuple[str, torch.nn.Parameter]]) -> list[tuple[str, torch.Tensor]]:
        if self.cfg.learner.zero_stage == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters([p for _, p in bucket], modifier_rank=None):
                return [(n, p.detach().cpu().clone()) for n, p in bucket]
        return [(n, p.detach().cpu().clone()) for n, p in bucket]

    def save(self, path: str | Path, tokenizer_dir: str | Path | None = None) -> None:
        """Write a transformers checkpoint (loads with AutoModelForCausalLM.from_pretrained),
        with the tokenizer files copied from `tokenizer_dir`."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {n: t for bucket in self.weight_buckets(1 << 62) for n, t in bucket}
        self.module.save_pretrained(str(path), state_dict=state)
        for file in Path(tokenizer_dir).glob("*") if tokenizer_dir else []:
            if file.name.startswith(("tokenizer", "special_tokens")):
                shutil.copy(file, path / file.name)
