"""The Typer CLI, strict config loading and the placement plan."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tiller.cli import app
from tiller.placement import describe, plan
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
    assert len(kinds) == 6 and all(kind in out for kind in kinds), out


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
    with pytest.raises(ConfigError, match="run.placement: 'on' is not one of"):
        load_config(None, ["run.placement=on"])  # no "on" among its choices: still an error, quoting what was typed


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
    from tiller.placement import auto_actors

    assert auto_actors(2, cores=8) == (2, None)
    count, why = auto_actors(2, cores=2)
    assert count == 1 and "run.actors 2 -> 1" in why and "run.placement: manual keeps 2" in why
    assert auto_actors(3, cores=1)[0] == 1  # never none


def test_the_learner_is_lent_the_actors_cores_only_where_none_is_shared():
    from tiller.placement import lend_actor_cores

    slots = lend_actor_cores(plan(actors=1, judges=1, heavy_judges=False, cores=[0, 1]))
    learner = slots[0]
    assert (learner.role, learner.cores, learner.lent, learner.affinity) == ("learner", (0,), (1,), {0, 1})
    assert learner.env()["TILLER_LENT_CORES"] == "1" and learner.env()["OMP_NUM_THREADS"] == "1"
    assert "lent cores 1: run.lend_actor_cores" in describe(slots)
    assert all(not s.lent for s in slots[1:]) and "TILLER_LENT_CORES" not in slots[1].env()
    shared = lend_actor_cores(plan(actors=2, judges=1, heavy_judges=False, cores=[0, 1]))
    assert shared[0].lent == ()  # two actors share core 1 already: no third process there
    wide = lend_actor_cores(plan(actors=2, judges=1, heavy_judges=False, cores=[0, 1, 2, 3, 4]))
    assert wide[0].cores == (0, 3) and wide[0].lent == (1, 2, 4)  # every actor's cores


def test_the_core_lender_widens_torch_threads_only_while_no_actor_generates():
    from tiller.learner.core_lending import CoreLender

    generating, set_to = [1], []
    lender = CoreLender(own=1, lendable=2, generating=lambda: generating[0], set_threads=set_to.append)
    assert lender.adjust() == 1 and set_to == []  # an actor is generating: the learner's own core only
    generating[0] = 0
    assert lender.adjust() == 3 and lender.adjust() == 3 and set_to == [3]  # set once, not on every pass
    generating[0] = 2
    assert lender.adjust() == 1 and set_to == [3, 1]
    m = lender.step_metrics()
    assert 1.0 <= m["learner/threads"] <= 3.0 and m["learner/thread_switches"] == 2


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


# ----------------------------------------------------------------------------- a new user's mistakes: one line, exit 2

def one_error_line(result) -> str:
    """The single line a refused command printed (stderr), asserting there is exactly one."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, (result.exit_code, result.output)
    return lines[0]


@pytest.mark.parametrize("args,expected", [
    (["learner.steps=-1"], "override 'learner.steps=-1': learner.steps: -1: must be at least 1"),
    (["learner.steps=0"], "learner.steps: 0: must be at least 1"),
    (["rollout.temperature=-1"], "rollout.temperature: -1: must be at least 0"),
    (["learner.dpo.beta=-0.1"], "learner.dpo.beta: -0.1: must be more than 0"),
    (["--actors", "-1"], "--actors -1: run.actors: -1: must be at least 0"),
    (["judge.kind=reward_model"], "judge.reward_model_path: required when judge.kind is reward_model"),
    (["learner.batch_size=0"], "override 'learner.batch_size=0': learner.batch_size: 0: must be at least 1"),
    (["metrics.wandb=off"], "metrics.wandb: 'off' is not one of"),
])
def test_dry_run_refuses_values_out_of_range_in_one_line(args, expected):
    result = runner.invoke(app, ["run", str(ROOT / "configs/demo.yaml"), *args, "--dry-run"])
    assert expected in one_error_line(result)


