"""One server for a whole class: memory bounded by bytes, heavy work in fair queues, imports once.

- `ByteCache` (app/_cache.py) keeps its budget in bytes whatever the number of entries, measures
  what values hold (views once, models not at all, a value that grows), and computes a value once
  when several threads ask for it at the same moment.
- `FairQueue` runs one session's jobs in turn with everyone else's and drops jobs nobody waits for.
- `ModelCache` holds the loaded models under a budget in bytes (least recently used unloaded first),
  refuses a model larger than the budget before loading it, and never serves a model altered in
  place; the app shows the refusal with both sizes and goes on with the default model. Checkpoint
  uploads are refused over their cap, and their folder stays within its budget.
- The app: the per-image cache stays within its budget over many images; every module a page
  needs is imported before any page runs; a session keeps its shape class and example when it
  switches the image source away and back; several browser sessions visiting every page for the
  first time at once see no exception, each its own image.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from app._cache import Abandoned, ByteCache, FairQueue, nbytes
from app.model_cache import ModelCache, ModelTooLarge, module_bytes

ROOT = Path(__file__).resolve().parents[2]
MAIN = str(ROOT / "app" / "main.py")


# ----------------------------------------------------------------------------------------------
# ByteCache
# ----------------------------------------------------------------------------------------------


def floats(n: int) -> torch.Tensor:
    return torch.zeros(n, dtype=torch.float32)  # 4 n bytes


def test_nbytes_counts_storages_once_and_skips_models() -> None:
    t = floats(1000)

    @dataclass
    class Holder:
        a: torch.Tensor
        b: torch.Tensor
        model: torch.nn.Module

    held = Holder(t, t[10:20], torch.nn.Linear(1000, 1000))  # a view shares its storage; the 4 MB model is not counted
    assert 4000 <= nbytes(held) < 4000 + 1000
    assert nbytes({"x": floats(10), "y": [floats(20), b"abcd"]}) >= 40 + 80 + 4
    import numpy as np
    from PIL import Image

    assert nbytes(Image.new("RGB", (10, 20))) == 600
    arr = np.zeros((100, 10), dtype=np.float64)
    assert nbytes(arr[:5]) == arr.nbytes  # a slice keeps its whole base alive


def test_byte_cache_evicts_least_recently_used_to_its_budget() -> None:
    cache = ByteCache(budget_bytes=1000)
    for key in "abc":
        cache.get_or_compute(key, lambda: floats(100))  # 400 bytes each
        assert cache.total <= 1000
    assert "a" not in cache and {"b", "c"} <= {k for k in "abc" if k in cache}
    cache.get_or_compute("b", lambda: pytest.fail("b is cached"))  # b is now the most recently used
    cache.get_or_compute("d", lambda: floats(100))
    assert "c" not in cache and "b" in cache and "d" in cache
    big = cache.get_or_compute("big", lambda: floats(1000))  # 4000 bytes: returned, not kept
    assert big.numel() == 1000 and "big" not in cache and cache.total <= 1000
    assert cache.stats()["evictions"] == 2


def test_byte_cache_measures_a_value_again_when_it_is_read() -> None:
    cache = ByteCache(budget_bytes=2000)
    grows = cache.get_or_compute("trace", lambda: {"x": floats(100)})
    cache.get_or_compute("other", lambda: floats(100))
    assert cache.total < 1000
    grows["formed"] = floats(300)  # as a trace keeps a lazy map it formed
    found, _ = cache.peek("trace")
    assert found and 1600 <= cache.total <= 2000
    grows["more"] = floats(50)  # now trace alone nearly fills the budget: the other entry goes
    cache.peek("trace")
    assert "other" not in cache and "trace" in cache and cache.total <= 2000
    grows["too much"] = floats(100)  # past the whole budget: dropped, as a value that big never is kept
    found, value = cache.peek("trace")
    assert found and value is grows and "trace" not in cache and cache.total == 0


def test_byte_cache_computes_once_for_many_threads() -> None:
    cache = ByteCache(budget_bytes=10_000)
    calls = []
    start = threading.Barrier(8)

    def compute() -> torch.Tensor:
        calls.append(1)
        time.sleep(0.2)
        return floats(10)

    results = []

    def ask() -> None:
        start.wait()
        results.append(cache.get_or_compute("k", compute))

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(results) == 8 and all(r is results[0] for r in results)


def test_byte_cache_a_failed_computation_is_tried_again() -> None:
    cache = ByteCache(budget_bytes=10_000)
    with pytest.raises(ValueError):
        cache.get_or_compute("k", lambda: (_ for _ in ()).throw(ValueError("no")))
    assert "k" not in cache
    assert cache.get_or_compute("k", lambda: 3) == 3


# ----------------------------------------------------------------------------------------------
# FairQueue
# ----------------------------------------------------------------------------------------------


def test_fair_queue_takes_turns_between_sessions_and_never_queues_a_key_twice() -> None:
    queue = FairQueue(1, "test")
    gate = threading.Event()
    order: list[str] = []

    def job(name: str):
        def run() -> str:
            if name == "A1":
                gate.wait(10)
            order.append(name)
            return name
        return run

    jobs = {"A1": queue.submit("A1", "A", "a", job("A1"))}
    while jobs["A1"].started is None:
        time.sleep(0.01)
    for name in ("A2", "A3", "A4", "A5"):  # session A has five jobs, B one, submitted after
        jobs[name] = queue.submit(name, "A", "a", job(name))
    jobs["B1"] = queue.submit("B1", "B", "b", job("B1"))
    assert queue.submit("B1", "B", "b", job("B1")) is jobs["B1"]  # the same work is never queued twice
    assert queue.ahead(jobs["B1"]) == 1  # one of A's four waiting jobs, not all four
    assert queue.ahead(jobs["A5"]) == 4
    gate.set()
    assert [jobs[n].future.result(10) for n in ("A5", "B1")] == ["A5", "B1"]
    assert order == ["A1", "A2", "B1", "A3", "A4", "A5"]
    assert queue.pending() == 0 and queue.durations["a"] >= 0


def test_fair_queue_workers_can_run_at_a_lower_priority() -> None:
    import os

    def nice_here() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    base = nice_here()
    low = FairQueue(1, "test-nice", nice=5).submit("k", "A", "x", nice_here).future.result(10)
    normal = FairQueue(1, "test-normal").submit("k", "A", "x", nice_here).future.result(10)
    assert (low, normal) == (min(19, base + 5), base)
    from app import jobs

    assert jobs.HEAVY.nice > 0 and jobs.QUICK.nice == 0  # heavy methods give way to page runs


def test_fair_queue_drops_a_job_nobody_waits_for() -> None:
    queue = FairQueue(1, "test", abandon_s=0.05)
    gate = threading.Event()
    ran = []
    first = queue.submit("first", "A", "x", lambda: gate.wait(10))
    left = queue.submit("left", "B", "x", lambda: ran.append("left"))
    time.sleep(0.2)  # B's session moved on: nobody asked for its job since
    gate.set()
    first.future.result(10)
    with pytest.raises(Abandoned):
        left.future.result(10)
    assert ran == []


# ----------------------------------------------------------------------------------------------
# ModelCache, checkpoint uploads
# ----------------------------------------------------------------------------------------------


def linear(n: int) -> torch.nn.Module:
    return torch.nn.Linear(n, 1000, bias=False).eval()  # 4000 n bytes


def test_model_cache_unloads_least_recently_used_models_by_bytes() -> None:
    cache = ModelCache(budget_bytes=10 * 4000)  # room for 10 rows' worth
    loaded = []

    def load(n: int):
        def fn() -> torch.nn.Module:
            loaded.append(n)
            return linear(n)
        return fn

    a = cache.get_or_load("a", 4 * 4000, load(4))
    cache.get_or_load("b", 4 * 4000, load(4))
    assert cache.get_or_load("a", 4 * 4000, load(4)) is a  # a hit: a is now the most recently used
    cache.get_or_load("c", 4 * 4000, load(4))  # 12 rows > 10: b, the least recently used, is unloaded
    assert "b" not in cache and {"a", "c"} <= set(cache.keys()) and cache.total == 8 * 4000
    cache.get_or_load("d", 9 * 4000, load(9))  # unloads a and c *before* loading d
    assert cache.keys() == ["d"] and cache.total == 9 * 4000 and loaded == [4, 4, 4, 9]
    assert cache.stats()["evictions"] == 3 and cache.total <= cache.budget


def test_model_cache_refuses_a_model_larger_than_the_budget_before_loading_it() -> None:
    cache = ModelCache(budget_bytes=2 * 2**20)
    cache.get_or_load("small", 4000, lambda: linear(1))
    with pytest.raises(ModelTooLarge, match=r"big_model needs 4 MB of weights, more than the server's whole model "
                       r"budget of 2 MB \(T2T_LENS_MODEL_MB\)"):
        cache.get_or_load("big", 4 * 2**20, lambda: pytest.fail("must not load"), "big_model")
    assert "small" in cache  # nothing was unloaded for a model that could never fit
    with pytest.raises(ModelTooLarge):  # a size known only after loading (a checkpoint's own head) too
        cache.get_or_load("liar", 4000, lambda: linear(1000), "liar")
    assert "liar" not in cache and cache.total == 4000


def test_model_cache_never_serves_a_model_altered_in_place() -> None:
    cache = ModelCache(budget_bytes=10**6)
    first = cache.get_or_load("m", 4000, lambda: linear(1))
    with torch.no_grad():
        first.weight.zero_()  # as a knock-out done on the shared model instead of with hooks would
    second = cache.get_or_load("m", 4000, lambda: linear(1))
    assert second is not first and cache.stats()["altered"] == 1
    second.train()
    assert cache.get_or_load("m", 4000, lambda: linear(1)) is not second  # left in training mode: the same


def test_model_cache_loads_once_for_many_threads() -> None:
    cache = ModelCache(budget_bytes=10**6)
    calls = []

    def load() -> torch.nn.Module:
        calls.append(1)
        time.sleep(0.2)
        return linear(1)

    got: list[torch.nn.Module] = []
    threads = [threading.Thread(target=lambda: got.append(cache.get_or_load("k", 4000, load))) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(got) == 6 and all(m is got[0] for m in got)


def test_model_bytes_from_the_registry_equals_the_loaded_model() -> None:
    import t2t
    from app import models

    for name in ("t2t_vit_7", "deit_tiny_patch16_224"):
        assert models.model_bytes(name, 1000) == module_bytes(t2t.create_model(name, num_classes=1000))
    assert module_bytes(linear(3)) == 3 * 4000


def test_preload_loads_the_lesson_models_and_names_what_it_could_not(monkeypatch: pytest.MonkeyPatch) -> None:
    from app import models

    cache = ModelCache(budget_bytes=100 * 2**20)
    monkeypatch.setattr(models, "MODELS", cache)
    problems = models.preload(("t2t_vit_7", "no_such_model", "vit_large_patch16_224"), "cpu")
    assert [k[:2] for k in cache.keys()] == [("t2t_vit_7", "embedded")]
    assert len(problems) == 2 and "no_such_model" in problems[0]
    assert "vit_large_patch16_224 needs 1.13 GB of weights" in problems[1]


def test_checkpoint_uploads_are_capped_renamed_into_place_and_kept_within_their_budget(tmp_path: Path) -> None:
    from app.models import UploadRefused, save_checkpoint_upload

    with pytest.raises(UploadRefused, match=r"'huge.pth' is 2 MB, over the checkpoint upload cap of 1 MB"):
        save_checkpoint_upload("huge.pth", b"\0" * 2 * 2**20, cap_bytes=2**20, folder=tmp_path)
    assert not list(tmp_path.iterdir())  # nothing written
    paths = []
    for i in range(4):  # 400 bytes each in a folder of 1000: the oldest go
        paths.append(Path(save_checkpoint_upload(f"../../c{i}.pth", bytes([i]) * 400, folder=tmp_path,
                                                 budget_bytes=1000)))
        time.sleep(0.02)  # distinct modification times
    assert [p.exists() for p in paths] == [False, False, True, True]
    assert all(p.parent.parent == tmp_path and p.name == f"c{i}.pth" for i, p in enumerate(paths))
    assert not list(tmp_path.glob("*/.part-*"))  # written under a temporary name, then renamed
    again = save_checkpoint_upload("c2.pth", bytes([2]) * 400, folder=tmp_path, budget_bytes=1000)
    assert Path(again) == paths[2] and paths[3].exists()  # the same content: the same file, no copy


def test_a_model_over_the_budget_is_refused_in_the_app_with_both_sizes(monkeypatch: pytest.MonkeyPatch) -> None:
    from streamlit.testing.v1 import AppTest

    from app import compute, models

    small = ModelCache(budget_bytes=60 * 2**20)  # the default pair (16 + 22 MB) fits, t2t_vit_14 (82 MB) never
    monkeypatch.setattr(models, "MODELS", small)
    at = AppTest.from_file(MAIN, default_timeout=600)
    at.run()
    at.selectbox(key="T2T-ViT_name").set_value("t2t_vit_14").run()
    assert not at.exception
    shown = " ".join(e.value for e in at.sidebar.error)
    assert "t2t_vit_14 needs 82 MB of weights, more than the server's whole model budget of 60 MB" in shown
    assert at.session_state[compute.CTX_KEY].t2t.name == "t2t_vit_7"  # the role's default model instead
    assert small.total <= small.budget and all(k[0] != "t2t_vit_14" for k in small.keys())


# ----------------------------------------------------------------------------------------------
# The app
# ----------------------------------------------------------------------------------------------


def test_cache_stays_within_its_budget_over_many_images() -> None:
    from streamlit.testing.v1 import AppTest

    from app import jobs as S

    S.CACHE.clear()  # earlier tests in this process leave entries that would inflate "one image"
    at = AppTest.from_file(MAIN, default_timeout=600)
    at.run()
    assert not at.exception
    one_image = S.CACHE.total  # the default image's traces, preprocessing and what page 1 reads
    budget = S.CACHE.budget
    S.CACHE.budget = int(2.5 * one_image)  # room for about two images
    try:
        evicted = S.CACHE.evictions
        for example in range(300, 306):
            at.number_input(key="synthetic_example").set_value(example).run()
            assert not at.exception
            assert S.CACHE.total <= S.CACHE.budget
        assert S.CACHE.evictions > evicted
        keys = [k for k in S.CACHE._items if k[0] == "_traced"]
        assert 1 <= len(keys) <= 6  # two models per image: only the last images' traces are kept
    finally:
        S.CACHE.budget = budget


def test_pages_import_nothing_that_start_up_did_not() -> None:
    """The first run imports every package the pages use (jobs.import_page_modules); visiting every page
    after it must import no package for the first time, or two sessions could see it half-initialised."""
    probe = f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
from streamlit.testing.v1 import AppTest
at = AppTest.from_file({MAIN!r}, default_timeout=600)
at.run()
assert not at.exception, at.exception
before = {{m.split(".")[0] for m in sys.modules}}
for page in ["views/1_tokens_to_token.py", "views/2_attention.py", "views/3_explanations.py",
             "views/4_feature_richness.py", "views/5_classify.py"]:
    at.switch_page(page)
    at.run()
    assert not at.exception, (page, at.exception)
print(sorted({{m.split(".")[0] for m in sys.modules}} - before))
"""
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    new = eval(out.stdout.strip().splitlines()[-1])  # a list of names printed by the probe
    assert new == [], f"first imported by a page, not at start-up: {new}"


