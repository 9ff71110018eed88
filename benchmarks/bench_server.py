"""One server, a class of students: `streamlit run app/main.py -- --classroom` under 8 Chromium sessions.

    .venv/bin/python benchmarks/bench_server.py [--sessions 8] [--seconds 240] [--heavy 2] [--port 8523]

Starts the app in classroom mode, opens `--sessions` Chromium pages (each its own browser context, so
its own Streamlit session), and lets each one, at the same time as the others, repeat: upload an
image no one has uploaded before (a random crop of a sample photo with its own noise, 160-900 px),
then open the next page of the app. Each session makes its own choice first (even sessions random
ViT weights, odd ones the project-trained), and `--heavy` of them, on every visit to
Explanations, start a slow method (Integrated Gradients, or occlusion) and wait there for its
result. Every action is timed from just before it until its script run is over and painted
(benchmarks/_browser.py); a slow method's result is timed until its progress bar is gone.

Checked and printed: no exception box, no page error or tab crash, no stuck step; after every step
each session still shows its own image (the sidebar's caption is its own last upload's name) and its
own weights choice; the server's resident memory (VmRSS) every 10 images, flat after the warm-up
(the first 20 images) and under `--budget-gb` (the README's total); median and worst latency per
step; and the latency of the other sessions' steps while a slow method runs against the steps while
none does (slow methods run in the heavy queue, half the cores; no page waits for it).
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
WEIGHTS = ("Random (untrained)", "Project-trained (shipped)")  # the ViT weights of even and odd sessions
HEAVY_METHODS = ("Integrated Gradients", "Occlusion")
CAPTION = '[data-testid="stSidebar"] [data-testid="stImageCaption"]'
PROGRESS = '[data-testid="stProgress"]'



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
        self.heavy: list[tuple[float, float]] = []  # (start, end) of each slow method, perf_counter seconds
        self.heavy_now = 0  # slow methods under way
        self.others: list[tuple[float, float, float]] = []  # steps of sessions without slow methods

    def record(self, step: str, seconds: float | None, session: int) -> None:
        if seconds is None:
            self.errors.append(f"session {session}, {step}: no run finished within the step timeout")
        else:
            self.steps.setdefault(step, []).append(seconds)

    def uploaded(self) -> None:
        self.images += 1
        if self.images % 10 == 0:
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


OWN_IMAGE = """(name) => { const c = document.querySelector('[data-testid="stSidebar"] [data-testid="stImageCaption"]');
  return c !== null && c.innerText.trim() === name; }"""


async def check_own(page, index: int, name: str | None, stats: Stats, where: str, wait_s: float = 60) -> None:
    """This session shows its own image (waiting up to `wait_s` for the run that draws it: an upload's
    run can come after a run already under way) and its own weights choice, never another session's."""
    if name is not None:
        try:
            await page.wait_for_function(OWN_IMAGE, arg=name, timeout=wait_s * 1000, polling=100)
        except Exception:  # playwright's TimeoutError
            caption = (await page.locator(CAPTION).first.inner_text()).strip()
            stats.errors.append(f"session {index}, {where}: shows image {caption!r}, its own is {name!r}")
    weights = await page.locator(".st-key-ViT_source input").input_value()
    if weights != WEIGHTS[index % 2]:
        stats.errors.append(f"session {index}, {where}: ViT weights {weights!r}, its choice was {WEIGHTS[index % 2]!r}")


async def choose(page, key: str, text: str, timeout_s: float) -> float | None:
    """Pick `text` in the select box or multiselect with widget key `key` (typed, then Enter)."""
    box = page.locator(f".st-key-{key} input").first

    async def act() -> None:
        await box.focus()
        await box.press("ArrowDown")
        await page.locator('[role="option"]', has_text=text).first.click()

    return await timed(page, act, timeout_s)


