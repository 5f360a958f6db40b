"""The learner's model card: what its published weights fit, announced to actors before any weights.

    card = model_card(trainer, model_dir, "float32", incarnation)   # served for ModelRequest (server.py)

Names, shapes and dtypes are exactly those `WeightPublisher` publishes, in order (tied weights under both
names, persistent buffers last), so an actor can check every tensor it will be sent against its own model.
"""

from __future__ import annotations

from pathlib import Path

from tiller.model_files import eos_ids
from tiller.protocol.messages import ModelCard


def model_card(trainer, model_dir: str | Path, actor_dtype: str, incarnation: int) -> ModelCard:
    config = trainer.reference.config  # never partitioned (ZeRO-3 partitions the policy's parameters)
    module = trainer.module
    names, shapes, dtypes = [], [], []
    for name, param in module.named_parameters(remove_duplicate=False):
        names.append(name)
        shapes.append(list(getattr(param, "ds_shape", param.shape)))  # ZeRO-3: the whole shape, not the shard
        dtypes.append(actor_dtype if param.is_floating_point() else str(param.dtype).removeprefix("torch."))
    persistent = set(module.state_dict())
    for name, buffer in module.named_buffers():
        if name in persistent:
            names.append(name)
            shapes.append(list(buffer.shape))
            dtypes.append(actor_dtype if buffer.is_floating_point() else str(buffer.dtype).removeprefix("torch."))
    architecture = (getattr(config, "architectures", None) or [type(module).__name__])[0]
    return ModelCard(incarnation, architecture, int(config.vocab_size), eos_ids(Path(model_dir)),
                     int(getattr(config, "max_position_embeddings", 0) or 0), names, shapes, dtypes)
