"""Who gets what (app/access.py) and lesson links no visitor can misuse (app/links.py), with AppTest.

- The start-up options, and the locality of a session from its raw TCP peer (unknown: not local).
- A browser on another machine, an unknown peer, or anyone under --classroom gets no checkpoint path
  or URL source, not in the sidebar, not through the session state, not through a lesson link.
- Every malformed or hostile link value gives a notice and a working page, never an exception box.
- A checkpoint upload over the teacher's cap is refused with a clear message.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from app import access, compute, links, models
from app.access import ServerOptions, client_is_local, parse_options, session_mode

ROOT = Path(__file__).resolve().parents[2]
TOKENS, ATTENTION, EXPLANATIONS, FEATURES = (f"views/{p}.py" for p in
                                             ("1_tokens_to_token", "2_attention", "3_explanations",
                                              "4_feature_richness"))
MAIN = str(ROOT / "app" / "main.py")
TIMEOUT = 120


def app(query: dict[str, str] | None = None, page: str | None = None, **state: object) -> AppTest:
    """A new session opened with the link `query` on `page`, `state` set before its first run."""
    at = AppTest.from_file(MAIN, default_timeout=TIMEOUT)
    for k, v in state.items():
        at.session_state[k] = v
    if page == FEATURES:  # AppTest finds this page (url_path "features") only once the app has run:
        at.run()  # run it, then open the link as a new session would (restore_from_url runs again)
        del at.session_state["_url_restored"]
    for k, v in (query or {}).items():
        at.query_params[k] = v
    if page:
        at.switch_page(page)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def warnings(at: AppTest) -> str:
    return "\n".join(w.value for w in at.warning)


def captions(at: AppTest) -> str:
    return "\n".join(c.value for c in at.sidebar.caption)


def sources(at: AppTest, role: str) -> set[str]:
    """The weight sources the role's box offers (its options are their labels)."""
    name = at.selectbox(key=f"{role}_name").value
    by_label = {models.source_label(name, source): source for source in models.SOURCE_LABELS}
    return {by_label[label] for label in at.selectbox(key=f"{role}_source").options}


@pytest.fixture
def classroom(monkeypatch: pytest.MonkeyPatch) -> None:
    """The server started with --classroom --allow-checkpoint-uploads 1."""
    monkeypatch.setattr(access, "server_options", lambda: ServerOptions(classroom=True, checkpoint_upload_mb=1))


# ----------------------------------------------------------------------------------------------
# Options and locality
# ----------------------------------------------------------------------------------------------


def test_start_up_options_from_the_command_line_and_the_environment() -> None:
    assert parse_options([], {}) == ServerOptions()
    got = parse_options(["--classroom", "--allow-checkpoint-uploads", "30", "--preload",
                         "t2t_vit_14, deit_small_patch16_224"], {})
    assert got == ServerOptions(True, 30, ("t2t_vit_14", "deit_small_patch16_224"))
    env = {"T2T_LENS_CLASSROOM": "1", "T2T_LENS_CHECKPOINT_UPLOAD_MB": "5", "T2T_LENS_PRELOAD": "t2t_vit_7"}
    assert parse_options([], env) == ServerOptions(True, 5, ("t2t_vit_7",))
    for argv, env in ((["--allow-checkpoint-uploads", "lots"], {}), (["--clasroom"], {}),
                      ([], {"T2T_LENS_CHECKPOINT_UPLOAD_MB": "-3"})):
        bad = parse_options(argv, env)
        assert bad.classroom and bad.problems, (argv, env)  # unreadable: classroom for everyone (fail closed)


def test_only_a_loopback_peer_is_local() -> None:
    for address in ("127.0.0.1", "127.3.2.1", "::1", "::ffff:127.0.0.1"):
        assert client_is_local(address), address
    for address in ("192.168.1.23", "10.0.0.1", "fd00::2", "8.8.8.8", "localhost", "not an address", ""):
        assert not client_is_local(address), address
    assert access.peer_address() is None  # no session here: unknown, so not local
    assert not client_is_local()


