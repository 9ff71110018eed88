"""t2t-lens: see inside Tokens-to-Token ViT and compare it with ViT.

Run from the repository root:  streamlit run app/main.py
Serve a class:                 streamlit run app/main.py -- --classroom [--allow-checkpoint-uploads MB]
                                   [--preload NAME,NAME]     (README, "Serving a class"; app/access.py)

This script draws the sidebar shared by every page (model pair, device, image, preprocessing),
stores what it chose as a `Context` in session state, then runs the page picked in the
navigation (`app/views/`). A guided tour (`?tour=NAME&step=K`, app/tours.py) goes to its step's
page and draws its bar above the page.

Map of app/ (each module's docstring says what it owns and what it may import; imports run one way,
down this list, checked by tests/app/test_layers.py):

    main.py          this script: the page list (names and URLs), the order of a run
    views/N_*.py     the pages: widgets, cached library calls, figures, the sentence from the numbers
    sidebar.py       the sidebar: device, model pair and image pickers, preprocessing; builds the Context
    export.py        lessons to take home: a tour as one self-contained HTML file (python -m app.export)
    tours.py         guided tours (lessons/*.toml): checking the files, the fields of their texts, the bar
                     above the page, Back / Next, the sidebar's list, the tour's address
    links.py         lesson links: URL query parameters <-> widget state (add a page's parameters here),
                     every value checked: a link never breaks a page nor widens the weight sources
    widgets.py       Streamlit pieces: `show` a figure, click callbacks, texts, outside-the-classes notices
    mechanisms.py    inside the decision: logit lens, direct logit attribution, activation patching between
                     two images, attention sinks; their figures and sentences
    sandbox.py       the soft-split sandbox: geometry, costs, a model with those splits, its figures
                     (no Streamlit calls)
    charts.py        plotly mosaics and data charts (top-k, depth, heads, CKA matrix, strips)
    figures.py       plotly image figures, overlays, token pickers, grid geometry, PNG encoding
    explanations.py  explanation maps, carrying them back to pixels, faithfulness scores
    knockouts.py     heads and T2T attention knocked out, head importance, pruning curves, sanity checks
    compute.py       Context, preprocessing, traces, predictions, attention / feature statistics, CKA
    models.py        weight sources, loading (`resolve_model`), `LoadedModel`, checkpoint uploads
    images.py        `ImageChoice`: uploads, sample photos, synthetic shapes
    jobs.py          the byte cache (`memo`), the fair queues, waiting for results, progress bars
    model_cache.py   ModelCache: loaded models under one byte budget, refusals, altered models (no Streamlit)
    device.py        the device, CPU threads, GPU out-of-memory -> CPU fall-back (`guarded`)
    access.py        start-up options (--classroom ...), local or classroom session: who gets which source
    _cache.py        ByteCache and FairQueue themselves (no Streamlit)
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `streamlit run app/main.py` puts app/ on the path, not the repository
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

# charts, explanations, figures, widgets: the pages' own modules, imported at start-up like the rest
from app import charts, explanations, export, figures, jobs, links, models, tours, widgets  # noqa: E402, F401
from app.access import server_options  # noqa: E402
from app.compute import CTX_KEY  # noqa: E402
from app.sidebar import sidebar  # noqa: E402

jobs.import_page_modules()  # once per process, before any page runs: sessions are threads of one process


# --preload NAME,NAME (or $T2T_LENS_PRELOAD): loaded in the background once per process, from the first
# page view on (the teacher's, before the class comes), so the students' first runs find them loaded.
models.preload_in_background(server_options().preload)

# A lesson link with present=1 opens in presentation mode, the sidebar folded away.
st.set_page_config(page_title="t2t-lens", page_icon=":material/grid_on:", layout="wide",
                   initial_sidebar_state="collapsed" if st.query_params.get("present") == "1" else "auto")

# The pages live in views/, not pages/: Streamlit treats a pages/ folder beside the main script as its
# legacy multipage app, which runs a deep-linked page (e.g. /attention as a session's first request)
# without this script, hence without the sidebar and its context.
# A new page: one entry here (its url_path is its lesson links' and tours' `page`), its parameters in
# links.PAGE_PARAMS. The order is the navigation's.
TOKENS_FILE, TOKENS_TITLE = "views/1_tokens_to_token.py", "Tokens-to-Token, step by step"
PAGES = [
    # The default page is served at "/" and Streamlit answers its own url_path with "Page not found": its
    # lesson-link address, /tokens, is the hidden page at the end of this list (the same file).
    st.Page(TOKENS_FILE, title=TOKENS_TITLE, icon=":material/grid_on:", url_path="tokens_to_token", default=True),
    st.Page("views/2_attention.py", title="Attention explorer", icon=":material/visibility:", url_path="attention"),
    st.Page("views/3_explanations.py", title="Explanations", icon=":material/lightbulb:", url_path="explanations"),
    st.Page("views/4_feature_richness.py", title="Feature richness", icon=":material/texture:",
            url_path="features"),
    st.Page("views/5_classify.py", title="Classify", icon=":material/bar_chart:", url_path="classify"),
    st.Page("views/6_knockouts.py", title="Knock-outs", icon=":material/block:", url_path="knockouts"),
    st.Page("views/7_soft_split_sandbox.py", title="Soft-split sandbox", icon=":material/tune:", url_path="sandbox"),
    st.Page("views/8_inside_the_decision.py", title="Inside the decision", icon=":material/account_tree:",
            url_path="decision"),
    st.Page(TOKENS_FILE, title=TOKENS_TITLE, icon=":material/grid_on:", url_path="tokens", visibility="hidden"),
]
PAGE_AT = {p.url_path or "tokens": p for p in PAGES}  # the default page answers at "/": its url_path is ""
TITLES = {path: p.title for path, p in PAGE_AT.items()}


page = st.navigation(PAGES)
path = page.url_path or "tokens"
jobs.new_run()
widgets.new_run()
notices = links.restore_from_url(page.url_path)
notices += tours.open_from_url()  # ?tour=NAME&step=K: the step's view (after the link's models and image)
target = tours.switch_to(path)  # a step just entered (link, Back, Next) whose page is not this one
if target in PAGE_AT:
    links.keep_notices(notices)  # shown by that page's run
    st.switch_page(PAGE_AT[target], query_params=links.tour_query(**tours.where()))
elif target is not None:  # a page with link parameters but not (yet) in PAGES
    notices.append(f"This tour step's page `{target}` is not a page of this app.")
tours.sidebar_list()
bar_slot = st.container(key=tours.BAR_KEY) if tours.active() else None  # above everything, kept in view
link_slot = st.empty()  # what the link asked for and could not get: above the page, filled before and after it
if notices:
    link_slot.warning("\n\n".join(notices))
bar = None
try:
    context, messages = sidebar()
    st.session_state[CTX_KEY] = context
    if bar_slot is not None:
        bar = tours.draw_bar(bar_slot, context, path, TITLES, export.lesson_bytes)
    for message in messages:
        st.warning(message)
    page.run()
except Exception as err:  # only a first run with a link's values is caught: its values are dropped, run again
    if not links.link_pending():
        raise
    links.forget_link(page.url_path, err)
    st.rerun()
notices += links.link_notices()
if notices:
    link_slot.warning("\n\n".join(notices))
tours.write_url(page.url_path)  # the view (a tour's step: its address) in the address bar
jobs.finish_run()  # results of this run's quick background jobs, drawn in their places
tours.after_page(bar, path)  # frame the figure the step is about (after the jobs: some figures come late)
jobs.return_free_memory()
