"""Everything `tiller run` can check itself: one clear line and exit 2, in seconds.

The learner, actors and judges check their own inputs again when they start (each may run on
its own), but by then two vLLM engines may have been built: a broken prompt file was once
reported after 66 s, a refused bind after 50 s, a judge rule that does not import after the
learner and an engine were up and the judge had failed five times. So the launcher checks the
same things first, in two parts:
- `check_setup`, before anything is built or started (and by `--dry-run`): the bind address, the
  policy's model directory (or that a tiny one may be built there), a PPO critic's, and what the
  judge needs (`check_judge`: its rules import, its model directories, constitution and templates).
  The rules that span sections are checked before this, as the config loads.
- `check_before_start`, once the demo model is built: its context length, and every prompt row
  read and parsed.
Tokenizing every prompt as the learner will needs the policy's tokenizer (importing transformers, 1.5 s to
9 s on a busy 2-core machine): the learner does that first as it starts, beside the actors, and a prompt
it refuses (empty, too long, a conversation without a chat template) ends it, and with it the run, in
seconds with one line (tiller/cli/run.py).
"""

from __future__ import annotations

import json
import string
from pathlib import Path

from tiller.config import Config, ConfigError, JudgeConfig
from tiller.models import check_model_dir


def check_setup(cfg: Config) -> None:
    """Raise ConfigError for the first problem that needs nothing built to be seen."""
    from tiller.protocol.security import check_bind

    check_bind(cfg.learner.address, cfg.security)  # first: the cheapest refusal
    check_model_dir(cfg.model.path, "model.path", "model.build_tiny", cfg.model.build_tiny)
    if cfg.learner.algorithm == "ppo" and cfg.learner.pg.critic_path:
        check_model_dir(cfg.learner.pg.critic_path, "learner.pg.critic_path", tokenizer=False)
    check_judge(cfg.judge)


def check_judge(j: JudgeConfig) -> None:
    """What a judge of kind `j.kind` needs before it starts: the rules it calls import (a rule is this
    machine's own config, never wire data, so importing it here is what the judge would do), its
    model directories hold models, and its constitution and templates exist and parse."""
    for key, spec in _rules(j).items():
        _import_rule(spec, key)
    for key, path, build in _models(j):
        if path is None:
            raise ConfigError(f"{key}: required for judge.kind {j.kind}")
        check_model_dir(path, key, "judge.build_tiny" if build is not None else None, bool(build))
    _check_judge_files(j)


def check_before_start(cfg: Config) -> list:
    """Raise ConfigError for the first problem; returns the prompt rows. Runs after
    `check_setup` and after the demo model is built (`prepare_model`)."""
    _check_context(cfg)
    from tiller.learner.prompts import read_rows

    return read_rows(cfg.data)


def _check_context(cfg: Config) -> None:
    config_file = Path(cfg.model.path) / "config.json"
    try:
        model_config = json.loads(config_file.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"model.path: {config_file} is not readable JSON ({exc})") from None
    positions = model_config.get("max_position_embeddings")
    if isinstance(positions, int) and cfg.rollout.max_model_len > positions:
        raise ConfigError(f"rollout.max_model_len: {cfg.rollout.max_model_len} is more than the "
                          f"{positions} positions of the model at {cfg.model.path}")


def _rules(j: JudgeConfig) -> dict[str, str]:
    """The `module:function` rules the judge will call (actors/judges.py: build_judge), by key."""
    if j.kind == "rule":
        return {"judge.rule": j.rule}
    if j.kind != "composed":
        return {}
    rules = {f"judge.scorers[{i}].rule": s.rule for i, s in enumerate(j.scorers) if s.kind == "rule"}
    return rules | ({"judge.gate_rule": j.gate_rule} if j.gate_rule else {})


def _import_rule(spec: str, key: str) -> None:
    from tiller.actors.judges import load_rule

    try:
        load_rule(spec, key)
    except ConfigError:
        raise
    except Exception as exc:  # a module that imports but fails as it runs: its error, on one line
        raise ConfigError(f"{key}: importing {spec!r} failed: {type(exc).__name__}: {exc}") from None


def _models(j: JudgeConfig) -> list[tuple[str, str | None, bool | None]]:
    """(key, directory, build_tiny or None where nothing is built) of every model the judge loads."""
    models = []
    if j.kind == "reward_model":
        models.append(("judge.reward_model_path", j.reward_model_path, None))
    if j.kind == "composed":
        models += [(f"judge.scorers[{i}].reward_model_path", s.reward_model_path, None)
                   for i, s in enumerate(j.scorers) if s.kind == "reward_model"]
    if j.kind in ("llm_pairwise", "cai"):
        models.append(("judge.model_path", j.model_path, j.build_tiny))
    return models


def _check_judge_files(j: JudgeConfig) -> None:
    """Every file the judge names exists; the constitution and templates parse as the judge reads them.
    A template must name the fields its default names (the default is the one statement of them)."""
    from tiller.actors.cai_judge import DEFAULT_CRITIQUE_TEMPLATE, DEFAULT_REVISION_TEMPLATE
    from tiller.actors.constitution import load_constitution
    from tiller.actors.llm_judge import DEFAULT_TEMPLATE, load_template

    templates = {"judge.template_path": (j.template_path, DEFAULT_TEMPLATE),
                 "judge.critique_template_path": (j.critique_template_path, DEFAULT_CRITIQUE_TEMPLATE),
                 "judge.revision_template_path": (j.revision_template_path, DEFAULT_REVISION_TEMPLATE)}
    for key, path in [("judge.constitution_path", j.constitution_path)] + [(k, p) for k, (p, _) in templates.items()]:
        if path is not None and not Path(path).exists():
            raise ConfigError(f"{key}: {path} does not exist")
    if j.constitution_path is not None:
        load_constitution(j.constitution_path)
    for key, (path, default) in templates.items():
        if path is not None:
            fields = tuple(name for _, name, _, _ in string.Formatter().parse(default) if name)
            load_template(path, default, fields, key)