def test_image_choices_survive_switching_the_source_away_and_back() -> None:
    from streamlit.testing.v1 import AppTest

    from app import compute as S
    from app.images import synthetic_class_names

    at = AppTest.from_file(MAIN, default_timeout=600)
    at.run()
    ring = synthetic_class_names().index("ring") if "ring" in synthetic_class_names() else 1
    at.selectbox(key="synthetic_class").set_value(ring)
    at.number_input(key="synthetic_example").set_value(7)
    at.run()
    label = at.session_state[S.CTX_KEY].image.label
    at.radio(key="image_source").set_value("Sample photo").run()
    assert at.session_state[S.CTX_KEY].image.label.startswith("sample photo")
    at.radio(key="image_source").set_value("Synthetic shape").run()
    assert not at.exception
    assert at.selectbox(key="synthetic_class").value == ring
    assert at.number_input(key="synthetic_example").value == 7
    assert at.session_state[S.CTX_KEY].image.label == label


# ----------------------------------------------------------------------------------------------
# Several browser sessions at once (real server, Chromium)
# ----------------------------------------------------------------------------------------------

PAGES = ["tokens", "attention", "explanations", "features", "classify"]
IDLE = ("() => { const a = document.querySelector('[data-testid=\"stApp\"]'); return a && "
        "a.getAttribute('data-test-script-state') === 'notRunning' && "
        "!document.querySelector('[data-testid=\"stSkeleton\"], [data-testid=\"stProgress\"]'); }")


