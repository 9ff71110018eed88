"""--download (here, with internet): the wheels the GPU machine lacks, pruned to fit what a call may carry.

The wheels are the runtime dependencies the machine's image lacks (KINDS.md's list: streamlit, plotly,
captum, altair, pydeck and their small needs), at this .venv's versions, for CPython 3.12 x86-64, with
the browser and notebook assets (streamlit/static, plotly.min.js, pydeck's nbextension bundle) left out:
AppTest and figure JSON never read them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from benchmarks.gpu.common import ROOT

WHEELS = ".gpu_wheels"  # the folder benchmarks/gpu_check.sh installs from (git-ignored)

# The GPU machine's python3 packages (/work/.library/device/KINDS.md, "Python packages already there", read on
# that image 2026-11-17): only what is not among them is carried.
DEVICE_HAS = frozenset("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft
pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl
zipp""".split())


def _runtime() -> tuple[str, ...]:
    """What the library, the report and the app need: pyproject.toml's dependencies and [app] extra, torch aside."""
    import re
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = [re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0] for r in
             project["dependencies"] + project["optional-dependencies"]["app"]]
    return tuple(n for n in names if n != "torch")


RUNTIME = _runtime()
# Browser and notebook assets that AppTest and figure JSON never read: left out so the wheels fit the carry limit.
PRUNE = {"streamlit": ("streamlit/static/",),
         "plotly": ("plotly/package_data/widgetbundle.js", "plotly/package_data/plotly.min.js",
                    "plotly/labextension/static/", "plotly-{version}.data/"),
         "pydeck": ("pydeck/nbextension/static/", "pydeck-{version}.data/")}  # pydeck/nbextension/__init__ is imported
DEVICE_PYTHON = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
                 "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
                 "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
CARRY_LIMIT = 64 * 2**20


def canonical(name: str) -> str:
    import re

    return re.sub(r"[-_.]+", "-", name).lower()


def missing_on_device() -> dict[str, str]:
    """name -> version (this environment's, where the tests ran) of every runtime dependency the device lacks."""
    from importlib import metadata

    from packaging.requirements import Requirement

    todo, seen, need = list(RUNTIME), set(), {}
    while todo:
        name = canonical(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError as e:
            raise SystemExit(f"{name} is needed on the device but not installed here: no version to pin") from e
        if name not in DEVICE_HAS:
            need[name] = dist.version
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate(DEVICE_PYTHON):
                todo.append(req.name)
    return dict(sorted(need.items()))


def prune(wheel: Path, dest: Path) -> tuple[int, int]:
    """Copy `wheel` to dest/, leaving out PRUNE's paths (and their RECORD lines); returns (files dropped, bytes)."""
    import zipfile

    name, version = wheel.name.split("-")[:2]
    drop = tuple(p.format(version=version) for p in PRUNE.get(canonical(name), ()))
    target = dest / wheel.name
    dropped = 0
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as out:
        for info in src.infolist():
            if drop and info.filename.startswith(drop):
                dropped += 1
                continue
            data = src.read(info)
            if info.filename.endswith(".dist-info/RECORD") and drop:
                data = "".join(line for line in data.decode().splitlines(keepends=True)
                               if not line.startswith(drop)).encode()
            out.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    return dropped, target.stat().st_size


def tree_bytes() -> int:
    """Bytes of what a device call sends besides the carried folders: tracked and untracked-not-ignored files."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.split(b"\0")
    return sum((ROOT / f.decode()).stat().st_size for f in files if f and (ROOT / f.decode()).is_file())


def download(dest: Path) -> int:
    """pip download, for the device's Python 3.12 on x86-64 Linux, every missing wheel, pruned, into dest."""
    import shutil

    need = missing_on_device()
    raw = ROOT / ".cache" / "gpu_wheels_full"
    shutil.rmtree(raw, ignore_errors=True)
    raw.mkdir(parents=True)
    platforms = [f"--platform={p}" for p in ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                                            "manylinux2014_x86_64", "manylinux1_x86_64", "manylinux_2_5_x86_64")]
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version=3.12",
           "--implementation=cp", *platforms, "-d", str(raw), *(f"{n}=={v}" for n, v in need.items())]
    print("pip download", " ".join(f"{n}=={v}" for n, v in need.items()), flush=True)
    subprocess.run(cmd, check=True)
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    total = 0
    lines = []
    for wheel in sorted(raw.glob("*.whl")):
        dropped, size = prune(wheel, dest)
        total += size
        lines.append(f"{wheel.name}: {size / 2**20:.2f} MiB (of {wheel.stat().st_size / 2**20:.2f})"
                     + (f", {dropped} browser/notebook asset files left out" if dropped else ""))
    got = {canonical(w.name.split("-")[0]) for w in dest.glob("*.whl")}
    if got != set(need):
        raise SystemExit(f"missing wheels: {sorted(set(need) - got)}")
    tree = tree_bytes()
    (dest / "MANIFEST.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"{len(lines)} wheels, {total / 2**20:.1f} MiB; with the working tree ({tree / 2**20:.1f} MiB) "
          f"{(total + tree) / 2**20:.1f} MiB of the {CARRY_LIMIT / 2**20:.0f} MiB a call may send")
    if total + tree > CARRY_LIMIT:
        print("TOO LARGE to carry: remove untracked files or prune more", file=sys.stderr)
        return 1
    return 0
