"""The online learner's models: the policy, the frozen reference and, for PPO, the critic.

    trainer = PolicyTrainer(cfg, model_dir, with_critic=algorithm.critic)
    step = trainer.policy.step(chunks)          # trainer.value.step(...) for the critic

Built from the training core (`tiller/training/engine.py`): the policy and the critic are each a
`ModelEngine` (their own DeepSpeed engine, optimizer and `FiniteGuard`), the reference comes from
`load_frozen`. What this class adds is the online stage's: settings read from `learner.*`, the
reference's placement (beside the policy or offloaded to the CPU), log-probs in the learner's chunks,
and the names the rest of the learner uses (`engine`, `guard`, `critic`, `critic_guard`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import torch

from tiller.config import Config
from tiller.training.engine import (
    DTYPES, ModelEngine, OptimConfig, init_single_process_distributed, load_frozen, load_model,
)
from tiller.training.freezing import freeze_below
from tiller.training.precision import resolve_precision
from tiller.training.lora import with_lora
from tiller.training.logprobs import taken_logprobs

SETTING = "learner.max_nonfinite_steps"  # named when a guard stops the run


def optim_config(cfg: Config, lr: float, precision: str) -> OptimConfig:
    """The DeepSpeed settings of one online engine (the policy's lr, or the critic's)."""
    lc = cfg.learner
    return OptimConfig(lr=lr, weight_decay=lc.weight_decay, max_grad_norm=lc.max_grad_norm,
                       zero_stage=lc.zero_stage, precision=precision, batch_size=lc.batch_size,
                       micro_batch_size=lc.micro_batch_size)


class PolicyTrainer:
    """Owns the policy engine, the frozen reference model and, for PPO, the critic.

    The critic is a separate model (a token-classification head with one output on the
    policy's backbone) in its own DeepSpeed engine with its own optimizer.
    """

    def __init__(self, cfg: Config, model_dir: str | Path, with_critic: bool = False,
                 reference_dir: str | Path | None = None):
        from transformers import AutoModelForCausalLM, AutoModelForTokenClassification

        init_single_process_distributed()
        lc = cfg.learner
        self.cfg = cfg
        self.precision = resolve_precision(lc.precision)
        self.dtype = DTYPES[self.precision]
        torch.manual_seed(cfg.seed)
        # One guard per engine, each with its own skip counter: a shared one let the critic's good
        # steps reset the policy's run of NaN steps, so a policy that only skipped never stopped.
        policy = load_model(AutoModelForCausalLM, str(model_dir), self.dtype)
        # before the optimizer is built: frozen blocks get no optimizer state and the backward pass stops above them
        freeze_below(lc.unfrozen_layers, "learner.unfrozen_layers")(policy)
        policy = with_lora(policy, cfg.model.lora, "CAUSAL_LM")
        self.policy = ModelEngine(policy, optim_config(cfg, lc.lr, self.precision), lc.max_nonfinite_steps,
                                  name="policy", setting=SETTING, gradient_checkpointing=lc.gradient_checkpointing)
        self.engine, self.guard = self.policy.engine, self.policy.guard
        self.device = self.policy.device  # every batch goes here (cuda:N under a GPU, cpu otherwise)
        # The frozen reference sits beside the policy, in the same dtype, unless offloaded to host memory
        # by config (learner.reference_offload): then it runs on the CPU and only log-probs move.
        self.reference_device = torch.device("cpu") if lc.reference_offload else self.device
        self.reference = load_frozen(reference_dir or model_dir, self.dtype, self.reference_device)
        self.value: ModelEngine | None = None  # PPO's critic
        if with_critic:
            # From the policy (a fresh value head) or from a reward model, whose one-logit `score`
            # head becomes the per-token value head (both are `score` on transformers' classifiers).
            critic_dir = str(lc.pg.critic_path or model_dir)
            critic = load_model(AutoModelForTokenClassification, critic_dir, self.dtype, num_labels=1)
            self.value = ModelEngine(critic, optim_config(cfg, lc.pg.critic_lr, self.precision),
                                     lc.max_nonfinite_steps, name="critic", setting=SETTING,
                                     gradient_checkpointing=lc.gradient_checkpointing)
        self.critic = self.value.engine if self.value is not None else None
        # called before every policy and reference forward: the core lender widens or narrows torch's
        # threads there (tiller/learner/core_lending.py); nothing by default
        self.before_forward: Callable[[], object] = lambda: None
        self.thread_metrics: Callable[[], dict[str, float]] = dict  # the lender's per-step report, if any
        self.critic_guard = self.value.guard if self.value is not None else None  # every critic step, if any
        print(f"learner: policy on {self.device} in {self.precision}"
              f"{f', LoRA rank {cfg.model.lora.r} (actors get merged weights)' if cfg.model.lora.r else ''}"
              f"{f', top {lc.unfrozen_layers} blocks trained' if lc.unfrozen_layers is not None else ''}"
              f"{', gradient checkpointing' if lc.gradient_checkpointing else ''}; reference on "
              f"{self.reference_device}; "
              f"{f'micro-batches of {lc.micro_batch_size} sequences' if lc.micro_batch_size else 'no micro-batches'}",
              flush=True)

    def reference_logprobs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, mask: torch.Tensor,
                           temperature: float = 1.0) -> torch.Tensor:
        """[N, T-1] log-probs of the taken tokens under the frozen reference, on the policy's device."""
        self.before_forward()
        return self.reference_pass(input_ids, attention_mask, mask, temperature).to(self.device)

    def reference_pass(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, mask: torch.Tensor,
                       temperature: float = 1.0) -> torch.Tensor:
        """The reference's token log-probs [N, T-1] on its own device, threads left as they are: what a
        thread beside training calls (tiller/learner/reference_ahead.py)."""
        device = self.reference_device
        with torch.no_grad():
            logits = self.reference(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
            logp, _ = taken_logprobs(logits, input_ids.to(device), mask.to(device), temperature,
                                     chunk_bytes=self.cfg.learner.logprob_chunk_mb << 20)
        return logp

    def policy_logprobs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, mask: torch.Tensor,
                        temperature: float = 1.0, with_entropy: bool = False):
        """(log-probs [N, T-1], entropy or None) of the taken tokens under the policy being trained."""
        self.before_forward()
        logits = self.engine(input_ids=input_ids, attention_mask=attention_mask).logits
        return taken_logprobs(logits, input_ids, mask, temperature, with_entropy,
                              chunk_bytes=self.cfg.learner.logprob_chunk_mb << 20)

    def set_lr(self, policy_lr: float, critic_lr: float) -> None:
        """The learning rates of the next optimizer steps (learner.lr_schedule)."""
        self.policy.set_lr(policy_lr)
        if self.value is not None:
            self.value.set_lr(critic_lr)

    @property
    def skipped_steps(self) -> dict[str, int]:
        """Optimizer steps skipped for non-finite numbers over the run, per engine."""
        skipped = {"policy": self.guard.skipped}
        if self.critic_guard is not None:
            skipped["critic"] = self.critic_guard.skipped
        return skipped

    @property
    def module(self) -> torch.nn.Module:
        return self.engine.module

    @property
    def vocab_size(self) -> int:
        """Rows of the reference's embedding table (ZeRO-3 may partition the policy's)."""
        return self.reference.get_input_embeddings().num_embeddings

    def weight_buckets(self, bucket_bytes: int, copy: Callable[[str, torch.Tensor], torch.Tensor] = None
                       ) -> Iterator[list[tuple[str, torch.Tensor]]]:
        """The policy's full weights in buckets (`ModelEngine.weight_buckets`): what actors load."""
        return self.policy.weight_buckets(bucket_bytes, copy)

    def save(self, path: str | Path, tokenizer_dir: str | Path | None = None) -> None:
        """The policy as a transformers checkpoint, written whole or not at all (`ModelEngine.save`)."""
        self.policy.save(path, tokenizer_dir)
