"""What a long session leaves behind: each new image must not keep the previous pages' data alive.

Streamlit keeps every chart's on_select callback for as long as the session lives (a chart's widget
id changes with its figure, and old ids are never dropped). A callback that closes over a page's
variables therefore kept that page run's whole namespace alive, with its traces and attention
arrays: the server's memory grew about 5 MB with every image, whatever the caches' budget.
"""

from __future__ import annotations

import gc
from pathlib import Path

from streamlit.testing.v1 import AppTest

from app import compute as S

MAIN = str(Path(__file__).resolve().parents[2] / "app" / "main.py")
PICKER_PAGES = ["views/1_tokens_to_token.py", "views/2_attention.py"]  # the pages with clickable charts


def live_contexts() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, S.Context))


def test_new_images_do_not_keep_old_page_runs_alive():
    at = AppTest.from_file(MAIN, default_timeout=120)
    at.run()
    counts = []
    for example in range(200, 208):  # eight images never shown before, each on both picker pages
        at.number_input(key="synthetic_example").set_value(example).run()
        for page in PICKER_PAGES:
            at.switch_page(page).run()
            assert not at.exception, [e.value for e in at.exception]
        counts.append(live_contexts())
    # the session's current context (and what the last runs still hold) stays; the count must not
    # climb with the images (it rose by two per image when callbacks were page closures)
    assert counts[-1] <= counts[1] + 1, counts
    metadata = at.session_state._state._state._new_widget_state.widget_metadata
    callbacks = [meta.callback for meta in metadata.values() if meta.callback is not None]
    assert callbacks  # the picker charts registered theirs
    for callback in callbacks:
        # a function bound to plain values: no closure, no page function (whose globals are the page)
        fn = getattr(callback, "func", callback)
        assert fn.__closure__ is None and fn.__module__ in ("app.widgets", "app.tours"), callback
        bound = [*getattr(callback, "args", ()), *getattr(callback, "keywords", {}).values()]
        assert all(isinstance(v, (str, int, float, tuple, type(None))) for v in bound), callback
