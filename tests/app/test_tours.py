"""Guided tours (app/tours.py, lessons/*.toml): the files, the fields of their texts, and the tour in the app.

- Every shipped tour loads, every number its texts state is a computed field, and every field equals
  what the library computes (fresh traces, `t2t.receptive_field`, `analysis.*`), not what the cache says.
- A malformed file (unknown page or parameter, wrong type, missing field, unknown field in a text, bad
  TOML) is refused with a message naming the file, the step and the field, and the other tours load.
- AppTest: every step of every shipped tour opens from its link and through Next with no exception,
  shows its text (as `tours.fill` computes it), its page and the figure it is about, and its address
  is the tour's; Back; a student's change, then Next and Back, gives the tour's view again; a
  malformed tour's message in the sidebar and above the page; a step value the models cannot show
  is named in a notice.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

import t2t
from app import compute, export, images, tours
from app.compute import Context

ROOT = Path(__file__).resolve().parents[2]
MAIN = str(ROOT / "app" / "main.py")
TIMEOUT = 180
HEADERS = {  # page url path -> the page's header
    "tokens": "Tokens-to-Token, step by step",
    "attention": "Attention explorer",
    "explanations": "Explanations: which pixels made the decision?",
    "features": "Feature richness: how much do the channels carry?",
    "classify": "Classify",
    "knockouts": "Knock-outs: switch parts off and watch",
    "decision": "Inside the decision: how the answer is built",
    "sandbox": "Soft-split sandbox",
}
GOOD = '''title = "A small tour"
[[step]]
page = "tokens"
text = "It has {tokens.split0} tokens. That is all."
[[step]]
page = "attention"
params = { block = 2 }
text = "Block {attention.block}. Fine."
'''


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def ctx() -> Context:
    """The default pair (project-trained T2T-ViT-7 and DeiT-Tiny) on the default image, on the CPU."""
    return Context(export.model_for("T2T-ViT", "t2t_vit_7", "", "cpu"),
                   export.model_for("ViT", "deit_tiny_patch16_224", "", "cpu"), images.default_image(), "cpu")


# ----------------------------------------------------------------------------------------------
# The files
# ----------------------------------------------------------------------------------------------


def test_the_shipped_tours_load_and_the_paper_tour_tells_the_story() -> None:
    loaded = tours.load_tours()
    assert loaded.problems == []
    paper = loaded.tours["paper"]
    assert 10 <= len(paper.steps) <= 20
    pages = [s.page for s in paper.steps]
    for page in ("tokens", "attention", "explanations", "features", "knockouts", "sandbox"):
        assert page in pages
    # AttnLRP right after the rollout; the sandbox next to the token counts
    looks = [s.look_at for s in paper.steps]
    assert looks.index("exp_attnlrp_T2T-ViT") == looks.index("exp_rollout_T2T-ViT") + 1
    assert tours.step_state(paper.steps[looks.index("exp_attnlrp_T2T-ViT")])["exp_methods"] == ["attnlrp"]
    sandbox_step = pages.index("sandbox")
    assert abs(sandbox_step - looks.index("pick_split2")) <= 2
    assert tours.step_state(paper.steps[sandbox_step]) == {"sb_s0": 2}
    for tour in loaded.tours.values():
        for step in tour.steps:
            assert step.look_at in export.FIGURES, (tour.name, step.number, step.look_at)  # drawn in the lesson too
            sentences = len(re.findall(r"[.!?](\s|$)", re.sub(r"\{[^{}]*\}", "X", step.text)))
            assert 2 <= sentences <= 5, (tour.name, step.number, sentences)


def test_every_number_of_a_shipped_text_is_a_computed_field() -> None:
    """Digits outside `{fields}` are allowed only inside names (T2T)."""
    for tour in tours.load_tours().tours.values():
        for step in tour.steps:
            fields = tours.used_fields(step.text)
            assert fields, (tour.name, step.number)
            bare = re.sub(r"\{[^{}]*\}", "", step.text).replace("T2T", "")
            assert not re.search(r"\d", bare), (tour.name, step.number, re.findall(r".{0,20}\d.{0,20}", bare))


def test_every_field_is_documented_in_the_lessons_readme() -> None:
    readme = (ROOT / "lessons" / "README.md").read_text()
    assert [name for name in tours.FIELDS if "{" + name + "}" not in readme] == []


MALFORMED = {  # case -> (file text, the step, the field, words of the reason)
    "unknown page": ('title = "t"\n[[step]]\npage = "nowhere"\ntext = "a. b."\n', 1, "page", "is not a page"),
    "unknown parameter": ('title = "t"\n[[step]]\npage = "tokens"\nparams = { block = 1 }\ntext = "a. b."\n', 1,
                          "params.block", "not a parameter of page `tokens`"),
    "wrong type": (GOOD.replace("block = 2", 'block = "two"'), 2, "params.block", "not a whole number"),
    "out of range": (GOOD.replace("block = 2", "block = -1"), 2, "params.block", "outside 0 to"),
    "a list of numbers": (GOOD.replace('page = "attention"\nparams = { block = 2 }',
                                       'page = "knockouts"\nparams = { vit_heads = [1, 2] }'), 2, "params.vit_heads",
                          "not a list of strings"),
    "a pair of three": (GOOD.replace("block = 2", "tok = [1, 2, 3]"), 2, "params.tok", "two whole numbers"),
    "missing text": ('title = "t"\n[[step]]\npage = "tokens"\n', 1, "text", "missing"),
    "missing page": ('title = "t"\n[[step]]\ntext = "a. b."\n', 1, "page", "missing"),
    "missing title": ('[[step]]\npage = "tokens"\ntext = "a. b."\n', None, "title", "missing"),
    "unknown step field": (GOOD.replace("params = { block = 2 }", 'looks_at = "att_pick"'), 2, "looks_at",
                           "unknown field"),
    "unknown text field": (GOOD.replace("{attention.block}", "{attention.bloc}"), 2, "text",
                           "unknown field `{attention.bloc}`"),
    "bad format spec": (GOOD.replace("{tokens.split0}", "{tokens.split0:.2q}"), 1, "text", "{tokens.split0:.2q}"),
    "stray brace": (GOOD.replace("That is all.", "That } is all."), 1, "text", "Single '}'"),
    "no steps": ('title = "t"\n', None, "step", "missing"),
    "a file as weights": (GOOD.replace("block = 2", 'block = 2, t2t_w = "path"'), 2, "params.t2t_w",
                          "never names a file"),
    "an upload as image": (GOOD.replace("block = 2", 'img = "upload"'), 2, "params.img", "cannot bring an upload"),
    "not a registry model": (GOOD.replace("block = 2", 'vit = "resnet50"'), 2, "params.vit",
                             "not a ViT model of the registry"),
    "look_at not a key": (GOOD.replace("params = { block = 2 }", 'look_at = "a b"'), 2, "look_at", "not a figure"),
    "tour-wide parameter of a page": (GOOD.replace('title = "A small tour"', 'title = "x"\nparams = { block = 1 }'),
                                      None, "params.block", "not a parameter of every page"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_tour_is_refused_naming_file_step_and_field_and_the_others_load(case: str,
                                                                                    tmp_path: Path) -> None:
    text, step, field, why = MALFORMED[case]
    write(tmp_path, "good", GOOD)
    write(tmp_path, "bad", text)
    loaded = tours.load_tours([tmp_path])
    assert list(loaded.tours) == ["good"] and len(loaded.tours["good"].steps) == 2
    message = loaded.refused["bad"]
    assert str(tmp_path / "bad.toml") in message
    assert (f"step {step}" in message) == (step is not None), message
    assert f"field `{field}`" in message and why in message, message


def test_a_file_that_is_not_toml_is_refused(tmp_path: Path) -> None:
    write(tmp_path, "bad", 'title = "t"\n[[step]\n')
    assert "not a TOML file that can be read" in tours.load_tours([tmp_path]).refused["bad"]


def test_a_changed_file_is_read_again(tmp_path: Path) -> None:
    path = write(tmp_path, "good", GOOD)
    assert tours.load_tours([tmp_path]).tours["good"].title == "A small tour"
    path.write_text(GOOD.replace("A small tour", "A changed tour, longer"), encoding="utf-8")
    assert tours.load_tours([tmp_path]).tours["good"].title == "A changed tour, longer"


def test_step_values_are_the_widget_values_a_link_would_set(tmp_path: Path) -> None:
    write(tmp_path, "t", 'title = "t"\nparams = { img = "photo", photo = "cat" }\n[[step]]\npage = "attention"\n'
          'params = { model = "ViT", block = 3, head = "mean", tok = [2, 5], cls = false }\ntext = "a. b."\n'
          '[[step]]\npage = "explanations"\nparams = { methods = ["rollout", "chefer"], discard = 0.5 }\n'
          'text = "a. b."\n')
    first, second = tours.load_tours([tmp_path]).tours["t"].steps
    assert tours.step_state(first) == {"image_source": "Sample photo", "sample_name": "cat", "att_model": "ViT",
                                       "att_block": 3, "att_head": "mean", "att_row": 2, "att_col": 5,
                                       "att_cls": False}
    assert tours.step_state(second)["exp_methods"] == ["rollout", "chefer"]
    assert tours.step_state(second)["exp_discard"] == 0.5
    assert second.params["photo"] == "cat"  # the tour-wide parameters are every step's


# ----------------------------------------------------------------------------------------------
# The fields, against the library
# ----------------------------------------------------------------------------------------------


def field(ctx: Context, name: str, **state: object) -> object:
    return tours.FIELDS[name].compute(tours.StepView(ctx, state))


def test_token_fields_follow_the_soft_split_geometry(ctx: Context) -> None:
    side = ctx.t2t.img_size
    grid, field_px, jump = side, 1, 1
    for level, (k, s, p) in enumerate(t2t.tokens.SOFT_SPLITS):
        grid = t2t.tokens.grid_after(grid, k, s, p)
        field_px, jump = field_px + (k - 1) * jump, jump * s  # a window's side and stride in pixels
        assert field(ctx, f"tokens.split{level}") == grid * grid
        assert field(ctx, f"grid.split{level}") == f"{grid}×{grid}"
        assert (field(ctx, f"split{level}.kernel"), field(ctx, f"split{level}.stride")) == (k, s)
        assert field(ctx, f"split{level}.field") == field_px
        assert field(ctx, f"split{level}.overlap") == field_px - jump
    tr = t2t.trace(ctx.t2t.model, ctx.inputs(ctx.t2t))
    assert field(ctx, "split1.numbers") == tr["t2t.split1"].shape[-1]
    p = ctx.vit.model.patch_embed.patch_size
    assert field(ctx, "tokens.vit") == (ctx.vit.img_size // p) ** 2
    assert field(ctx, "vit.numbers") == 3 * p * p
    assert field(ctx, "tokens.ratio1") == field(ctx, "tokens.split0") // field(ctx, "tokens.split1")


def test_attention_fields_equal_the_library(ctx: Context) -> None:
    from analysis.attention_stats import attention_profile

    lm = ctx.vit
    tr = t2t.trace(lm.model, ctx.inputs(lm), attention=True)
    grid = tr.grid("blocks.0")
    prof = attention_profile(tr.attentions(), grid, (lm.img_size / grid[0], lm.img_size / grid[1]))
    state = {"att_model": "ViT", "att_block": 2, "att_head": 1, "att_row": 3, "att_col": 4}
    assert field(ctx, "attention.distance", **state) == pytest.approx(float(prof["distance"][0, 2, 1]), rel=1e-5)
    assert field(ctx, "attention.entropy", **state) == pytest.approx(float(prof["entropy"][0, 2, 1]), rel=1e-5)
    query = 1 + 3 * grid[1] + 4
    assert field(ctx, "attention.cls_share", **state) == pytest.approx(float(tr["blocks.2.attn"][0, 1, query, 0]),
                                                                       rel=1e-5)
    assert field(ctx, "attention.query", **state) == "token (3, 4)"
    # clamped as the page clamps: a block past the last, a head the model does not have
    assert field(ctx, "attention.block", att_model="ViT", att_block=99) == lm.num_blocks - 1
    assert field(ctx, "attention.head", att_model="ViT", att_head=99) == "the mean of the heads"


def test_t2t_attention_concentration_equals_the_full_map(ctx: Context) -> None:
    lm = ctx.t2t
    tr = t2t.trace(lm.model, ctx.inputs(lm))
    rows = tr.attention_rows("t2t.attn2_map", torch.arange(tr.shape("t2t.attn2")[1]))[0, 0].double()  # (784, 784)
    k = max(1, int(rows.shape[1] * 0.01))
    share = (rows.topk(k, dim=-1).values.sum(-1) / rows.sum(-1)).median()
    assert field(ctx, "attn2.top_tokens") == k
    assert field(ctx, "attn2.top_share") == pytest.approx(float(share), abs=1e-4)


def test_rollout_invalid_channel_and_knockout_fields_equal_the_library(ctx: Context) -> None:
    from analysis.knockout import knocked_out
    from analysis.redundancy import feature_maps, invalid_channels
    from analysis.rollout import cls_rollout

    lm = ctx.vit
    x = ctx.inputs(lm)
    tr = t2t.trace(lm.model, x, attention=True)
    roll = cls_rollout(tr.attentions(), discard_ratio=0.5, discard="row")[0].double()
    top = roll.topk(max(1, round(roll.numel() * 0.1))).values.sum() / roll.sum()
    assert field(ctx, "rollout.vit.top_share", exp_rule="row", exp_discard=0.5) == pytest.approx(float(top), abs=1e-5)

    maps = feature_maps(tr["blocks.4"], tr.grid("blocks.0"))
    invalid = invalid_channels(maps, 0.3)[0]
    assert field(ctx, "invalid.vit", fr_block_ViT=4, fr_threshold=0.3) == int(invalid.sum())
    assert field(ctx, "channels.vit", fr_block_ViT=4, fr_threshold=0.3) == invalid.numel()

    heads = [(0, 0), (0, 1), (1, 2)]
    with torch.no_grad():
        before = lm.model(x).softmax(-1)[0]
        with knocked_out(lm.model, heads, (), "zero", None):
            after = lm.model(x).softmax(-1)[0]
    state = {"ko_heads_ViT": ["0.0", "0.1", "1.2", "99.0"]}  # a head the model lacks is dropped, as the page does
    c = int(before.argmax())
    assert field(ctx, "knockout.vit.heads", **state) == 3
    assert field(ctx, "knockout.vit.class", **state) == lm.class_names[c]
    assert field(ctx, "knockout.vit.before", **state) == pytest.approx(float(before[c]), abs=1e-5)
    assert field(ctx, "knockout.vit.after", **state) == pytest.approx(float(after[c]), abs=1e-5)


def test_lrp_fields_equal_the_library(ctx: Context) -> None:
    """T2T-ViT's AttnLRP numbers as analysis.lrp computes them afresh for the predicted class (what the page
    explains); each model's share is its pixels' sum over its logit; the method is the step's."""
    from analysis.lrp import lrp

    lm = ctx.t2t
    rel = lrp(lm.model, ctx.inputs(lm))  # the predicted class, the default gamma
    logit, total = float(rel.logit[0]), float(rel.pixels[0].sum())
    assert field(ctx, "lrp.t2t.class") == lm.class_names[int(rel.target[0])]
    assert field(ctx, "lrp.t2t.logit") == pytest.approx(logit, rel=1e-4)
    assert field(ctx, "lrp.t2t.total") == pytest.approx(total, rel=1e-3, abs=1e-4)
    assert field(ctx, "lrp.t2t.conservation") == pytest.approx(float(rel.conservation[0]), rel=1e-3, abs=1e-4)
    assert rel.gamma is not None and field(ctx, "lrp.gamma") == rel.gamma
    for which in ("t2t", "vit"):
        total, logit = field(ctx, f"lrp.{which}.total"), field(ctx, f"lrp.{which}.logit")
        assert field(ctx, f"lrp.{which}.conservation") == pytest.approx(total / logit)
        assert field(ctx, f"lrp.{which}.rest") == pytest.approx(logit - total)
        assert field(ctx, f"lrp.{which}.conservation") != pytest.approx(1.0, abs=1e-3)  # the Gamma rule: not 100%
    assert field(ctx, "lrp.method") == field(ctx, "lrp.method", exp_methods=["rollout", "attnlrp"]) == "AttnLRP"
    assert field(ctx, "lrp.method", exp_methods=["rollout", "cp_lrp", "attnlrp"]) == "CP-LRP"


