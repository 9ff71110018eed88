"""What the browser benchmarks share: a `streamlit run` server, Debian's Chromium, and a clock for script runs.

The clock: Streamlit's frontend writes the state of the session's script run on its root element
(`[data-testid=stApp]`, attribute `data-test-script-state`: "initial", "running", "notRunning", ...).
An init script records every change of that attribute with `performance.now()`; an action is timed
from just before it until the first "running" after it has turned back to "notRunning" and the
browser has painted two more frames (so plotly's drawing, which runs on the page's main thread,
is included): the page is *drawn*. Work the app runs in the background shows a progress bar: slow
methods and CKA rerun the page when they are done (their bar is a fragment), the faithfulness
curves are waited for at the end of the same run (so for them *drawn* includes that wait). The page
is *complete* when, besides, no progress bar is left.

Needs /usr/bin/chromium (Debian) and the `playwright` package; never `playwright install`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]

# Records (time, state) on every change of the script-run state; polls for the root element until it exists,
# then observes that one attribute only (a document-wide observer would slow plotly's drawing down).
RECORDER = """
(() => {
  window.__runs = [];
  const push = (s) => {
    if (window.__runs.length === 0 || window.__runs[window.__runs.length - 1][1] !== s)
      window.__runs.push([performance.now(), s]);
  };
  const attach = () => {
    const el = document.querySelector('[data-testid="stApp"]');
    if (!el) { setTimeout(attach, 10); return; }
    push(el.getAttribute('data-test-script-state'));
    // every state the attribute took, even when several changes come in one batch of records: the
    // state after change i is the old value of change i + 1, and the current value after the last
    new MutationObserver((records) => {
      for (let i = 1; i < records.length; i++) push(records[i].oldValue);
      push(el.getAttribute('data-test-script-state'));
    }).observe(el, {attributes: true, attributeOldValue: true, attributeFilter: ['data-test-script-state']});
  };
  attach();
})();
"""

# True once the run that answers an action at t0 has finished and no element waits for its lazily loaded
# code (a skeleton); the caller then waits for two animation frames. That run is the first one to start
# after t0, or the one already running at t0: Streamlit folds an action that comes during a run into it
# (the run restarts with the new widget values, and the state stays "running" meanwhile).
IDLE_AFTER = """
(t0) => {
  const SKELETON = '[data-testid="stSkeleton"]';
  const runs = window.__runs || [];
  let started = -1;
  for (let i = runs.length - 1; i >= 0; i--)  // the run in progress at t0, if any
    if (runs[i][0] < t0) { if (runs[i][1] === 'running') started = i; break; }
  if (started < 0)  // else the first run to start after t0
    for (let i = 0; i < runs.length; i++) if (runs[i][0] >= t0 && runs[i][1] === 'running') { started = i; break; }
  if (started < 0) return false;
  const last = runs[runs.length - 1];
  return last[1] === 'notRunning' && runs.length - 1 > started && !document.querySelector(SKELETON);
}
"""
# True when nothing runs, waits for its code, or shows progress (background work still going).
COMPLETE = """
() => {
  const runs = window.__runs || [];
  return runs.length > 0 && runs[runs.length - 1][1] === 'notRunning'
    && !document.querySelector('[data-testid="stSkeleton"], [data-testid="stProgress"]');
}
"""
TWO_FRAMES = "() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => r(performance.now()))))"


@contextmanager
def streamlit_server(port: int, env: dict[str, str] | None = None, log: Path | None = None,
                     start_timeout: float = 120.0, address: str = "127.0.0.1",
                     app_args: tuple[str, ...] = ()) -> Iterator[subprocess.Popen]:
    """`streamlit run app/main.py -- *app_args` on `address`:`port`, headless, no file watcher; stopped
    on exit. `app_args`: the app's own options (e.g. "--classroom").

    Raises RuntimeError when the server has not answered its health check within `start_timeout` s."""
    out = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app/main.py", "--server.headless", "true", "--server.port",
         str(port), "--server.address", address, "--browser.gatherUsageStats", "false",
         "--server.fileWatcherType", "none", *(("--", *app_args) if app_args else ())],
        cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
    )
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            try:
                host = "127.0.0.1" if address in ("0.0.0.0", "::") else address
                with urllib.request.urlopen(f"http://{host}:{port}/_stcore/health", timeout=2) as response:
                    if response.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"streamlit did not start on port {port} (log: {log})")
            time.sleep(0.3)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if log:
            out.close()


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (VmRSS of /proc/<pid>/status), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def launch(playwright):
    """Headless Debian Chromium."""
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)


def open_page(browser, url: str, width: int = 1600, height: int = 1000, timeout_s: float = 300):
    """A new page on the app with the run recorder installed, after its first run has finished."""
    page = browser.new_page(viewport={"width": width, "height": height})
    page.add_init_script(RECORDER)
    page.goto(url)
    page.wait_for_function("() => (window.__runs || []).some(r => r[1] === 'notRunning')", timeout=timeout_s * 1000)
    wait_quiet(page, timeout_s)
    return page


# True when no script run is going on and no element waits for its code.
QUIET = ("() => { const r = window.__runs || []; return r.length > 0 && r[r.length - 1][1] === 'notRunning' "
         "&& !document.querySelector('[data-testid=\"stSkeleton\"]'); }")


def wait_quiet(page, timeout_s: float = 300) -> None:
    """Wait until no script run is going on and no element waits for its code."""
    page.wait_for_function(QUIET, timeout=timeout_s * 1000)


def timed(page, action: Callable[[], None], timeout_s: float = 300) -> tuple[float, float]:
    """Seconds from just before `action()` until the page is drawn, and until it is complete."""
    t0 = page.evaluate("() => performance.now()")
    action()
    page.wait_for_function(IDLE_AFTER, arg=t0, timeout=timeout_s * 1000, polling=20)
    drawn = page.evaluate(TWO_FRAMES)
    page.wait_for_function(COMPLETE, timeout=timeout_s * 1000, polling=20)
    complete = page.evaluate(TWO_FRAMES)
    return (drawn - t0) / 1000, (complete - t0) / 1000


def exception_text(page) -> str | None:
    """The text of the first exception box on the page, if any."""
    boxes = page.locator('[data-testid="stException"]')
    return boxes.first.inner_text() if boxes.count() else None


def sidebar_link(page, title: str):
    return page.locator('[data-testid="stSidebar"]').get_by_role("link", name=title)


def set_number(page, key: str, value: int) -> None:
    """Type a value into the number input with widget key `key` and commit it (Enter)."""
    box = page.locator(f".st-key-{key} input")
    box.fill(str(value))
    box.press("Enter")


def nudge_slider(page, key: str, direction: int) -> None:
    """Move the slider with widget key `key` one step right (+1) or left (-1) from the keyboard."""
    thumb = page.locator(f".st-key-{key} input[type='range']").first  # react-aria's hidden range input
    thumb.focus()
    thumb.press("ArrowRight" if direction > 0 else "ArrowLeft")
