"""The Streamlit app of t2t-lens: `streamlit run app/main.py`.

`main.py` draws the sidebar (model pair, image, preprocessing) and navigates between the pages in
`views/` (not `pages/`: see main.py); `_state.py` holds the caches and the per-run context (models,
image, traces) that pages read; `components.py` builds the plotly figures. Pages only wire widgets
to these and to `t2t` / `analysis`.
"""
