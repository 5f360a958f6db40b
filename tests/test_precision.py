"""`precision: fastest` (training) and `dtype: fastest` (generation): bf16 only where the machine measures it
faster than fp32; `auto` keeps a CPU in fp32; a name that is neither is refused."""

import pytest
import torch

from tiller.config import ConfigError, load_config
from tiller.training import precision
from tiller.training.precision import cpu_bf16_speedup, generation_dtype, resolve_precision


@pytest.fixture
def probe(monkeypatch):
    """Sets what the matmul probe measures (the CPU under test has whatever it has)."""
    def set_speedup(value: float):
        monkeypatch.setattr(precision, "cpu_bf16_speedup", lambda: value)
        precision._fastest_on_this_cpu.cache_clear()  # decided once per process: each setting decides afresh
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    yield set_speedup
    precision._fastest_on_this_cpu.cache_clear()  # the real probe decides for the tests after this one


def test_fastest_takes_bf16_only_when_the_probe_measures_it_faster(probe):
    probe(3.0)
    assert resolve_precision("fastest") == "bf16" and generation_dtype("fastest") == "bfloat16"
    probe(1.2)  # faster, but within what noise could give: not worth leaving fp32's exactness for
    assert resolve_precision("fastest") == "fp32" and generation_dtype("fastest") == "float32"
    probe(0.3)  # emulated bf16 (most CPUs without AVX512-BF16 or AMX)
    assert resolve_precision("fastest") == "fp32"


def test_the_decision_is_said_once_with_the_measured_ratio(probe, capsys):
    probe(2.4)
    assert resolve_precision("fastest") == "bf16" and generation_dtype("fastest") == "bfloat16"
    said = capsys.readouterr().err.splitlines()
    assert said == ["precision: fastest -> bf16 (a bf16 matmul on this CPU runs at 2.4x fp32's; bf16 is taken from 1.5x)"]
    resolve_precision("auto")  # auto asks nothing and says nothing
    assert capsys.readouterr().err == ""


def test_auto_stays_fp32_on_a_cpu_whatever_the_probe_says(probe):
    probe(4.0)
    assert resolve_precision("auto") == "fp32" and generation_dtype("float32") == "float32"
    assert resolve_precision("bf16") == "bf16" and generation_dtype("bfloat16") == "bfloat16"


def test_a_gpu_trains_in_bf16_under_auto_and_fastest(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(precision, "cpu_bf16_speedup", lambda: pytest.fail("the CPU probe ran with a GPU present"))
    assert resolve_precision("auto") == resolve_precision("fastest") == "bf16"


def test_an_unknown_precision_is_named_in_the_error():
    with pytest.raises(ValueError, match="'fp16'"):
        resolve_precision("fp16")


def test_the_probe_measures_a_positive_ratio_and_runs_once():
    cpu_bf16_speedup.cache_clear()
    ratio = cpu_bf16_speedup()
    assert ratio > 0 and cpu_bf16_speedup() == ratio and cpu_bf16_speedup.cache_info().hits == 1


def test_configs_accept_fastest_and_refuse_a_misspelling(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("learner: {precision: fastest}\nrollout: {dtype: fastest}\n")
    cfg = load_config(path)
    assert cfg.learner.precision == "fastest" and cfg.rollout.dtype == "fastest"
    path.write_text("learner: {precision: fastests}\n")
    with pytest.raises(ConfigError, match="learner.precision"):
        load_config(path)
