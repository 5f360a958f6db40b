"""The README and docs/ as a guide that cannot drift: its length, its links, the commands it names, its
first screen (what CI runs), and docs/benchmarks.md as bench/report.py renders it from bench/results/.
Fast: no models, no processes."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
FIRST_SCREEN = 40
HISTORY = ("issue #", "the day before", "down from", "this session", "the same morning", "the same day")

LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
INLINE = re.compile(r"`([^`\n]+)`")
COMMAND = re.compile(r"(?:^|[\s;&|(])tiller\s+([a-z][a-z0-9-]*)")


def prose(text: str) -> str:
    """The text without fenced code blocks (links there are examples, not links)."""
    return FENCE.sub("", text)


def code_blocks(text: str) -> list[str]:
    return [m.group(0) for m in FENCE.finditer(text)]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but hyphens and underscores dropped,
    spaces as hyphens."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in prose(path.read_text()).splitlines():
        if m := re.match(r"#{1,6}\s+(.*)", line):
            base = slug(m.group(1))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def test_readme_is_a_guide_not_a_notebook():
    lines = README.read_text().splitlines()
    assert len(lines) <= 320, f"README.md has {len(lines)} lines; move detail to docs/"


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_at_something_that_exists(page):
    broken = []
    for target in LINK.findall(prose(page.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no {file.relative_to(ROOT) if file.is_relative_to(ROOT) else file}")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {file.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_every_tiller_command_the_readme_names_exists():
    from tiller.cli import app

    known = {c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands}
    text = README.read_text()
    named = set()
    for block in code_blocks(text) + INLINE.findall(prose(text)):
        named |= set(COMMAND.findall(block))
    assert named, "the README names no tiller command"
    assert not named - known, f"the README names commands the CLI does not have: {sorted(named - known)}"


def ci_commands() -> list[str]:
    """The commands .ci/run runs, in order (not `set`, `cd` or comments)."""
    out = []
    for line in (ROOT / ".ci/run").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "set ", "cd ")):
            out.append(line)
    return out


def test_the_first_screen_holds_what_ci_runs():
    commands = ci_commands()
    assert any("setup-cpu.sh" in c for c in commands) and any("pytest" in c for c in commands), commands
    screen = "\n".join(README.read_text().splitlines()[:FIRST_SCREEN])
    shell = "\n".join(code_blocks(screen + "\n```"))  # a block cut by the screen's edge still counts
    for command in commands:
        assert command in shell, f"{command!r} (run by .ci/run) is not in a code block of the README's first screen"
    setup = next(c for c in commands if "setup-cpu.sh" in c)
    assert (ROOT / shlex.split(setup)[0]).exists(), setup


def _report():
    spec = importlib.util.spec_from_file_location("bench_report", ROOT / "bench" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmarks_page_is_what_the_results_render():
    report = _report()
    results = sorted(report.RESULTS.glob("*.json"))
    assert results, "bench/results/ holds no result files (they must be committed: bench/report.py reads them)"
    assert (ROOT / "docs/benchmarks.md").read_text() == report.render(), \
        "docs/benchmarks.md is edited by hand or stale: run python bench/report.py"


def test_every_bench_script_writes_a_result():
    scripts = [p for p in (ROOT / "bench").glob("*.py") if not p.name.startswith("_") and p.name != "report.py"]
    missing = [p.name for p in scripts if "write_result(" not in p.read_text()]
    assert not missing, f"bench scripts that do not end with write_result(...): {missing}"


def test_write_result_fills_the_fields_the_report_reads(tmp_path, monkeypatch):
    report = _report()
    monkeypatch.setattr(report, "RESULTS", tmp_path)
    path = report.write_result("example", ["a", "b"], [["x", 1.2345], ["y", None]], note="What it shows.",
                               data={"raw": [1, 2]})
    result = json.loads(path.read_text())
    assert {"benchmark", "date", "commit", "command", "columns", "rows", "note", "raw"} <= result.keys()
    assert result["command"].startswith("python ")
    section = report.render(tmp_path)
    assert "| x | 1.23 |" in section and "| y | — |" in section and "What it shows." in section


def test_no_history_narration_in_the_readme():
    text = README.read_text().lower()
    found = [phrase for phrase in HISTORY if phrase in text]
    assert not found, f"README.md narrates history: {found}; say what is and why"
