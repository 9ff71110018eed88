"""mechanisms: the logit lens, direct logit attribution and activation patching on the device against the CPU.

`analysis.mechanisms`' `logit_lens`, `direct_logit_attribution` and `activation_patching` (site "heads",
exact and attribution, against the blurred images) on the embedded T2T-ViT-7 and DeiT-Tiny and, on a
GPU, t2t_vit_14 with random weights: ms per image at a batch against the bare forward, and every output
against the CPU's on the first images (benchmarks/gpu/methods.py: within 1e-3 of the CPU output's
largest magnitude). On the device, what the methods promise exactly: the lens's last depth is the
model's output, and the DLA components sum to the logit. A method missing from analysis/ is "not
available".
"""

from __future__ import annotations

from typing import Any

from benchmarks.gpu.common import EMBEDDED_MODELS, Ctx
from benchmarks.gpu.methods import Method, Sizes, compare, lookup, rel_diff

LIMIT_S = {"full": 40, "tiny": 180}
EMBEDDED = tuple((name, "embedded") for name in EMBEDDED_MODELS)
# cpu_images 1: exact patching of t2t_vit_14 is 84 partial forwards per image on the CPU
SIZES = {"full": Sizes(EMBEDDED + (("t2t_vit_14", "random"),), batch=16, cpu_images=1, repeats=5),
         # tiny: this code only (one model, batch = the cpu images, so that the two runs are the same computation)
         "tiny": Sizes(EMBEDDED[:1], batch=1, cpu_images=1, repeats=1)}
EXACT_TOL = 1e-4  # the identities below hold up to float32 rounding (DLA sums in float64)


def _logit_lens(fn: Any) -> Method:
    def run(model: Any, x: Any, target: Any) -> dict[str, Any]:
        return {"lens": fn(model, x)}

    def last_is_output(model: Any, x: Any, target: Any, out: dict[str, Any]) -> float:
        import torch

        with torch.no_grad():
            return rel_diff(out["lens"][:, -1], model(x))

    return Method("logit_lens", run, ("the last depth is the model's output", last_is_output, EXACT_TOL))


def _dla(fn: Any) -> Method:
    def run(model: Any, x: Any, target: Any) -> dict[str, Any]:
        d = fn(model, x, target)
        return {"heads": d.heads, "mlps": d.mlps, "embed": d.embed, "bias": d.bias, "logit": d.logit}

    def sums_to_logit(model: Any, x: Any, target: Any, out: dict[str, Any]) -> float:
        total = out["heads"].sum(dim=(1, 2)) + out["mlps"].sum(dim=1) + out["embed"] + out["bias"]
        return rel_diff(total, out["logit"])

    return Method("direct_logit_attribution", run, ("the components sum to the logit", sums_to_logit, EXACT_TOL))


def _patching(fn: Any, method: str) -> Method:
    def run(model: Any, x: Any, target: Any) -> dict[str, Any]:
        p = fn(model, x, "blur", target, site="heads", method=method)
        return {"patched": p.patched, "clean": p.clean, "corrupted": p.corrupted}

    return Method(f"activation_patching heads {method}", run)


def methods() -> tuple[list[Method], dict[str, str]]:
    """The methods this tree has, and name -> why for those it lacks."""
    found: list[Method] = []
    missing: dict[str, str] = {}
    wanted = (("logit_lens", lambda fn: [_logit_lens(fn)], ("logit_lens",)),
              ("direct_logit_attribution", lambda fn: [_dla(fn)], ("direct_logit_attribution",)),
              ("activation_patching", lambda fn: [_patching(fn, "exact"), _patching(fn, "attribution")],
               ("activation_patching heads exact", "activation_patching heads attribution")))
    for name, build, labels in wanted:
        try:
            found += build(lookup("analysis.mechanisms", name))
        except (ImportError, AttributeError) as e:
            missing.update(dict.fromkeys(labels, f"{type(e).__name__}: {e}"))
    return found, missing


def run(ctx: Ctx) -> None:
    sizes = SIZES[ctx.scale.name]
    ctx.result.title = (f"mechanisms on {ctx.device} against the CPU: ms per image at batch {sizes.batch}, and the "
                        "largest difference from the CPU on each output's own scale")
    found, missing = methods()
    compare(ctx, sizes, found, missing)
