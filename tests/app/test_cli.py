"""`t2t-lens` starts the app with the repository's Streamlit settings, from any folder."""

from __future__ import annotations

import tomllib
from pathlib import Path

from app import cli

ROOT = Path(__file__).resolve().parents[2]


def test_the_command_passes_exactly_the_repositorys_config():
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    flat = {f"{section}.{key}": value for section, options in config.items() for key, value in options.items()}
    assert cli.CONFIG == flat


def test_streamlit_command_line():
    argv = cli.streamlit_argv(["--server.port", "8600", "--", "--classroom"])
    assert argv[:3] == ["streamlit", "run", str(ROOT / "app" / "main.py")]
    assert "--server.maxUploadSize=25" in argv and "--browser.gatherUsageStats=false" in argv
    # the user's options come last, so they win; the app's own options stay after `--`
    assert argv[-4:] == ["--server.port", "8600", "--", "--classroom"]


def test_the_entry_point_is_declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["t2t-lens"] == "app.cli:main"
    assert (ROOT / "app" / "main.py").is_file()


def test_the_command_serves_the_app_from_another_folder(tmp_path, free_port):
    import subprocess
    import sys
    import time
    import urllib.request

    exe = Path(sys.executable).parent / "t2t-lens"
    assert exe.is_file(), "the console script is installed by `pip install -e .` (scripts/setup.sh)"
    proc = subprocess.Popen([str(exe), "--server.headless=true", f"--server.port={free_port}",
                             "--server.address=127.0.0.1"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{free_port}/_stcore/health", timeout=2) as r:
                    assert r.read() == b"ok"
                    break
            except OSError:
                assert proc.poll() is None, proc.stdout.read()
                assert time.monotonic() < deadline, "t2t-lens did not answer within 60 s"
                time.sleep(0.5)
        with urllib.request.urlopen(f"http://127.0.0.1:{free_port}/", timeout=5) as r:
            assert b"<html" in r.read().lower()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
