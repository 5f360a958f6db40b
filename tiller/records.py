"""What every stage writes as it goes: `metrics.jsonl` (one object per step) and, when asked, W&B.

    record = RunRecord(cfg, run_dir, line=progress_line)     # resume_step=, wandb_id= to continue a run
    record.log({"step": 1, "train/loss": 2.3})                 # the file, W&B, and the console line

W&B never blocks or breaks a run: `auto` logs online only when a login exists (else offline), and any
W&B failure is logged once and the run goes on with the JSONL file. A value that is not finite is
written as null (strict JSON). The online learner (learner/metrics.py) and the offline stages
(offline/loop.py) both write through this, so every run directory reads the same way.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import netrc
import os
import subprocess
from pathlib import Path
from typing import Any, Callable

from tiller.config import Config, dump_config, to_dict

log = logging.getLogger(__name__)


def wandb_mode(requested: str) -> str:
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if requested != "auto":
        return requested
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        logged_in = netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        logged_in = False
    return "online" if logged_in else "offline"


def provenance(cfg: Config) -> dict[str, str | None]:
    """What a summary needs to say which code and which settings made it: the git commit (None outside a
    checkout) and a hash of the resolved config."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                timeout=5, cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"commit": commit, "config_sha256": hashlib.sha256(dump_config(cfg).encode()).hexdigest()[:16]}


def keep_steps_up_to(path: Path, step: int) -> list[dict[str, Any]]:
    """Rows of a JSONL file with "step" <= `step` (a resumed run drops what came after its checkpoint)."""
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    kept = [r for r in rows if r["step"] <= step]
    path.write_text("".join(json.dumps(r) + "\n" for r in kept))
    return kept


class RunRecord:
    def __init__(self, cfg: Config, run_dir: Path, resume_step: int = 0, wandb_id: str | None = None,
                 line: Callable[[dict[str, Any]], str | None] | None = None):
        self.run_dir, self.line = run_dir, line
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / "metrics.jsonl"
        self.history: list[dict[str, Any]] = keep_steps_up_to(self.path, resume_step) if resume_step else []
        self._file = self.path.open("a" if resume_step else "w")
        self._wandb = None
        self.wandb_id = wandb_id
        mode = wandb_mode(cfg.metrics.wandb)
        if mode != "disabled":
            try:
                import wandb

                m = cfg.metrics
                self._wandb = wandb.init(
                    project=m.wandb_project, entity=m.wandb_entity, group=m.wandb_group, tags=list(m.wandb_tags),
                    name=m.wandb_name or cfg.name, dir=str(run_dir), mode=mode,
                    config=to_dict(cfg), settings=wandb.Settings(init_timeout=60, silent=True),
                    id=wandb_id, resume="allow" if wandb_id else None,
                )
                self.wandb_id = self._wandb.id
            except Exception as exc:  # noqa: BLE001 - metrics must never stop training
                log.warning("W&B unavailable (%s); metrics go to %s only", exc, self.path)

    def log(self, metrics: dict[str, Any]) -> None:
        self.history.append(metrics)
        self._file.write(json.dumps({k: None if isinstance(v, float) and not math.isfinite(v) else v
                                     for k, v in metrics.items()}) + "\n")
        self._file.flush()
        text = self.line(metrics) if self.line is not None else None
        if text:
            print(text, flush=True)
        if self._wandb is not None:
            try:
                self._wandb.log(metrics, step=metrics["step"])
            except Exception as exc:  # noqa: BLE001
                log.warning("W&B log failed (%s); continuing without it", exc)
                self._wandb = None

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]], step: int) -> None:
        """A W&B table (the JSONL files hold the same rows); nothing without W&B."""
        if self._wandb is None:
            return
        try:
            import wandb

            self._wandb.log({key: wandb.Table(columns=columns, data=rows)}, step=step)
        except Exception as exc:  # noqa: BLE001
            log.warning("W&B table failed (%s); continuing without it", exc)

    def close(self) -> None:
        self._file.close()
        if self._wandb is not None:
            try:
                self._wandb.finish()
            except Exception as exc:  # noqa: BLE001
                log.warning("W&B finish failed: %s", exc)
