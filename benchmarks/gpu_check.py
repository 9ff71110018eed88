"""t2t-lens on a GPU, in one call: the app's pages, validate and the report with and without mixed
precision, torchrun, the out-of-memory fall-back, the trace against a bare forward, and AttnLRP and the
mechanisms (logit lens, direct logit attribution, activation patching) against the CPU.

    bash benchmarks/gpu_check.sh --download        # here (internet): wheels the GPU machine lacks -> .gpu_wheels/
    bash benchmarks/gpu_check.sh [--out DIR]       # there: install them (pip --no-index), run every part

The lent GPU machine (no internet; its own python3 with a CUDA build of torch) gets its one call
from the `run` tool of a session whose `status` says a device is drawn, with the wheel folder carried:

    run(command="bash benchmarks/gpu_check.sh --budget-s 440", carry=[".gpu_wheels"], timeout_s=490)

That fits the 15 device minutes with one rerun: about 1.5 min to start a machine, 8 min for the
call, and a rerun of only what failed on a fresh machine (start again included):

    run(command="bash benchmarks/gpu_check.sh --budget-s 170 --parts oom pages", carry=[".gpu_wheels"],
        timeout_s=220)

(The parts' limits add up to 475 s; a part that would start with under 10 s of the budget left is
"not run", and the budget stops starting parts, not the one running.) What comes back under $OUT:
gpu_check.json (every number), gpu_check.md (the tables for the README) and gpu_check.log (every
part's output). The working tree travels too: keep tracked files + .gpu_wheels under 64 MiB
(`--download` prints the sum: 46.2 + 8.0 = 54.2 MiB when written). The wheels are the runtime
dependencies the machine's image lacks (KINDS.md's list: streamlit, plotly, captum, altair, pydeck
and their 11 small needs), at this .venv's versions, for CPython 3.12 x86-64, with the browser and
notebook assets (streamlit/static, plotly.min.js, pydeck's nbextension bundle) left out: AppTest and
figure JSON never read them. They were checked to install with `pip --no-index` and run AppTest with
a plotly chart under a Python 3.12 here; the machine's torch (2.11 when last read) is older than the
pinned 2.13, which could not be tried here.

Each part runs in its own process with its own time limit (killed with its children when over it;
results written after every row survive), in this order; each is a module of benchmarks/gpu/parts/
whose docstring says what it measures and checks:
- trace: t2t_vit_14 bare forward, full trace and a plain functional forward at batch 1 / 16 / 64,
  fp32 and bf16 autocast; the same bare forward on the machine's CPU: the GPU's speed-up.
- validate: `python -m t2t validate` and `python -m analysis.report --only rollout` on 2,000
  synthetic images, fp32 and `--amp`, two batch sizes: images/s, every reported number against the
  fp32 run (tolerance 1e-3), and a CPU run on 256 of the images (GPU fp32 vs CPU).
- torchrun: `torchrun --nproc_per_node=1` (NCCL) against one process, the same JSON except timing;
  NCCL's all_reduce. Without CUDA: 2 ranks on gloo.
- pages: every page of app/main.py through streamlit's AppTest, with the embedded models and with
  t2t_vit_14 + deit_small_patch16_224: seconds to start, per first visit and per new image.
- oom: GPU memory filled, then validate, the report and the app: does the work complete, where,
  with which message, and is the GPU usable afterwards. Without CUDA it is simulated.
- lrp: `explain("attnlrp", ...)` and `analysis.lrp.lrp` (AttnLRP; CP-LRP, whose conservation is
  checked on the device) on the embedded pair and t2t_vit_14: ms per image, and every output against
  the CPU's within 1e-3 of its largest magnitude.
- mechanisms: `analysis.mechanisms`' logit lens, direct logit attribution (summing to the logit on
  the device) and activation patching (heads, exact and attribution), the same way.
A method missing from analysis/ makes its row "not available" (the whole part, when none is there).

Without CUDA every part runs at tiny sizes on the CPU and the script exits 0 when its own code
worked (tests/benchmarks/test_gpu_check.py): no GPU number is measured then. The runner and what the
parts share: benchmarks/gpu/ (its __init__ says how to add a part).
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
# `benchmarks` is this folder (a namespace package): bound here, so that a package of that name in the
# GPU machine's site-packages (a regular package would win over a namespace one) cannot take its place
if "benchmarks" not in sys.modules:
    sys.modules["benchmarks"] = package = types.ModuleType("benchmarks")
    package.__path__ = [str(ROOT / "benchmarks")]

from benchmarks.gpu.runner import main  # noqa: E402  (after the paths above)

if __name__ == "__main__":
    sys.exit(main())
