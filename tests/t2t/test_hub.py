"""t2t.hub: downloads land in the cache complete and verified, or not at all."""

from __future__ import annotations

import hashlib
import os
import threading
from http.server import SimpleHTTPRequestHandler
from pathlib import Path

import pytest

from t2t import hub
from t2t.hub import DownloadError, cache_dir, download

PAYLOAD = bytes(range(256)) * 1000  # 256 kB: several read chunks


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("T2T_LENS_CACHE", str(path))
    return path


@pytest.fixture
def served(tmp_path: Path) -> Path:
    """A folder of files to serve: a plain one and one whose name carries its sha256 prefix."""
    folder = tmp_path / "www"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(PAYLOAD)
    good_prefix = hashlib.sha256(PAYLOAD).hexdigest()[:8]
    (folder / f"model-{good_prefix}.pth").write_bytes(PAYLOAD)
    (folder / "model-deadbeef.pth").write_bytes(PAYLOAD)  # name claims a hash the bytes don't have
    return folder


def cache_files(cache: Path) -> list[str]:
    """Everything in the cache, hidden .part files included."""
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


class TruncatingHandler(SimpleHTTPRequestHandler):
    """Promises 1000 bytes, sends 500, hangs up."""

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        self.wfile.write(b"x" * 500)
        self.wfile.flush()
        self.close_connection = True


RELEASE = threading.Event()


class StallingHandler(SimpleHTTPRequestHandler):
    """Sends headers, then nothing until the test releases it (bounded at 10 s)."""

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "100")
        self.end_headers()
        self.wfile.flush()
        RELEASE.wait(10)


def test_cache_dir_default_and_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("T2T_LENS_CACHE", raising=False)
    assert cache_dir() == Path.home() / ".cache" / "t2t-lens"
    monkeypatch.setenv("T2T_LENS_CACHE", str(tmp_path / "elsewhere"))
    assert cache_dir() == tmp_path / "elsewhere"


def test_download_lands_in_cache_and_second_call_is_offline(cache: Path, served: Path, http_server) -> None:
    base = http_server(served)
    path = download(f"{base}/weights.bin", progress=False)
    assert path == cache / "weights.bin"
    assert path.read_bytes() == PAYLOAD
    assert http_server.requests == ["GET /weights.bin"]

    again = download(f"{base}/weights.bin", progress=False)
    assert again == path
    assert http_server.requests == ["GET /weights.bin"]  # served from the cache
    assert cache_files(cache) == ["weights.bin"]


def test_explicit_filename(cache: Path, served: Path, http_server) -> None:
    path = download(f"{http_server(served)}/weights.bin", filename="renamed.bin", progress=False)
    assert path == cache / "renamed.bin" and path.read_bytes() == PAYLOAD


def test_progress_bar_does_not_break_download(cache: Path, served: Path, http_server, capsys) -> None:
    path = download(f"{http_server(served)}/weights.bin", progress=True)
    assert path.read_bytes() == PAYLOAD
    assert "weights.bin" in capsys.readouterr().err  # tqdm writes its bar to stderr


def test_http_404(cache: Path, served: Path, http_server) -> None:
    url = f"{http_server(served)}/missing.bin"
    with pytest.raises(DownloadError, match="404") as info:
        download(url, progress=False)
    assert url in str(info.value)
    assert cache_files(cache) == []


def test_connection_refused(cache: Path, free_port: int) -> None:
    url = f"http://127.0.0.1:{free_port}/weights.bin"
    with pytest.raises(DownloadError, match="refused") as info:
        download(url, progress=False)
    assert url in str(info.value)
    assert cache_files(cache) == []


def test_truncated_response(cache: Path, served: Path, http_server) -> None:
    url = f"{http_server(served, TruncatingHandler)}/weights.bin"
    with pytest.raises(DownloadError) as info:
        download(url, progress=False)
    message = str(info.value)
    assert url in message and ("500" in message or "closed early" in message)
    assert cache_files(cache) == []  # neither the final file nor a .part


