"""Headless Chromium for the report's tests: the page as a browser renders it (DOM after its scripts ran), what it
wrote to the console, and screenshots.

Debian's `chromium` is found on PATH or, on a root machine with apt (CI's fresh Debian), installed on first use.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

NAMES = ("chromium", "chromium-browser", "google-chrome")
# No network, no first-run work, no GPU: the page must render from its own file alone.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars")
APT_LOCK = "/tmp/odconv-apt.lock"  # shared with scripts/local_slurm.sh
CONSOLE = re.compile(r":CONSOLE[:(]")  # Chromium's log lines for console messages (console.* and uncaught errors)


def find_chromium() -> str:
    """The chromium binary; installs Debian's package when it is missing and this is a root apt machine."""
    found = next((shutil.which(n) for n in NAMES if shutil.which(n)), None)
    if found is None and shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        # One apt at a time on the machine: the suite's workers (and the Slurm fixture) may install at once.
        apt = ["flock", APT_LOCK, "apt-get"]
        subprocess.run([*apt, "update"], env=env, capture_output=True, timeout=900)
        subprocess.run([*apt, "install", "-y", "--no-install-recommends", "chromium"], env=env,
                       capture_output=True, timeout=1800)
        found = next((shutil.which(n) for n in NAMES if shutil.which(n)), None)
    if found is None:
        raise RuntimeError("chromium is not installed and could not be installed here: `apt-get install chromium`")
    return found


def _run(chromium: str, args: list[str], timeout: float) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        return subprocess.run([chromium, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                              text=True, timeout=timeout)


def render(chromium: str, page: Path, budget_ms: int = 10000, timeout: float = 120) -> tuple[str, list[str]]:
    """The DOM once the page's scripts ran (virtual time lets timers finish), and its console messages."""
    proc = _run(chromium, ["--enable-logging=stderr", "--v=0", f"--virtual-time-budget={budget_ms}", "--dump-dom",
                           page.resolve().as_uri()], timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"chromium failed on {page} ({proc.returncode}): {proc.stderr[-2000:]}")
    return proc.stdout, [line for line in proc.stderr.splitlines() if CONSOLE.search(line)]


def screenshot(chromium: str, page: Path, png: Path, width: int = 1400, height: int = 2000,
               budget_ms: int = 10000, timeout: float = 120) -> None:
    proc = _run(chromium, [f"--window-size={width},{height}", f"--virtual-time-budget={budget_ms}",
                           f"--screenshot={png.resolve()}", page.resolve().as_uri()], timeout)
    if proc.returncode != 0 or not png.is_file():
        raise RuntimeError(f"chromium made no screenshot of {page} ({proc.returncode}): {proc.stderr[-2000:]}")


def chart(dom: str, div_id: str) -> str:
    """The rendered DOM of one plotly chart (its div up to the next chart's)."""
    starts = [m.start() for m in re.finditer(r'<div id="[^"]+" class="plotly-graph-div', dom)]
    start = dom.index(f'<div id="{div_id}" class="plotly-graph-div')
    end = next((s for s in starts if s > start), len(dom))
    return dom[start:end]


def texts(fragment: str, css_class: str) -> list[str]:
    """The SVG text of a class: <g class=css_class><text>..</text> (axis ticks) or <text class=css_class> (legend)."""
    pattern = rf'<g class="{css_class}"[^>]*>\s*<text[^>]*>(.*?)</text>|<text class="{css_class}"[^>]*>(.*?)</text>'
    return [re.sub(r"<[^>]+>", "", a or b) for a, b in re.findall(pattern, fragment, flags=re.S)]
