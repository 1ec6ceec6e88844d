"""Where a running process spends its CPU, sampled from outside by py-spy while a benchmark runs.

py-spy (a dev dependency) reads the process's Python stacks without stopping it; with `--gil`
only the thread holding the GIL is sampled, so the samples are where the process's Python CPU
goes (native code called from Python, such as socket calls or Fernet's Rust core, counts for
the Python frame that called it). Where py-spy is missing or may not read other processes, the
benchmark says so and goes on."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench.harness import BIN, library_of

RATE = 200  # samples a second


@dataclass
class Profile:
    """Samples of one process: by library of the innermost frame, and by the stages (functions
    anywhere on the stack) a caller asks about."""

    samples: int = 0
    libraries: Counter[str] = field(default_factory=Counter)
    stages: Counter[str] = field(default_factory=Counter)
    problem: str = ""

    def share(self, counter: Counter[str]) -> dict[str, float]:
        """Fractions of all samples, largest first."""
        return {name: n / max(self.samples, 1) for name, n in counter.most_common()}


def _library(frame: str) -> str:
    """The library a py-spy frame, `function (path:line)`, belongs to."""
    return library_of(frame[frame.rfind("(") + 1:frame.rfind(":")])


def parse(raw: str, stages: dict[str, tuple[str, ...]]) -> Profile:
    """A py-spy `--format raw` file (one `frame;frame;… count` line per stack, outermost first)
    read into a Profile. A sample counts for the first stage, in `stages`' order, one of whose
    function names is on its stack; "other" when none is."""
    profile = Profile()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        n = int(count)
        profile.samples += n
        profile.libraries[_library(frames[-1])] += n
        names = {frame.split(" (", 1)[0].rsplit(".", 1)[-1] for frame in frames}
        stage = next((stage for stage, functions in stages.items() if names.intersection(functions)), "other")
        profile.stages[stage] += n
    return profile


class Sampler:
    """`py-spy record` attached to one process from `start()` to `stop()`."""

    def __init__(self, pid: int, output: Path) -> None:
        self.pid = pid
        self.output = output
        self.popen: subprocess.Popen[bytes] | None = None
        self.problem = ""

    def start(self) -> Sampler:
        binary = shutil.which("py-spy", path=f"{BIN}:{os.environ.get('PATH', '')}")
        if binary is None:
            self.problem = "py-spy is not installed (pip install py-spy)"
            return self
        self.popen = subprocess.Popen([binary, "record", "--pid", str(self.pid), "--rate", str(RATE), "--gil",
                                       "--nonblocking", "--full-filenames", "--format", "raw",
                                       "--output", str(self.output)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        return self

    def stop(self, stages: dict[str, tuple[str, ...]]) -> Profile:
        """Stop sampling and read what was sampled."""
        if self.popen is None:
            return Profile(problem=self.problem)
        self.popen.send_signal(signal.SIGINT)
        try:
            _, err = self.popen.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            _, err = self.popen.communicate()
        if not self.output.exists():
            return Profile(problem=f"py-spy wrote nothing: {err.decode(errors='replace').strip()[-300:]}")
        return parse(self.output.read_text(), stages)