def test_timeout(cache: Path, served: Path, http_server) -> None:
    url = f"{http_server(served, StallingHandler)}/weights.bin"
    RELEASE.clear()
    try:
        with pytest.raises(DownloadError, match="timed out"):
            download(url, progress=False, timeout=0.3)
    finally:
        RELEASE.set()
    assert cache_files(cache) == []


def test_hash_prefix_in_name_verified(cache: Path, served: Path, http_server) -> None:
    base = http_server(served)
    good = next(p.name for p in served.iterdir() if p.name.startswith("model-") and "deadbeef" not in p.name)
    assert download(f"{base}/{good}", progress=False).read_bytes() == PAYLOAD

    with pytest.raises(DownloadError, match="sha256") as info:
        download(f"{base}/model-deadbeef.pth", progress=False)
    assert "deadbeef" in str(info.value)
    assert cache_files(cache) == [good]


def test_hash_check_can_be_disabled_or_given(cache: Path, served: Path, http_server) -> None:
    base = http_server(served)
    assert download(f"{base}/model-deadbeef.pth", progress=False, check_hash=False).exists()
    with pytest.raises(DownloadError, match="sha256"):
        download(f"{base}/weights.bin", progress=False, sha256="0123456789abcdef")
    full = hashlib.sha256(PAYLOAD).hexdigest()
    assert download(f"{base}/weights.bin", progress=False, sha256=full).read_bytes() == PAYLOAD


def test_hash_prefix_from_name() -> None:
    assert hub.hash_prefix_from_name("deit_tiny_patch16_224-a1311bcf.pth") == "a1311bcf"
    assert hub.hash_prefix_from_name("81.5_T2T_ViT_14.pth.tar") is None
    assert hub.hash_prefix_from_name("vit-b16.pth") is None
    assert hub.hash_prefix_from_name("model-final.pth") is None


@pytest.mark.parametrize("url", ["ftp://example.com/a.bin", "file:///etc/passwd", "/tmp/a.bin", "http:///a"])
def test_only_http_urls(cache: Path, url: str) -> None:
    with pytest.raises(DownloadError, match="only http"):
        download(url, progress=False)
    assert cache_files(cache) == []


@pytest.mark.parametrize("name", ["../evil.bin", ".hidden", "a/b.bin"])
def test_unsafe_filename_rejected(cache: Path, name: str) -> None:
    with pytest.raises(DownloadError, match="file name"):
        download("http://127.0.0.1:9/x.bin", filename=name, progress=False)


def test_url_without_file_name_needs_filename(cache: Path) -> None:
    with pytest.raises(DownloadError, match="filename="):
        download("http://127.0.0.1:9/", progress=False)


def test_keyboard_interrupt_cleans_up(cache: Path, served: Path, http_server, monkeypatch) -> None:
    class InterruptingBar:
        def __init__(self, *args: object, **kwargs: object) -> None:
            pass

        def __enter__(self) -> InterruptingBar:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def update(self, n: int) -> None:
            raise KeyboardInterrupt

    monkeypatch.setattr(hub, "tqdm", InterruptingBar)
    with pytest.raises(KeyboardInterrupt):
        download(f"{http_server(served)}/weights.bin", progress=False)
    assert cache_files(cache) == []


def test_concurrent_downloads_of_same_file(cache: Path, served: Path, http_server) -> None:
    url = f"{http_server(served)}/weights.bin"
    results: list[Path | BaseException] = []

    def fetch() -> None:
        try:
            results.append(download(url, progress=False))
        except BaseException as err:  # collected and asserted below
            results.append(err)

    threads = [threading.Thread(target=fetch) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert results == [cache / "weights.bin"] * 4
    assert (cache / "weights.bin").read_bytes() == PAYLOAD
    assert cache_files(cache) == ["weights.bin"]


def test_unwritable_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, served: Path, http_server) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("T2T_LENS_CACHE", str(blocker))
    with pytest.raises(DownloadError, match="cache"):
        download(f"{http_server(served)}/weights.bin", progress=False)
    assert os.path.isfile(blocker)
