"""Analysis of T2T-ViT and ViT: explanations, feature redundancy, attention statistics, CKA.

Computation works on plain tensors (documented shapes) and never imports streamlit; figure
builders live apart in `analysis.figures` (plotly) and `analysis.plots` (matplotlib). Modules
are imported on demand: `from analysis import rollout`, `from analysis.cka import linear_cka`.
"""