def judge_setups(tmp_path: Path) -> list[tuple[list[str], str]]:
    """(overrides, the line expected) for judges that cannot start, with the files they name."""
    (tmp_path / "bad_rule.py").write_text("raise RuntimeError('rule module broken')\n")
    (tmp_path / "bad.yaml").write_text("- [not, a, principle]\n")
    (tmp_path / "template.txt").write_text("Compare {prompt} with {response_a}\n")
    (tmp_path / "holder").mkdir()
    (tmp_path / "holder" / "notes.txt").write_text("a folder of other things: no tiny model is built over it")
    composed = ["judge.kind=composed", "judge.scorers=[{kind: rule, rule: 'tiller.tasks:vowel_reward'}]"]
    return [
        (["judge.rule=nosuch.module:fn"], "judge.rule: cannot load 'nosuch.module:fn': No module named 'nosuch'"),
        (["judge.rule=tiller.tasks"], "judge.rule: 'tiller.tasks' must look like package.module:function"),
        (["judge.rule=bad_rule:fn"], "judge.rule: importing 'bad_rule:fn' failed: RuntimeError: rule module broken"),
        (["judge.kind=composed", "judge.scorers=[{kind: rule, rule: 'nosuch:fn'}]"], "judge.scorers[0].rule: cannot"),
        ([*composed, "judge.gate_rule=tiller.tasks:nope"], "judge.gate_rule: cannot load 'tiller.tasks:nope'"),
        (["judge.kind=reward_model", f"judge.reward_model_path={tmp_path / 'rm'}"],
         f"judge.reward_model_path: {tmp_path / 'rm'} does not exist"),
        (["judge.kind=llm_pairwise", f"judge.model_path={tmp_path / 'judge'}"],
         f"judge.model_path: {tmp_path / 'judge'} does not exist: point it at a transformers model directory "
         "(config.json, weights, tokenizer), or set judge.build_tiny: true"),
        (["judge.kind=llm_pairwise", f"judge.model_path={tmp_path / 'holder'}", "judge.build_tiny=true"],
         f"judge.model_path: {tmp_path / 'holder'} holds no model"),
        (["judge.kind=cai", f"judge.model_path={tmp_path / 'j'}", "judge.build_tiny=true",
          f"judge.constitution_path={tmp_path / 'bad.yaml'}"], "bad.yaml:1: a principle is a text or a mapping"),
        (["judge.kind=llm_pairwise", f"judge.model_path={tmp_path / 'j'}", "judge.build_tiny=true",
          f"judge.template_path={tmp_path / 'template.txt'}"],
         "template.txt must use {prompt}, {response_a}, {response_b}; missing ['response_b']"),
    ]


def test_dry_run_and_run_refuse_a_judge_that_cannot_start_in_one_line(tmp_path, monkeypatch):
    """Was: the learner and a vLLM engine came up, then the judge failed five times on its rule."""
    monkeypatch.syspath_prepend(str(tmp_path))  # bad_rule.py: imports, then fails
    safe = [f"output_dir={tmp_path / 'runs'}", "run.timeout_s=30", "learner.steps=1"]  # if a check let it through
    for overrides, expected in judge_setups(tmp_path):
        for dry in (["--dry-run"], []):
            result = runner.invoke(app, ["run", str(ROOT / "configs/demo.yaml"), *overrides, *safe, *dry])
            assert expected in one_error_line(result), overrides
        assert not (tmp_path / "runs").exists()  # refused before anything was written or started
    result = runner.invoke(app, ["judge", "--config", str(ROOT / "configs/demo.yaml"), "judge.rule=nosuch:fn",
                                 "--dry-run"])
    assert "judge.rule: cannot load 'nosuch:fn'" in one_error_line(result)


def test_a_model_path_that_holds_no_model_is_one_line_naming_what_is_missing(tmp_path):
    """Was: an OSError traceback ("Directory not empty") renaming the tiny model into place."""
    holder = tmp_path / "downloads"
    holder.mkdir()
    (holder / "config.json").write_text("{}")  # a download that stopped after its first file
    for dry in (["--dry-run"], []):
        result = runner.invoke(app, ["run", str(ROOT / "configs/demo.yaml"), f"model.path={holder}",
                                     f"output_dir={tmp_path / 'runs'}", "run.timeout_s=30", *dry])
        assert one_error_line(result) == (
            f"error: model.path: {holder} holds no model: no weights (*.safetensors or pytorch_model*.bin), "
            "no tokenizer (tokenizer.json, tokenizer.model, vocab.json or tokenizer_config.json) "
            "(model.build_tiny builds a tiny model only where nothing is yet)")
    assert not (tmp_path / "runs").exists()
    result = runner.invoke(app, ["run", str(ROOT / "configs/demo.yaml"), f"model.path={tmp_path / 'typo'}",
                                 "model.build_tiny=false", "--dry-run"])
    assert f"model.path: {tmp_path / 'typo'} does not exist" in one_error_line(result)


def _supervise_a_learner(tmp_path: Path, seconds: float, overrides: list[str]) -> tuple[int, float]:
    """`tiller run`'s supervision of a stand-in learner that sleeps `seconds`: (exit code, seconds taken)."""
    import subprocess
    import sys
    import time

    from tiller.placement import Slot
    from tiller.cli.run import Child, _supervise

    cfg = load_config(None, [f"output_dir={tmp_path}", "learner.shutdown_grace_s=0", *overrides])
    process = subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({seconds})"])
    started = time.monotonic()
    try:
        code = _supervise(cfg, [Child("learner", Slot("learner", ()), [], None, process)])
    finally:
        process.kill()
        process.wait()
    return code, time.monotonic() - started


def test_run_has_no_time_limit_unless_one_is_set(tmp_path):
    """Was: run.timeout_s defaulted to 1,800 s, so every longer job was stopped (exit 1) after 30 minutes."""
    assert load_config(None).run.timeout_s is None
    for unlimited in ([], ["run.timeout_s=0"], ["run.timeout_s=null"]):  # the learner ends the run
        assert _supervise_a_learner(tmp_path, 1.5, unlimited)[0] == 0
    code, seconds = _supervise_a_learner(tmp_path, 60, ["run.timeout_s=0.5"])
    assert code == 1 and seconds < 15  # asked for: the run is stopped there