async def start_heavy(page, index: int, stats: Stats, timeout_s: float) -> None:
    """On Explanations: offer the slow methods, add one, and wait for its result (progress bar gone)."""
    if not await page.locator(".st-key-exp_expensive input").is_checked():
        stats.record("slow methods on", await timed(page, page.locator(".st-key-exp_expensive label").click,
                                                     timeout_s), index)
    method = HEAVY_METHODS[index % len(HEAVY_METHODS)]
    chosen = await page.locator(".st-key-exp_methods").inner_text()
    t0 = time.perf_counter()
    stats.heavy_now += 1
    try:
        if method not in chosen:
            stats.record(f"add {method} (drawn)", await choose(page, "exp_methods", method, timeout_s), index)
        else:  # already chosen: this visit's new image queued it
            stats.record(f"{method}, new image (drawn)", 0.0, index)
        await page.wait_for_function(f"() => !document.querySelector('{PROGRESS}')", timeout=timeout_s * 4000)
    finally:
        stats.heavy_now -= 1
        stats.heavy.append((t0, time.perf_counter()))
    stats.record(f"{method} result", time.perf_counter() - t0, index)


async def one_step(page, rng: random.Random, index: int, step: int, current: str, stats: Stats,
                   timeout_s: float, heavy: bool) -> tuple[str, str]:
    """Upload a new image, then open another page; returns the page now shown and the image's name."""
    sidebar = page.locator('[data-testid="stSidebar"]')
    serial = 1000 * index + step
    data = distinct_png(rng, serial)
    upload = sidebar.locator('input[type="file"]').first
    name = f"s{index}_{serial}.png"
    files = [{"name": name, "mimeType": "image/png", "buffer": data}]
    t0 = time.perf_counter()
    seconds = await timed(page, lambda upload=upload, files=files: upload.set_input_files(files=files), timeout_s)
    stats.record("upload", seconds, index)
    if seconds is not None and not heavy:
        stats.others.append((t0, time.perf_counter(), seconds))
    stats.uploaded()
    await check_own(page, index, name, stats, "after its upload")
    target = PAGES[(step + index) % len(PAGES)]
    if target == current:  # never the page already shown: its link starts no run
        target = PAGES[(step + index + 1) % len(PAGES)]
    nav = page.locator('[data-testid="stSidebarNav"] a')
    link = nav.first if target == PAGES[0] else page.locator(f'[data-testid="stSidebarNav"] a[href$="/{target}"]')
    t0 = time.perf_counter()
    seconds = await timed(page, link.click, timeout_s)
    stats.record(target, seconds, index)
    if seconds is not None and not heavy:
        stats.others.append((t0, time.perf_counter(), seconds))
    boxes = page.locator('[data-testid="stException"]')
    if await boxes.count():
        stats.errors.append(f"session {index}, {target}: {(await boxes.first.inner_text())[:300]}")
    await check_own(page, index, name, stats, f"on {target}")
    if heavy and target == "explanations":  # every visit: a new image, so a new job
        await start_heavy(page, index, stats, timeout_s)
        await check_own(page, index, name, stats, "after its slow method")
    return target, name


async def session(browser, url: str, index: int, stats: Stats, until: float, timeout_s: float,
                  heavy: bool) -> None:
    context = await browser.new_context(viewport={"width": 1600, "height": 1000})
    page = await context.new_page()
    # what breaks in the browser is reported with the server's errors
    page.on("pageerror", lambda err: stats.errors.append(f"session {index}: page error: {str(err)[:300]}"))
    page.on("crash", lambda _: stats.errors.append(f"session {index}: the browser tab crashed"))
    await page.add_init_script(RECORDER)
    await page.goto(url)
    await page.wait_for_function(QUIET, timeout=600_000)
    if WEIGHTS[index % 2] != WEIGHTS[1]:  # this session's own choice, checked after every step
        stats.record("choose weights", await choose(page, "ViT_source", WEIGHTS[index % 2], timeout_s), index)
    sidebar = page.locator('[data-testid="stSidebar"]')
    stats.record("open Upload", await timed(page, lambda: sidebar.get_by_text("Upload", exact=True).click(),
                                             timeout_s), index)
    rng = random.Random(index)
    step = 0
    current = PAGES[0]
    while time.perf_counter() < until:
        try:
            current, _ = await one_step(page, rng, index, step, current, stats, timeout_s, heavy)
        except Exception as err:  # e.g. a link that never appeared: reported, and this session ends
            try:
                shown = await page.evaluate(STUCK, 0)
            except Exception:  # a crashed tab cannot be read
                shown = "unreadable"
            stats.errors.append(f"session {index}, step {step}: {type(err).__name__}: {str(err)[:200]}; page: {shown}")
            break
        step += 1
    await context.close()


