"""lrp: AttnLRP maps on the device against the CPU, and their cost (issue 30).

`explain("attnlrp", ...)` (the token map the app and the report show) and `analysis.lrp.lrp` (pixels,
tokens, heads; AttnLRP, and CP-LRP with the constants' relevance), on the embedded T2T-ViT-7 (Performer
T2T layers) and DeiT-Tiny and, on a GPU, t2t_vit_14 with random weights (the released models' compute):
ms per image at a batch against the bare forward, and every output against the CPU's on the first images
(benchmarks/gpu/methods.py: within 1e-3 of the CPU output's largest magnitude). On the device, CP-LRP
must conserve: pixels' relevance + the constants' = the logit (exact up to rounding, as
tests/analysis/test_lrp.py checks on the CPU). A method missing from analysis/ is "not available".
"""

from __future__ import annotations

from typing import Any

from benchmarks.gpu.common import EMBEDDED_MODELS, Ctx
from benchmarks.gpu.methods import Method, Sizes, compare, lookup

LIMIT_S = {"full": 40, "tiny": 180}
EMBEDDED = tuple((name, "embedded") for name in EMBEDDED_MODELS)
SIZES = {"full": Sizes(EMBEDDED + (("t2t_vit_14", "random"),), batch=16, cpu_images=4, repeats=5),
         # tiny: this code only (one model, batch = the cpu images, so that the two runs are the same computation)
         "tiny": Sizes(EMBEDDED[:1], batch=1, cpu_images=1, repeats=1)}
CONSERVATION_TOL = 1e-4  # float32 rounding of a sum of 150k pixel terms: 1e-7 to 2e-7 measured on the CPU


def methods() -> tuple[list[Method], dict[str, str]]:
    """The methods this tree has, and name -> why for those it lacks."""
    found: list[Method] = []
    missing: dict[str, str] = {}
    try:
        explainers = lookup("analysis.explain", "EXPLAINERS")
        explain = lookup("analysis.explain", "explain")
        if "attnlrp" not in explainers:
            raise LookupError(f"explain has no 'attnlrp' (it has {', '.join(sorted(explainers))})")
        found.append(Method("explain('attnlrp')", lambda m, x, t: {"map": explain("attnlrp", m, x, t)}))
    except (ImportError, AttributeError, LookupError) as e:
        missing["explain('attnlrp')"] = f"{type(e).__name__}: {e}"
    try:
        lrp = lookup("analysis.lrp", "lrp")
    except (ImportError, AttributeError) as e:
        missing["lrp attnlrp"] = missing["lrp cp + constants"] = f"{type(e).__name__}: {e}"
        return found, missing

    def attnlrp(model: Any, x: Any, target: Any) -> dict[str, Any]:
        rel = lrp(model, x, target)
        return {"pixels": rel.pixels, "tokens": rel.tokens, "heads": rel.heads, "logit": rel.logit}

    def cp(model: Any, x: Any, target: Any) -> dict[str, Any]:
        rel = lrp(model, x, target, variant="cp", gamma=None, constants=True)
        return {"pixels": rel.pixels, "tokens": rel.tokens, "constants": rel.constants, "logit": rel.logit}

    def conservation(model: Any, x: Any, target: Any, out: dict[str, Any]) -> float:
        total = out["pixels"].sum(dim=(1, 2, 3)) + out["constants"]
        return float(((total - out["logit"]).abs() / out["logit"].abs().clamp_min(1e-6)).max())

    found.append(Method("lrp attnlrp", attnlrp))
    found.append(Method("lrp cp + constants", cp, ("pixels + constants = logit", conservation, CONSERVATION_TOL)))
    return found, missing


def run(ctx: Ctx) -> None:
    sizes = SIZES[ctx.scale.name]
    ctx.result.title = (f"AttnLRP on {ctx.device} against the CPU: ms per image at batch {sizes.batch}, and the "
                        "largest difference from the CPU on each output's own scale")
    found, missing = methods()
    compare(ctx, sizes, found, missing)
