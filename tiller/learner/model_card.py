"""The learner's model card: what its published weights fit, announced to actors before any weights.

    card = model_card(trainer, model_dir, "float32", incarnation)   # served for ModelRequest (server.py)

Names, shapes and dtypes are exactly those `WeightPublisher` publishes, in order (tied weights under both
names, persistent buffers last), so an actor can check every tensor it will be sent against its own model.
"""

from __future__ import annotations

from pathlib import Path

from tiller.model_files import eos_ids
from tiller.training.lora import named_weights
from tiller.protocol.messages import ModelCard


def model_card(trainer, model_dir: str | Path, actor_dtype: str, incarnation: int) -> ModelCard:
    config = trainer.reference.config  # never partitioned (ZeRO-3 partitions the policy's parameters)
    module = trainer.module
    names, shapes, dtypes = [], [], []
    params, buffers = named_weights(module)  # what the publisher sends: checkpoint names, LoRA merged
    for name, tensor in [(n, p) for n, p, _ in params] + buffers:
        names.append(name)
        shapes.append(list(getattr(tensor, "ds_shape", tensor.shape)))  # ZeRO-3: the whole shape, not the shard
        dtypes.append(actor_dtype if tensor.is_floating_point() else str(tensor.dtype).removeprefix("torch."))
    architecture = (getattr(config, "architectures", None) or [type(module).__name__])[0]  # the reference's: plain
    return ModelCard(incarnation, architecture, int(config.vocab_size), eos_ids(Path(model_dir)),
                     int(getattr(config, "max_position_embeddings", 0) or 0), names, shapes, dtypes)
