"""`pip install .` (not editable) into a new virtual environment gives a library that works from anywhere.

torch is "already there": the new environment sees this environment's torch (and what torch needs) through
symbolic links, as a machine with its own CUDA build would have it; pip installs everything else from the
package's declared dependencies. The README's quickstart then runs from another folder, so the embedded
weights, class lists and sample photos must come along as package data. A second environment installs the
app's extra (its requirements linked from this environment too: only the package itself is installed), whose
guided tours must come along from lessons/ at the repository's root (pyproject.toml's data-files).
"""

from __future__ import annotations

import importlib.metadata as md
import os
import re
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests.test_readme import ROOT, run_quickstart, write_photo

pytestmark = pytest.mark.slow


def repository_files() -> list[str]:
    """What a clean clone holds, plus files not yet committed (`git ls-files`, ignored ones left out)."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return [f for f in out.split("\0") if f and (ROOT / f).is_file()]


def requirement_closure(name: str) -> set[str]:
    """`name` and every distribution it requires here (no extra's; a requirement whose environment marker does not
    hold on this Python and platform, such as `exceptiongroup; python_version < "3.11"`, left out), as installed."""
    from packaging.requirements import Requirement

    seen: set[str] = set()
    todo = [name]
    while todo:
        dist = md.distribution(todo.pop())
        key = dist.metadata["Name"].lower()
        if key in seen:
            continue
        seen.add(key)
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


def link_distributions(names: set[str], site: Path) -> None:
    """Symlink each installed distribution's top-level files (packages, modules, dist-info) into `site`."""
    for name in names:
        dist = md.distribution(name)
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops:
            source = Path(dist.locate_file(top))
            target = site / top
            if source.exists() and not target.exists() and not top.endswith(".pth") and top != "__pycache__":
                target.symlink_to(source)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A copy of the repository as a clean clone would hold it."""
    source = tmp_path_factory.mktemp("pkg") / "source"
    for rel in repository_files():
        (source / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, source / rel)
    return source


def install(env_dir: Path, linked: set[str], spec: str) -> Path:
    """A new venv at `env_dir` that sees this environment's distributions `linked`, with `spec` installed into it
    by pip (not editable); returns its python."""
    venv.EnvBuilder(with_pip=True).create(env_dir)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    link_distributions(linked, site)
    out = subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", spec],
                         capture_output=True, text=True, timeout=900, env={**os.environ, "PIP_NO_INPUT": "1"})
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return python


@pytest.fixture(scope="module")
def installed(source, tmp_path_factory) -> Path:
    """A new venv with the repository installed non-editable (pip installs the declared dependencies but torch);
    returns its python."""
    return install(tmp_path_factory.mktemp("lib") / "venv", requirement_closure("torch"), str(source))


@pytest.fixture(scope="module")
def installed_app(source, tmp_path_factory) -> Path:
    """A new venv with the repository and its app extra installed non-editable; every requirement is linked from
    this environment (the library's and the app's, never this checkout's own editable install), so pip installs
    the package alone. Returns its python."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["app"]
    names = {re.split(r"[\s<>=!~;\[]", d, maxsplit=1)[0] for d in wanted}
    linked = set().union(*(requirement_closure(n) for n in names)) - {project["name"]}
    return install(tmp_path_factory.mktemp("app") / "venv", linked, f"{source}[app]")


def run(python: Path, code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_the_installed_package_is_not_the_repository_and_kept_torch(installed, tmp_path):
    out = run(installed, "import t2t, analysis, torch; print(t2t.__file__); print(analysis.__file__); "
                         "print(torch.__version__)", tmp_path)
    assert out.returncode == 0, out.stderr
    t2t_file, analysis_file, torch_version = out.stdout.split()
    for f in (t2t_file, analysis_file):
        assert "site-packages" in f and not f.startswith(str(ROOT)), f
    import torch

    assert torch_version == torch.__version__  # pip did not replace the torch that was there


def test_quickstart_runs_from_another_folder(installed, tmp_path):
    write_photo(tmp_path)
    out = run_quickstart(installed, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "QUICKSTART-OK (1, 14, 14)" in out.stdout


def test_package_data_comes_along(installed, tmp_path):
    code = ("import t2t; print(sorted(t2t.list_embedded())); print(sorted(t2t.sample_images())); "
            "m = t2t.create_model('deit_tiny_patch16_224', pretrained='embedded'); print(len(m.class_names)); "
            "from t2t.registry import dataset_class_names as d; print(len(d('ImageNet-1k')), len(d('CIFAR-100')))")
    out = run(installed, code, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    import t2t

    assert lines[0] == str(sorted(t2t.list_embedded())) and lines[1] == str(sorted(t2t.sample_images()))
    assert lines[2:] == ["10", "1000 100"]


def test_the_installed_app_has_the_shipped_tours(installed_app, tmp_path):
    """lessons/ is no package: pip puts it in the environment's share/t2t-lens/lessons, and the app finds it there
    (a non-editable install has no repository around app/)."""
    code = ("from app import tours; loaded = tours.load_tours(); print(tours.LESSONS); print(sorted(loaded.tours)); "
            "print(loaded.problems); print(loaded.tours['paper'].title, len(loaded.tours['paper'].steps))")
    out = run(installed_app, code, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    lessons, names, problems, paper = out.stdout.splitlines()[-4:]
    prefix = installed_app.parent.parent  # the venv: pip's data scheme is its prefix
    assert Path(lessons) == (prefix / "share" / "t2t-lens" / "lessons").resolve(), lessons
    assert (Path(lessons) / "README.md").is_file()  # the format, for teachers adding theirs
    from app import tours

    here = tours.load_tours()
    assert names == str(sorted(here.tours)) and "paper" in here.tours and problems == "[]"
    assert paper == f"{here.tours['paper'].title} {len(here.tours['paper'].steps)}"


def test_the_library_installs_without_the_app(installed, tmp_path):
    out = run(installed, "import importlib.util as u; print(u.find_spec('streamlit') is None)", tmp_path)
    assert out.stdout.strip() == "True", "streamlit is an [app] extra, not a dependency of the library"
    # the command-line tools of the library work; the app's command says what to install
    out = subprocess.run([str(installed), "-m", "t2t", "list"], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0 and "t2t_vit_14" in out.stdout, out.stderr[-2000:]
    out = subprocess.run([str(installed), "-m", "analysis.report", "--help"], cwd=tmp_path, capture_output=True,
                         text=True)
    assert out.returncode == 0 and "usage" in out.stdout.lower(), out.stderr[-2000:]
    out = subprocess.run([str(installed.parent / "t2t-lens")], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode != 0 and "pip install 't2t-lens[app]'" in out.stderr


def test_declared_dependencies_cover_what_the_library_imports():
    """Every third-party module imported at the top of t2t/ and analysis/ (except the figure and
    report modules' optional ones) is a declared dependency or a requirement of one."""
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    declared = {re.split(r"[\s<>=!~;\[]", d, maxsplit=1)[0].lower() for d in deps}
    provided = set().union(*(requirement_closure(d) for d in declared))
    module_to_dist = {"PIL": "pillow", "yaml": "pyyaml"}
    stdlib = set(sys.stdlib_module_names)
    imported: set[str] = set()
    for folder in ("t2t", "analysis"):
        for path in (ROOT / folder).rglob("*.py"):
            for line in path.read_text().splitlines():
                m = re.match(r"(?:from|import) ([A-Za-z_][\w]*)", line)  # module level only: no indent
                if m and m.group(1) not in stdlib and m.group(1) not in ("t2t", "analysis", "__future__"):
                    imported.add(m.group(1))
    optional = {"plotly"}  # analysis.figures: plotly figures for the app ([app] extra)
    missing = {m for m in imported - optional if module_to_dist.get(m, m).lower() not in provided}
    assert not missing, f"imported at module level but not declared in pyproject.toml: {sorted(missing)}"
