"""The DeepSpeed side of the learner: the policy engine, the frozen reference, an optional critic.

What one training step does lives with each algorithm (`dpo.py`, `pg.py`); this file owns
the models. Single-process DeepSpeed (world size 1) with the ZeRO stage from config; on CPU it uses
the gloo backend. Two first-run compiles are avoided on purpose (platform notes): the
shared-memory comm op is disabled before `init_distributed`, and the optimizer is torch's
AdamW (`torch_adam`) rather than DeepSpeed's JIT-compiled CPU FusedAdam.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Iterator

import torch

from tiller.config import Config
from tiller.learner.guard import FiniteGuard, assert_finite


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_single_process_distributed() -> None:
    """Set the rank variables DeepSpeed needs (else it tries MPI discovery) and init gloo.

    Unless a launcher set them, the process group meets through a file, not a TCP port: a port
    found free here can be taken by a process starting beside this one (each vLLM engine picks
    one the same way) before the store binds it, which failed a `tiller run` with EADDRINUSE.
    """
    launched = all(key in os.environ for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))
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


def _ds_config(cfg: Config, lr: float) -> dict:
    lc = cfg.learner
    return {
        "train_micro_batch_size_per_gpu": lc.batch_size,
        "gradient_accumulation_steps": 1,
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
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForTokenClassification
        import deepspeed

        init_single_process_distributed()
        self.cfg = cfg
        self.guard = FiniteGuard(cfg.learner.max_nonfinite_steps)  # every optimizer step goes through it
        torch.manual_seed(cfg.seed)
        policy = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
        self.reference = AutoModelForCausalLM.from_pretrained(str(reference_dir or model_dir), dtype=torch.float32)
        self.reference.eval().requires_grad_(False)
        self.engine, *_ = deepspeed.initialize(
            model=policy, model_parameters=policy.parameters(), config=_ds_config(cfg, cfg.learner.lr))
        self.engine.train()
        self.critic = None
        if with_critic:
            # From the policy (a fresh value head) or from a reward model, whose one-logit `score`
            # head becomes the per-token value head (both are `score` on transformers' classifiers).
            critic_dir = str(cfg.learner.pg.critic_path or model_dir)
            config = AutoConfig.from_pretrained(critic_dir, num_labels=1)
            config.classifier_dropout = 0.0  # dropout would make values (and the value clip) noisy
            critic = AutoModelForTokenClassification.from_pretrained(critic_dir, config=config, dtype=torch.float32)
            self.critic, *_ = deepspeed.initialize(
                model=critic, model_parameters=critic.parameters(), config=_ds_config(cfg, cfg.learner.pg.critic_lr))
            self.critic.train()

    @property
    def module(self) -> torch.nn.Module:
        return self.engine.module

    @property
    def vocab_size(self) -> int:
        """Rows of the reference's embedding table (ZeRO-3 may partition the policy's)."""
        return self.reference.get_input_embeddings().num_embeddings

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
        assert_finite(state.items(), f"save {path}")
        self.module.save_pretrained(str(path), state_dict=state)
        for file in Path(tokenizer_dir).glob("*") if tokenizer_dir else []:
            if file.name.startswith(("tokenizer", "special_tokens")):
                shutil.copy(file, path / file.name)
