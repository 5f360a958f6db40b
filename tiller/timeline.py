"""Milestones of every process of a run (its start-up and its end), on one clock: seconds since
the run began.

    from tiller import timeline
    timeline.mark(cfg.run_dir, "actor0", "engine built")

`tiller run` puts its own start time in the environment of every process it starts, so the
learner, the actors and the judges all measure from the moment the user pressed enter (a process
started by hand measures from its own start). Each mark is one JSON line appended to
`runs/<name>/timeline.jsonl` (and one debug log line); `bench/startup.py` prints them as a table of
where the time to the first trained step (and from the last step to the last exit) went, and
`tiller plot` draws them. A line is a few dozen bytes written with one `write` in append mode, so
processes marking at once do not interleave.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import tiller

STARTED_ENV = "TILLER_STARTED"  # `tiller run` puts its start time (time.time()) here for its children
FILE = "timeline.jsonl"

log = logging.getLogger(__name__)


def run_started() -> float:
    """Wall-clock start of the run: `tiller run`'s, else this process's first import of tiller."""
    try:
        return float(os.environ[STARTED_ENV])
    except (KeyError, ValueError):
        return tiller.STARTED


def since_start() -> float:
    return time.time() - run_started()


def mark(run_dir: Path, process: str, event: str) -> float:
    """Record that `process` reached `event` now; returns the seconds since the run began. Never fails
    the run: a milestone that cannot be written is only logged."""
    seconds = since_start()
    log.debug("timeline: %s %s at %.2f s", process, event, seconds)  # the file is the record; the terminal has enough
    line = json.dumps({"process": process, "event": event, "s": round(seconds, 3), "pid": os.getpid()}) + "\n"
    try:
        Path(run_dir).mkdir(parents=True, exist_ok=True)  # a worker started by hand may be first to write here
        with open(Path(run_dir) / FILE, "a", encoding="utf-8") as out:
            out.write(line)
    except OSError as exc:
        log.warning("could not record milestone %r in %s: %s", event, run_dir, exc)
    return seconds


def read(run_dir: Path) -> list[dict]:
    """Every milestone of the run in `run_dir`, in time order (a torn last line is skipped)."""
    path = Path(run_dir) / FILE
    if not path.exists():
        return []
    marks = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("s"), (int, float)):
            marks.append(entry)
    return sorted(marks, key=lambda m: m["s"])
