"""One server, a class of students: memory and latency of `streamlit run` under several Chromium sessions.

    .venv/bin/python benchmarks/bench_server.py [--sessions 4] [--seconds 120] [--port 8523]

Starts the app, opens `--sessions` Chromium pages (each its own browser context, so its own Streamlit
session), and lets each one, at the same time as the others, repeat: upload an image no one has
uploaded before (a random crop of a sample photo with its own noise, 160-900 px), then open the next
page of the app. Every action is timed from just before it until its script run is over and painted
(benchmarks/_browser.py). Prints the server's resident memory (VmRSS) every 20 uploaded images and,
at the end, per-step latency (median, max) and the RSS curve after the warm-up (the first 20 images):
flat means the caches hold memory to their budget whatever the number of images.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._browser import (  # noqa: E402
    CHROMIUM,
    CHROMIUM_ARGS,
    IDLE_AFTER,
    QUIET,
    RECORDER,
    TWO_FRAMES,
    rss_bytes,
    streamlit_server,
)

PAGES = ["tokens", "attention", "explanations", "features", "classify"]


def distinct_png(rng: random.Random, serial: int) -> bytes:
    """A PNG no one uploaded before: a random crop of a sample photo, resized, with its own noise."""
    import numpy as np
    from PIL import Image

    from t2t.images import sample_images

    path = rng.choice(sorted(sample_images().values()))
    with Image.open(path) as im:
        img = im.convert("RGB")
    w, h = img.size
    cw, ch = rng.randint(w // 3, w), rng.randint(h // 3, h)
    left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
    side = rng.randint(160, 900)
    img = img.crop((left, top, left + cw, top + ch)).resize((side, max(32, side * ch // cw)))
    noise = np.random.default_rng(serial).integers(-8, 9, size=(img.size[1], img.size[0], 3))
    pixels = np.clip(np.asarray(img, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


# what the page shows when a step found no finished run: the last script states (ms after the action)
STUCK = """(t0) => JSON.stringify({url: location.pathname, now: Math.round(performance.now() - t0),
  runs: (window.__runs || []).slice(-6).map(r => [Math.round(r[0] - t0), r[1]]),
  skeletons: document.querySelectorAll('[data-testid="stSkeleton"]').length,
  state: document.querySelector('[data-testid="stApp"]')?.getAttribute('data-test-script-state') ?? null,
  status: document.querySelector('[data-testid="stStatusWidget"]')?.innerText || null,
  shown: (document.body?.innerText || '').slice(0, 300)})"""


class Stats:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.images = 0
        self.rss: list[tuple[int, float]] = []  # (images uploaded so far, GB)
        self.steps: dict[str, list[float]] = {}
        self.errors: list[str] = []
        self.start = time.perf_counter()

    def record(self, step: str, seconds: float | None, session: int) -> None:
        if seconds is None:
            self.errors.append(f"session {session}, {step}: no run finished within the step timeout")
        else:
            self.steps.setdefault(step, []).append(seconds)

    def uploaded(self) -> None:
        self.images += 1
        if self.images % 20 == 0:
            gb = rss_bytes(self.pid) / 1e9
            self.rss.append((self.images, gb))
            print(f"{self.images:4d} images  server RSS {gb:.2f} GB  ({time.perf_counter() - self.start:.0f} s)",
                  flush=True)


async def timed(page, action, timeout_s: float) -> float | None:
    """Seconds until the run the action caused is over and painted; None past `timeout_s` (reported)."""
    t0 = await page.evaluate("() => performance.now()")
    await action()
    try:
        await page.wait_for_function(IDLE_AFTER, arg=t0, timeout=timeout_s * 1000, polling=50)
    except Exception:  # playwright's TimeoutError: counted, and the session goes on
        print("  stuck step:", await page.evaluate(STUCK, t0), flush=True)
        return None
    t1 = await page.evaluate(TWO_FRAMES)
    return (t1 - t0) / 1000


async def one_step(page, rng: random.Random, index: int, step: int, current: str, stats: Stats,
                   timeout_s: float) -> str:
    """Upload a new image, then open another page; returns the page now shown."""
    sidebar = page.locator('[data-testid="stSidebar"]')
    serial = 1000 * index + step
    data = distinct_png(rng, serial)
    upload = sidebar.locator('input[type="file"]').first
    files = [{"name": f"s{index}_{serial}.png", "mimeType": "image/png", "buffer": data}]
    seconds = await timed(page, lambda upload=upload, files=files: upload.set_input_files(files=files), timeout_s)
    stats.record("upload", seconds, index)
    stats.uploaded()
    name = PAGES[(step + index) % len(PAGES)]
    if name == current:  # never the page already shown: its link starts no run
        name = PAGES[(step + index + 1) % len(PAGES)]
    nav = page.locator('[data-testid="stSidebarNav"] a')
    link = nav.first if name == PAGES[0] else page.locator(f'[data-testid="stSidebarNav"] a[href$="/{name}"]')
    stats.record(name, await timed(page, link.click, timeout_s), index)
    current = name
    boxes = page.locator('[data-testid="stException"]')
    if await boxes.count():
        stats.errors.append(f"session {index}, {name}: {(await boxes.first.inner_text())[:300]}")
    return current


async def session(browser, url: str, index: int, stats: Stats, until: float, timeout_s: float) -> None:
    context = await browser.new_context(viewport={"width": 1600, "height": 1000})
    page = await context.new_page()
    # what breaks in the browser is reported with the server's errors
    page.on("pageerror", lambda err: stats.errors.append(f"session {index}: page error: {str(err)[:300]}"))
    page.on("crash", lambda _: stats.errors.append(f"session {index}: the browser tab crashed"))
    await page.add_init_script(RECORDER)
    await page.goto(url)
    await page.wait_for_function(QUIET, timeout=600_000)
    sidebar = page.locator('[data-testid="stSidebar"]')
    await timed(page, lambda: sidebar.get_by_text("Upload", exact=True).click(), timeout_s)
    rng = random.Random(index)
    step = 0
    current = PAGES[0]
    while time.perf_counter() < until:
        try:
            current = await one_step(page, rng, index, step, current, stats, timeout_s)
        except Exception as err:  # e.g. a link that never appeared: reported, and this session ends
            try:
                shown = await page.evaluate(STUCK, 0)
            except Exception:  # a crashed tab cannot be read
                shown = "unreadable"
            stats.errors.append(f"session {index}, step {step}: {type(err).__name__}: {str(err)[:200]}; page: {shown}")
            break
        step += 1
    await context.close()


async def run(args: argparse.Namespace) -> None:
    from playwright.async_api import async_playwright

    env = dict(item.split("=", 1) for item in args.env)
    with streamlit_server(args.port, env=env, log=args.log) as proc:
        stats = Stats(proc.pid)
        print(f"server RSS at start {rss_bytes(proc.pid) / 1e9:.2f} GB", flush=True)
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            until = time.perf_counter() + args.seconds
            await asyncio.gather(*(session(browser, f"http://127.0.0.1:{args.port}", i, stats, until,
                                           args.step_timeout) for i in range(args.sessions)))
            await browser.close()
        final = rss_bytes(proc.pid) / 1e9
    print(f"\n{args.sessions} sessions, {stats.images} images in {time.perf_counter() - stats.start:.0f} s, "
          f"final server RSS {final:.2f} GB, load average {os.getloadavg()[0]:.1f}")
    print("\n| step | count | median | max |\n|---|---|---|---|")
    everything = [s for v in stats.steps.values() for s in v]
    for name, values in [*stats.steps.items(), ("all", everything)]:
        print(f"| {name} | {len(values)} | {statistics.median(values):.2f} s | {max(values):.2f} s |")
    after = [gb for n, gb in stats.rss if n > 20]
    if len(after) >= 2:
        print(f"\nRSS after warm-up (images > 20): min {min(after):.2f} GB, max {max(after):.2f} GB, "
              f"last - first {after[-1] - after[0]:+.2f} GB over {stats.rss[-1][0] - stats.rss[1][0]} images")
    for error in stats.errors:
        print("ERROR:", error)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=120, help="how long the sessions keep going")
    parser.add_argument("--port", type=int, default=8523)
    parser.add_argument("--step-timeout", type=float, default=180, help="seconds before a step counts as stuck")
    parser.add_argument("--log", type=Path, default=None, help="write the server's output here")
    parser.add_argument("--env", nargs="*", default=[], metavar="NAME=VALUE",
                        help="environment of the server, e.g. MALLOC_ARENA_MAX=2")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
