"""What a Hugging Face model directory says about its model, read from its files without loading it:
end-of-sequence ids, architecture, and every checkpoint tensor's name and shape (safetensors headers).

Used by the learner to describe the model it trains (learner/model_card.py) and by an actor to describe
the model its engine serves (actors/model_check.py), so both read a directory the same way.
"""

from __future__ import annotations

import json
from pathlib import Path


def eos_ids(model_dir: Path) -> list[int]:
    """End-of-sequence ids from generation_config.json and config.json (both may name some)."""
    ids: list[int] = []
    for name in ("generation_config.json", "config.json"):
        path = model_dir / name
        if path.exists():
            eos = json.loads(path.read_text()).get("eos_token_id")
            ids += eos if isinstance(eos, list) else [eos] if eos is not None else []
    return sorted(set(ids))


def config_of(model_dir: Path) -> dict:
    path = model_dir / "config.json"
    return json.loads(path.read_text()) if path.exists() else {}


def checkpoint_shapes(model_dir: Path) -> dict[str, list[int]] | None:
    """Every tensor of the directory's safetensors checkpoint (one file or shards) and its shape, from the
    file headers alone; None when the directory holds no safetensors files (nothing to compare)."""
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        return None
    from safetensors import safe_open

    shapes: dict[str, list[int]] = {}
    for file in files:
        with safe_open(str(file), framework="np") as f:
            for name in f.keys():
                shapes[name] = list(f.get_slice(name).get_shape())
    return shapes