def test_session_modes() -> None:
    local, options = True, ServerOptions()
    assert session_mode(options, local).sources == access.ALL_SOURCES
    for mode in (session_mode(options, False), session_mode(ServerOptions(classroom=True), True)):
        assert mode.mode == "classroom" and set(mode.sources) == {"embedded", "random", "released"}
    uploads = session_mode(ServerOptions(classroom=True, checkpoint_upload_mb=10), True)
    assert "upload" in uploads.sources and uploads.checkpoint_upload_bytes == 10 * 2**20
    capped = session_mode(ServerOptions(classroom=True, checkpoint_upload_mb=10_000), False)
    assert capped.checkpoint_upload_bytes == access.server_upload_mb() * 2**20  # Streamlit's cap is the ceiling


# ----------------------------------------------------------------------------------------------
# The sidebar and the session state
# ----------------------------------------------------------------------------------------------


def test_an_apptest_session_fails_closed_to_the_classroom_set() -> None:
    """AppTest's client context is a mock, not an address: unknown, so the classroom set."""
    at = app()
    for role in ("T2T-ViT", "ViT"):
        assert sources(at, role) == {"embedded", "random", "released"}
    assert "**Classroom mode**" in captions(at) and "a checkpoint file on this machine" in captions(at)


@pytest.mark.usefixtures("remote_session")
def test_a_remote_visitor_gets_no_path_or_url_even_through_the_session_state() -> None:
    at = app(**{"T2T-ViT_source": "path", "T2T-ViT_path": "/etc/passwd", "ViT_source": "url"})  # crafted state
    assert not {"path", "url", "upload"} & (sources(at, "T2T-ViT") | sources(at, "ViT"))
    assert "a browser on another machine" in captions(at)
    ctx = at.session_state[compute.CTX_KEY]
    assert (ctx.t2t.source, ctx.vit.source) == ("embedded", "embedded")
    assert not at.sidebar.text_input  # no path or URL box drawn


def test_resolve_model_refuses_what_the_mode_does_not_allow(tmp_path: Path) -> None:
    """The one path from a choice to a model checks the mode itself (not only the sidebar's box)."""
    mode = session_mode(ServerOptions(classroom=True, checkpoint_upload_mb=1), local=True)
    for source, location in (("path", "/etc/passwd"), ("url", "http://127.0.0.1:1/internal.pth"),
                             ("upload", str(tmp_path / "planted.pth"))):
        lm, error = models.resolve_model("ViT", models.VIT_DEFAULT, source, location, "cpu", mode=mode)
        assert lm.source == "embedded" and error, source
        assert "not offered in classroom mode" in error or "only a checkpoint uploaded to this server" in error


@pytest.mark.usefixtures("local_session")
def test_a_local_browser_keeps_every_source_unless_the_server_is_in_classroom_mode(
        monkeypatch: pytest.MonkeyPatch) -> None:
    at = app()
    assert {"path", "url", "upload"} <= sources(at, "ViT")
    assert "**Local mode**" in captions(at)
    monkeypatch.setattr(access, "server_options", lambda: ServerOptions(classroom=True))
    at = app()
    assert not {"path", "url", "upload"} & sources(at, "ViT")
    assert "started with --classroom" in captions(at)


@pytest.mark.usefixtures("classroom")
def test_a_checkpoint_upload_over_the_cap_is_refused() -> None:
    at = app()
    assert "upload" in sources(at, "ViT")  # the teacher allowed uploads, up to 1 MB
    assert "Checkpoint uploads up to 1 MB" in captions(at)
    at.selectbox(key="ViT_source").set_value("upload").run()
    at.file_uploader(key="ViT_ckpt").set_value(("big.pth", b"\0" * (2 * 2**20), "application/octet-stream"))
    at.run()
    assert not at.exception
    assert any("'big.pth' is 2 MB, over the checkpoint upload cap of 1 MB" in e.value for e in at.sidebar.error)
    assert at.session_state[compute.CTX_KEY].vit.source == "embedded"


