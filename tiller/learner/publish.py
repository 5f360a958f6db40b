"""Weight publishing: the learner's weights copied once into host buffers the server sends zero-copy.

    publisher = WeightPublisher(trainer, actor_dtype=torch.float32, bucket_bytes=256 << 20)
    snapshot, metrics = publisher.snapshot(version)   # metrics: weights/publish_s, weights/publish_gbps

Three things make a publish cost what the hardware allows:
- **The actors' dtype, converted on the learner's device.** A bf16 learner feeding float32
  actors (or the reverse) converts before the copy, explicitly and said once in the log, so the
  wire carries exactly what the actors load.
- **Pinned buffers on a GPU.** Device-to-host copies into page-locked memory run at tens of GB/s
  where pageable `.cpu()` copies run at one or two (measured on an H200: 52.7 vs 1.32 GB/s). Every
  copy of a publish is queued non-blocking, so the next bucket's gather (ZeRO-3) and copy overlap
  the previous bucket's transfer, and one synchronisation ends the publish.
- **Buffers reused across versions.** Pinned allocations are slow, so each buffer set is kept and
  written again by a later version, but only once it is safe: the server no longer offers that
  version (it has been replaced, and every fetch begun on it has ended) and ZeroMQ has released
  every zero-copy frame sent from it (tracked sends). Until then the set stays untouched and, if
  none is free, a new one is made.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from tiller.learner.weight_shelf import WeightSnapshot
from tiller.training.guard import NonFiniteTraining, assert_finite

log = logging.getLogger(__name__)


@dataclass
class _BufferSet:
    flats: list[torch.Tensor]  # one flat host buffer per bucket
    snapshot: WeightSnapshot | None = None  # the version written into it last

    @property
    def free(self) -> bool:
        snap = self.snapshot
        return snap is None or (not snap.read and all(tracker.done for tracker in list(snap.trackers)))


class WeightPublisher:
    # the published set, the one being written, one for a slow peer; beyond that, fresh (unpooled) memory,
    # so pinned host memory stays bounded at three copies of the weights
    MAX_BUFFER_SETS = 3

    def __init__(self, trainer, actor_dtype: torch.dtype, bucket_bytes: int):
        self.trainer = trainer
        self.dtype = actor_dtype
        self.bucket_bytes = bucket_bytes
        self.pinned = trainer.device.type == "cuda"
        self._sets: list[_BufferSet] = []
        self.buffer_sets_made = 0
        self.unpooled_versions = 0  # versions that found every pooled set busy
        if trainer.dtype != actor_dtype:
            log.warning("publishing the learner's %s weights as %s for the actors (rollout.dtype)",
                        trainer.dtype, actor_dtype)
            print(f"weights: learner trains in {trainer.dtype}, actors get {actor_dtype} (converted on "
                  f"{trainer.device} before each publish)", flush=True)

    def snapshot(self, version: int) -> tuple[WeightSnapshot, dict[str, float]]:
        """Version `version` of the policy in host buffers; non-finite weights are never published
        (`NonFiniteTraining` stops the run instead)."""
        started = time.perf_counter()
        buffers = self._free_set()
        buckets: list[tuple[list[str], list[torch.Tensor]]] = []
        sums: list[torch.Tensor] = []  # one float32 sum per tensor: finite exactly when every entry is
        total = 0
        for index, bucket in enumerate(self.trainer.weight_buckets(self.bucket_bytes, copy=self._on_device)):
            sums += [t.sum(dtype=torch.float32).reshape(1) for _, t in bucket if t.is_floating_point()]
            flat = self._flat(buffers, index, bucket)
            names, views, offset = [], [], 0
            for name, tensor in bucket:
                names.append(name)
                if not tensor.is_floating_point():  # an integer buffer keeps its dtype, outside the pool
                    views.append(tensor)
                    continue
                view = flat[offset:offset + tensor.numel()].view(tensor.shape)
                view.copy_(tensor, non_blocking=self.pinned)
                views.append(view)
                offset += tensor.numel()
            total += offset * flat.element_size()
            buckets.append((names, views))
        if self.pinned:
            torch.cuda.synchronize(self.trainer.device)  # every queued copy has landed
        # A sum is NaN or infinite if any entry is (or, harmlessly, if finite weights near 1e38 overflow it):
        # one reduction per tensor instead of a boolean copy of every weight. Only then is each tensor
        # checked, to name the first bad one.
        if sums and not bool(torch.isfinite(torch.cat(sums)).all()):
            for names, tensors in buckets:
                assert_finite(zip(names, tensors), f"publish policy version {version}")
            raise NonFiniteTraining(f"refusing to publish policy version {version}: weights sum to a non-finite value")
        buckets, pieces = split_large(buckets, self.bucket_bytes)
        snap = WeightSnapshot(version, buckets, pieces=pieces)
        if buffers is not None:
            buffers.snapshot = snap
        seconds = time.perf_counter() - started
        return snap, {"weights/publish_s": seconds, "weights/publish_gbps": total / max(seconds, 1e-9) / 1e9,
                      "weights/buffer_sets": float(len(self._sets)),
                      "weights/unpooled_versions": float(self.unpooled_versions)}

    def _on_device(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """A whole tensor in the actors' dtype, still on the learner's device. Under ZeRO-3 always a copy:
        the gathered parameter is partitioned again when its bucket's gather ends."""
        if not tensor.is_floating_point():
            return tensor.detach().cpu().clone()
        return tensor.detach().to(self.dtype, copy=self.trainer.cfg.learner.zero_stage == 3)

    def _free_set(self) -> _BufferSet | None:
        for buffers in self._sets:
            if buffers.free:
                return buffers
        if len(self._sets) >= self.MAX_BUFFER_SETS:
            self.unpooled_versions += 1
            if self.unpooled_versions == 1:  # once: a slow reader would otherwise repeat it every publish
                log.warning("every weight buffer set is still being sent; versions published meanwhile get "
                            "fresh pageable memory, freed once sent (weights/unpooled_versions counts them)")
            return None
        self._sets.append(_BufferSet([]))
        self.buffer_sets_made += 1
        return self._sets[-1]

    def _flat(self, buffers: _BufferSet | None, index: int, bucket: list[tuple[str, torch.Tensor]]) -> torch.Tensor:
        numel = sum(t.numel() for _, t in bucket if t.is_floating_point())
        if buffers is not None and index < len(buffers.flats) and buffers.flats[index].numel() == numel:
            return buffers.flats[index]
        # Only pooled sets are pinned: they are bounded (MAX_BUFFER_SETS), a fallback is not, and pinned memory
        # is locked RAM the machine cannot page out.
        flat = torch.empty(numel, dtype=self.dtype, pin_memory=self.pinned and buffers is not None)
        if buffers is not None:
            del buffers.flats[index:]  # the layout changed (never, for one model): rebuild from here
            buffers.flats.append(flat)
        return flat


