"""`tiller sft`, `tiller rm`, `tiller dpo` on the command line: the shipped configs check out with --dry-run,
and a malformed data row is one line naming file and line, exit 2, before any model loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tiller.cli import app

ROOT = Path(__file__).parents[1]


@pytest.mark.parametrize("stage", ["sft", "rm", "dpo"])
def test_the_shipped_configs_check_out(stage):
    result = CliRunner().invoke(app, [stage, str(ROOT / f"configs/offline/{stage}.yaml"), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert f"name: offline-{stage}" in result.output and "configs/data/safety/" in result.output


def test_a_malformed_row_is_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"}) + "\n" + json.dumps({"prompt": "a"}))
    result = CliRunner().invoke(app, ["dpo", str(ROOT / "configs/offline/dpo.yaml"), f"dpo.data=[{{path: {bad}}}]",
                                      "--dry-run"])
    assert result.exit_code == 2
    assert f"{bad}:2: a preference row needs 'prompt', 'chosen' and 'rejected'; 'chosen' is missing" in result.output


def test_the_stages_are_commands():
    result = CliRunner().invoke(app, ["--help"])
    assert all(f" {stage} " in result.output for stage in ("sft", "rm", "dpo"))
