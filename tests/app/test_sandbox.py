"""The soft-split sandbox (issue 29): app/sandbox.py's geometry, models and costs, and its page run by AppTest.

The geometry is checked against what the model really does (the grids of a trace, `t2t.trace.window_box`), the
costs against the registry's own counts (`python -m t2t list`: t2t/__main__.py), and every configuration the
controls allow that gives no token, or leaves part of the image unseen, must give its message, never an exception.
The page is run on its own (its Context put in session state, as main.py does), so it is tested whether or not
main.py lists it yet.
"""

from __future__ import annotations

import functools
import itertools
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

import t2t
from app import sandbox
from app.compute import CTX_KEY, Context
from app.images import default_image
from app.models import LoadedModel
from app.sandbox import PAPER
from t2t.__main__ import count_gmacs, count_params
from t2t.registry import build_model
from t2t.trace import grid_of, window_box

ROOT = Path(__file__).resolve().parents[2]
PAGE = str(ROOT / "app" / "views" / "7_soft_split_sandbox.py")


# ----------------------------------------------------------------------------------------------
# Geometry
# ----------------------------------------------------------------------------------------------


def test_the_papers_choice_reproduces_the_traces_grids() -> None:
    model = build_model("t2t_vit_7").eval()  # the grids are the architecture's: no weights needed
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        tr = t2t.trace(model, x, attention=False)
    box = sandbox.analyse(PAPER, 224)
    assert box.is_paper and box.valid
    assert [(s.grid, s.grid) for s in box.stages] == [tr.grid(f"t2t.split{i}") for i in range(3)]
    assert [s.tokens for s in box.stages] == [tr.shape(f"t2t.split{i}")[1] for i in range(3)]
    assert [s.width for s in box.stages] == [tr.shape(f"t2t.split{i}")[2] for i in range(3)]
    # the paper's overlaps, as the Tokens-to-Token page measures them on the trace's receptive fields
    for i, stage in enumerate(("t2t.split0", "t2t.split1", "t2t.split2")):
        g = tr.grid(stage)
        a = t2t.receptive_field(model, stage, (g[0] // 2, g[1] // 2), 224)
        b = t2t.receptive_field(model, stage, (g[0] // 2, g[1] // 2 + 1), 224)
        assert box.stages[i].overlap == a[3] - b[1]
        assert box.stages[i].field == a[3] - a[1]
    # the paper's choice is not a whole number of windows at any stage, over padding only: information
    assert [p.level for p in box.problems] == ["info"] * 3
    assert [s.exact for s in box.stages] == [56.25, 28.5, 14.5]


CONFIGS = [  # kernel, stride, padding of each split; image side: remainders, gaps, heavy padding, one token
    (((7, 4, 2), (3, 2, 1), (3, 2, 1)), 64),
    (((5, 3, 0), (2, 2, 0), (3, 1, 1)), 64),
    (((3, 5, 0), (3, 2, 1), (3, 2, 1)), 96),  # stride > kernel: gaps
    (((7, 4, 7), (3, 2, 1), (2, 3, 0)), 48),  # padding >= kernel
    (((16, 16, 0), (1, 1, 0), (1, 1, 0)), 64),  # ViT's hard split, then nothing
    (((9, 4, 0), (5, 3, 0), (3, 1, 0)), 64),  # down to a single backbone token
]


@pytest.mark.parametrize(("splits", "size"), CONFIGS, ids=[str(c) for c in CONFIGS])
def test_grids_and_fields_are_what_the_model_makes(splits, size) -> None:
    box = sandbox.analyse(splits, size)
    assert box.valid
    model = sandbox.random_model("t2t_vit_7", box.splits, size)
    with torch.no_grad():
        tr = t2t.trace(model, torch.randn(1, 3, size, size), attention=False)
    assert [(s.grid, s.grid) for s in box.stages] == [tr.grid(f"t2t.split{i}") for i in range(3)]
    assert [tr.shape(f"t2t.split{i}")[1:] for i in range(3)] == [(s.tokens, s.width) for s in box.stages]
    assert tr.grid("blocks.0") == (box.backbone.grid, box.backbone.grid)
    assert grid_of(list(box.splits), (size, size)) == (box.backbone.grid,) * 2
    # field and jump: the window of a token and its right-hand neighbour, unclipped on a large enough image
    big = 4 * box.backbone.field + 64
    for i, stage in enumerate(sandbox.analyse(splits, big).stages):
        g = stage.grid
        a = window_box(list(box.splits[:i + 1]), (g // 2, g // 2), (big, big))
        b = window_box(list(box.splits[:i + 1]), (g // 2, g // 2 + 1), (big, big))
        assert (a[2] - a[0], a[3] - a[1]) == (stage.field, stage.field)
        assert b[1] - a[1] == stage.jump
        assert a[3] - b[1] == stage.overlap


def test_every_configuration_of_the_controls_gives_an_answer_never_an_exception() -> None:
    """Every kernel, stride, padding the controls allow, for split 0 on a small image and split 2 after
    the paper's first two: analysed without an exception; no token <=> an error that says so."""
    lo_k, hi_k = sandbox.KERNEL
    lo_s, hi_s = sandbox.STRIDE
    lo_p, hi_p = sandbox.PADDING
    for k, s, p in itertools.product(range(lo_k, hi_k + 1), range(lo_s, hi_s + 1), range(lo_p, hi_p + 1)):
        for splits in (((k, s, p), (3, 2, 1), (3, 2, 1)), ((7, 4, 2), (3, 2, 1), (k, s, p))):
            box = sandbox.analyse(splits, sandbox.IMAGE[0])
            errors = [q for q in box.problems if q.level == "error"]
            assert box.valid == (not errors)
            assert box.valid == (len(box.stages) == 3 and box.backbone.grid >= 1)
            for stage in box.stages:
                if stage.grid == 0:
                    assert any(q.stage == stage.index and "no token at all" in q.text for q in errors)


def test_no_token_is_an_error_naming_the_numbers() -> None:
    box = sandbox.analyse(((15, 1, 0), (3, 2, 1), (3, 2, 1)), 32)  # 32 + 0 >= 15: fine; then 18 -> 9 -> 5
    assert box.valid
    box = sandbox.analyse(((15, 8, 0), (7, 2, 1), (3, 2, 1)), 32)  # split 0: 3x3 tokens; a 7 window on 3 + 2
    assert not box.valid and len(box.stages) == 2 and box.stages[1].grid == 0
    (error,) = [q for q in box.problems if q.level == "error"]
    assert error.stage == 1 and "3 + 2·1 = 5 < 7" in error.text and "no token at all" in error.text
    with pytest.raises(ValueError, match="no token at all"):
        sandbox.build("t2t_vit_7", box.splits, 32)


@pytest.mark.parametrize(("splits", "size", "says"), [
    (((3, 5, 0), (3, 2, 1), (3, 2, 1)), 224, "stride 5 > window 3: 2 of every 5 rows"),
    (((15, 8, 0), (3, 2, 1), (3, 2, 1)), 224, "there is no padding, the last row and column of the image are never"),
    (((7, 4, 7), (3, 2, 1), (3, 2, 1)), 224, "padding 7 ≥ window 7"),
])
def test_what_is_never_seen_is_a_warning(splits, size, says) -> None:
    box = sandbox.analyse(splits, size)
    assert box.valid
    assert any(q.level == "warning" and says in q.text for q in box.problems), [q.text for q in box.problems]


def test_lost_rows_are_counted() -> None:
    """(224 - 15) / 8 + 1 = 27.125: the 27 windows cover rows 0..222 of the image; row 223 is in none."""
    box = sandbox.analyse(((15, 8, 0), (3, 2, 1), (3, 2, 1)), 224)
    stage = box.stages[0]
    assert stage.grid == 27 and stage.left_over == 1
    last = window_box([stage.split], (26, 26), (224, 224))
    assert last[2] == 223  # exclusive: the last row seen is 222


# ----------------------------------------------------------------------------------------------
# Models and costs
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["t2t_vit_7", "t2t_vit_t_14", "t2t_vit_14_384"])
def test_the_papers_choice_has_the_registrys_parameters_and_macs(name: str) -> None:
    size = t2t.get_config(name).img_size
    params, macs = sandbox.model_cost(name, PAPER, size)
    assert params == count_params(name)
    assert macs / 1e9 == pytest.approx(count_gmacs(name), rel=1e-12)  # count_gmacs: FLOPs / 2e9
    ours = sandbox.build(name, PAPER, size).state_dict()
    with torch.device("meta"):
        theirs = build_model(name).state_dict()
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}


def test_costs_follow_the_configuration() -> None:
    """A larger first stride: fewer tokens, so fewer MACs; the T2T layers' input widths follow the kernels."""
    small = ((7, 8, 2), (3, 2, 1), (3, 2, 1))
    box = sandbox.analyse(small, 224)
    assert [s.grid for s in box.stages] == [28, 14, 7]
    params, macs = sandbox.model_cost("t2t_vit_7", small, 224)
    p_params, p_macs = sandbox.model_cost("t2t_vit_7", PAPER, 224)
    assert macs < p_macs
    assert params == p_params - (196 - 49) * 256  # only the position table (one row per token) shrinks
    assert sandbox.attention_cost(box.stages[0]) == 784 ** 2 * 64
    wide = ((9, 4, 2), (5, 2, 2), (3, 2, 1))
    model = sandbox.build("t2t_vit_7", wide, 224)
    t2t_module = model.tokens_to_token
    assert t2t_module.attention1.kqv.in_features == 3 * 9 * 9
    assert t2t_module.attention2.kqv.in_features == 64 * 5 * 5
    assert t2t_module.project.in_features == 64 * 3 * 3


def test_random_model_is_the_same_for_the_same_arguments_and_leaves_the_generator_alone() -> None:
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = sandbox.random_model("t2t_vit_7", PAPER, 64)
    b = sandbox.random_model("t2t_vit_7", PAPER, 64)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert not a.training


def test_too_large_to_run_says_why() -> None:
    assert sandbox.too_large_to_run("t2t_vit_7", sandbox.analyse(PAPER, 224)) is None
    tiny = sandbox.analyse(((1, 1, 0), (1, 1, 0), (1, 1, 0)), 224)  # 50,176 backbone tokens
    why = sandbox.too_large_to_run("t2t_vit_7", tiny)
    assert why is not None and ("GMACs" in why or "MB" in why)


# ----------------------------------------------------------------------------------------------
# The page (AppTest, on its own)
# ----------------------------------------------------------------------------------------------


@functools.cache
def embedded_pair() -> tuple[LoadedModel, LoadedModel]:
    """The app's default models, loaded once for this file's page tests."""
    from t2t.loading import load_model

    return tuple(LoadedModel(role, name, "embedded", "", "cpu", load_model(name, "embedded", "cpu",
                                                                            match_architecture=False))
                 for role, name in (("T2T-ViT", "t2t_vit_7"), ("ViT", "deit_tiny_patch16_224")))


def page() -> AppTest:
    """The sandbox page on its own, with the Context main.py would give it (default models and image)."""
    models = embedded_pair()
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.session_state[CTX_KEY] = Context(models[0], models[1], default_image(), "cpu")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label.startswith(label))


def test_the_view_of_a_state_is_the_controls_defaults_and_ranges() -> None:
    """`clamped`: the paper's splits and the model's side (on the control's step) by default; a link's values kept
    within the controls' ranges; `page_view` builds the sidebar's architecture (T2T-ViT-7 for a model that is not
    a registry T2T-ViT) and reads ViT's patch."""
    defaults = sandbox.clamped({}, sandbox.default_size(224))
    assert [defaults[k] for keys in sandbox.SPLIT_KEYS for k in keys] == [v for split in PAPER for v in split]
    assert defaults[sandbox.SIZE_KEY] == 224 and sandbox.default_size(300) == 288 and sandbox.default_size(9999) == 512
    state = {"sb_k0": 99, "sb_s1": 0, "sb_p2": -3, "sb_size": 100}
    out = sandbox.clamped(state, 224)
    assert (out["sb_k0"], out["sb_s1"], out["sb_p2"], out["sb_size"]) == (15, 1, 0, 96)  # 32 + 64: the step of 16
    assert state == {"sb_k0": 99, "sb_s1": 0, "sb_p2": -3, "sb_size": 100}  # not changed
    t2t_model, vit_model = embedded_pair()
    view = sandbox.page_view({"sb_s0": 2}, t2t_model, vit_model)
    assert view.name == "t2t_vit_7" and view.patch == 16 and view.vit_grid == 14
    assert view.box.splits == ((7, 2, 2), (3, 2, 1), (3, 2, 1)) and view.paper.is_paper
    assert sandbox.model_name("deit_tiny_patch16_224") == sandbox.DEFAULT_MODEL


def test_page_writes_the_clamped_view_and_draws_from_it() -> None:
    """A link's values out of range: the page's controls hold what `sandbox.clamped` gives, its numbers are those of
    `sandbox.page_view` of the same state (what a lesson file draws for a tour step)."""
    models = embedded_pair()
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.session_state[CTX_KEY] = Context(models[0], models[1], default_image(), "cpu")
    link = {"sb_s0": 2, "sb_k2": 40, "sb_size": 200}
    for key, value in link.items():
        at.session_state[key] = value
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    expected = sandbox.clamped(link, sandbox.default_size(models[0].img_size))
    assert {k: at.session_state[k] for k in expected} == expected
    assert [at.number_input(key=k).value for k in expected] == list(expected.values())
    view = sandbox.page_view(link, *models)
    assert metric(at, "Backbone tokens") == f"{view.box.backbone.tokens:,}"
    assert metric(at, "GMACs") == f"{view.cost[1] / 1e9:.3f}"


def test_page_shows_the_papers_choice_and_the_registrys_numbers() -> None:
    at = page()
    assert [h.value for h in at.header] == ["Soft-split sandbox"]
    assert not at.error
    assert metric(at, "Backbone tokens") == "196"
    assert metric(at, "Parameters") == f"{count_params('t2t_vit_7') / 1e6:.3f} M"
    assert metric(at, "GMACs") == f"{count_gmacs('t2t_vit_7'):.3f}"
    assert [c.value for c in at.caption if c.value.startswith("the paper:")] == [
        "the paper: 7 / 4 / 2 ✓", "the paper: 3 / 2 / 1 ✓", "the paper: 3 / 2 / 1 ✓"]
    table = next(m.value for m in at.markdown if m.value.startswith("| step |"))
    assert "56×56 | **3,136**" in table and "28×28 | **784**" in table and "14×14 | **196**" in table
    assert "56.25 → **56**" in table and "7×7 | 3 px (43%)" in table and "31×31 | 15 px (48%)" in table


def test_page_invalid_configuration_gives_its_message_and_nothing_else() -> None:
    at = page()
    at.number_input(key="sb_k0").set_value(15)
    at.number_input(key="sb_s0").set_value(8)
    at.number_input(key="sb_p0").set_value(0)
    at.number_input(key="sb_size").set_value(32)
    at.number_input(key="sb_k1").set_value(7)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    (error,) = [e.value for e in at.error]
    assert "Soft split 1" in error and "no token at all" in error
    assert not at.metric  # nothing is built from a configuration without tokens
    assert any("Nothing more to show" in i.value for i in at.info)
    at.button(key="sb_paper").click().run()
    assert not at.error
    assert [at.number_input(key=k).value for k in ("sb_k0", "sb_s0", "sb_p0", "sb_k1", "sb_size")] == [7, 4, 2, 3, 224]


def test_page_changed_configuration_and_try_it() -> None:
    at = page()
    model = at.session_state[CTX_KEY].t2t.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    at.number_input(key="sb_s0").set_value(8)  # 7 / 8 / 2: a gap of 1 px between windows
    at.run()
    assert any("stride 8 > window 7" in w.value for w in at.warning)
    assert metric(at, "Backbone tokens") == "49"
    params, macs = sandbox.model_cost("t2t_vit_7", ((7, 8, 2), (3, 2, 1), (3, 2, 1)), 224)
    assert metric(at, "GMACs") == f"{macs / 1e9:.3f}"
    at.toggle(key="sb_try").set_value(True).run()
    assert not at.exception, [e.value for e in at.exception]
    assert any("Random weights" in w.value for w in at.warning)
    steps = next(m.value for m in at.markdown if m.value.startswith("| trace step |"))
    assert "`t2t.split0` | 28×28 | 784 | 147 |" in steps and "`t2t.project` | 7×7 | 49 | 256 |" in steps
    assert any("The trace's grids are the ones computed above (28×28, 14×14, 7×7)" in c.value for c in at.caption)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the shared model untouched
    at.number_input(key="sb_k0").set_value(1)
    at.number_input(key="sb_s0").set_value(1)
    at.number_input(key="sb_p0").set_value(0)
    at.number_input(key="sb_k1").set_value(1)
    at.number_input(key="sb_s1").set_value(1)
    at.number_input(key="sb_p1").set_value(0)
    at.run()
    assert any(w.value.startswith("Not run:") for w in at.warning)
