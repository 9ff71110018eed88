"""The GPU check (`bash benchmarks/gpu_check.sh`, `python benchmarks/gpu_check.py`), one module per part.

    runner.py         the CLI: each part in its own process under its own time limit, then JSON and Markdown
    common.py         what the parts share: sizes (Scale), Result and Ctx, timing, the synthetic image folder
    methods.py        analysis methods on the device against the CPU (the lrp and mechanisms parts)
    wheels.py         --download: the wheels the GPU machine lacks, pruned to fit what a call may carry
    parts/<name>.py   one part each, named in runner.PARTS (their order is the report's)

A part is a module with `LIMIT_S = {"full": seconds, "tiny": seconds}` and `run(ctx: Ctx) -> None`,
which puts its title, columns, rows, checks and notes on `ctx.result`. The runner sets the status
from the checks (ok, or differs when one fails) unless the part set it: "simulated" (the oom part
without CUDA) or "not available" (`common.unavailable`: what the part checks is not in this tree).
Heavy imports (torch, streamlit, analysis) go inside `run`, so the runner can read LIMIT_S cheaply.
"""
