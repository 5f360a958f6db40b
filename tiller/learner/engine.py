"""The DeepSpeed side of the learner: the policy engine, the frozen reference, an optional critic.

What one training step does lives with each algorithm (`dpo.py`, `pg.py`); this file owns
the models. Single-process DeepSpeed (world size 1) with the ZeRO stage from config; on CPU it uses
the gloo backend. Two first-run compiles are avoided on purpose (platform notes): the
shared-memory comm op is disabled before `init_distributed`, and the optimizer is torch's
AdamW (`torch_adam`) rather than DeepSpeed's JIT-compiled CPU FusedAdam.

Each engine (policy, critic) steps through its own `FiniteGuard`, so each has its own count of
non-finite steps in a row. `save` (the run's final/) is written whole or not at all: aside, fsynced,
then swapped in for the old directory (`checkpoint.replace_dir`).
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import torch

from tiller.config import Config
from tiller.learner.checkpoint import replace_dir
from tiller.learner.guard import FiniteGuard, assert_finite
from tiller.learner.logprobs import taken_logprobs


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SELF_SET = "TILLER_RANK_VARS_SELF_SET"


def init_single_process_distributed() -> None:
    """Set the rank variables DeepSpeed needs (else it tries MPI discovery) and init gloo.

    Unless a launcher set them, the process group meets through a file, not a TCP port: a port
    found free here can be taken by a process starting beside this one (each vLLM engine picks
    one the same way) before the store binds it, which failed a `tiller run` with EADDRINUSE.
    """
    # Rank variables this function set (marked) are not a launcher's: a process started from one that ran
    # it (a test runner, a notebook) inherits them, and taking them for a launcher's made every such learner
    # bind the same MASTER_PORT.
    launched = (all(key in os.environ for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))
                and SELF_SET not in os.environ)
    if not launched:
        os.environ[SELF_SET] = "1"
    for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(key, value)
    os.environ.setdefault("MASTER_PORT", str(_free_port()))  # unused with the file store; DeepSpeed checks it is set
    import deepspeed

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # an 85 s compile on cold machines
    backend = "gloo" if not torch.cuda.is_available() else "nccl"
    if launched:
        deepspeed.init_distributed(dist_backend=backend)
        return
    store = Path(tempfile.mkdtemp(prefix="tiller-dist-")) / "store"
    deepspeed.init_distributed(dist_backend=backend, init_method=f"file://{store}", rank=0, world_size=1)


def resolve_precision(precision: str) -> str:
    """learner.precision `auto`: bf16 where there is a GPU, fp32 on a CPU (where bf16 matmuls are slow
    on most processors and fp32 keeps the tiny demos on-policy)."""
    if precision != "auto":
        return precision
    return "bf16" if torch.cuda.is_available() else "fp32"


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "float32": torch.float32, "bfloat16": torch.bfloat16}


def _without_dropout(config) -> None:
    """Dropout off everywhere, as TRL and OpenRLHF do: with it on, the learner's own log-probs
    differ between two forward passes, so the first PPO epoch's ratio is not 1 and the KL to the
    reference is noisy."""
    for key, value in config.to_dict().items():
        if "dropout" in key and isinstance(value, float):
            setattr(config, key, 0.0)


def _load(auto_class, path: str, dtype: torch.dtype, **config_kwargs) -> torch.nn.Module:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path, **config_kwargs)
    _without_dropout(config)
    model = auto_class.from_pretrained(path, config=config, dtype=dtype)
    for module in model.modules():  # dropout layers that read no config field
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


def _ds_config(cfg: Config, lr: float, precision: str) -> dict:
    lc = cfg.learner
    # DeepSpeed's own batch bookkeeping only: the learner sets the accumulation boundary itself
    # (guard.py), because how many micro-batches a step has depends on the step's data.
    micro = lc.micro_batch_size or lc.batch_size
    return {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": max(1, -(-lc.batch_size // micro)),
        # bf16: the module in bf16, fp32 master weights and optimizer states kept by DeepSpeed
        "bf16": {"enabled": precision == "bf16"},
        "gradient_clipping": lc.max_grad_norm,
        # torch's AdamW: DeepSpeed's own CPU FusedAdam is a 110 s JIT compile on a cold machine
        "optimizer": {"type": "AdamW", "params": {"lr": lr, "weight_decay": lc.weight_decay, "torch_adam": True}},
        "zero_optimization": {"stage": lc.zero_stage, "stage3_param_persistence_threshold": 0},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


class PolicyTrainer:
    """Owns the DeepSpeed policy engine, the frozen reference model and, for PPO, the critic.

    The critic is a separate model (a token-classification head with one output on the
    policy's backbone) in its own DeepSpeed engine with its own optimizer.
    """

    def __init__(self, cfg: Config, model_dir: str | Path, with_critic: bool = False,
                 reference_dir: str | Path | None = None):
        from transformers import AutoModelForCausalLM, AutoModelForTokenClassification
        import deepspeed

        init_single_process_distributed()
        lc = cfg.learner
        self.cfg = cfg
        self.precision = resolve_precision(lc.precision)
        self.dtype = DTYPES[self.precision]
        # One guard per engine, each with its own skip counter: a shared one let the critic's good
        # steps reset the policy's run of NaN steps, so a policy that only skipped never stopped.
        self.guard = FiniteGuard(lc.max_nonfinite_steps)  # every policy optimizer step goes through it
        self.critic_guard: FiniteGuard | None = None  # every critic step, when there is a critic
        torch.manual_seed(cfg.seed)
        policy = _load(AutoModelForCausalLM, str(model_dir), self.dtype)
        if lc.gradient_checkpointing:
            policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.engine, *_ = deepspeed.initialize(
            model=policy, model_parameters=policy.parameters(), config=_ds_config(cfg, lc.lr, self.precision))
        self.engine.train()
        self.device = self.engine.device  # every batch goes here (cuda:N under a GPU, cpu otherwise)
        # The frozen reference sits beside the policy, in the same dtype, unless offloaded to host memory
        # by config (learner.reference_offload): then it runs on the CPU and only log-probs move.
        self.reference = _load(AutoModelForCausalLM, str(reference_dir or model_dir), self.dtype)
        self.reference.eval().requires_grad_(False)
        self.reference_device = torch.device("cpu") if lc.reference_offload else self.device
        self.reference.to(self.reference_device)
        self.critic = None
        if with_critic:
            # From the policy (a fresh value head) or from a reward model, whose one-logit `score`
            # head becomes the per-token value head (both are `score` on transformers' classifiers).
            critic_dir = str(lc.pg.critic_path or model_dir)
            critic = _load(AutoModelForTokenClassification, critic_dir, self.dtype, num_labels=1)
            if lc.gradient_checkpointing:
                critic.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            self.critic, *_ = deepspeed.initialize(
                model=critic, model_parameters=critic.parameters(),
                config=_ds_config(cfg, lc.pg.critic_lr, self.precision))
            self.critic.train()
            self.critic_guard = FiniteGuard(lc.max_nonfinite_steps, name="critic")
        print(f"learner: policy on {self.device} in {self.precision}"
              f"{', gradient checkpointing' if lc.gradient_checkpointing else ''}; reference on "
              f"{self.reference_device}; "
              f"{f'micro-batches of {lc.micro_batch_size} sequences' if lc.micro_batch_size else 'no micro-batches'}",
              flush=True)

    def reference_logprobs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, mask: torch.Tensor,
                           temperature: float = 1.0) -> torch.Tensor:
        """[N, T-1] log-probs of the taken tokens under the frozen reference, on the policy's device."""
        device = self.reference_device
        with torch.no_grad():
            logits = self.reference(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
            logp, _ = taken_logprobs(logits, input_ids.to(device), mask.to(device), temperature,
                                     chunk_bytes=self.cfg.learner.logprob_chunk_mb << 20)
        return logp.to(self.device)

    def policy_logprobs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, mask: torch.Tensor,
                        temperature: float = 1.0, with_entropy: bool = False):
        """(log-probs [N, T-1], entropy or None) of the taken tokens under the policy being trained."""
        logits = self.engine(input_ids=input_ids, attention_mask=attention_mask).logits
        return taken_logprobs(logits, input_ids, mask, temperature, with_entropy,
                              chunk_bytes=self.cfg.learner.logprob_chunk_mb << 20)

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
        """Full weights as (name, tensor) buckets of about `bucket_bytes`, each tensor passed through
        `copy(name, tensor)` while it is whole (default: a CPU clone; the publisher copies into its own
        buffers). Under ZeRO-3 each bucket's parameters are gathered together, never the whole model
        at once and never one tensor at a time."""
        copy = copy or (lambda name, tensor: tensor.detach().cpu().clone())
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
                yield self._gather(bucket, copy)
                bucket, size = [], 0
        if bucket:
            yield self._gather(bucket, copy)
        if buffers:
            yield [(n, copy(n, b)) for n, b in buffers]

    def _gather(self, bucket: list[tuple[str, torch.nn.Parameter]], copy) -> list[tuple[str, torch.Tensor]]:
        if self.cfg.learner.zero_stage == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters([p for _, p in bucket], modifier_rank=None):
                return [(n, copy(n, p)) for n, p in bucket]
        return [(n, copy(n, p)) for n, p in bucket]

    def save(self, path: str | Path, tokenizer_dir: str | Path | None = None) -> None:
        """Write a transformers checkpoint (loads with AutoModelForCausalLM.from_pretrained),
        with the tokenizer files copied from `tokenizer_dir`. Written whole or not at all: into the
        hidden sibling `.<name>.tmp`, fsynced, then swapped in for any old one (`checkpoint.replace_dir`);
        raises on failure, leaving the old directory in place."""
        path = Path(path)
        state = {n: t for bucket in self.weight_buckets(1 << 62) for n, t in bucket}
        assert_finite(state.items(), f"save {path}")
        tmp = path.parent / f".{path.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            self.module.save_pretrained(str(tmp), state_dict=state)
            for file in Path(tokenizer_dir).glob("*") if tokenizer_dir else []:
                if file.name.startswith(("tokenizer", "special_tokens")):
                    shutil.copy(file, tmp / file.name)
            replace_dir(tmp, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # a failed write's remains (a no-op once renamed in)
