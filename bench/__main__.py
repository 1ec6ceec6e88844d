"""`python -m bench [NAME ...]`: run the benchmarks (all by default), each on PostgreSQL (the
production database) and on SQLite in turn, print their figures and write a Markdown report
(bench/report.md): a summary table of the headline figures side by side, then each figure beside
its goal, and the machine's facts.

Benchmarks are figures, never assertions: a missed goal is reported, not raised."""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
import traceback
from pathlib import Path

from bench.harness import MAX_PATIENCE, Figure, Section, SkipBenchmark, machine_facts, say, wait_for_quiet

BENCHMARKS = {
    "token": "bench.token",
    "connect": "bench.connect",
    "refresh": "bench.refresh",
    "proactive": "bench.proactive",
    "sweep": "bench.sweep",
    "stampede": "bench.stampede",
}
DATABASE_LABELS = {"postgresql": "PostgreSQL", "sqlite": "SQLite"}
DEFAULT_REPORT = Path(__file__).resolve().parent / "report.md"
README = Path(__file__).resolve().parent.parent / "README.md"
README_START, README_END = "<!-- bench-summary -->", "<!-- /bench-summary -->"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _summary(sections: list[Section], databases: list[str]) -> list[str]:
    """The headline figures, one row each, one column per database."""
    rows: dict[str, dict[str, Figure]] = {}
    for section in sections:
        for figure in section.figures:
            if figure.headline:
                rows.setdefault(figure.headline, {})[section.database] = figure
    if not rows:
        return []
    lines = ["## Summary", "", "| figure | " + " | ".join(DATABASE_LABELS[d] for d in databases) + " | goal |",
             "| --- | " + " | ".join("---" for _ in databases) + " | --- |"]
    for headline, by_database in rows.items():
        cells = []
        for database in databases:
            found = by_database.get(database)
            if found is None:
                cells.append("—")
            else:
                verdict = "" if found.met is None else (" ✓" if found.met else " **✗**")
                cells.append(_cell(found.value) + verdict)
        goal = next((f.goal for f in by_database.values() if f.goal), "")
        lines.append(f"| {_cell(headline)} | " + " | ".join(cells) + f" | {_cell(goal)} |")
    return lines + [""]


def render(sections: list[Section], facts: list[tuple[str, str]], argv: list[str], total: float,
           databases: list[str]) -> str:
    lines = ["# Benchmark report", "",
             f"`{' '.join(['python -m bench', *argv])}`: {total:.0f} s in all.",
             "Figures, not assertions: each is measured in this run, beside its goal where it has one; "
             "ratios compare two figures measured in the same run, on the same database.", ""]
    lines += _summary(sections, databases)
    lines += ["## Machine", "", "| fact | value |", "| --- | --- |"]
    lines += [f"| {name} | {_cell(value)} |" for name, value in facts]
    met = [f for s in sections for f in s.figures if f.met is not None]
    if met:
        lines += ["", f"**Goals met: {sum(1 for f in met if f.met)} of {len(met)}.**"]
    for section in sections:
        lines += ["", f"## {section.title} ({DATABASE_LABELS.get(section.database, 'any database')})", ""]
        if section.error:
            lines += [f"**Not measured:** {section.error}", ""]
        if section.setup:
            lines += ["Setup:", ""] + [f"- {item}" for item in section.setup] + [""]
        if section.figures:
            lines += ["| figure | measured | goal | met |", "| --- | --- | --- | --- |"]
            for f in section.figures:
                verdict = "" if f.met is None else ("yes" if f.met else "**no**")
                lines.append(f"| {_cell(f.name)} | {_cell(f.value)} | {_cell(f.goal)} | {verdict} |")
            lines.append("")
        if section.notes:
            lines += ["Notes:", ""] + [f"- {note}" for note in section.notes] + [""]
        lines.append(f"_{section.seconds:.0f} s._")
    return "\n".join(lines) + "\n"