def test_sandbox_fields_follow_the_steps_configuration(ctx: Context) -> None:
    """Token counts from the soft-split arithmetic (`t2t.tokens.grid_after`, nn.Unfold's), the attention cost as
    tokens² × the T2T width, parameters and MACs as `python -m t2t list` counts them; the paper's at the same side."""
    from t2t.__main__ import count_gmacs, count_params
    from t2t.tokens import grid_after

    state = {"sb_s0": 2, "sb_k2": 5, "sb_p2": 2}
    splits = ((7, 2, 2), (3, 2, 1), (5, 2, 2))
    side = ctx.t2t.img_size
    grids, paper = [], []
    g, q = side, side
    for (k, s, p), (pk, ps, pp) in zip(splits, t2t.tokens.SOFT_SPLITS, strict=True):
        g, q = grid_after(g, k, s, p), grid_after(q, pk, ps, pp)
        grids.append(g)
        paper.append(q)
    for i in range(3):
        assert [field(ctx, f"sandbox.split{i}.{w}", **state) for w in ("kernel", "stride", "padding")] == \
            list(splits[i])
        assert [field(ctx, f"sandbox.paper.split{i}.{w}", **state) for w in ("kernel", "stride", "padding")] == \
            list(t2t.tokens.SOFT_SPLITS[i])
        assert field(ctx, f"sandbox.split{i}.tokens", **state) == grids[i] ** 2
        assert field(ctx, f"sandbox.split{i}.grid", **state) == f"{grids[i]}×{grids[i]}"
        assert field(ctx, f"sandbox.paper.split{i}.tokens", **state) == paper[i] ** 2
    assert field(ctx, "sandbox.split0.field", **state) == 7 and field(ctx, "sandbox.split0.overlap", **state) == 5
    assert field(ctx, "sandbox.split1.field", **state) == 7 + 2 * 2  # field + (k - 1) jump
    width = ctx.t2t.model.tokens_to_token.attention1.emb  # the T2T layers' width (64)
    assert field(ctx, "sandbox.attn1.cost", **state) == grids[0] ** 4 * width
    assert field(ctx, "sandbox.attn2.ratio", **state) == pytest.approx((grids[1] / paper[1]) ** 4)
    p = ctx.vit.model.patch_embed.patch_size
    assert field(ctx, "sandbox.vit.tokens", **state) == (side // p) ** 2
    assert (field(ctx, "sandbox.model"), field(ctx, "sandbox.size")) == (ctx.t2t.name, side)
    # the paper's choice: the registry's own counts; the step's: fewer parameters only where the position table grows
    assert field(ctx, "sandbox.paper.params", **state) == count_params(ctx.t2t.name)
    assert field(ctx, "sandbox.paper.gmacs", **state) == pytest.approx(count_gmacs(ctx.t2t.name), rel=1e-12)
    assert field(ctx, "sandbox.gmacs_ratio", **state) == pytest.approx(
        field(ctx, "sandbox.gmacs", **state) / field(ctx, "sandbox.paper.gmacs", **state), rel=1e-6)
    assert field(ctx, "sandbox.gmacs", **state) > field(ctx, "sandbox.paper.gmacs", **state)
    # clamped as the page clamps (a stride past the control's range), and a configuration without a token is said
    assert field(ctx, "sandbox.split0.stride", sb_s0=99) == 8
    text, problems = tours.fill("{sandbox.split2.tokens} tokens.", tours.StepView(ctx, {"sb_k1": 15, "sb_s0": 8,
                                                                                        "sb_size": 32}))
    assert text == "? tokens." and "no token at all" in problems[0]


def test_every_lrp_and_sandbox_field_computes_for_both_embedded_models(ctx: Context) -> None:
    """Each `lrp.*` and `sandbox.*` field, the T2T-ViT's and the ViT's, computes on the embedded pair (no "?"), for
    the page's defaults and for another configuration."""
    names = [n for n in tours.FIELDS if n.startswith(("lrp.", "sandbox."))]
    assert {"lrp.t2t.conservation", "lrp.vit.conservation", "sandbox.split0.tokens", "sandbox.gmacs"} <= set(names)
    for state in ({}, {"sb_k0": 5, "sb_s0": 3, "sb_p2": 0, "sb_size": 160}):
        text, problems = tours.fill(" ".join("{" + n + "}" for n in names), tours.StepView(ctx, state))
        assert problems == [], problems
        assert "?" not in text.split()  # None or a non-finite number shows as "?"


def test_fill_formats_each_field_and_marks_what_cannot_be_computed(ctx: Context, monkeypatch) -> None:
    view = tours.StepView(ctx, {})
    text, problems = tours.fill("{tokens.split0} tokens, {t2t.top1_p} sure, {t2t.top1_p:.3f}; {{braces}}", view)
    p = float(compute.probabilities(ctx.trace(ctx.t2t)).max())
    assert text == f"{field(ctx, 'tokens.split0')} tokens, {p:.1%} sure, {p:.3f}; {{braces}}" and problems == []
    broken = tours.Field("a field that fails", int, "d", lambda v: 1 / 0)
    monkeypatch.setitem(tours.FIELDS, "broken.field", broken)
    text, problems = tours.fill("It is {broken.field}.", view)
    assert text == "It is ?." and "`{broken.field}` cannot be computed" in problems[0]


# ----------------------------------------------------------------------------------------------
# The tour in the app (AppTest)
# ----------------------------------------------------------------------------------------------


def open_step(tour: str, step: int | str, **query: str) -> AppTest:
    """A new session opened with the tour's link `?tour=TOUR&step=STEP` (and `query`)."""
    at = AppTest.from_file(MAIN, default_timeout=TIMEOUT)
    for k, v in {"tour": tour, "step": str(step), **query}.items():
        at.query_params[k] = v
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def chart_keys(at: AppTest) -> list[str]:
    return [el.proto.id.split("-", 2)[-1] for el in at.get("plotly_chart")]


def address(at: AppTest) -> dict[str, str]:
    """The address bar's parameters (AppTest keeps a value as a string or a one-item list)."""
    return {k: v[0] if isinstance(v, list) else v for k, v in at.query_params.items()}


def warnings(at: AppTest) -> str:
    return "\n".join(w.value for w in at.warning)


def markdown(at: AppTest) -> list[str]:
    return [m.value for m in at.markdown]


def check_step(at: AppTest, tour: tours.Tour, number: int) -> None:
    """The app shows step `number`: no exception, its page, its bar and text, its figure, its address."""
    assert not at.exception, [e.value for e in at.exception]
    step = tour.steps[number - 1]
    assert [h.value for h in at.header] == [HEADERS[step.page]], (number, step.page)
    bar = markdown(at)
    assert any(f"· step {number} of {len(tour.steps)}" in m for m in bar), number
    text, problems = tours.fill(step.text, tours.StepView(at.session_state[compute.CTX_KEY], tours.step_state(step)))
    assert text in bar and problems == [], (number, problems)
    assert step.look_at in chart_keys(at), (number, step.look_at, chart_keys(at))
    assert address(at) == {"tour": tour.name, "step": str(number)}  # the step's lesson link
    assert "does not exist here" not in warnings(at) and "was not used" not in warnings(at), warnings(at)


@pytest.mark.parametrize("name", list(tours.load_tours().tours))
def test_every_step_of_a_shipped_tour_opens_with_next_and_back(name: str) -> None:
    tour = tours.load_tours().tours[name]
    at = open_step(name, 1)
    check_step(at, tour, 1)
    assert at.button(key="tour_back").disabled
    for number in range(2, len(tour.steps) + 1):
        at.button(key="tour_next").click().run()
        check_step(at, tour, number)
    assert [b.key for b in at.button if b.key == "tour_next"] == []  # the last step: Finish instead
    at.button(key="tour_back").click().run()
    check_step(at, tour, len(tour.steps) - 1)


def test_a_step_opens_from_its_link_on_its_own_page() -> None:
    tour = tours.load_tours().tours["paper"]
    number = next(s.number for s in tour.steps if s.page == "features")
    check_step(open_step("paper", number), tour, number)


def test_a_students_change_then_next_and_back_give_the_tours_view_again() -> None:
    tour = tours.load_tours().tours["paper"]
    number = next(s.number for s in tour.steps if s.page == "attention")
    block = tours.step_state(tour.steps[number - 1])["att_block"]
    at = open_step("paper", number)
    at.slider(key="att_block").set_value(block + 2).run()
    assert at.session_state["att_block"] == block + 2
    assert address(at) == {"tour": "paper", "step": str(number)}  # the step's link, whatever changed
    at.button(key="tour_next").click().run()
    at.button(key="tour_back").click().run()
    check_step(at, tour, number)
    assert at.session_state["att_block"] == block
    at.slider(key="att_block").set_value(block + 1).run()
    at.button(key="tour_again").click().run()
    assert at.session_state["att_block"] == block


def test_leaving_the_tour_and_starting_it_from_the_sidebar() -> None:
    at = open_step("paper", 2)
    at.button(key="tour_leave").click().run()
    assert not at.exception and not any("· step" in m for m in markdown(at))
    assert "tour" not in address(at) and address(at)["t2t"]  # the page's own lesson link again
    at.button(key="tour_start_paper").click().run()
    check_step(at, tours.load_tours().tours["paper"], 1)


def test_unknown_tour_and_step_out_of_range_give_notices() -> None:
    at = open_step("nope", 1)
    assert "The link's tour `nope` does not exist here (tours: `paper`" in warnings(at)
    assert [h.value for h in at.header] == [HEADERS["tokens"]]
    tour = tours.load_tours().tours["paper"]
    at = open_step("paper", 99)
    assert f"The tour `paper` has steps 1 to {len(tour.steps)}: showing step {len(tour.steps)}." in warnings(at)
    assert any(f"step {len(tour.steps)} of {len(tour.steps)}" in m for m in markdown(at))


def test_a_malformed_tour_gives_its_message_in_the_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "mine", GOOD.replace("block = 2", 'block = "x"'))
    monkeypatch.setenv(tours.LESSONS_ENV, str(tmp_path))
    at = open_step("mine", 1)
    message = f"{tmp_path / 'mine.toml'}, step 2, field `params.block`"
    assert f"The link's tour `mine` could not be opened: {message}" in warnings(at)
    assert any(message in w.value for w in at.sidebar.warning)
    assert "tour_start_paper" in [b.key for b in at.sidebar.button]  # the shipped tour still loads


def test_a_step_value_the_models_cannot_show_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, "far", GOOD.replace("block = 2", "block = 500"))
    monkeypatch.setenv(tours.LESSONS_ENV, str(tmp_path))
    at = open_step("far", 2)
    last = at.session_state[compute.CTX_KEY].t2t.num_blocks - 1
    assert f"This tour step's `block` value `500` does not exist here: showing `{last}` instead." in warnings(at)
    assert any(f"Block {last}. Fine." in m for m in markdown(at))  # the text follows what the page shows


def test_the_address_keeps_models_and_image_that_are_not_the_defaults() -> None:
    at = open_step("paper", 1, img="photo", photo="cat")
    assert at.session_state[compute.CTX_KEY].image.key == images.sample_image("cat").key
    assert address(at) == {"tour": "paper", "step": "1", "img": "photo", "photo": "cat"}
    at.button(key="tour_next").click().run()
    assert at.session_state[compute.CTX_KEY].image.key == images.sample_image("cat").key
    assert address(at) == {"tour": "paper", "step": "2", "img": "photo", "photo": "cat"}