@pytest.mark.browser
@pytest.mark.slow
def test_several_sessions_visit_every_page_for_the_first_time_at_once(browser) -> None:
    """Two sessions open each page of a fresh server at the same moment; none sees an exception,
    each sees its own image, and the CKA one session starts shows progress, then its matrix."""
    sys.path.insert(0, str(ROOT))
    from benchmarks._browser import streamlit_server

    port = 8526
    with streamlit_server(port):
        pages = []
        for _ in range(2):  # contexts: separate cookies, so separate Streamlit sessions
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            pages.append(context.new_page())
        for i, page in enumerate(pages):  # both first runs at once
            page.goto(f"http://127.0.0.1:{port}/?nothing={i}", wait_until="commit")
        for page in pages:
            page.wait_for_function(IDLE, timeout=300_000)
        for i, page in enumerate(pages):  # a different synthetic example in each session
            box = page.locator(".st-key-synthetic_example input")
            box.fill(str(10 + i))
            box.press("Enter")
        for page in pages:
            page.wait_for_timeout(300)
            page.wait_for_function(IDLE, timeout=300_000)
        for name in PAGES:
            for page in pages:  # click in every session before waiting for any
                nav = page.locator('[data-testid="stSidebarNav"] a')
                (nav.first if name == "tokens" else nav.and_(page.locator(f'a[href$="/{name}"]'))).click()
            for i, page in enumerate(pages):
                page.wait_for_timeout(300)
                page.wait_for_function(IDLE, timeout=300_000)
                boxes = page.locator('[data-testid="stException"]')
                assert boxes.count() == 0, f"session {i} on {name}: {boxes.first.inner_text()}"
                caption = page.locator('[data-testid="stSidebar"] [data-testid="stImageCaption"]').first
                assert f"#{10 + i}" in caption.inner_text(), (i, name, caption.inner_text())
        # heavy work in one session: a progress bar, the rest of the page drawn, then the result
        page = pages[0]
        nav = page.locator('[data-testid="stSidebarNav"] a')
        nav.and_(page.locator('a[href$="/features"]')).click()
        page.wait_for_timeout(300)
        page.wait_for_function(IDLE, timeout=300_000)
        charts = page.locator('[data-testid="stPlotlyChart"]').count()
        page.locator(".st-key-cka_on label").click()
        page.wait_for_selector('[data-testid="stProgress"]', timeout=60_000)
        assert page.locator('[data-testid="stPlotlyChart"]').count() >= charts  # the page is still there
        page.wait_for_function(IDLE, timeout=300_000)
        assert page.locator('[data-testid="stPlotlyChart"]').count() == charts + 1  # the CKA matrix
        for p in pages:
            p.context.close()


