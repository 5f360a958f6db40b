"""The typed config's own guards: ranges per field, safe defaults, and errors that say where a value came from."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tiller.config import LIMITS, Config, ConfigError, load_config

ROOT = Path(__file__).parents[1]
DEMO = ROOT / "configs" / "demo.yaml"


def _sections(node=Config(), dotted=""):
    """Every config section (the dataclass instance) with its dotted name."""
    yield dotted, node
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        if dataclasses.is_dataclass(value):
            yield from _sections(value, f"{dotted}.{f.name}".strip("."))


def test_every_default_lies_in_its_own_range():
    """The ranges are declared beside the defaults (`ranged`); a default outside its range would be
    refused the moment a file repeats it."""
    checked = 0
    for dotted, section in _sections():
        for f in dataclasses.fields(section):
            value = getattr(section, f.name)
            for name, bound in f.metadata.get("limits", {}).items():
                test, _ = LIMITS[name]
                assert value is None or test(value, bound), f"{dotted}.{f.name}: default {value} not {name} {bound}"
                checked += 1
    assert checked > 50


@pytest.mark.parametrize("override,message", [
    ("learner.steps=-1", "override 'learner.steps=-1': learner.steps: -1: must be at least 1"),
    ("learner.steps=0", "override 'learner.steps=0': learner.steps: 0: must be at least 1"),
    ("rollout.temperature=-1", "override 'rollout.temperature=-1': rollout.temperature: -1: must be at least 0"),
    ("learner.dpo.beta=-0.1", "override 'learner.dpo.beta=-0.1': learner.dpo.beta: -0.1: must be more than 0"),
    ("run.actors=-1", "override 'run.actors=-1': run.actors: -1: must be at least 0"),
    ("rollout.top_p=1.5", "override 'rollout.top_p=1.5': rollout.top_p: 1.5: must be at most 1"),
    ("learner.batch_size=0", "override 'learner.batch_size=0': learner.batch_size: 0: must be at least 1"),
    ("learner={steps: 0}", "override 'learner={steps: 0}': learner.steps: 0: must be at least 1"),
    ("judge.kind=reward_model",
     "override 'judge.kind=reward_model': judge.reward_model_path: required when judge.kind is reward_model"),
    ("judge.kind=llm_pairwise", "override 'judge.kind=llm_pairwise': judge.model_path: required when judge.kind "
                                "is llm_pairwise (the judge model's directory)"),
])
def test_values_out_of_range_name_the_key_and_the_override(override, message):
    with pytest.raises(ConfigError) as caught:
        load_config(DEMO, [override])
    assert str(caught.value) == message


def test_a_value_out_of_range_in_a_file_names_its_line(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("name: x\nlearner:\n  lr: 1.0e-5\n  steps: 0\n")
    with pytest.raises(ConfigError, match=r"run.yaml:4: learner.steps: 0: must be at least 1$"):
        load_config(path)
    composed = tmp_path / "composed.yaml"
    composed.write_text("judge:\n  kind: composed\n  scorers:\n    - {kind: reward_model}\n")
    with pytest.raises(ConfigError, match=r"composed.yaml:3: judge.scorers\[0\].reward_model_path: required"):
        load_config(composed)


def test_a_rule_across_keys_blames_the_override_that_broke_it(tmp_path):
    """demo.yaml's lease_prompts (line 21) was fine until batch_size=2 came from the command line."""
    with pytest.raises(ConfigError) as caught:
        load_config(DEMO, ["learner.batch_size=2"])
    message = str(caught.value)
    assert message.startswith("override 'learner.batch_size=2' and ") and "demo.yaml:21: " in message
    assert "learner.lease_prompts: 8 is more than the 6 prompts" in message
    with pytest.raises(ConfigError, match=r"^override 'rollout.samples_per_prompt=1': rollout.samples_per_prompt"):
        load_config(DEMO, ["rollout.samples_per_prompt=1"])
    path = tmp_path / "run.yaml"
    path.write_text("rollout:\n  temperature: 0\n")  # fine for online_dpo (greedy), not for grpo
    with pytest.raises(ConfigError, match=r"^override 'learner.algorithm=grpo' and .*run.yaml:2: rollout.temperature: "
                                          r"grpo needs sampled responses"):
        load_config(path, ["learner.algorithm=grpo"])