def _update_readme(sections: list[Section], databases: list[str], facts: list[tuple[str, str]]) -> None:
    """Put the summary of a full run into the README, between its bench-summary markers."""
    text = README.read_text()
    start, end = text.find(README_START), text.find(README_END)
    summary = _summary(sections, databases)
    if start < 0 or end < start or not summary:
        return
    when = dict(facts).get("date (UTC)", "")
    loads = [f"{s.key} ({DATABASE_LABELS[s.database]}): {s.idle:.2f}" for s in sections if s.idle is not None]
    body = [f"Latest full run ({when}, commit {dict(facts).get('git commit', '?')}; other programs' load on "
            f"the 2 cores just before each benchmark, in busy cores: {', '.join(loads)}):", ""]
    body += [line.replace("## Summary", "").strip() for line in summary if line.strip() and line != "## Summary"]
    README.write_text(text[:start + len(README_START)] + "\n" + "\n".join(body) + "\n" + text[end:])
    say(f"README: {README}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"benchmarks to run (default: all): {', '.join(BENCHMARKS)}")
    parser.add_argument("--quick", action="store_true", help="short runs and small sizes, to check the bench itself")
    parser.add_argument("--databases", default="postgresql,sqlite",
                        help="comma-separated, in order: postgresql, sqlite (default: both)")
    parser.add_argument("--patience", type=float, default=60.0,
                        help="the longest wait for other programs to quiet down before a measurement (60 s)")
    parser.add_argument("--report", type=Path, default=DEFAULT_REPORT,
                        help=f"where to write the report ({DEFAULT_REPORT})")
    args = parser.parse_args(argv)
    raw_argv = sys.argv[1:] if argv is None else argv
    unknown = [name for name in args.names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    names = args.names or list(BENCHMARKS)
    MAX_PATIENCE["seconds"] = args.patience
    databases = [d.strip() for d in args.databases.split(",") if d.strip()]
    if not databases or any(d not in DATABASE_LABELS for d in databases):
        parser.error(f"--databases takes {', '.join(DATABASE_LABELS)}")
    facts = machine_facts()
    sections: list[Section] = []
    started = time.monotonic()
    runs = [(name, database) for name in names for database in databases
            if database in getattr(importlib.import_module(BENCHMARKS[name]), "DATABASES", databases)]
    for name, database in runs:
        module = importlib.import_module(BENCHMARKS[name])
        section = Section(name, module.TITLE, database)
        sections.append(section)
        say(f"== {name} on {DATABASE_LABELS[database]}: {module.TITLE}")
        idle, waited = wait_for_quiet(patience=5.0 if args.quick else 60.0)
        section.idle = idle
        if idle >= 0.3:
            say(f"  note: other programs keep {idle:.2f} cores busy (waited {waited:.0f} s for quiet); "
                "figures will be low")
        section.notes.append(
            f"Other programs kept {idle:.2f} of the {os.cpu_count()} cores busy just before this benchmark "
            f"(the bench idle{f', after waiting {waited:.0f} s for quiet' if waited >= 1 else ''}); the "
            "figures are only as good as the machine was quiet (see 'unaccounted' in the CPU notes).")
        began = time.monotonic()
        try:
            module.run(section, quick=args.quick, database=database)
        except SkipBenchmark as skip:
            section.error = str(skip)
            say(f"  skipped: {skip}")
        except KeyboardInterrupt:
            section.error = "interrupted"
            section.seconds = time.monotonic() - began
            break
        except Exception as error:  # noqa: BLE001 - a broken benchmark is reported, the others still run
            section.error = f"{type(error).__name__}: {error}"
            say(traceback.format_exc())
        section.seconds = time.monotonic() - began
        args.report.write_text(render(sections, facts, raw_argv, time.monotonic() - started, databases))
    args.report.write_text(render(sections, facts, raw_argv, time.monotonic() - started, databases))
    say(f"report: {args.report}")
    if args.report.resolve() == DEFAULT_REPORT and not args.quick:
        _update_readme(sections, databases, facts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