def test_progress_text_says_what_each_job_is_doing() -> None:
    from app.jobs import _progress_text

    queue = FairQueue(1, "test")
    gate = threading.Event()
    first = queue.submit("first", "A", "Curves for model A", lambda: gate.wait(10))
    second = queue.submit("second", "B", "Curves for model B", lambda: None)
    while first.started is None:
        time.sleep(0.01)
    assert _progress_text(queue, [first])[1].startswith("Curves for model A: running for ")
    waiting = "Curves for model B: waiting for a free worker (0 jobs of others ahead)"
    assert _progress_text(queue, [second])[1] == waiting
    fraction, text = _progress_text(queue, [first, second])
    assert text.startswith("Curves: 0 of 2 done, running for ") and 0 < fraction < 0.5
    gate.set()
    second.future.result(10)
    assert _progress_text(queue, [first, second]) == (1.0, "Curves: 2 of 2 done")
    assert _progress_text(queue, [first]) == (1.0, "Curves for model A: done")


def _quick_result_page(token: str) -> None:
    """A page with one quick background result between two texts (run by AppTest)."""
    import time

    import streamlit as st

    from app import jobs as S

    @S.memo
    def square(token: str, n: int) -> int:
        time.sleep(0.3)  # still running when the page asks to draw it
        return n * n

    st.write("before")
    pending = S.soon(S.QUICK, "square", square, token, 7)
    st.write(f"known at once: {pending.ready}")
    S.draw_when_ready([pending], lambda value: st.write(f"value {value}"))
    st.write("after")
    S.finish_run()


