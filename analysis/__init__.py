"""Analysis of T2T-ViT and ViT: explanations, feature redundancy, attention statistics, CKA.

Computation works on plain tensors (documented shapes) and never imports streamlit; figure
builders live apart in `analysis.figures` (plotly) and `analysis.plots` (matplotlib).

Entry points, as functions: `from analysis import explain` (every map method by name), `lrp`
(AttnLRP, `analysis.lrp.lrp`), and the
names of `ENTRY_POINTS` below, imported on first use so that `import analysis` stays light.
Modules are reached as modules: `from analysis import rollout` (the module `analysis.rollout`),
`from analysis.cka import linear_cka`.
"""

from __future__ import annotations

import importlib
from typing import Any

# `explain` is both a module and its function: bound here, at import, so that the name means the
# function whatever was imported before (a later `import analysis.explain` finds the module in
# sys.modules and does not rebind the package's attribute). Cheap: Captum is imported on first use.
from analysis.explain import explain
from analysis.lrp import lrp  # the same for `lrp`: module and function

#: name -> module of the public functions `from analysis import NAME` gives (lazily).
ENTRY_POINTS: dict[str, str] = {
    "EXPLAINERS": "analysis.explain",  # method name -> (function, takes a target)
    "deletion_insertion": "analysis.faithfulness",
    "cascading_randomization": "analysis.sanity",
    "head_importance": "analysis.knockout",
    "knocked_out": "analysis.knockout",
    "pruning_curve": "analysis.knockout",
    "linear_cka": "analysis.cka",
    "block_metrics": "analysis.redundancy",
    "logit_lens": "analysis.mechanisms",
    "patch_lens": "analysis.mechanisms",
    "direct_logit_attribution": "analysis.mechanisms",
    "activation_patching": "analysis.mechanisms",
    "attention_sinks": "analysis.mechanisms",
}

__all__ = ["explain", "lrp", *ENTRY_POINTS]


def __getattr__(name: str) -> Any:
    module = ENTRY_POINTS.get(name)
    if module is None:
        raise AttributeError(f"module 'analysis' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(ENTRY_POINTS))
