"""Everything `tiller run` can check itself: one clear line and exit 2, in seconds.

The learner, actors and judges check their own inputs again when they start (each may run on
its own), but by then two vLLM engines may have been built: a broken prompt file was once
reported after 66 s, a refused bind after 50 s. So the launcher checks the same things first,
in two parts:
- `check_before_start`, before any process starts: the model directory and its context length,
  the judge's files, and every prompt row read and parsed (the bind address and the rules that
  span sections are checked before this, as the config loads).
- `check_prompts`, while the actors start (importing vLLM and building an engine is the longest
  path to the first step, so it does not wait for this): every prompt tokenized as the learner
  will, which needs the policy's tokenizer (importing transformers, 1.5 s). A prompt it refuses
  (empty, too long, a conversation without a chat template) stops the started workers and the run.
"""

from __future__ import annotations

import json
from pathlib import Path

from tiller.config import Config, ConfigError


def check_before_start(cfg: Config) -> list:
    """Raise ConfigError for the first problem; returns the prompt rows (for `check_prompts`). The bind
    address is checked before this, first of all (`security.check_bind`), since building the demo model
    (`prepare_model`) comes between the two."""
    _check_model(cfg)
    _check_judge_files(cfg)
    from tiller.learner.prompts import read_rows

    return read_rows(cfg.data)


def check_prompts(cfg: Config, rows: list) -> int:
    """Tokenize every prompt row as the learner will; raise ConfigError for the first it refuses.
    Returns the number of prompts."""
    from tiller.learner.prompts import load_prompts
    from tiller.models import load_tokenizer

    tokenizer = load_tokenizer(Path(cfg.model.path))
    return len(load_prompts(cfg.data, tokenizer, cfg.rollout.max_model_len - cfg.rollout.max_new_tokens, rows))


def _check_model(cfg: Config) -> None:
    config_file = Path(cfg.model.path) / "config.json"
    if not config_file.exists():
        raise ConfigError(f"model.path: {cfg.model.path} has no config.json")
    try:
        model_config = json.loads(config_file.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"model.path: {config_file} is not readable JSON ({exc})") from None
    positions = model_config.get("max_position_embeddings")
    if isinstance(positions, int) and cfg.rollout.max_model_len > positions:
        raise ConfigError(f"rollout.max_model_len: {cfg.rollout.max_model_len} is more than the "
                          f"{positions} positions of the model at {cfg.model.path}")


def _check_judge_files(cfg: Config) -> None:
    j = cfg.judge
    files = {"judge.constitution_path": j.constitution_path, "judge.template_path": j.template_path,
             "judge.critique_template_path": j.critique_template_path,
             "judge.revision_template_path": j.revision_template_path}
    if j.kind == "reward_model":
        files["judge.reward_model_path"] = j.reward_model_path
    if j.kind in ("llm_pairwise", "cai") and not j.build_tiny:
        files["judge.model_path"] = j.model_path
    for i, scorer in enumerate(j.scorers):
        if scorer.kind == "reward_model":
            files[f"judge.scorers[{i}].reward_model_path"] = scorer.reward_model_path
    for key, path in files.items():
        if key.endswith(("model_path", "reward_model_path")) and path is None:
            raise ConfigError(f"{key}: required for judge.kind {j.kind}")
        if path is not None and not Path(path).exists():
            raise ConfigError(f"{key}: {path} does not exist")