def test_quick_results_are_drawn_in_their_place_in_the_same_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """As in a browser session (`browser_polls`): a result not ready when the page asks for it is drawn
    where it was asked for, at the end of the same run; no closure of that run is left in the session;
    the next run finds it cached and draws it at once."""
    from streamlit.testing.v1 import AppTest

    from app import jobs as S

    monkeypatch.setattr(S, "browser_polls", lambda: True)
    at = AppTest.from_function(_quick_result_page, args=(f"quick-{time.time()}",), default_timeout=60).run()
    assert not at.exception
    assert [m.value for m in at.markdown] == ["before", "known at once: False", "value 49", "after"]
    assert not at.get("progress")  # the bar held the place only while the job ran
    assert at.session_state[S._LATER_KEY] == []
    at.run()
    assert [m.value for m in at.markdown] == ["before", "known at once: True", "value 49", "after"]


def _interrupted_page(token: str) -> None:
    """First run: asks for a result, then ends before drawing it (as a run a click stops)."""
    import time

    import streamlit as st

    from app import jobs as S

    @S.memo
    def square(token: str, n: int) -> int:
        time.sleep(0.3)
        return n * n

    S.new_run()
    if not st.session_state.get("again"):
        st.session_state["again"] = True
        S.draw_when_ready([S.soon(S.QUICK, "square", square, token, 3)], lambda value: st.write(f"old {value}"))
        st.stop()
    st.write("second run")
    S.finish_run()


