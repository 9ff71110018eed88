"""pages: every page of app/main.py through streamlit's AppTest, seconds per first visit and per new image.

With the embedded models and with t2t_vit_14 + deit_small_patch16_224 (random weights: the released
models' compute), chosen by the app's own link parameters: seconds to start (models loaded), per page
the first visit and a new image (the Example number), the device the sidebar names, errors and bars
still running. Only the app's public paths (app/main.py, app/views/*.py), widget keys and link
parameters are used, never its modules.
"""

from __future__ import annotations

import json
import time
from typing import Any

from benchmarks.gpu.common import EMBEDDED_MODELS, ROOT, Ctx, r

LIMIT_S = {"full": 100, "tiny": 240}


def app_pages() -> list[str]:
    """The pages as AppTest.switch_page takes them: paths relative to app/main.py."""
    return [str(p.relative_to(ROOT / "app")) for p in sorted((ROOT / "app" / "views").glob("[0-9]*.py"))]


def app_state(at: Any) -> dict[str, Any]:
    """What a user sees that this check reads: headers, errors, warnings, the device caption, exceptions."""
    captions = [c.value for c in at.sidebar.caption]
    return {"header": [h.value for h in at.header], "errors": [e.value for e in at.error],
            "warnings": [w.value for w in at.warning] + [w.value for w in at.sidebar.warning],
            "device": next((c for c in captions if c.startswith("Device:")), "no device caption"),
            "exceptions": [str(e.value)[:500] for e in at.exception], "bars_running": len(at.get("progress"))}


def app_run(at: Any, timeout: float) -> tuple[float, dict[str, Any] | str]:
    """Run the app once; (seconds, what it shows) or (seconds, the error text) when the run itself failed."""
    t0 = time.perf_counter()
    try:
        at.run(timeout=timeout)
    except Exception as e:  # a run over its time, or AppTest itself failing
        return time.perf_counter() - t0, f"{type(e).__name__}: {e}"[:500]
    return time.perf_counter() - t0, app_state(at)


def run(ctx: Ctx) -> None:
    from streamlit.testing.v1 import AppTest

    res, s = ctx.result, ctx.scale
    pages = app_pages()
    res.title = "every app page through AppTest: seconds for the first visit and for a new image"
    res.columns = ["models", "page", "first visit s", "new image s", "device", "shown errors", "bars left"]
    example = 100
    for label, params in s.pairs:
        at = AppTest.from_file(str(ROOT / "app" / "main.py"), default_timeout=max(10.0, ctx.left()))
        at.query_params.update(params)
        seconds, state = app_run(at, max(10.0, ctx.left()))
        if isinstance(state, str) or state["exceptions"]:
            res.check(f"{label}: the app starts", False, str(state))
            continue
        chosen = {k: at.selectbox(key=k).value for k in ("T2T-ViT_name", "ViT_name")}
        wanted = {"T2T-ViT_name": params.get("t2t", EMBEDDED_MODELS[0]), "ViT_name": params.get("vit",
                                                                                                 EMBEDDED_MODELS[1])}
        res.check(f"{label}: the sidebar shows the models asked for", chosen == wanted, json.dumps(chosen))
        res.check(f"{label}: computes on {ctx.device}", f"**{ctx.device}" in state["device"], state["device"])
        res.row(label, "start (loads both models, default page)", r(seconds, 2), "", state["device"],
                len(state["errors"]), state["bars_running"])
        for page in pages:
            try:
                at.switch_page(page)
            except ValueError as e:  # a file under app/views/ that app/main.py's navigation does not register
                res.check(f"{label}: {page} renders, first visit and new image", False, str(e)[:800])
                res.row(label, page, "", "", "not in the app's navigation", "", "")
                continue
            first, state1 = app_run(at, max(10.0, ctx.left()))
            example += 1
            new = float("nan")
            state2: dict[str, Any] | str = "not run"
            if not isinstance(state1, str):
                at.number_input(key="synthetic_example").set_value(example)
                new, state2 = app_run(at, max(10.0, ctx.left()))
            bad = [x for x in (state1, state2) if isinstance(x, str) or x["exceptions"]]
            res.check(f"{label}: {page} renders, first visit and new image", not bad, str(bad)[:800])
            shown = [x for x in (state1, state2) if isinstance(x, dict)]
            res.row(label, page, r(first, 2), r(new, 2), shown[-1]["device"] if shown else "",
                    sum(len(x["errors"]) for x in shown), shown[-1]["bars_running"] if shown else "")
            if ctx.left() < 5:
                res.note("out of time: the remaining pages were not visited")
                return
    res.note("AppTest runs each script run in this process, no browser: the seconds are the script runs "
             "(compute, figures built) without sending or drawing. The start row includes loading both models and "
             "the default page; a page's first visit follows it in the same session (models loaded); new image: "
             "the sidebar's Example number changed, so both traces and the page's analyses are new. Bars left: "
             "progress bars of background jobs still running when the run ended.")

