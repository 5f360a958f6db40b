"""The DeepSpeed side of every stage: one engine class for any trained model, and frozen models.

    precision = resolve_precision("auto")                                       # tiller.training.precision
    trained = ModelEngine(load_model(AutoModelForCausalLM, path, DTYPES[precision]),  # dropout off
                          OptimConfig(lr=1e-5, precision=precision, batch_size=8, micro_batch_size=4))
    metrics = trained.step([lambda: loss_of(chunk) for chunk in chunks])          # through its own guard
    reference = load_frozen(path, DTYPES[precision], trained.device)
    trained.save(run_dir / "final", tokenizer_dir=path)

What one training step does lives with each update (the online learner's `dpo.py` and `pg.py`, the
offline stages); this file owns the models. A policy, PPO's critic and a reward model are each a
`ModelEngine`. Single-process DeepSpeed (world size 1) with the ZeRO stage from `OptimConfig`; on CPU it uses
the gloo backend. Two first-run compiles are avoided on purpose (platform notes): the
shared-memory comm op is disabled before `init_distributed`, and the optimizer is torch's
AdamW (`torch_adam`) rather than DeepSpeed's JIT-compiled CPU FusedAdam.

Each engine (policy, critic, reward model) steps through its own `FiniteGuard`, so each has its own count of
non-finite steps in a row. `save` (the run's final/) is written whole or not at all: aside, fsynced,
then swapped in for the old directory (`checkpoint.replace_dir`).
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch

from tiller.training.checkpoint import replace_dir
from tiller.training.lora import Delta, is_lora, merged_value, named_weights
from tiller.training.guard import FiniteGuard, assert_finite


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
    if torch.distributed.is_initialized():  # a second engine in this process (PPO's critic beside the policy)
        return
    backend = "gloo" if not torch.cuda.is_available() else "nccl"
    if launched:
        deepspeed.init_distributed(dist_backend=backend)
        return
    store = Path(tempfile.mkdtemp(prefix="tiller-dist-")) / "store"
    deepspeed.init_distributed(dist_backend=backend, init_method=f"file://{store}", rank=0, world_size=1)


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "float32": torch.float32, "bfloat16": torch.bfloat16}


def _without_dropout(config) -> None:
    """Dropout off everywhere, as TRL and OpenRLHF do: with it on, the learner's own log-probs
    differ between two forward passes, so the first PPO epoch's ratio is not 1 and the KL to the
    reference is noisy."""
    for key, value in config.to_dict().items():
        if "dropout" in key and isinstance(value, float):
            setattr(config, key, 0.0)


def load_model(auto_class, path: str, dtype: torch.dtype, **config_kwargs) -> torch.nn.Module:
    """`auto_class.from_pretrained(path)` in `dtype` with every dropout off; `config_kwargs` go to its
    config (num_labels=1 for a one-score head)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path, **config_kwargs)
    _without_dropout(config)
    model = auto_class.from_pretrained(path, config=config, dtype=dtype)
    for module in model.modules():  # dropout layers that read no config field
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


def load_frozen(path: str | Path, dtype: torch.dtype, device: torch.device | str, auto_class=None
                ) -> torch.nn.Module:
    """A model that is never trained (a reference): in eval mode, without gradients, on `device`.
    `auto_class` defaults to AutoModelForCausalLM."""
    if auto_class is None:
        from transformers import AutoModelForCausalLM as auto_class
    model = load_model(auto_class, str(path), dtype)
    model.eval().requires_grad_(False)
    return model.to(device)


@dataclass(frozen=True)
class OptimConfig:
    """What DeepSpeed needs to train one model, whichever stage's config it comes from. `precision` is
    resolved ("fp32" or "bf16", `resolve_precision`) and is the dtype the model was loaded in;
    `micro_batch_size` 0 means the whole `batch_size` at once."""

    lr: float
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0  # 0: no clipping (DeepSpeed's gradient_clipping)
    zero_stage: int = 0
    precision: str = "fp32"
    batch_size: int = 1
    micro_batch_size: int = 0

    def __post_init__(self):
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"OptimConfig.precision is {self.precision!r}: resolve it first (fp32 or bf16)")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"OptimConfig.zero_stage is {self.zero_stage}: DeepSpeed has stages 0 to 3")


