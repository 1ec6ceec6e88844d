"""`python -m bench [NAME ...]`: run the benchmarks (all by default), print their figures and
write a Markdown report (bench/report.md) with each figure beside its goal and the machine's facts.

Benchmarks are figures, never assertions: a missed goal is reported, not raised."""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
import traceback
from pathlib import Path

from bench.harness import Section, SkipBenchmark, machine_facts, say, wait_for_quiet

BENCHMARKS = {
    "connect": "bench.connect",
    "refresh": "bench.refresh",
    "sweep": "bench.sweep",
    "stampede": "bench.stampede",
}
DEFAULT_REPORT = Path(__file__).resolve().parent / "report.md"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(sections: list[Section], facts: list[tuple[str, str]], argv: list[str], total: float) -> str:
    lines = ["# Benchmark report", "",
             f"`{' '.join(['python -m bench', *argv])}`: {total:.0f} s in all.",
             "Figures, not assertions: each is measured in this run, beside its goal where it has one.", "",
             "## Machine", "", "| fact | value |", "| --- | --- |"]
    lines += [f"| {name} | {_cell(value)} |" for name, value in facts]
    met = [f for s in sections for f in s.figures if f.met is not None]
    if met:
        lines += ["", f"**Goals met: {sum(f.met for f in met)} of {len(met)}.**"]
    for section in sections:
        lines += ["", f"## {section.title}", ""]
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"benchmarks to run (default: all): {', '.join(BENCHMARKS)}")
    parser.add_argument("--quick", action="store_true", help="short runs and small sizes, to check the bench itself")
    parser.add_argument("--report", type=Path, default=DEFAULT_REPORT, help=f"where to write the report ({DEFAULT_REPORT})")
    args = parser.parse_args(argv)
    raw_argv = sys.argv[1:] if argv is None else argv
    unknown = [name for name in args.names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    names = args.names or list(BENCHMARKS)
    facts = machine_facts()
    sections: list[Section] = []
    started = time.monotonic()
    for name in names:
        module = importlib.import_module(BENCHMARKS[name])
        section = Section(name, module.TITLE)
        sections.append(section)
        say(f"== {name}: {module.TITLE}")
        idle, waited = wait_for_quiet(patience=5.0 if args.quick else 60.0)
        if idle >= 0.3:
            say(f"  note: other programs keep {idle:.2f} cores busy (waited {waited:.0f} s for quiet); "
                "figures will be low")
        section.notes.append(
            f"Other programs kept {idle:.2f} of the {os.cpu_count()} cores busy just before this benchmark "
            f"(the bench idle{f', after waiting {waited:.0f} s for quiet' if waited >= 1 else ''}); the "
            "figures are only as good as the machine was quiet (see 'unaccounted' in the CPU notes).")
        began = time.monotonic()
        try:
            module.run(section, quick=args.quick)
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
        args.report.write_text(render(sections, facts, raw_argv, time.monotonic() - started))
    args.report.write_text(render(sections, facts, raw_argv, time.monotonic() - started))
    say(f"report: {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
