"""Bad inputs get one clear error naming the file, line or row, before any expensive work."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tiller.config import ConfigError, DataConfig
from tiller.learner.prompts import load_prompts
from tiller.models import load_tokenizer

ROOT = Path(__file__).parents[1]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_a_row_without_the_prompt_field_names_file_and_line(tmp_path, tiny_policy_dir):
    data = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "abc"}, {"text": "no prompt here"}])
    with pytest.raises(ConfigError, match=r"p.jsonl:2: no field 'prompt'"):
        load_prompts(DataConfig(source="jsonl", path=str(data)), load_tokenizer(tiny_policy_dir), 100)


def test_a_row_that_is_not_json_names_file_and_line(tmp_path, tiny_policy_dir):
    data = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "abc"}, "{not json"])
    with pytest.raises(ConfigError, match=r"p.jsonl:2: not valid JSON"):
        load_prompts(DataConfig(source="jsonl", path=str(data)), load_tokenizer(tiny_policy_dir), 100)


def test_a_prompt_longer_than_the_context_names_its_row(tmp_path, tiny_policy_dir):
    data = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "ab"}, {"prompt": "abcdefghijkl"}])
    with pytest.raises(ConfigError, match=r"p.jsonl:2: prompt has 12 tokens, more than the 10"):
        load_prompts(DataConfig(source="jsonl", path=str(data)), load_tokenizer(tiny_policy_dir), 10)


def test_good_jsonl_prompts_load(tmp_path, tiny_policy_dir):
    data = write_jsonl(tmp_path / "p.jsonl", [{"q": "hello"}, {"q": "hi there"}])
    stream = load_prompts(DataConfig(source="jsonl", path=str(data), prompt_field="q"),
                          load_tokenizer(tiny_policy_dir), 100)
    assert len(stream) == 2 and len(stream.get(1)) == len("hi there") and stream.get(2).tolist() == stream.get(0).tolist()


@pytest.mark.parametrize("override,message", [
    ("model.path=/nonexistent/model", "model.path: /nonexistent/model does not exist: point it at"),
    ("data.source=jsonl", "data.path: required"),
    ("learner.address=tcp://0.0.0.0:5599", "tiller keys"),
])
def test_the_learner_refuses_bad_inputs_in_one_line(override, message, tmp_path, tiny_policy_dir):
    done = subprocess.run(
        [sys.executable, "-m", "tiller", "learner", "--config", "configs/demo.yaml", f"output_dir={tmp_path}",
         "model.build_tiny=false", f"model.path={tiny_policy_dir}", override],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert message in done.stderr and "Traceback" not in done.stderr


# ----------------------------------------------------------------------------- `tiller run` refuses before starting anything

BAD_RUNS = [  # (overrides, the one line expected, files to write: name -> text)
    (["data.source=jsonl", "data.path={tmp}/p.jsonl"], r"p.jsonl:2: not valid JSON", {"p.jsonl": '{"prompt": "ab"}\n{oops\n'}),
    (["learner.address=tcp://0.0.0.0:5999"], r"is not loopback and no CURVE keys are configured", {}),
    (["rollout.max_model_len=4096"], r"rollout.max_model_len: 4096 is more than the 256 positions", {}),
    (["learner.lease_prompts=64", "learner.max_inflight_prompts=32"], r"learner.lease_prompts: 64 is more than", {}),
    (["learner.algorithm=grpo", "rollout.samples_per_prompt=1"], r"rollout.samples_per_prompt: grpo with 1 sample", {}),
    (["judge.constitution_path={tmp}/missing.yaml"], r"judge.constitution_path: .*missing.yaml does not exist", {}),
]


@pytest.mark.parametrize("overrides,expected,files", BAD_RUNS, ids=[b[1][:30] for b in BAD_RUNS])
def test_tiller_run_refuses_bad_setups_in_seconds_before_any_process(overrides, expected, files, tmp_path,
                                                                     tiny_policy_dir):
    import re
    import time

    for name, text in files.items():
        (tmp_path / name).write_text(text)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "tiller", "run", "configs/demo.yaml", f"output_dir={tmp_path}",
         f"model.path={tiny_policy_dir}", *[o.format(tmp=tmp_path) for o in overrides]],
        capture_output=True, text=True, timeout=60, cwd=ROOT)
    seconds = time.monotonic() - started
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and re.search(expected, errors[0]), done.stderr
    assert "started" not in done.stdout and not (tmp_path / "demo" / "logs" / "actor0.log").exists()
    assert seconds < 10, f"took {seconds:.1f} s"


def test_a_prompt_only_the_tokenizer_refuses_stops_the_workers_started_meanwhile(tmp_path, tiny_policy_dir):
    """Tokenizing waits for transformers, so every process starts at once and the learner tokenizes the prompts
    before it builds anything; a prompt it refuses still ends the run in seconds, with one line and nothing
    left running."""
    import time

    (tmp_path / "p.jsonl").write_text('{"prompt": "ab"}\n{"prompt": "' + "a" * 400 + '"}\n')
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "tiller", "run", "configs/demo.yaml", f"output_dir={tmp_path}",
         f"model.path={tiny_policy_dir}", "data.source=jsonl", f"data.path={tmp_path / 'p.jsonl'}"],
        capture_output=True, text=True, timeout=60, cwd=ROOT)
    seconds = time.monotonic() - started
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and "p.jsonl:2: prompt has 400 tokens" in errors[0], done.stderr
    milestones = (tmp_path / "demo" / "timeline.jsonl").read_text()
    assert "workers started" in milestones and "learner started" in milestones
    assert "models built" not in milestones  # refused before the learner built anything
    launch = str(tmp_path / "demo" / "launch.yaml")
    left = [p for p in Path("/proc").iterdir() if p.name.isdigit() and launch in _cmdline(p)]
    assert not left, f"processes still running: {left}"
    assert seconds < 15, f"took {seconds:.1f} s"


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