# ----------------------------------------------------------------------------------------------
# Lesson links
# ----------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("remote_session")
def test_a_forged_link_cannot_add_a_weight_source() -> None:
    at = app({"t2t_w": "path", "vit_w": "url", "t2t": "t2t_vit_7"})
    shown = warnings(at)
    assert "The link's `t2t_w` value `path` was not used: not a weight source of this session" in shown
    assert "The link's `vit_w` value `url` was not used" in shown
    ctx = at.session_state[compute.CTX_KEY]
    assert (ctx.t2t.source, ctx.vit.source) == ("embedded", "embedded")  # the default view
    assert at.query_params["t2t_w"] in ("embedded", ["embedded"])  # the address bar holds the view shown


LONG = "x" * 5000
HOSTILE = {  # case -> (page, query, the parameter the notice names)
    "negative token": (TOKENS, {"tok": "-3,-7"}, "tok"),
    "token far outside": (TOKENS, {"tok": "999,999"}, "tok"),
    "three coordinates": (TOKENS, {"tok": "1,2,3"}, "tok"),
    "huge example": (TOKENS, {"ex": "99999999999999999999"}, "ex"),
    "example not a number": (TOKENS, {"ex": "1.5"}, "ex"),
    "long step": (TOKENS, {"step": LONG}, "step"),
    "unknown models": (TOKENS, {"t2t": LONG, "vit": "../../etc/passwd"}, "vit"),
    "unknown photo": (TOKENS, {"img": "photo", "photo": "nope"}, "photo"),
    "unknown image source": (TOKENS, {"img": "ftp"}, "img"),
    "bool not 0 or 1": (TOKENS, {"present": "yes"}, "present"),
    "attention token": (ATTENTION, {"tok": "100000,-100000"}, "tok"),
    "huge block": (ATTENTION, {"block": "1" + "0" * 30}, "block"),
    "negative head": (ATTENTION, {"head": "-1"}, "head"),
    "head past the last": (ATTENTION, {"head": "999"}, "head"),
    "unknown model role": (ATTENTION, {"model": "Q" * 3000}, "model"),
    "discard nan": (EXPLANATIONS, {"discard": "nan"}, "discard"),
    "discard inf": (EXPLANATIONS, {"discard": "inf"}, "discard"),
    "discard 1e308": (EXPLANATIONS, {"discard": "1e308"}, "discard"),
    "steps huge": (EXPLANATIONS, {"steps": "1000000000"}, "steps"),
    "steps negative": (EXPLANATIONS, {"steps": "-1"}, "steps"),
    "a thousand methods": (EXPLANATIONS, {"methods": ",".join(["bogus"] * 1000)}, "methods"),
    "unknown method": (EXPLANATIONS, {"methods": "bogus"}, "methods"),
    "threshold nan": (FEATURES, {"thr": "nan"}, "thr"),
    "channels not offered": (FEATURES, {"ch": "17"}, "ch"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_hostile_link_gives_a_notice_and_a_working_page(case: str) -> None:
    page, query, param = HOSTILE[case]
    at = app(query, page)  # no exception box
    assert f"The link's `{param}` value" in warnings(at), warnings(at)
    assert at.get("plotly_chart") or at.get("imgs") or at.get("image"), "the page is drawn"
    at.run()  # the next run works too, and the notice has done its job
    assert not at.exception and "The link's" not in warnings(at)


def test_an_unknown_url_parameter_is_ignored_and_a_long_value_is_shortened_in_the_notice() -> None:
    at = app({"nonsense": LONG, "ex": "9" * 4000})
    shown = warnings(at)
    assert "nonsense" not in shown and "(4000 characters)" in shown and len(shown) < 400


def test_a_first_run_that_fails_on_a_link_runs_again_with_the_default_view(monkeypatch: pytest.MonkeyPatch) -> None:
    """The safety net under the checks: a value they let through that a page cannot show (here the
    checks are loosened so that steps=1000 reaches the slider, which raises) gives the default view."""
    monkeypatch.setitem(links.RANGES, "steps", (0, 10_000))
    at = app({"steps": "1000"}, EXPLANATIONS)
    assert "This link's view could not be shown" in warnings(at)
    assert at.slider(key="exp_steps").value != 1000