def test_a_bare_word_yaml_1_1_would_read_as_a_boolean_is_quoted_as_typed(tmp_path):
    with pytest.raises(ConfigError, match=r"metrics.wandb: 'off' is not one of \['auto'"):
        load_config(DEMO, ["metrics.wandb=off"])
    path = tmp_path / "run.yaml"
    path.write_text("metrics:\n  wandb: no\n")
    with pytest.raises(ConfigError, match=r"run.yaml:2: metrics.wandb: 'no' is not one of"):
        load_config(path)
    # bool fields still take the YAML 1.1 words, in files and overrides alike
    path.write_text("judge:\n  keep_transcripts: yes\n  swap_positions: off\n")
    assert load_config(path).judge.keep_transcripts is True and load_config(path).judge.swap_positions is False
    assert load_config(None, ["judge.keep_transcripts=on"]).judge.keep_transcripts is True


def test_the_tiny_model_and_the_run_limit_are_asked_for_never_defaults():
    """A real config that mistypes model.path must not train a random tiny model, and `tiller run` must
    not stop a long job at a limit nobody set."""
    cfg = load_config(None)
    assert cfg.model.build_tiny is False and cfg.judge.build_tiny is False
    assert cfg.run.timeout_s is None
    assert load_config(None, ["run.timeout_s=3600"]).run.timeout_s == 3600.0
    for path in (ROOT / "configs").glob("*.yaml"):  # every demo builds its tiny model, and says so
        assert load_config(path).model.build_tiny, f"{path.name}: model.build_tiny: true missing"


def test_prepare_model_refuses_a_missing_directory_or_one_without_a_model(tmp_path):
    from tiller.models import prepare_model

    with pytest.raises(ConfigError, match=r"model.path: .*nope does not exist: .*model.build_tiny: true"):
        prepare_model(load_config(None, [f"model.path={tmp_path / 'nope'}"]))
    assert not (tmp_path / "nope").exists()  # nothing built behind the user's back
    holder = tmp_path / "holder"
    holder.mkdir()
    (holder / "notes.txt").write_text("not a model")
    for build in ("true", "false"):  # was: OSError "Directory not empty" renaming the tiny model into place
        with pytest.raises(ConfigError) as caught:
            prepare_model(load_config(None, [f"model.path={holder}", f"model.build_tiny={build}"]))
        assert str(caught.value).startswith(f"model.path: {holder} holds no model: no config.json, no weights")
        assert "no tokenizer" in str(caught.value)
    (holder / "config.json").write_text("{}")
    with pytest.raises(ConfigError) as caught:  # a download that stopped after its first file
        prepare_model(load_config(None, [f"model.path={holder}"]))
    assert str(caught.value).endswith("holds no model: no weights (*.safetensors or pytorch_model*.bin), no tokenizer "
                                      "(tokenizer.json, tokenizer.model, vocab.json or tokenizer_config.json)")


def test_prepare_model_reuses_a_model_and_builds_only_where_asked(tmp_path, tiny_policy_dir):
    from tiller.models import prepare_model

    assert prepare_model(load_config(None, [f"model.path={tiny_policy_dir}"])) == tiny_policy_dir
    empty = tmp_path / "empty"
    empty.mkdir()  # an empty directory is nothing yet: the tiny model may go there
    assert (prepare_model(load_config(None, [f"model.path={empty}", "model.build_tiny=true"])) / "config.json").exists()


def test_manual_placement_names_every_process_it_misses_or_does_not_know(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("run:\n  actors: 2\n  judges: 1\n  placement: manual\n  cores: {learner: [0], actor0: [1]}\n")
    with pytest.raises(ConfigError, match=r"run.yaml:5: run.cores: no cores given for actor1, judge0"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"run.cores: actr1: no such process .* learner, actor0, actor1, judge0"):
        load_config(path, ["run.cores={learner: [0], actor0: [1], actr1: [1], actor1: [1], judge0: [0]}"])
    cfg = load_config(path, ["run.cores={learner: [0], actor0: [1], actor1: [1], judge0: [0]}"])
    assert cfg.run.cores["judge0"] == [0]
    assert load_config(path, ["run.placement=auto"]).run.placement == "auto"  # only manual needs the map