def split_large(buckets: list[tuple[list[str], list[torch.Tensor]]], bucket_bytes: int
                ) -> tuple[list[tuple[list[str], list[torch.Tensor]]], list[list[list[int]]]]:
    """The same buckets, but no array larger than `bucket_bytes`: a tensor over it is cut into 1-D slices
    of its flattened elements (views: nothing is copied), one bucket each, described by `[offset, *shape]`
    (WeightsBucket.pieces). Returns (buckets, pieces); pieces is [] when nothing was cut, as for every model
    whose largest tensor fits a bucket."""
    out: list[tuple[list[str], list[torch.Tensor]]] = []
    pieces: list[list[list[int]]] = []
    for names, tensors in buckets:
        whole_names: list[str] = []
        whole: list[torch.Tensor] = []
        for name, tensor in zip(names, tensors):
            if tensor.numel() * tensor.element_size() <= bucket_bytes:
                whole_names.append(name)
                whole.append(tensor)
                continue
            if whole:  # what came before it keeps its place in the order
                out.append((whole_names, whole))
                pieces.append([])
                whole_names, whole = [], []
            flat, step = tensor.reshape(-1), max(1, bucket_bytes // tensor.element_size())
            for offset in range(0, flat.numel(), step):
                out.append(([name], [flat[offset:offset + step]]))
                pieces.append([[offset, *tensor.shape]])
        if whole:
            out.append((whole_names, whole))
            pieces.append([])
    return out, (pieces if any(pieces) else [])

