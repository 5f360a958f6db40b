"""bench/vs_trl.py's arithmetic: the asynchronous gain over the synchronous run, against the ideal from its phases."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[1] / "bench"


@pytest.fixture(scope="module")
def vs_trl():
    sys.path.insert(0, str(BENCH))  # the bench scripts import their siblings (_runs) by name
    try:
        spec = importlib.util.spec_from_file_location("vs_trl", BENCH / "vs_trl.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["vs_trl"] = module  # its dataclasses look their module up there
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("vs_trl", None)
        sys.path.remove(str(BENCH))


def run(system: str, mode: str, pairs_per_s: float, wait_s: float, train_publish_s: float) -> dict:
    return {"system": system, "mode": mode, "pairs_per_s": pairs_per_s, "wait_s": wait_s,
            "train_publish_s": train_publish_s, "wall_s": 100.0 / pairs_per_s, "learner_idle_frac": 0.1,
            "actors_idle_frac": 0.5}


def test_the_async_run_is_measured_against_the_sync_run_and_its_ideal(vs_trl):
    # sync phases G = 1 s, T = 3 s: perfect overlap would step in 3 s instead of 4, an ideal of 4/3
    runs = [run("tiller-async", "async", 2.4, 0.1, 3.0), run("tiller-sync", "sync", 2.0, 1.0, 3.0),
            {"system": "trl", "pairs_per_s": 1.9, "wall_s": 60.0}]
    lines = vs_trl.overlap_lines("compute", runs)
    assert runs[0]["vs_sync"] == pytest.approx(1.2) and runs[0]["ideal_vs_sync"] == pytest.approx(4 / 3)
    assert "1.33x" in lines[0] and "1.20x pairs/s (0.90 of ideal)" in lines[1]
    assert "vs_sync" not in runs[1] and "vs_sync" not in runs[2]


def test_without_a_sync_run_there_is_no_comparison(vs_trl):
    runs = [run("tiller-async", "async", 2.4, 0.1, 3.0)]
    assert vs_trl.overlap_lines("compute", runs) == [] and "vs_sync" not in runs[0]
