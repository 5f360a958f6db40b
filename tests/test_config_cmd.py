"""`tiller config`, `tiller --version` and `-h`: the commented YAML parses back to the defaults, and the
comments written in the schema's source show up beside their keys."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from tiller.cli import app
from tiller.config import Config, ConfigError, load_config, to_dict
from tiller.config.describe import sections

runner = CliRunner()
ROOT = Path(__file__).parents[1]
SCHEMA = [ROOT / "tiller/config" / name for name in ("sections.py", "offline.py", "evaluation.py", "tree.py")]


def config_output(*args: str) -> str:
    result = runner.invoke(app, ["config", *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_the_whole_tree_parses_back_to_the_defaults():
    assert yaml.safe_load(config_output()) == to_dict(Config())


@pytest.mark.parametrize("name", ["learner", "learner.pg", "judge", "eval.targets", "dpo.loss", "run"])
def test_a_section_parses_back_to_that_section(name):
    node = Config()
    for part in name.split("."):
        node = getattr(node, part)
    assert yaml.safe_load(config_output(name)) == dataclasses.asdict(node)


def test_every_section_parses_back():
    cfg = Config()
    assert len(sections(cfg)) >= 20  # model, model.lora, ... datagen.generation, safety
    for name, node in sections(cfg).items():
        assert yaml.safe_load(config_output(name)) == dataclasses.asdict(node), name


def test_comments_beside_and_above_a_key():
    lines = config_output().splitlines()
    # metrics.kl_warn_nats: its comment is the line above, its range (ranged(20.0, at_least=0)) beside it
    at = lines.index("  kl_warn_nats: 20.0  # (>= 0)")
    assert lines[at - 1] == "  # the progress line warns when kl/sequence (KL per response) passes it; 0: never"
    # model.build_tiny: two comment lines above
    at = lines.index("  build_tiny: false")
    assert lines[at - 1] == "  # a mistyped path is an error, not a run that quietly trains a random model"
    assert lines[at - 2].startswith("  # build a random-init tiny model there if the directory is missing")
    # a trailing comment and a two-sided range; a Literal's choices
    assert "    alpha: 16.0  # the update is scaled by alpha / r (> 0)" in lines
    assert "  top_p: 1.0  # (> 0, <= 1)" in lines
    assert "  algorithm: online_dpo  # (one of: online_dpo, ppo, grpo, rloo)" in lines


def test_section_docstrings_and_list_items_are_shown():
    lines = config_output("learner").splitlines()
    at = lines.index("pg:")
    assert lines[at - 1] == "# PPO and the critic-free variants (GRPO, RLOO) that reuse its clipped surrogate."
    # judge.scorers defaults to [], so one item's keys are shown in comments above it
    judge = config_output("judge")
    assert "# each item: One part of a composed judge.\n# - kind: rule  # safety:" in judge
    assert "#   weight: 1.0\nscorers: []\n" in judge


def test_every_comment_in_the_schema_source_is_shown():
    out = config_output()
    for path in SCHEMA:
        for line in path.read_text().splitlines():
            if "  # " in line or line.lstrip().startswith("# "):
                assert line.split("# ", 1)[1].strip() in out, f"{path.name}: {line.strip()}"


def test_every_field_of_every_section_is_a_key():
    cfg = Config()
    for name, node in [("", cfg), *sections(cfg).items()]:
        keys = {line.split(":")[0] for line in config_output(*([name] if name else [])).splitlines()
                if line and not line.startswith((" ", "#"))}
        assert keys == {f.name for f in dataclasses.fields(node)}, name


def test_a_config_file_and_overrides_give_their_values():
    out = config_output("learner", "-c", str(ROOT / "configs/demo.yaml"), "learner.lr=1e-6")
    expected = load_config(ROOT / "configs/demo.yaml", ["learner.lr=1e-6"]).learner
    assert yaml.safe_load(out) == dataclasses.asdict(expected) and "lr: 1.0e-06  # (> 0)" in out


def test_an_unknown_section_is_one_line_naming_the_known_ones():
    result = runner.invoke(app, ["config", "learner.nope"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert "unknown section 'learner.nope'" in result.output
    assert "learner.pg" in result.output and "eval.targets" in result.output


def test_version():
    from importlib.metadata import version

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output == f"tiller {version('tiller')}\n"


@pytest.mark.parametrize("args", [["-h"], ["run", "-h"], ["config", "-h"], ["learner", "--help"]])
def test_short_and_long_help(args):
    result = runner.invoke(app, args, terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output and "-h" in result.output
    if args[0] == "run":
        assert "Run learner, actors and judges together" in result.output


@pytest.mark.parametrize("overrides", [
    ["judge.kind=composed", "judge.scorers=[{kind: rule, weight: 0.5}]"],  # a one-line block list
    ["judge.kind=composed", "judge.scorers=[{kind: rule}, {kind: safety}]"],
    ["run.placement=manual", "run.actors=0", "run.judges=0", "run.cores={learner: [0]}"],  # a one-line block mapping
])
def test_lists_and_mappings_of_values_parse_back(overrides):
    assert yaml.safe_load(config_output(*overrides)) == to_dict(load_config(None, overrides))


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("**/*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_parses_back(path):
    try:
        expected = to_dict(load_config(path))
    except ConfigError:  # not a whole config (a constitution, a data file)
        pytest.skip("not a config")
    assert yaml.safe_load(config_output("-c", str(path))) == expected