def deepspeed_config(optim: OptimConfig) -> dict:
    """The DeepSpeed config of one engine."""
    # DeepSpeed's own batch bookkeeping only: the guard sets the accumulation boundary itself
    # (guard.py), because how many micro-batches a step has depends on the step's data.
    micro = optim.micro_batch_size or optim.batch_size
    return {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": max(1, -(-optim.batch_size // micro)),
        # bf16: the module in bf16, fp32 master weights and optimizer states kept by DeepSpeed
        "bf16": {"enabled": optim.precision == "bf16"},
        "gradient_clipping": optim.max_grad_norm,
        # torch's AdamW: DeepSpeed's own CPU FusedAdam is a 110 s JIT compile on a cold machine; torch's fused
        # kernel (passed through to torch.optim.AdamW) took 5 ms a step where its plain loop took 23 ms
        # (3.95M parameters, bench/offline_vs_trl.py)
        "optimizer": {"type": "AdamW",
                      "params": {"lr": optim.lr, "weight_decay": optim.weight_decay, "torch_adam": True,
                                 "fused": True}},
        "zero_optimization": {"stage": optim.zero_stage, "stage3_param_persistence_threshold": 0},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


class ModelEngine:
    """One trainable model (a policy, a critic, a reward model) in its own DeepSpeed engine, with its own
    optimizer and its own `FiniteGuard`.

    `engine` is the DeepSpeed engine (call it for a forward pass; `save_checkpoint`/`load_checkpoint` keep
    the optimizer state); `step(chunks)` is one optimizer step through the guard; `weight_buckets` gives
    the full weights (gathered under ZeRO-3) for publishing or checking; `save` writes a final/ directory.
    """

    def __init__(self, model: torch.nn.Module, optim: OptimConfig, max_nonfinite_steps: int = 5,
                 name: str = "policy", setting: str = "max_nonfinite_steps", gradient_checkpointing: bool = False):
        import deepspeed

        init_single_process_distributed()  # once per process: a second engine finds the group made
        if gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.optim = optim
        self.name = name
        trainable = [p for p in model.parameters() if p.requires_grad]  # a stage may freeze some layers
        self.engine, *_ = deepspeed.initialize(model=model, model_parameters=trainable,
                                               config=deepspeed_config(optim))
        self.engine.train()
        if self.engine.world_size == 1 and optim.zero_stage == 0:
            # one process: DeepSpeed would flatten every gradient, all-reduce it with itself and copy it back
            # each step (7 ms of a 450 ms step at 3.95M parameters, 43 ms at 12.3M: bench/offline_vs_trl.py)
            self.engine.enable_backward_allreduce = False
        self.device = self.engine.device  # every batch goes here (cuda:N under a GPU, cpu otherwise)
        self.dtype = DTYPES[optim.precision]
        self.guard = FiniteGuard(max_nonfinite_steps, name=name, setting=setting)

    @property
    def module(self) -> torch.nn.Module:
        return self.engine.module

    def __call__(self, *args, **kwargs):
        return self.engine(*args, **kwargs)

    def set_lr(self, lr: float) -> None:
        """The learning rate of the next optimizer steps (a schedule sets it before each)."""
        for group in self.engine.optimizer.param_groups:
            group["lr"] = lr

    def step(self, chunks: Sequence[Callable[[], torch.Tensor]]) -> dict[str, float]:
        """Backward of every micro-batch loss `chunks` compute, then one optimizer step, unless something
        is not finite (`FiniteGuard.step`). Returns {"grad_norm", "skipped"}."""
        return self.guard.step(self.engine, chunks)

    def weight_buckets(self, bucket_bytes: int, copy: Callable[[str, torch.Tensor], torch.Tensor] = None
                       ) -> Iterator[list[tuple[str, torch.Tensor]]]:
        """Full weights as (name, tensor) buckets of about `bucket_bytes`, each tensor passed through
        `copy(name, tensor)` while it is whole (default: a CPU clone; the publisher copies into its own
        buffers). Under ZeRO-3 each bucket's parameters are gathered together, never the whole model
        at once and never one tensor at a time."""
        copy = copy or (lambda name, tensor: tensor.detach().cpu().clone())
        # Tied weights (lm_head = embed_tokens) go under both names, as in a checkpoint, so the engine's
        # loader finds every tensor it expects; a LoRA model's under the plain model's names, adapters merged.
        params, buffers = named_weights(self.module)
        bucket: list[tuple[str, torch.nn.Parameter, Delta]] = []
        size = 0
        for name, param, delta in params:
            numel = param.ds_numel if hasattr(param, "ds_numel") else param.numel()
            bucket.append((name, param, delta))
            size += numel * param.element_size()
            if size >= bucket_bytes:
                yield self._gather(bucket, copy)
                bucket, size = [], 0
        if bucket:
            yield self._gather(bucket, copy)
        if buffers:
            yield [(n, copy(n, b)) for n, b in buffers]

    def _gather(self, bucket: list[tuple[str, torch.nn.Parameter, Delta]], copy) -> list[tuple[str, torch.Tensor]]:
        if self.optim.zero_stage == 3:  # (LoRA is refused under ZeRO-3: its deltas need whole weights)
            import deepspeed

            with deepspeed.zero.GatheredParameters([p for _, p, _ in bucket], modifier_rank=None):
                return [(n, copy(n, p)) for n, p, _ in bucket]
        return [(n, copy(n, merged_value(p, delta))) for n, p, delta in bucket]

    def save(self, path: str | Path, tokenizer_dir: str | Path | None = None, merge: bool = True) -> None:
        """Write a transformers checkpoint (loads with the model's own Auto class `from_pretrained`),
        with the tokenizer files copied from `tokenizer_dir`. A LoRA model is written merged, with its
        adapter in `adapter/` beside it, or (`merge=False`) as the adapter alone. Written whole or not at
        all: into the hidden sibling `.<name>.tmp`, fsynced, then swapped in for any old one
        (`checkpoint.replace_dir`); raises on failure, leaving the old directory in place."""
        path = Path(path)
        tmp = path.parent / f".{path.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            lora = is_lora(self.module)
            if merge or not lora:
                state = {n: t for bucket in self.weight_buckets(1 << 62) for n, t in bucket}
                assert_finite(state.items(), f"save {path}")
                base = self.module.get_base_model() if lora else self.module
                base.save_pretrained(str(tmp), state_dict=state)
            if lora:
                self.module.save_pretrained(str(tmp / "adapter") if merge else str(tmp))
            for file in Path(tokenizer_dir).glob("*") if tokenizer_dir else []:
                if file.name.startswith(("tokenizer", "special_tokens", "chat_template")):
                    shutil.copy(file, tmp / file.name)
            replace_dir(tmp, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # a failed write's remains (a no-op once renamed in)
