"""`t2t-lens`: start the app from anywhere, the same as `streamlit run app/main.py` from the repository.

    t2t-lens                                    # http://localhost:8501
    t2t-lens --server.port 8600 -- --classroom  # Streamlit's options, then the app's after `--`

Streamlit reads `.streamlit/config.toml` only from the current folder, so the settings of the
repository's file (upload cap, no rerun on save, no usage statistics, ...) are passed as command-line
options here, where the installed package has no such file; `tests/app/test_cli.py` keeps the two equal.
Options given on the command line come after them and win.

May import: streamlit's command line only (no module of app/: the app itself starts in its own script).
"""

from __future__ import annotations

import sys
from pathlib import Path

MAIN = Path(__file__).resolve().parent / "main.py"

#: The repository's `.streamlit/config.toml`, section.option -> value.
CONFIG: dict[str, object] = {
    "server.maxUploadSize": 25,
    "server.runOnSave": False,
    "server.maxMessageSize": 200,
    "server.enableXsrfProtection": True,
    "browser.gatherUsageStats": False,
    "runner.postScriptGC": False,
}


def streamlit_argv(args: list[str]) -> list[str]:
    """The `streamlit run` command line for `t2t-lens ARGS`."""
    options = [f"--{key}={str(value).lower() if isinstance(value, bool) else value}" for key, value in CONFIG.items()]
    return ["streamlit", "run", str(MAIN), *options, *args]


def main(argv: list[str] | None = None) -> None:
    try:
        from streamlit.web import cli as streamlit_cli
    except ImportError:  # the library alone was installed
        sys.exit("t2t-lens: the app needs Streamlit; install it with: pip install 't2t-lens[app]'")
    sys.argv = streamlit_argv(list(sys.argv[1:] if argv is None else argv))
    sys.exit(streamlit_cli.main())


if __name__ == "__main__":
    main()
