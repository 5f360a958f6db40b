"""What the benchmarks share: one `tiller run` as a child process, and its steady-state numbers."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from tiller.plots import read_metrics

ROOT = Path(__file__).parents[1]
SKIP = 5  # start-up steps left out of the steady state (start-up has its own metric, time/first_step_s)


@dataclass
class Run:
    name: str
    wall_s: float  # `tiller run` start to process exit
    metrics: list[dict]  # metrics.jsonl, one record per learner step
    batch_size: int  # prompts (or pairs) per step
    stdout: str

    @property
    def steady(self) -> list[dict]:
        return self.metrics[SKIP:] if len(self.metrics) > SKIP else self.metrics

    @property
    def per_s(self) -> float:
        """Steady-state trained prompts (online DPO: pairs) per second."""
        return self.batch_size * len(self.steady) / sum(m["perf/time/step_s"] for m in self.steady)

    def mean(self, key: str) -> float:
        return statistics.fmean(m.get(key, 0.0) for m in self.steady)

    def series(self, key: str) -> list[float | None]:
        return [m.get(key) for m in self.metrics]

    @property
    def first_step_s(self) -> float | None:
        return self.metrics[0].get("perf/time/first_step_s") if self.metrics else None

    @property
    def tail_s(self) -> float | None:
        """From the end of the last trained step to the exit of every process."""
        if self.first_step_s is None:
            return None
        return self.wall_s - self.first_step_s - sum(m["perf/time/step_s"] for m in self.metrics[1:])


def tiller_run(config: str, name: str, out: Path, overrides: list[str], timeout_s: float = 3600) -> Run:
    """`python -m tiller run CONFIG name=NAME output_dir=OUT *overrides` (W&B off); raises SystemExit
    with the tail of its output if it fails."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "tiller", "run", config, f"name={name}", f"output_dir={out}",
                           "metrics.wandb=disabled", *overrides],
                          capture_output=True, text=True, cwd=ROOT, timeout=timeout_s)
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"{name} failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    metrics = read_metrics(out / name)  # under the grouped names (tiller/metric_names.py)
    batch = yaml.safe_load((out / name / "config.yaml").read_text())["learner"]["batch_size"]
    return Run(name, wall, metrics, batch, done.stdout)


def save(result: dict, name: str, out: str | None = None) -> Path:
    """bench/results/NAME.json (or `out`); returns the path."""
    path = Path(out) if out else Path(__file__).parent / "results" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    return path


def save_figure(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def demo_parser(doc: str, steps: int):
    """The options every `tiller run` bench takes: --config, --steps and key=value overrides."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--steps", type=int, default=steps, help="learner steps per run")
    parser.add_argument("overrides", nargs="*", help="extra key=value overrides for every run")
    return parser
