"""Who gets what: the server's start-up options and the weight sources a session may use.

Owns: `ServerOptions` / `server_options()` (read once per process from `streamlit run app/main.py --
--classroom --allow-checkpoint-uploads MB --preload NAME,NAME` and their environment variables),
`client_is_local()` (the raw TCP peer of this session's WebSocket, never a header), and
`session_mode()`, the one decision the sidebar, the lesson links and `models.resolve_model` follow:

- a browser on the server's own machine (a loopback peer), when the server was not started in
  classroom mode, keeps every weight source ("local");
- every other visitor, everyone in classroom mode, and any session whose peer is unknown (fail
  closed: no runtime, a client context that is not a real connection) gets the classroom set:
  project-trained, released (the registry's own URLs, fetched by the server), random, plus a
  checkpoint upload only when the teacher allowed it, with its size cap.

`st.context.ip_address` is not used: it says None both for a loopback peer and for an unknown one.
Behind a reverse proxy on the same machine every visitor's peer is the proxy (loopback) unless the
proxy sends X-Forwarded-For, which uvicorn trusts from 127.0.0.1: start such a server with --classroom.

May import: streamlit. Nothing of app/ (models, links and the sidebar import this module).
"""

from __future__ import annotations

import argparse
import functools
import ipaddress
import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

ALL_SOURCES = ("embedded", "random", "released", "path", "upload", "url")
CLASSROOM_SOURCES = ("embedded", "random", "released")  # + "upload" when the teacher allows it

CLASSROOM_ENV = "T2T_LENS_CLASSROOM"
UPLOADS_ENV = "T2T_LENS_CHECKPOINT_UPLOAD_MB"
PRELOAD_ENV = "T2T_LENS_PRELOAD"


@dataclass(frozen=True)
class ServerOptions:
    """What the teacher chose at start-up (command line after `--`, or the environment)."""

    classroom: bool = False
    checkpoint_upload_mb: int = 0  # 0: no checkpoint uploads for classroom sessions
    preload: tuple[str, ...] = ()
    problems: tuple[str, ...] = field(default=())  # options that could not be read (then: classroom for all)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamlit run app/main.py --", add_help=False, exit_on_error=False)
    parser.add_argument("--classroom", action="store_true")
    parser.add_argument("--allow-checkpoint-uploads", type=int, default=None, metavar="MB")
    parser.add_argument("--preload", default=None, metavar="NAME,NAME")
    return parser


def parse_options(argv: list[str], env: dict[str, str]) -> ServerOptions:
    """The options from `argv` (the script's arguments) and `env`; the command line wins.

    Nothing here raises: an option that cannot be read is kept in `problems`, and the server then
    serves everyone the classroom set (fail closed), saying why in every sidebar."""
    problems: list[str] = []
    try:
        args, unknown = _parser().parse_known_args(argv)
    except (argparse.ArgumentError, SystemExit) as err:
        args, unknown = _parser().parse_known_args([])[0], []
        problems.append(f"cannot read the options {shlex.join(argv)!r}: {err}")
    if unknown:
        problems.append(f"unknown options {shlex.join(unknown)!r}")
    classroom = args.classroom or env.get(CLASSROOM_ENV, "").strip().lower() in ("1", "true", "yes", "on")
    mb = args.allow_checkpoint_uploads
    if mb is None:
        text = env.get(UPLOADS_ENV, "").strip()
        if text and not text.isdigit():
            problems.append(f"{UPLOADS_ENV}={text!r} is not a whole number of MB")
        mb = int(text) if text.isdigit() else 0
    if mb < 0:
        problems.append(f"--allow-checkpoint-uploads {mb}: a size cap in MB must be 0 or more")
        mb = 0
    preload_text = args.preload if args.preload is not None else env.get(PRELOAD_ENV, "")
    preload = tuple(n.strip() for n in preload_text.split(",") if n.strip())
    return ServerOptions(classroom or bool(problems), mb, preload, tuple(problems))


@functools.cache
def server_options() -> ServerOptions:
    """This process's options, read once. The command line is read only under `streamlit run
    app/main.py` (sys.argv[0] is the script then; under pytest it is pytest's own)."""
    argv = sys.argv[1:] if Path(sys.argv[0]).name == "main.py" else []
    options = parse_options(argv, dict(os.environ))
    for problem in options.problems:
        print(f"t2t-lens: {problem}; serving everyone the classroom set", file=sys.stderr)
    return options


def peer_address() -> str | None:
    """The IP address of this session's WebSocket peer as the TCP connection gives it, or None when
    unknown (no script-run context, no runtime, no client, or a client context that is not a string
    address, as under AppTest)."""
    try:
        from streamlit import runtime
        from streamlit.runtime.scriptrunner import get_script_run_ctx

        ctx = get_script_run_ctx()
        if ctx is None or not runtime.exists():
            return None
        client = runtime.get_instance().get_client(ctx.session_id)
        remote = getattr(getattr(client, "client_context", None), "remote_ip", None)
    except Exception:  # any surprise in Streamlit's internals: unknown, so not local
        return None
    return remote if isinstance(remote, str) else None


def client_is_local(address: str | None = None) -> bool:
    """True only for a loopback peer (127.0.0.0/8, ::1, ::ffff:127.0.0.1); unknown is not local."""
    address = peer_address() if address is None else address
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool(ip.is_loopback or (mapped is not None and mapped.is_loopback))


def server_upload_mb() -> int:
    """Streamlit's own cap on any uploaded file (server.maxUploadSize, .streamlit/config.toml), in MB."""
    from streamlit import config

    return int(config.get_option("server.maxUploadSize"))


@dataclass(frozen=True)
class SessionMode:
    """What this session may use: `mode` "local" or "classroom", why (for the sidebar), the weight
    sources, and the checkpoint upload cap in bytes (0: no uploads; None: no cap of ours)."""

    mode: str
    reason: str
    sources: tuple[str, ...]
    checkpoint_upload_bytes: int | None

    @property
    def local(self) -> bool:
        return self.mode == "local"


def session_mode(options: ServerOptions | None = None, local: bool | None = None) -> SessionMode:
    """This session's mode (see the module's docstring); `options` and `local` for tests."""
    options = server_options() if options is None else options
    local = client_is_local() if local is None else local
    if local and not options.classroom:
        return SessionMode("local", "a browser on the server's own machine", ALL_SOURCES, None)
    if options.problems:
        why = "the server's start-up options could not be read: " + "; ".join(options.problems)
    elif options.classroom:
        why = "the server was started with --classroom"
    else:
        why = "a browser on another machine, or one whose address is unknown"
    cap = min(options.checkpoint_upload_mb, server_upload_mb()) * 1024 * 1024  # Streamlit refuses more anyway
    sources = CLASSROOM_SOURCES + (("upload",) if cap else ())
    return SessionMode("classroom", why, sources, cap)