def test_a_stopped_run_leaves_nothing_to_draw_in_the_next(monkeypatch: pytest.MonkeyPatch) -> None:
    from streamlit.testing.v1 import AppTest

    from app import jobs as S

    monkeypatch.setattr(S, "browser_polls", lambda: True)
    at = AppTest.from_function(_interrupted_page, args=(f"stopped-{time.time()}",), default_timeout=60).run()
    assert at.get("progress")  # the first run ended with its result still computing
    at.run()
    assert not at.exception
    assert [m.value for m in at.markdown] == ["second run"]


def test_faithfulness_scores_the_curve_ends_once_and_equals_the_reference() -> None:
    """The app scores the image and the blurred baseline once per model, image and class (the curves'
    ends, the same for every map); its AUCs equal analysis.faithfulness.deletion_insertion's."""
    import t2t
    from analysis.faithfulness import deletion_insertion, model_score_fn
    from app import explanations as S

    model = t2t.create_model("deit_tiny_patch16_224", pretrained="embedded").eval()
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0)) * 2 - 1
    images_seen = []
    model.register_forward_pre_hook(lambda _m, args: images_seen.append(len(args[0])))
    maps = [torch.rand(14, 14, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    key = f"test-faithfulness-{time.time()}"  # nothing cached under it yet
    ours = [S._faithfulness(key, "x", f"map{i}", 3, 5, model, x, m) for i, m in enumerate(maps)]
    assert sum(images_seen) == 2 + 2 * (2 * 6 - 4)  # the two ends once, then 8 of each map's 12 images
    for m, (deletion, insertion) in zip(maps, ours, strict=True):
        ref = deletion_insertion(model_score_fn(model, torch.tensor([3])), x, m[None], steps=5, batch_size=12)
        assert (deletion, insertion) == (float(ref.deletion_auc[0]), float(ref.insertion_auc[0]))


@pytest.mark.parametrize("name", ["deit_tiny_patch16_224", "t2t_vit_7"])
def test_faithfulness_scores_equal_analysis_faithfulness(name: str) -> None:
    """The app's path (curve ends scored once and reused, the baseline made once, the class given)
    gives the AUCs of analysis.faithfulness.faithfulness called directly, for token and pixel maps."""
    import t2t
    from analysis.faithfulness import faithfulness
    from app import explanations as S

    model = t2t.create_model(name, pretrained="embedded").eval()
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(1)) * 2 - 1
    maps = [torch.rand(14, 14, generator=torch.Generator().manual_seed(2)),
            torch.rand(224, 224, generator=torch.Generator().manual_seed(3))]
    key = f"test-faithfulness-ref-{name}-{time.time()}"  # nothing cached under it yet
    for steps in (5, 6):
        for i, m in enumerate(maps):
            deletion, insertion = S._faithfulness(key, "x", f"map{i}", 7, steps, model, x, m)
            ref = faithfulness(model, x, m[None], target=7, steps=steps)
            assert deletion == pytest.approx(float(ref.deletion_auc[0]), abs=1e-6)
            assert insertion == pytest.approx(float(ref.insertion_auc[0]), abs=1e-6)