def overlaps(start: float, end: float, spans: list[tuple[float, float]]) -> bool:
    return any(a < end and start < b for a, b in spans)


def summary(values: list[float]) -> str:
    if not values:
        return "none"
    return f"{len(values)} steps, median {statistics.median(values):.2f} s, max {max(values):.2f} s"


async def run(args: argparse.Namespace) -> None:
    from playwright.async_api import async_playwright

    env = dict(item.split("=", 1) for item in args.env)
    with streamlit_server(args.port, env=env, log=args.log, app_args=("--classroom",)) as proc:
        stats = Stats(proc.pid)
        load_before = os.getloadavg()
        print(f"server RSS at start {rss_bytes(proc.pid) / 1e9:.2f} GB, load average {load_before[0]:.1f}",
              flush=True)
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            until = time.perf_counter() + args.seconds
            heavy = set(range(min(args.heavy, args.sessions)))  # session 0: Integrated Gradients, 1: occlusion
            await asyncio.gather(*(session(browser, f"http://127.0.0.1:{args.port}", i, stats, until,
                                           args.step_timeout, i in heavy) for i in range(args.sessions)))
            await browser.close()
        final = rss_bytes(proc.pid) / 1e9
    print(f"\n{args.sessions} sessions ({len(heavy)} starting slow methods), {stats.images} images in "
          f"{time.perf_counter() - stats.start:.0f} s, final server RSS {final:.2f} GB, load average "
          f"{load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} at the end (1 min)")
    print("\n| step | count | median | max |\n|---|---|---|---|")
    everything = [s for v in stats.steps.values() for s in v]
    for name, values in [*stats.steps.items(), ("all", everything)]:
        print(f"| {name} | {len(values)} | {statistics.median(values):.2f} s | {max(values):.2f} s |")
    during = [sec for a, b, sec in stats.others if overlaps(a, b, stats.heavy)]
    quiet = [sec for a, b, sec in stats.others if not overlaps(a, b, stats.heavy)]
    print(f"\nsteps of the sessions without slow methods, while a slow method ran: {summary(during)}")
    print(f"steps of the sessions without slow methods, while none ran:         {summary(quiet)}")
    after = [gb for n, gb in stats.rss if n > 20]
    peak = max([gb for _, gb in stats.rss] + [final])
    if len(after) >= 2:
        print(f"\nRSS after warm-up (images > 20): min {min(after):.2f} GB, max {max(after):.2f} GB, "
              f"last - first {after[-1] - after[0]:+.2f} GB over {stats.rss[-1][0] - stats.rss[1][0]} images")
    print(f"RSS peak sampled {peak:.2f} GB against the stated budget {args.budget_gb:.2f} GB: "
          f"{'under' if peak <= args.budget_gb else 'OVER'}")
    for error in stats.errors:
        print("ERROR:", error)
    print(f"\n{len(stats.errors)} errors (exceptions, page errors, crashes, stuck steps, a session showing "
          "another's image or choice)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--heavy", type=int, default=2, help="sessions that start slow methods on Explanations")
    parser.add_argument("--seconds", type=float, default=240, help="how long the sessions keep going")
    parser.add_argument("--port", type=int, default=8523)
    parser.add_argument("--step-timeout", type=float, default=180, help="seconds before a step counts as stuck")
    parser.add_argument("--budget-gb", type=float, default=3.6,
                        help="the server's stated total (README, Serving a class)")
    parser.add_argument("--log", type=Path, default=None, help="write the server's output here")
    parser.add_argument("--env", nargs="*", default=[], metavar="NAME=VALUE",
                        help="environment of the server, e.g. MALLOC_ARENA_MAX=2")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
