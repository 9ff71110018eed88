"""Download files (model weights) once into a local cache, safely.

A download streams into its own temporary ``*.part`` file next to the final one and is renamed
into place with ``os.replace`` only once it is complete and verified, so the cache never holds a
partial file, and two processes fetching the same file cannot corrupt each other's copy.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import socket
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from tqdm import tqdm

#: Environment variable that moves the cache (e.g. onto a bigger disk, or a temp dir in tests).
CACHE_ENV = "T2T_LENS_CACHE"

# torch.hub / timm convention: "deit_tiny_patch16_224-a1311bcf.pth" ends in a sha256 prefix.
# At least 8 hex digits so that ordinary names such as "model-final.pth" or "vit-b16.pth" don't match.
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.")
_CHUNK = 1 << 16


class DownloadError(RuntimeError):
    """A download failed; the message names the URL and the cause. Nothing is left in the cache."""


def cache_dir() -> Path:
    """Where downloads are kept: ``$T2T_LENS_CACHE`` if set, else ``~/.cache/t2t-lens``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "t2t-lens"


def hash_prefix_from_name(filename: str) -> str | None:
    """The sha256 prefix embedded in a torch.hub-style file name, if there is one."""
    match = _HASH_IN_NAME.search(filename)
    return match.group(1) if match else None


def download(
    url: str,
    filename: str | None = None,
    progress: bool = True,
    timeout: float = 30,
    *,
    sha256: str | None = None,
    check_hash: bool = True,
) -> Path:
    """Return the cached path of ``url``, downloading it first if it is not cached yet.

    ``filename`` defaults to the last part of the URL's path. The file is verified before it enters
    the cache: its size against ``Content-Length`` when the server sends one, and its sha256 against
    ``sha256`` (full digest or prefix) or, when ``check_hash`` is true, the prefix embedded in the
    file name (``name-<hex>.ext``, as torch.hub and timm do). A file already in the cache is
    returned as is, without contacting the server.

    Raises :class:`DownloadError` on any failure, after removing the partial file. A
    ``KeyboardInterrupt`` also removes it but is re-raised as is, so Ctrl-C still stops a program.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise DownloadError(f"Cannot download {url!r}: only http:// and https:// URLs are supported.")
    name = filename or urllib.parse.unquote(parts.path.rsplit("/", 1)[-1])
    _check_filename(url, name)
    dest = cache_dir() / name
    if dest.is_file():
        return dest

    expected = (sha256 or (hash_prefix_from_name(name) if check_hash else None) or "").lower()
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        # Same directory as the destination, so os.replace is an atomic rename on one filesystem;
        # a unique name per call, so concurrent downloads of the same file never share a temp file.
        tmp = tempfile.NamedTemporaryFile(dir=dest.parent, prefix=f".{name}.", suffix=".part", delete=False)
    except OSError as err:
        raise DownloadError(f"Cannot download {url}: cannot write to the cache {dest.parent} ({err}).") from err

    try:
        with tmp:
            digest = _fetch(url, tmp, name, progress, timeout)
            if expected and not digest.startswith(expected):
                raise DownloadError(
                    f"Download of {url} is corrupt: sha256 {digest[: len(expected)]} does not match "
                    f"the expected {expected}."
                )
            tmp.flush()
            os.fsync(tmp.fileno())  # the data is on disk before the name says the file is complete
        os.replace(tmp.name, dest)
    except BaseException as err:
        _remove(tmp.name)
        if isinstance(err, (DownloadError, KeyboardInterrupt, SystemExit)):
            raise
        raise DownloadError(f"Could not download {url}: {_describe(err, timeout)}.") from err
    return dest


def _check_filename(url: str, name: str) -> None:
    """Keep the file inside the cache directory: no paths, no hidden or special names."""
    if not name or name in (".", "..") or name.startswith(".") or "/" in name or "\\" in name or "\0" in name:
        raise DownloadError(f"Cannot download {url}: {name!r} is not a usable file name; pass filename= explicitly.")


def _fetch(url: str, out, name: str, progress: bool, timeout: float) -> str:
    """Stream ``url`` into the open file ``out``; return the sha256 hex digest of what was written."""
    request = urllib.request.Request(url, headers={"User-Agent": "t2t-lens"})
    sha = hashlib.sha256()
    received = 0
    with urllib.request.urlopen(request, timeout=timeout) as response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=name, disable=not progress) as bar:
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                sha.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    if total is not None and received != total:
        raise DownloadError(
            f"Download of {url} is incomplete: got {received} of {total} bytes (the connection was closed early)."
        )
    return sha.hexdigest()


def _describe(err: BaseException, timeout: float) -> str:
    """A short, human-readable cause for a failed download."""
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP error {err.code} {err.reason}"
    if isinstance(err, urllib.error.URLError) and isinstance(err.reason, BaseException):
        err = err.reason  # urlopen wraps socket errors (refused, timeout, DNS) in URLError
    if isinstance(err, http.client.IncompleteRead):
        got = len(err.partial)
        return f"the connection was closed early ({got} bytes read, {err.expected} more expected)"
    if isinstance(err, (TimeoutError, socket.timeout)):
        return f"no response within {timeout:g} s (timed out)"
    if isinstance(err, ConnectionRefusedError):
        return "connection refused (is the server up?)"
    if isinstance(err, socket.gaierror):
        return f"cannot resolve the host name ({err.strerror}); are you offline?"
    if isinstance(err, ConnectionError):
        return f"the connection failed ({err})"
    if isinstance(err, urllib.error.URLError):
        return str(err.reason)
    return f"{type(err).__name__}: {err}"


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
