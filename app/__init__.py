"""The Streamlit app of t2t-lens: `streamlit run app/main.py`.

`main.py` draws the sidebar (`sidebar.py`: model pair, image, preprocessing) and navigates between
the pages in `views/` (not `pages/`: see main.py). Pages wire widgets to cached library calls
(`compute.py`, `explanations.py`) and draw figures (`figures.py`, `charts.py`, `widgets.py`); the map
of every module and the one direction of imports are at the top of main.py.
"""
