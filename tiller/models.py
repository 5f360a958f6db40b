"""Tiny models and tokenizers built on the spot, so demos and tests need no model hub.

`ensure_tiny_policy(dir)` writes a random-init Qwen2 causal LM plus a character-level
tokenizer that vLLM and transformers both load from `dir`; `ensure_tiny_reward_model`
does the same for a sequence-classification reward model. Both are idempotent: an
existing model directory is reused as is.

Run `python -m tiller.models /tmp/tiny` to build one by hand.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

# Special tokens first so their ids are stable: pad=0, eos=1, unk=2.
SPECIAL_TOKENS = ("<pad>", "<eos>", "<unk>")
ALPHABET = "abcdefghijklmnopqrstuvwxyz .,?!"  # the demo policy's: small, so a tiny model learns fast
JUDGE_ALPHABET = ALPHABET + "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:;'\"()[]*-\n"  # enough for judge templates
# A chat template written in characters the judge alphabet has, for tiny instruct-style models in tests
TINY_CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                      "{% if add_generation_prompt %}assistant: {% endif %}")


@dataclass(frozen=True)
class TinyShape:
    """Shape of a tiny Qwen2 model. vLLM's CPU attention needs head_dim >= 32."""

    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 256
    max_positions: int = 256


def build_char_tokenizer(alphabet: str = ALPHABET):
    """A character-level fast tokenizer: one token per character, decoding joins them back."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + tuple(alphabet))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    # Every character is its own piece, spaces included (a whitespace pre-tokenizer would drop them).
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # newlines too
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )


def load_tokenizer(model_dir: str | Path):
    """Load the tokenizer saved beside a model.

    Uses `PreTrainedTokenizerFast` directly: transformers 5 maps a `qwen2` config to the
    Qwen2 tokenizer class through AutoTokenizer, which would mangle the char tokenizer.
    """
    config = Path(model_dir) / "tokenizer_config.json"
    if config.exists() and json.loads(config.read_text()).get("tiller_char_tokenizer"):
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast.from_pretrained(str(model_dir))
    from transformers import AutoTokenizer  # its import alone takes seconds: only when it is needed

    return AutoTokenizer.from_pretrained(str(model_dir))


def _save_tokenizer(tokenizer, model_dir: Path) -> None:
    tokenizer.save_pretrained(str(model_dir))
    config_path = model_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tiller_char_tokenizer"] = True
    config_path.write_text(json.dumps(config, indent=2))


def _qwen2_config(vocab_size: int, shape: TinyShape, eos_id: int, pad_id: int, **extra):
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=shape.hidden_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads,
        intermediate_size=shape.intermediate_size,
        max_position_embeddings=shape.max_positions,
        tie_word_embeddings=True,
        eos_token_id=eos_id,
        bos_token_id=eos_id,
        pad_token_id=pad_id,
        **extra,
    )


def _publish_dir(model_dir: Path, write) -> None:
    """Write into a temp sibling, then rename: processes racing to build the same model never
    see a half-written directory (the loser of the race keeps the winner's copy)."""
    model_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{model_dir.name}-", dir=model_dir.parent))
    write(tmp)
    try:
        os.rename(tmp, model_dir)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not _is_complete(model_dir):
            raise


def _is_complete(model_dir: Path) -> bool:
    return (model_dir / "config.json").exists() and (model_dir / "tokenizer.json").exists()


def random_causal_lm(vocab_size: int, shape: TinyShape, dtype=None, seed: int = 0, eos_id: int = 1, pad_id: int = 0):
    """A random-init Qwen2 causal LM of `shape` (tied embeddings), in `dtype` (default float32)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(_qwen2_config(vocab_size, shape, eos_id, pad_id),
                                            dtype=dtype or torch.float32)


def ensure_tiny_policy(model_dir: str | Path, seed: int = 0, shape: TinyShape = TinyShape(),
                       alphabet: str = ALPHABET, chat_template: str | None = None) -> Path:
    """Write a random-init tiny Qwen2 causal LM and its char tokenizer (with `chat_template`, if given)
    to `model_dir` (once)."""
    model_dir = Path(model_dir)
    if _is_complete(model_dir):
        return model_dir
    tokenizer = build_char_tokenizer(alphabet)
    tokenizer.chat_template = chat_template
    model = random_causal_lm(len(tokenizer), shape, seed=seed, eos_id=tokenizer.eos_token_id,
                             pad_id=tokenizer.pad_token_id)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    _publish_dir(model_dir, lambda tmp: (model.save_pretrained(str(tmp)), _save_tokenizer(tokenizer, tmp)))
    return model_dir


def ensure_tiny_reward_model(model_dir: str | Path, seed: int = 0, shape: TinyShape = TinyShape(),
                             chat_template: str | None = None) -> Path:
    """Write a random-init tiny Qwen2 sequence classifier (one logit = the reward) to `model_dir`."""
    import torch
    from transformers import AutoModelForSequenceClassification

    model_dir = Path(model_dir)
    if _is_complete(model_dir):
        return model_dir
    tokenizer = build_char_tokenizer(JUDGE_ALPHABET if chat_template else ALPHABET)
    tokenizer.chat_template = chat_template
    config = _qwen2_config(len(tokenizer), shape, tokenizer.eos_token_id, tokenizer.pad_token_id, num_labels=1)
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(config, dtype=torch.float32)
    _publish_dir(model_dir, lambda tmp: (model.save_pretrained(str(tmp)), _save_tokenizer(tokenizer, tmp)))
    return model_dir


# What `from_pretrained` needs beside config.json: the weights (one file or shards), and for a model whose
# text is read, a tokenizer (a fast tokenizer's JSON, a SentencePiece model, a BPE vocabulary, or the
# config naming other files: enough to tell a model from a folder that holds none, not to vouch for one).
WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def missing_model_files(model_dir: str | Path, tokenizer: bool = True) -> list[str]:
    """What a transformers model directory lacks: config.json, weights, tokenizer (empty: nothing)."""
    model_dir = Path(model_dir)
    missing = [] if (model_dir / "config.json").is_file() else ["config.json"]
    if not any(next(model_dir.glob(pattern), None) for pattern in WEIGHT_FILES):
        missing.append(f"weights ({' or '.join(WEIGHT_FILES)})")
    if tokenizer and not any((model_dir / name).is_file() for name in TOKENIZER_FILES):
        missing.append(f"tokenizer ({', '.join(TOKENIZER_FILES[:-1])} or {TOKENIZER_FILES[-1]})")
    return missing


def _buildable(path: Path) -> bool:
    """Nothing there yet: a tiny model may be built (renamed into place: an empty directory is replaced)."""
    return not path.exists() or (path.is_dir() and next(path.iterdir(), None) is None)


def check_model_dir(path: str | Path, key: str, build_flag: str | None = None, build: bool = False,
                    tokenizer: bool = True) -> None:
    """Raise ConfigError, naming `key`, the path and what is missing, unless `path` holds a model or
    (`build`: the setting `build_flag` is on) is still empty, so a tiny one can be built there."""
    from tiller.config import ConfigError

    path = Path(path)
    if build and _buildable(path):
        return
    if not path.exists():
        hint = f", or set {build_flag}: true to build a random-init tiny model there" if build_flag else ""
        raise ConfigError(f"{key}: {path} does not exist: point it at a transformers model directory "
                          f"(config.json, weights, tokenizer){hint}")
    if not path.is_dir():
        raise ConfigError(f"{key}: {path} is a file, not a model directory")
    missing = missing_model_files(path, tokenizer)
    if missing:
        why = f" ({build_flag} builds a tiny model only where nothing is yet)" if build else ""
        raise ConfigError(f"{key}: {path} holds no model: no {', no '.join(missing)}{why}")


def prepare_model(cfg) -> Path:
    """The policy's model directory (`model.path`), building the tiny model there first when nothing is
    there and `model.build_tiny` asks for it; a directory that is not a model is a ConfigError."""
    path = Path(cfg.model.path)
    check_model_dir(path, "model.path", "model.build_tiny", cfg.model.build_tiny)
    if _buildable(path):
        # Loud on purpose: with a typo in model.path this would otherwise train a random model quietly.
        logging.getLogger(__name__).warning(
            "model.path %s has no model: BUILDING A RANDOM-INIT TINY MODEL there (model.build_tiny: true)", path.resolve())
        print(f"model.path {path} has no model: building a random-init tiny model there (model.build_tiny: true)",
              flush=True)
        # a chat model reads conversations (templates, several turns): room for 1,024 characters
        chat = {"alphabet": JUDGE_ALPHABET, "chat_template": TINY_CHAT_TEMPLATE,
                "shape": TinyShape(max_positions=1024)} if cfg.model.tiny_chat else {}
        ensure_tiny_policy(path, seed=cfg.model.seed, **chat)
    return path


if __name__ == "__main__":
    out = ensure_tiny_policy(sys.argv[1] if len(sys.argv) > 1 else "runs/tiny-policy")
    print(f"tiny policy written to {out}")
