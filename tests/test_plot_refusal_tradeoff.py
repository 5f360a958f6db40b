"""scripts/plot_refusal_tradeoff.py: reads `tiller eval` reports, prints the points it plots, writes a PNG,
and names a run directory that holds no report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parents[1] / "scripts" / "plot_refusal_tradeoff.py"


def rate(value: float) -> dict:
    return {"value": value, "low": max(0.0, value - 0.1), "high": min(1.0, value + 0.1), "n": 72}


def write_report(run: Path, refused: float, over: float, with_baseline: bool) -> None:
    metrics = {"model": {"harmful_refusal": rate(refused), "over_refusal": rate(over)}}
    if with_baseline:
        metrics["baseline"] = {"harmful_refusal": rate(0.02), "over_refusal": rate(0.0)}
    run.mkdir(parents=True)
    (run / "report.json").write_text(json.dumps({"metrics": metrics}), encoding="utf-8")


def test_each_run_is_a_point_and_the_baseline_is_drawn_once(tmp_path):
    write_report(tmp_path / "a", 0.875, 0.292, with_baseline=True)
    write_report(tmp_path / "b", 0.802, 0.181, with_baseline=True)
    out = tmp_path / "plot" / "tradeoff.png"
    done = subprocess.run([sys.executable, str(SCRIPT), str(out), f"SFT={tmp_path / 'a'}",
                           f"benign-heavy={tmp_path / 'b'}"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split()[0] for line in lines[:3]] == ["base", "SFT", "benign-heavy"]
    assert "over-refusal  29.2%  harmful refused  87.5%" in lines[1]
    assert "over-refusal  18.1%  harmful refused  80.2%" in lines[2]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_directory_without_a_report_is_named(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "x.png"), f"SFT={tmp_path / 'missing'}"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert f"{tmp_path / 'missing' / 'report.json'}: not found" in done.stderr
