"""Saturation measured with wrk (Debian's `wrk`), the C load generator the fast-path goals were
first measured with: it costs the shared cores far less per request than the Python generator
in `bench.loadgen`, so a server's rate at saturation is measured rather than the generator's.

Optional: `available()` says whether it is installed; the benchmarks fall back to
`bench.loadgen` alone when it is not."""
from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

# A request per call, cycling through the paths, with the same headers on each.
_SCRIPT = """
local paths = {%(paths)s}
local headers = {%(headers)s}
local i = 0
request = function()
    i = i %% #paths + 1
    return wrk.format("GET", paths[i], headers)
end
"""
_RATE = re.compile(r"Requests/sec:\s+([\d.]+)")
_TOTAL = re.compile(r"(\d+) requests in ([\d.]+)(m?s)")
_NON_2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")
_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


@dataclass(frozen=True)
class WrkResult:
    """What one wrk run reports."""

    rate: float
    requests: int
    non_2xx: int
    socket_errors: int


def available() -> bool:
    """Whether wrk is on PATH."""
    return shutil.which("wrk") is not None


def _lua_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def saturate(base: str, paths: list[str], headers: dict[str, str] | None = None, connections: int = 32,
             seconds: float = 8.0, threads: int = 1) -> WrkResult:
    """Closed loop over keep-alive connections: `connections` of them, cycling through `paths`."""
    script = _SCRIPT % {
        "paths": ", ".join(_lua_string(p) for p in paths),
        "headers": ", ".join(f"[{_lua_string(k)}] = {_lua_string(v)}" for k, v in (headers or {}).items()),
    }
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as folder:
        path = Path(folder) / "paths.lua"
        path.write_text(script)
        completed = subprocess.run(
            ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds:g}s", "-s", str(path), base],
            capture_output=True, text=True, timeout=seconds + 60, check=True)
    out = completed.stdout
    rate = _RATE.search(out)
    total = _TOTAL.search(out)
    if rate is None or total is None:
        raise RuntimeError(f"wrk printed no rate:\n{out}\n{completed.stderr}")
    non_2xx = _NON_2XX.search(out)
    errors = _ERRORS.search(out)
    return WrkResult(rate=float(rate.group(1)), requests=int(total.group(1)),
                     non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
                     socket_errors=sum(int(n) for n in errors.groups()) if errors else 0)
