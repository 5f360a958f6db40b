"""The Typer CLI, strict config loading and the placement plan."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tiller.cli import app
from tiller.cli.placement import describe, plan
from tiller.config import ConfigError, load_config

runner = CliRunner()
ROOT = Path(__file__).parents[1]


def test_help_lists_every_part():
    out = runner.invoke(app, ["--help"]).output
    for command in ("run", "learner", "actor", "judge"):
        assert command in out


def test_judge_help_names_every_judge_kind_the_config_accepts():
    import typing

    from tiller.config import JudgeConfig

    out = " ".join(runner.invoke(app, ["judge", "--help"], terminal_width=200).output.split())
    kinds = typing.get_args(typing.get_type_hints(JudgeConfig)["kind"])
    assert len(kinds) == 5 and all(kind in out for kind in kinds), out


def test_dry_run_prints_the_resolved_config_with_overrides():
    result = runner.invoke(app, ["run", str(ROOT / "configs/demo.yaml"), "learner.lr=1e-6", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "lr: 1.0e-06" in result.output and "name: demo" in result.output


def test_unknown_key_names_file_line_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nlearner:\n  lr: 0.1\n  lr_typo: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:4: learner.lr_typo: unknown key"):
        load_config(path)
    result = runner.invoke(app, ["learner", "--config", str(path), "--dry-run"])
    assert result.exit_code == 2 and "lr_typo" in result.output


@pytest.mark.parametrize("override,message", [
    ("learner.steps=many", "learner.steps: expected int"),
    ("learner.dpo.variant=kto", "not one of"),
    ("nonsense", "expected key.sub=value"),
    ("learner.nope=1", "learner.nope: unknown key"),
])
def test_bad_overrides_are_clear_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(ROOT / "configs/demo.yaml", [override])


def test_a_bare_off_is_the_word_not_a_boolean(tmp_path):
    # YAML 1.1 reads `off` as False; `run.placement: off` must still mean placement off
    assert load_config(None, ["run.placement=off"]).run.placement == "off"
    path = tmp_path / "run.yaml"
    path.write_text("run:\n  placement: off\n")
    assert load_config(path).run.placement == "off"
    with pytest.raises(ConfigError, match="run.placement: True is not one of"):
        load_config(None, ["run.placement=on"])  # no "on" among its choices: still an error


def test_config_is_frozen():
    cfg = load_config(ROOT / "configs/demo.yaml")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.learner.lr = 1.0  # type: ignore[misc]


def test_every_shipped_config_loads():
    for path in (ROOT / "configs").glob("*.yaml"):
        load_config(path)


def test_placement_gives_each_busy_process_its_own_cores_when_it_can():
    slots = {s.role: s.cores for s in plan(actors=2, judges=1, heavy_judges=True, cores=[0, 1, 2, 3, 4, 5])}
    assert slots["learner"] == (0, 4) and slots["actor0"] == (1, 5) and slots["actor1"] == (2,)
    assert slots["judge0"] == (3,)
    used = [c for cores in slots.values() for c in cores]
    assert len(used) == len(set(used))  # nothing shared


def test_placement_on_two_cores_keeps_the_learner_alone_and_says_what_is_shared():
    slots = plan(actors=2, judges=1, heavy_judges=False, cores=[0, 1])
    by_role = {s.role: s.cores for s in slots}
    assert by_role == {"learner": (0,), "actor0": (1,), "actor1": (1,), "judge0": (0,)}
    assert "shared" in describe(slots)
    env = slots[1].env()
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "1" and env["TILLER_CORES"] == "1" and env["OMP_NUM_THREADS"] == "1"
    # one actor: a light judge ties between the two cores and goes beside the learner, not the actor
    one = {s.role: s.cores for s in plan(actors=1, judges=1, heavy_judges=False, cores=[0, 1])}
    assert one == {"learner": (0,), "actor0": (1,), "judge0": (0,)}


def test_placement_auto_starts_no_more_actors_than_cores_left_for_them():
    from tiller.cli.placement import auto_actors

    assert auto_actors(2, cores=8) == (2, None)
    count, why = auto_actors(2, cores=2)
    assert count == 1 and "run.actors 2 -> 1" in why and "run.placement: manual keeps 2" in why
    assert auto_actors(3, cores=1)[0] == 1  # never none


def test_placement_manual_and_gpu():
    manual = plan(1, 1, False, cores=[0, 1], manual={"learner": [0], "actor0": [1], "judge0": [1]})
    assert [s.cores for s in manual] == [(0,), (1,), (1,)]
    with pytest.raises(ValueError, match="judge0"):
        plan(1, 1, False, manual={"learner": [0], "actor0": [1]})
    gpu = plan(2, 1, True, gpus=4)
    assert [s.device for s in gpu] == ["0", "1", "2", "3"]


def test_relative_paths_resolve_against_the_config_folder_when_they_exist_there(tmp_path):
    """`tiller run /elsewhere/configs/cai.yaml` works from any directory: the constitution named
    beside the config is found; a path that exists only from the working directory is kept."""
    import os
    import subprocess
    import sys

    cfg = load_config(ROOT / "configs" / "cai.yaml")
    assert cfg.judge.constitution_path == str(ROOT / "configs" / "constitutions" / "default.yaml")
    assert cfg.model.path == "runs/tiny-policy"  # not beside the config: left to the working directory
    done = subprocess.run([sys.executable, "-m", "tiller", "run", str(ROOT / "configs" / "cai.yaml"), "--dry-run"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert f"constitution_path: {ROOT / 'configs' / 'constitutions' / 'default.yaml'}" in done.stdout


def test_a_lease_larger_than_what_can_be_trained_in_time_is_refused():
    with pytest.raises(ConfigError, match=r"learner.lease_prompts: 8 is more than the 2 prompts"):
        load_config(None, ["learner.batch_size=2", "learner.max_policy_lag=0", "learner.lease_prompts=8"])
    assert load_config(None, ["learner.batch_size=2", "learner.max_policy_lag=3", "learner.lease_prompts=8"])
