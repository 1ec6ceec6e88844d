"""A small process supervisor for `make dev`: children in their own process groups,
their output prefixed with their names, stopped in order."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parent.parent
STOP_TIMEOUT_SECONDS = 12

log = logging.getLogger("dev")
_print_lock = threading.Lock()


def say(text: str = "") -> None:
    """Print whole lines at once, never interleaved with a child's output."""
    with _print_lock:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()


class Child:
    """One supervised process, in its own process group, its output prefixed with its name."""

    COLOURS = ["36", "33", "35", "32", "34"]

    def __init__(self, name: str, command: list[str], width: int, colour: str | None) -> None:
        self.name = name
        self.command = command
        label = f"{name:<{width}} | "
        self.prefix = f"\033[{colour}m{label}\033[0m" if colour else label
        self.process: subprocess.Popen[bytes] | None = None
        self._pump: threading.Thread | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.command,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            # Its own group: Ctrl-C reaches only this runner, which stops the
            # children in order, and a group signal also reaches grandchildren.
            start_new_session=True,
        )
        self._pump = threading.Thread(target=self._relay, args=(self.process.stdout,), daemon=True)
        self._pump.start()

    def _relay(self, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            say(self.prefix + raw.decode("utf-8", "replace").rstrip("\n"))
        stream.close()

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal_group(self, signum: int) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass

    def finish(self) -> None:
        """Reap the process, and anything left in its group, and drain its output."""
        if self.process is None:
            return
        self.process.wait()
        self.signal_group(signal.SIGKILL)  # orphans of a crashed leader, if any
        if self._pump is not None:
            self._pump.join(timeout=2)


class Supervisor:
    """Start children, notice when one dies, stop them all."""

    def __init__(self, names: list[str]) -> None:
        self.width = max(len(n) for n in names + ["dev"])
        self.colour = sys.stdout.isatty()
        self.children: list[Child] = []

    def start(self, name: str, command: list[str]) -> None:
        colour = Child.COLOURS[len(self.children) % len(Child.COLOURS)] if self.colour else None
        child = Child(name, command, self.width, colour)
        child.start()
        self.children.append(child)
        log.info("%s started (pid %s): %s", name, child.process.pid if child.process else "?", " ".join(command[1:]))

    def dead(self) -> Child | None:
        return next((c for c in self.children if not c.alive), None)

    def stop(self, force: threading.Event) -> None:
        running = [c for c in self.children if c.alive]
        if running:
            log.info("stopping %s", ", ".join(c.name for c in running))
        for child in running:
            child.signal_group(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        while any(c.alive for c in running) and time.monotonic() < deadline and not force.is_set():
            time.sleep(0.1)
        for child in running:
            if child.alive:
                log.info("%s did not stop in time; killing it", child.name)
                child.signal_group(signal.SIGKILL)
        for child in self.children:
            child.finish()
