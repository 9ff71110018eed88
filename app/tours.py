"""Guided tours: a lesson as an ordered list of steps, each a page, its view, a short text and the figure it is about.

A tour is a TOML file in `lessons/` (and in the folders named by $T2T_LENS_LESSONS): a `title`, an
optional `description` and tour-wide `params`, and `[[step]]` tables with `page` (a page's URL path),
`params` (that page's lesson-link parameters, TOML-typed, checked as a link's are: app/links.py),
`text` (Markdown with `{field}`s computed for the models and image in use: `FIELDS`), and optional
`title` and `look_at` (the key of the figure the step is about). lessons/README.md documents it.

Owns: reading and checking tour files (`load_tours`, `Tour`, `Step`, `TourError`: a malformed file is
refused with a message naming the file, the step and the field, and the other tours load), the fields
(`FIELDS`, `fill`, and `StepView`, a step's view clamped to the models in use as the pages clamp it),
entering a step (`go` and `open_from_url` put its view into the widgets' session state, `switch_to`
names its page), the bar above the page (`draw_bar`; `after_page` frames the figure and scrolls to it),
the sidebar's list (`sidebar_list`) and the step's address (`write_url`).

A step's view is every page's default view with the tour's and the step's parameters set: Back, Next
and a tour link always show the same view, whatever the student changed meanwhile. The models and
image stay as the student chose them unless the tour sets them; the texts' numbers follow them.

May import: app.links, app.widgets, app.access, app.compute, app.explanations, app.knockouts,
app.mechanisms, app.models, app.sandbox, streamlit, t2t, analysis.
"""

from __future__ import annotations

import functools
import importlib.metadata
import math
import os
import re
import string
import sys
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import streamlit as st

import t2t
from app import links, widgets
from app.compute import Context

if TYPE_CHECKING:  # only for annotations: the fields import these modules when they are computed
    from app.explanations import LrpMaps
    from app.sandbox import Stage, View

ROOT = Path(__file__).resolve().parents[1]
SHARED_LESSONS = Path("share", "t2t-lens", "lessons")  # where an installed package's tours are (pyproject.toml)
DISTRIBUTION = "t2t-lens"


def shipped_lessons() -> Path:
    """The folder of the shipped tours: lessons/ of the repository (a checkout, or an editable install); for a
    package installed from a wheel, the copy pip put in share/t2t-lens/lessons under its prefix (pyproject.toml's
    data-files), found through the distribution's own file list (so a --user or --prefix install finds its own),
    else under this Python's prefix."""
    if (ROOT / "lessons").is_dir() and (ROOT / "pyproject.toml").is_file():
        return ROOT / "lessons"
    try:
        files = importlib.metadata.distribution(DISTRIBUTION).files or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for file in files:
        if file.suffix == ".toml" and file.parent.parts[-len(SHARED_LESSONS.parts):] == SHARED_LESSONS.parts:
            return Path(file.locate()).resolve().parent
    return Path(sys.prefix) / SHARED_LESSONS


LESSONS = shipped_lessons()
LESSONS_ENV = "T2T_LENS_LESSONS"  # more folders of tours (os.pathsep between them), after lessons/
TOUR_SOURCES = ("embedded", "released", "random")  # weights a tour may name: never a file or an address
MAX_STEPS = 60
MAX_TEXT = 2000  # characters of a step's text: a bar above the page, not a chapter
NAME = re.compile(r"^[A-Za-z0-9_-]{1,60}$")  # tour names (file stems) and look_at keys: safe in URLs and CSS

TOP_FIELDS = {"title", "description", "params", "step"}
STEP_FIELDS = {"page", "params", "text", "title", "look_at"}


class TourError(ValueError):
    """A tour file that cannot be used; the message names the file, the step and the field."""

    def __init__(self, file: str, step: int | None, what: str | None, why: str):
        where = ", ".join([file] + ([f"step {step}"] if step else []) + ([f"field `{what}`"] if what else []))
        super().__init__(f"{where}: {why}")


@dataclass(frozen=True)
class Step:
    """One step: `page` (URL path), `params` (name -> the URL text a link would hold), `state` (session-state
    key -> (parameter, value)), `text` (Markdown with `{field}`s), `title`, `look_at` (a figure's key)."""

    number: int
    page: str
    params: dict[str, str]
    state: dict[str, tuple[str, Any]]
    text: str
    title: str = ""
    look_at: str | None = None


@dataclass(frozen=True)
class Tour:
    """A tour file: its name (the file's stem), title, description, where it lives, and its steps."""

    name: str
    title: str
    description: str
    path: Path
    steps: tuple[Step, ...]

    def step(self, number: int) -> Step:
        """Step `number` (1-based), clamped to the tour."""
        return self.steps[min(max(number, 1), len(self.steps)) - 1]


@dataclass(frozen=True)
class Tours:
    """What the lesson folders hold: the tours that load, by name, and why each other file was refused."""

    tours: dict[str, Tour]
    refused: dict[str, str]  # tour name -> message (file, step, field)

    @property
    def problems(self) -> list[str]:
        return list(self.refused.values())


# ----------------------------------------------------------------------------------------------
# Reading and checking tour files
# ----------------------------------------------------------------------------------------------


def lesson_dirs() -> list[Path]:
    """lessons/ and the folders of $T2T_LENS_LESSONS, in that order (a name found twice: the first wins)."""
    extra = [Path(p).expanduser() for p in os.environ.get(LESSONS_ENV, "").split(os.pathsep) if p.strip()]
    return [LESSONS, *extra]


def shown_path(path: Path) -> str:
    """A tour file as messages name it: relative to the repository when it is inside, else in full."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def load_tours(dirs: Sequence[Path] | None = None) -> Tours:
    """Every tour of the lesson folders, read again only when a file changed (its size or time)."""
    files: list[tuple[str, int, int]] = []
    for folder in dirs if dirs is not None else lesson_dirs():
        for path in sorted(Path(folder).glob("*.toml")) if Path(folder).is_dir() else []:
            stat = path.stat()
            files.append((str(path), stat.st_mtime_ns, stat.st_size))
    return _load(tuple(files))


@functools.lru_cache(maxsize=16)
def _load(files: tuple[tuple[str, int, int], ...]) -> Tours:
    tours: dict[str, Tour] = {}
    refused: dict[str, str] = {}
    for name, _, _ in files:
        path = Path(name)
        if path.stem in tours or path.stem in refused:
            refused.setdefault(f"{path.stem} ({shown_path(path)})",
                               str(TourError(shown_path(path), None, None, f"a tour named `{path.stem}` was found "
                                             "first in another lesson folder; this file is not used")))
            continue
        try:
            tours[path.stem] = read_tour(path)
        except TourError as err:
            refused[path.stem] = str(err)
    return Tours(tours, refused)


def read_tour(path: Path) -> Tour:
    """A tour file, checked field by field; raises TourError naming the file, the step and the field."""
    file = shown_path(path)
    if not NAME.match(path.stem):
        raise TourError(file, None, None, "a tour's file name may hold only letters, digits, '_' and '-'")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as err:
        raise TourError(file, None, None, f"not a TOML file that can be read ({err})") from None
    unknown = sorted(set(data) - TOP_FIELDS)
    if unknown:
        raise TourError(file, None, unknown[0], f"unknown field (a tour has {', '.join(sorted(TOP_FIELDS))})")
    title = _text(data, "title", file, None, required=True)
    description = _text(data, "description", file, None)
    tour_params = data.get("params", {})
    if not isinstance(tour_params, dict):
        raise TourError(file, None, "params", "not a table of lesson-link parameters")
    shared = _params(tour_params, None, file, None)
    steps = data.get("step")
    if steps is None:
        raise TourError(file, None, "step", "missing: a tour is a list of [[step]] tables")
    if not isinstance(steps, list) or not all(isinstance(s, dict) for s in steps) or not steps:
        raise TourError(file, None, "step", "not a list of [[step]] tables")
    if len(steps) > MAX_STEPS:
        raise TourError(file, None, "step", f"{len(steps)} steps, more than {MAX_STEPS}")
    return Tour(path.stem, title, description, path, tuple(_step(s, i + 1, shared, file) for i, s in enumerate(steps)))


def _text(table: dict, name: str, file: str, step: int | None, required: bool = False) -> str:
    value = table.get(name)
    if value is None:
        if required:
            raise TourError(file, step, name, "missing")
        return ""
    if not isinstance(value, str):
        raise TourError(file, step, name, f"not text (a {type(value).__name__})")
    if required and not value.strip():
        raise TourError(file, step, name, "empty")
    return value.strip()


def _step(table: dict, number: int, shared: tuple[dict, dict], file: str) -> Step:
    unknown = sorted(set(table) - STEP_FIELDS)
    if unknown:
        raise TourError(file, number, unknown[0], f"unknown field (a step has {', '.join(sorted(STEP_FIELDS))})")
    page = _text(table, "page", file, number, required=True)
    if page not in links.PAGE_PARAMS:
        raise TourError(file, number, "page", f"`{page[:40]}` is not a page (pages: {', '.join(links.PAGE_PARAMS)})")
    params = table.get("params", {})
    if not isinstance(params, dict):
        raise TourError(file, number, "params", "not a table of lesson-link parameters")
    texts, state = _params({**_as_toml(shared[0]), **params}, page, file, number)
    text = _text(table, "text", file, number, required=True)
    if len(text) > MAX_TEXT:
        raise TourError(file, number, "text", f"{len(text)} characters, more than {MAX_TEXT}")
    try:
        used_fields(text)
    except ValueError as err:
        raise TourError(file, number, "text", str(err)) from None
    look_at = table.get("look_at")
    if look_at is not None and (not isinstance(look_at, str) or not NAME.match(look_at)):
        raise TourError(file, number, "look_at", "not a figure's key (letters, digits, '_' and '-')")
    return Step(number, page, texts, state, text, _text(table, "title", file, number), look_at)


def _as_toml(texts: dict[str, str]) -> dict[str, object]:
    """The tour-wide parameters again as TOML values are read (their URL text parses back as itself)."""
    return {k: _Checked(v) for k, v in texts.items()}


@dataclass(frozen=True)
class _Checked:
    """A value already checked as URL text (a tour-wide parameter repeated into each step)."""

    text: str


def _params(params: dict, page: str | None, file: str,
            step: int | None) -> tuple[dict[str, str], dict[str, tuple[str, Any]]]:
    """Check a table of lesson-link parameters of `page` (None: the common ones only); returns their URL
    texts and the session state they set (key -> (parameter, value))."""
    allowed = {name: (key, kind) for name, key, kind in links.COMMON_PARAMS + links.PAGE_PARAMS.get(page or "", ())}
    texts: dict[str, str] = {}
    for name, value in params.items():
        where = f"params.{name}"
        if name not in allowed:
            names = ", ".join(allowed)
            raise TourError(file, step, where, f"not a parameter of {'page `' + page + '`' if page else 'every page'} "
                            f"(parameters: {names})")
        try:
            texts[name] = value.text if isinstance(value, _Checked) else _as_text(name, allowed[name][1], value)
        except links.LinkError as err:
            raise TourError(file, step, where, str(err)) from None
    state: dict[str, tuple[str, Any]] = {}
    for name, text in texts.items():
        key, kind = allowed[name]
        try:
            value = links.decode_param(name, kind, text, texts)
        except (links.LinkError, ValueError, KeyError, IndexError) as err:
            raise TourError(file, step, f"params.{name}", f"{text[:40]!r} cannot be used: {err}") from None
        pairs = zip(key, value, strict=True) if isinstance(key, tuple) else [(key, value)]
        for k, v in pairs:
            state[k] = (name, v)
    return texts, state


def _as_text(name: str, kind: str, value: object) -> str:
    """A TOML value as the URL text of a parameter of `kind`; raises LinkError when its type is wrong."""
    def whole(v: object) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if kind == "int" and whole(value):
        return str(value)
    if kind == "float" and (whole(value) or isinstance(value, float)):
        return repr(float(value))  # type: ignore[arg-type]
    if kind == "bool" and isinstance(value, bool):
        return "1" if value else "0"
    if kind == "head" and (whole(value) or value == "mean"):
        return str(value)
    if kind == "list" and isinstance(value, list) and all(isinstance(v, str) for v in value):
        if any("," in v for v in value):
            raise links.LinkError("an entry holds a comma")
        return ",".join(value)
    if kind == "pair" and isinstance(value, list) and len(value) == 2 and all(whole(v) for v in value):
        return f"{value[0]},{value[1]}"
    if kind == "source" and isinstance(value, str):
        if value not in ("shape", "photo"):
            raise links.LinkError("not `shape` or `photo` (a tour cannot bring an upload or a camera's photo)")
        return value
    if kind in ("str", "shape") and isinstance(value, str):
        if name in ("t2t_w", "vit_w") and value not in TOUR_SOURCES:
            raise links.LinkError(f"not one of {', '.join(TOUR_SOURCES)} (a tour never names a file or an address)")
        return value
    expected = {"int": "a whole number", "float": "a number", "bool": "true or false",
                "head": 'a whole number or "mean"', "list": "a list of strings",
                "pair": "two whole numbers, [row, column]"}.get(kind, "a string")
    raise links.LinkError(f"not {expected} (got {type(value).__name__} {str(value)[:40]!r})")


# ----------------------------------------------------------------------------------------------
# A step's view on the models in use, and the fields a text may name
# ----------------------------------------------------------------------------------------------


class StepView:
    """A step's view on a `Context`: its parameters, clamped to the models in use as each page clamps
    them (a block past the last, a head the model does not have...), and the traces it reads.

    `state` maps session-state keys to values (a step's, or the session's); missing ones take the
    pages' defaults."""

    def __init__(self, ctx: Context, state: dict[str, Any]):
        self.ctx = ctx
        self.state = state

    @functools.cached_property
    def tr(self) -> t2t.Trace:
        return self.ctx.trace(self.ctx.t2t)

    @functools.cached_property
    def vtr(self) -> t2t.Trace:
        return self.ctx.trace(self.ctx.vit)

    def role(self, which: str):
        """The model of the pair: "t2t" or "vit"."""
        return self.ctx.t2t if which == "t2t" else self.ctx.vit

    # ---- page 1: the chosen token on the grid of soft split 0
    @property
    def token(self) -> tuple[int, int]:
        g0 = self.tr.grid("t2t.split0")
        return tuple(min(int(self.state.get(k, n // 2)), n - 1)  # type: ignore[return-value]
                     for k, n in (("tok_row", g0[0]), ("tok_col", g0[1])))

    # ---- page 2: model, block, head, query
    @property
    def att_model(self):
        roles = {lm.role: lm for lm in self.ctx.models}
        return roles.get(self.state.get("att_model"), self.ctx.t2t)

    @property
    def att_block(self) -> int:
        return min(max(0, int(self.state.get("att_block", 0))), self.att_model.num_blocks - 1)

    @property
    def att_head(self) -> int | str:
        head = self.state.get("att_head", "mean")
        return head if head in range(self.att_model.num_heads) else "mean"

    @property
    def att_query(self) -> int:
        """The query token's index (0: the class token), as the attention page computes it."""
        if self.state.get("att_cls"):
            return 0
        grid = self.ctx.trace(self.att_model).grid("blocks.0")
        row, col = (min(int(self.state.get(k, n // 2)), n - 1) for k, n in (("att_row", grid[0]),
                                                                             ("att_col", grid[1])))
        return 1 + row * grid[1] + col

    # ---- page 3: rollout's discard rule and ratio
    @property
    def rollout_rule(self) -> tuple[str, float]:
        from inspect import signature

        from analysis.rollout import DISCARD_RULES, cls_rollout

        rule = self.state.get("exp_rule", signature(cls_rollout).parameters["discard"].default)
        return (rule if rule in DISCARD_RULES else DISCARD_RULES[-1]), float(self.state.get("exp_discard", 0.9))

    # ---- page 4: threshold and blocks
    @property
    def threshold(self) -> float:
        return min(0.5, max(0.02, float(self.state.get("fr_threshold", 0.1))))

    def feature_block(self, which: str) -> int:
        lm = self.role(which)
        return min(max(0, int(self.state.get(f"fr_block_{lm.role}", 0))), lm.num_blocks - 1)

    # ---- page 6: knocked-out heads and T2T attention
    def knocked_heads(self, which: str) -> list[tuple[int, int]]:
        lm = self.role(which)
        valid = {f"{b}.{h}" for b in range(lm.num_blocks) for h in range(lm.num_heads)}
        chosen = dict.fromkeys(v for v in self.state.get(f"ko_heads_{lm.role}") or [] if v in valid)
        return [tuple(int(x) for x in v.split(".")) for v in chosen]  # type: ignore[misc]

    @property
    def t2t_off(self) -> tuple[int, ...]:
        return tuple(i for i in (1, 2) if self.state.get(f"ko_attn{i}"))

    @property
    def knock_mode(self) -> str:
        return self.state.get("ko_mode") if self.state.get("ko_mode") in ("zero", "mean") else "zero"

    # ---- page 8: the second image of the patching pair, the chosen cell of the DLA grids
    @functools.cached_property
    def decision(self) -> dict[str, Any]:
        """The Inside-the-decision page's view, clamped as the page clamps it (`mechanisms.clean_view`)."""
        from app import mechanisms

        return mechanisms.clean_view(self.ctx.image, {lm.role: (lm.num_blocks, lm.num_heads) for lm in self.ctx.models},
                                     self.state, top={lm.role: mechanisms.strongest_head(mechanisms.attribution(
                                         self.ctx, lm)) for lm in self.ctx.models})

    @functools.cached_property
    def second(self):
        """The second image of the step's patching pair (`mechanisms.Second`; a tour brings no upload)."""
        from app import mechanisms

        return mechanisms.second_of_view(self.ctx.image, self.decision)


@dataclass(frozen=True)
class Field:
    """A value a step's text may name as `{name}` (or `{name:spec}`, a Python format spec)."""

    doc: str
    kind: type  # int, float or str: what `spec`s must format
    spec: str  # the format used when the text gives none
    compute: Callable[[StepView], Any] = field(repr=False)


def _cells(grid: tuple[int, int]) -> int:
    return int(grid[0]) * int(grid[1])


def _side(box: tuple[int, int, int, int]) -> int:
    return int(box[2] - box[0])


def _split(v: StepView, level: int):
    return getattr(v.ctx.t2t.model.tokens_to_token, f"soft_split{level}")


STAGES = {0: "t2t.split0", 1: "t2t.split1", 2: "t2t.project"}  # the stage whose tokens each soft split makes


def _centre_field(v: StepView, level: int) -> tuple[int, int, int, int]:
    """The pixels a token in the middle of soft split `level`'s grid is made of (no border clipping)."""
    stage = STAGES[level]
    grid = v.tr.grid(stage)
    return t2t.receptive_field(v.ctx.t2t.model, stage, (grid[0] // 2, grid[1] // 2), tuple(v.tr.image_size))


def _overlap(v: StepView, level: int) -> int:
    """Pixels two horizontally adjacent tokens of soft split `level` share, in the middle of the image (the
    Tokens-to-Token page's number)."""
    stage = STAGES[level]
    grid = v.tr.grid(stage)
    size = tuple(v.tr.image_size)
    a = t2t.receptive_field(v.ctx.t2t.model, stage, (grid[0] // 2, grid[1] // 2), size)
    b = t2t.receptive_field(v.ctx.t2t.model, stage, (grid[0] // 2, grid[1] // 2 + 1), size)
    return max(0, int(a[3] - b[1]))


def _top1(v: StepView, which: str) -> tuple[str, float]:
    from app.compute import probabilities

    lm = v.role(which)
    probs = probabilities(v.ctx.trace(lm))
    k = int(np.argmax(probs))
    return lm.class_names[k], float(probs[k])


def _attention(v: StepView) -> dict[str, float]:
    """Mean attention distance (px), entropy (nats), even-spread distance and the query's share on the
    class token, for the step's model, block and head (the Attention explorer's numbers)."""
    from app.compute import attention_profile, even_spread_distance, query_attention

    lm, block, head = v.att_model, v.att_block, v.att_head
    prof = attention_profile(v.ctx, lm)
    _, on_cls = query_attention(v.ctx, lm, v.att_query)
    pick = (lambda a: a[block].mean()) if head == "mean" else (lambda a: a[block, head])
    return {"distance": float(pick(prof["distance"])), "entropy": float(pick(prof["entropy"])),
            "even": float(even_spread_distance(v.ctx, lm)), "cls": float(pick(on_cls))}


def _rollout_share(v: StepView, which: str, share: float = 0.1) -> float:
    """The share of a rollout map's total held by its top `share` of tokens (how concentrated it is)."""
    from app.explanations import rollout_with

    rule, ratio = v.rollout_rule
    heat = rollout_with(v.ctx, v.role(which), rule, ratio).flatten().double()
    k = max(1, int(round(heat.numel() * share)))
    return float(heat.topk(k).values.sum() / heat.sum().clamp_min(1e-12))


def _invalid(v: StepView, which: str) -> tuple[int, int]:
    from app.compute import block_channels

    _, invalid = block_channels(v.ctx, v.role(which), v.feature_block(which), v.threshold)
    return int(invalid.sum()), int(invalid.size)


def _invalid_all(v: StepView, which: str) -> float:
    from app.compute import block_metrics

    return float(block_metrics(v.ctx, v.role(which), v.threshold, ("invalid_fraction",))["invalid_fraction"].mean())


def _knockout(v: StepView, which: str) -> dict[str, Any]:
    """The intact model's top class, its probability before and after the step's knock-outs, and the top
    class after (the Knock-outs page's sentence)."""
    from app.knockouts import knocked_run

    lm = v.role(which)
    heads = v.knocked_heads(which)
    off = v.t2t_off if which == "t2t" else ()
    base = knocked_run(v.ctx, lm).probs
    run = knocked_run(v.ctx, lm, heads, off, v.knock_mode).probs
    was, now = int(np.argmax(base)), int(np.argmax(run))
    return {"heads": len(heads), "class": lm.class_names[was], "before": float(base[was]),
            "after": float(run[was]), "top": lm.class_names[now]}


def _fields() -> dict[str, Field]:
    f: dict[str, Field] = {}

    def add(name: str, doc: str, kind: type, compute: Callable[[StepView], Any], spec: str = "") -> None:
        f[name] = Field(doc, kind, spec or {int: "d", float: ".3g", str: ""}[kind], compute)

    for which, role in (("t2t", "T2T-ViT"), ("vit", "ViT")):
        add(f"{which}.name", f"the {role} model's registry name", str, lambda v, w=which: v.role(w).name)
        add(f"{which}.blocks", f"blocks of {role}'s backbone", int, lambda v, w=which: v.role(w).num_blocks)
        add(f"{which}.heads", f"heads per block of {role}", int, lambda v, w=which: v.role(w).num_heads)
        add(f"{which}.width", f"numbers per token in {role}'s backbone (embedding width)", int,
            lambda v, w=which: int((v.tr if w == "t2t" else v.vtr)["blocks.0"].shape[-1]))
        add(f"{which}.top1", f"{role}'s predicted class on the image", str, lambda v, w=which: _top1(v, w)[0])
        add(f"{which}.top1_p", f"{role}'s probability of its predicted class", float,
            lambda v, w=which: _top1(v, w)[1], ".1%")
    add("image", "the image in use, as the sidebar names it", str, lambda v: v.ctx.image.label)
    add("image.side", "side of T2T-ViT's input in pixels", int, lambda v: int(v.tr.image_size[0]))

    for level in (0, 1, 2):
        stage = f"t2t.split{level}"
        add(f"tokens.split{level}", f"tokens after soft split {level} (trace grid)", int,
            lambda v, s=stage: _cells(v.tr.grid(s)))
        add(f"grid.split{level}", f"token grid of soft split {level}, e.g. 56×56", str,
            lambda v, s=stage: "{}×{}".format(*v.tr.grid(s)))
        add(f"split{level}.kernel", f"window side of soft split {level} (tokens or pixels)", int,
            lambda v, i=level: int(_split(v, i).kernel))
        add(f"split{level}.stride", f"stride of soft split {level}", int,
            lambda v, i=level: int(_split(v, i).stride))
        add(f"split{level}.padding", f"padding of soft split {level}", int,
            lambda v, i=level: int(_split(v, i).padding))
        add(f"split{level}.numbers", f"numbers per token after soft split {level} (trace shape)", int,
            lambda v, s=stage: int(v.tr.shape(s)[2]))
        add(f"split{level}.field", f"pixels across the window a middle token of soft split {level} is made of "
            "(t2t.receptive_field)", int, lambda v, i=level: _side(_centre_field(v, i)))
        add(f"split{level}.overlap", f"pixels two neighbouring tokens of soft split {level} share", int,
            lambda v, i=level: _overlap(v, i))
    add("tokens.vit", "ViT's patch tokens (trace grid)", int, lambda v: _cells(v.vtr.grid("patch_embed")))
    add("grid.vit", "ViT's patch grid, e.g. 14×14", str, lambda v: "{}×{}".format(*v.vtr.grid("patch_embed")))
    add("tokens.ratio1", "how many times fewer tokens soft split 1 leaves than soft split 0", int,
        lambda v: round(_cells(v.tr.grid("t2t.split0")) / _cells(v.tr.grid("t2t.split1"))))
    add("tokens.ratio2", "how many times fewer tokens soft split 2 leaves than soft split 1", int,
        lambda v: round(_cells(v.tr.grid("t2t.split1")) / _cells(v.tr.grid("t2t.split2"))))
    add("vit.patch", "side of ViT's patches in pixels", int, lambda v: int(v.ctx.vit.model.patch_embed.patch_size))
    add("vit.numbers", "pixel values in one ViT patch (3 colours × side²)", int,
        lambda v: int(v.ctx.vit.model.patch_embed.proj.weight[0].numel()))

    for level in (1, 2):
        add(f"attn{level}.top_share", f"median over queries of the weight T2T attention {level} puts on its top 1% "
            "of tokens", float, lambda v, i=level: _concentration(v, i)["median_row"], ".1%")
        add(f"attn{level}.top_tokens", f"how many tokens that top 1% of T2T attention {level} is", int,
            lambda v, i=level: int(_concentration(v, i)["top"]))
        add(f"attn{level}.numbers", f"numbers per token out of T2T attention {level} (trace shape)", int,
            lambda v, i=level: int(v.tr.shape(f"t2t.attn{i}")[2]))

    add("attention.model", "the model the step's attention view shows (T2T-ViT or ViT)", str,
        lambda v: v.att_model.role)
    add("attention.block", "the step's block", int, lambda v: v.att_block)
    add("attention.head", "the step's head: 'head 1' or 'the mean of the heads'", str,
        lambda v: "the mean of the heads" if v.att_head == "mean" else f"head {v.att_head}")
    add("attention.query", "the step's query: 'the class token' or 'token (row, column)'", str, _query_name)
    add("attention.distance", "mean attention distance of that block and head, in pixels", float,
        lambda v: _attention(v)["distance"], ".0f")
    add("attention.entropy", "attention entropy of that block and head, in nats", float,
        lambda v: _attention(v)["entropy"], ".2f")
    add("attention.even", "the mean distance of a head spreading its attention evenly, in pixels", float,
        lambda v: _attention(v)["even"], ".0f")
    add("attention.cls_share", "the share of the query's attention on the class token", float,
        lambda v: _attention(v)["cls"], ".1%")
    add("attention.kind", "'looks locally' (mean distance under half the even spread's) or 'looks across the "
        "image'", str, lambda v: "looks locally" if _attention(v)["distance"] < _attention(v)["even"] / 2
        else "looks across the image")

    for which, role in (("t2t", "T2T-ViT"), ("vit", "ViT")):
        add(f"rollout.{which}.top_share", f"share of {role}'s attention rollout held by its top 10% of tokens "
            "(the step's discard rule)", float, lambda v, w=which: _rollout_share(v, w), ".0%")
        add(f"features.{which}_block", f"the block of {role} the channel grid shows", int,
            lambda v, w=which: v.feature_block(w))
        add(f"invalid.{which}", f"invalid channels of {role} in that block (analysis.redundancy)", int,
            lambda v, w=which: _invalid(v, w)[0])
        add(f"channels.{which}", f"channels of {role} in that block", int, lambda v, w=which: _invalid(v, w)[1])
        add(f"invalid.{which}_all", f"{role}'s invalid channels over all blocks (mean share)", float,
            lambda v, w=which: _invalid_all(v, w), ".0%")
        add(f"knockout.{which}.heads", f"heads of {role} the step knocks out", int,
            lambda v, w=which: _knockout(v, w)["heads"])
        add(f"knockout.{which}.class", f"{role}'s top class with nothing knocked out", str,
            lambda v, w=which: _knockout(v, w)["class"])
        add(f"knockout.{which}.before", "its probability with nothing knocked out", float,
            lambda v, w=which: _knockout(v, w)["before"], ".1%")
        add(f"knockout.{which}.after", "the same class's probability with the step's parts knocked out", float,
            lambda v, w=which: _knockout(v, w)["after"], ".1%")
        add(f"knockout.{which}.top", f"{role}'s top class with the step's parts knocked out", str,
            lambda v, w=which: _knockout(v, w)["top"])
        add(f"knockout.{which}.verdict", f"whether {role}'s answer changes: 'it is still {role}'s top class' or "
            f"'{role} now answers **CLASS**'", str, lambda v, w=which, r=role: _knock_verdict(v, w, r))
    add("features.threshold", "the invalid-channel threshold (× the block's typical spread)", float,
        lambda v: v.threshold, "g")
    _decision_fields(add)
    _lrp_fields(add)
    _sandbox_fields(add)
    add("invalid.verdict", "the Feature richness page's verdict on the paper's claim (fewer invalid channels in "
        "T2T-ViT), over all blocks", str, _invalid_verdict)
    return f


def _decision_fields(add: Callable[..., None]) -> None:
    """The Inside-the-decision page's numbers (app/mechanisms.py): the logit lens, direct logit attribution and
    the heads' activation patching of the step's pair."""
    from app import mechanisms as m

    for which, role in (("t2t", "T2T-ViT"), ("vit", "ViT")):
        lens = (lambda v, w=which: m.lens(v.ctx, v.role(w)))
        dla = (lambda v, w=which: m.attribution(v.ctx, v.role(w)))
        add(f"lens.{which}.class", f"{role}'s answer (its top class at the end)", str,
            lambda v, w=which, f=lens: v.role(w).class_names[f(v).target])
        add(f"lens.{which}.settles", f"from where {role}'s answer is the lens's top class to the end: 'the embedding' "
            "or 'block K'", str, lambda v, f=lens: m.depth_name(f(v).stay))
        add(f"lens.{which}.settles_share", "that depth as a share of the model's blocks (the chart's x)", float,
            lambda v, f=lens: f(v).stay / f(v).blocks, ".0%")
        add(f"lens.{which}.start_rank", f"the rank of {role}'s answer read after the embedding (1: the top class)",
            int, lambda v, f=lens: int(f(v).ranks[0]))
        add(f"lens.{which}.final_p", f"the probability of {role}'s answer at the end", float,
            lambda v, f=lens: float(f(v).probs[-1]), ".1%")
        add(f"dla.{which}.logit", f"{role}'s logit of its answer (class token head)", float,
            lambda v, f=dla: f(v).logit, ".2f")
        add(f"dla.{which}.sigma", f"the final LayerNorm's sigma of {role} on this image, held fixed", float,
            lambda v, f=dla: f(v).sigma, ".3f")
        add(f"dla.{which}.heads", f"what {role}'s heads write into that logit together", float,
            lambda v, f=dla: float(f(v).heads.sum()), "+.2f")
        add(f"dla.{which}.mlps", f"what {role}'s MLPs write into it together", float,
            lambda v, f=dla: float(f(v).mlps.sum()), "+.2f")
        add(f"dla.{which}.top_head", f"{role}'s head with the largest |DLA|: 'block B, head H'", str,
            lambda v, f=dla: "block {}, head {}".format(*m.strongest_head(f(v))))
        add(f"dla.{which}.top_value", "what that head writes", float,
            lambda v, f=dla: float(f(v).heads[m.strongest_head(f(v))]), "+.2f")
        add(f"dla.{which}.top_share", f"the share of the heads' total |DLA| held by {role}'s top 10% of heads", float,
            lambda v, f=dla: m.top_share(f(v), m.TOP_FRACTION)[0], ".0%")
        add(f"dla.{which}.top_count", "how many heads that top 10% is", int,
            lambda v, f=dla: m.top_share(f(v), m.TOP_FRACTION)[1])
        add(f"dla.{which}.count", f"{role}'s heads in all", int, lambda v, f=dla: int(f(v).heads.size))
        add(f"patch.{which}.baseline", f"the class whose logit {role}'s patching metric subtracts (the second image's "
            "top class, or the image's runner-up when both agree)", str,
            lambda v, w=which: v.role(w).class_names[_patch_heads(v, w).baseline])
        add(f"patch.{which}.best", f"the largest share of the difference one head of {role} brings back", float,
            lambda v, w=which: float(np.nanmax(_patch_heads(v, w).recovered)), ".0%")
        add(f"patch.{which}.best_head", "that head: 'block B, head H'", str,
            lambda v, w=which: "block {}, head {}".format(*np.unravel_index(
                int(np.nanargmax(_patch_heads(v, w).recovered)), _patch_heads(v, w).recovered.shape)))
        add(f"patch.{which}.many", f"how many of {role}'s heads bring back `patch.threshold` or more", int,
            lambda v, w=which: int((_patch_heads(v, w).recovered >= m.HEAD_RECOVERS).sum()))
        add(f"patch.{which}.count", f"{role}'s heads in all", int,
            lambda v, w=which: int(_patch_heads(v, w).recovered.size))
    add("patch.second", "the second image of the step's pair, as the page names it", str, lambda v: v.second.label)
    add("patch.threshold", "the share from which a head counts as bringing the difference back", float,
        lambda v: m.HEAD_RECOVERS, ".0%")


def _lrp(v: StepView, which: str) -> LrpMaps:
    """The Explanations page's AttnLRP / CP-LRP relevance (`explanations.lrp_maps`, the page's cache entry) of the
    step's LRP method (`_lrp_method`) for the model's predicted class (the class the page explains by default;
    a tour cannot choose another)."""
    from app.compute import probabilities
    from app.explanations import lrp_maps

    lm = v.role(which)
    return lrp_maps(v.ctx, lm, _lrp_method(v), int(np.argmax(probabilities(v.ctx.trace(lm)))))


def _lrp_method(v: StepView) -> str:
    """The first of AttnLRP / CP-LRP among the step's methods (the page's order); AttnLRP when it shows neither."""
    from app.explanations import LRP_METHODS

    return next((m for m in v.state.get("exp_methods") or [] if m in LRP_METHODS), LRP_METHODS[0])


def _lrp_gamma(v: StepView) -> float:
    gamma = _lrp(v, "t2t").gamma
    if gamma is None:
        raise ValueError("the linear layers use the plain gradient here, not the Gamma rule")
    return float(gamma)


def _lrp_fields(add: Callable[..., None]) -> None:
    """The Explanations page's AttnLRP / CP-LRP numbers: how much of the explained logit reaches the pixels."""
    add("lrp.method", "the step's LRP method as the page names it: 'AttnLRP' or 'CP-LRP' (the first of the two among "
        "the step's methods; AttnLRP when it shows neither)", str,
        lambda v: {"attnlrp": "AttnLRP", "cp_lrp": "CP-LRP"}[_lrp_method(v)])
    add("lrp.gamma", "the gamma of the Gamma rule its linear layers use", float, _lrp_gamma, "g")
    for which, role in (("t2t", "T2T-ViT"), ("vit", "ViT")):
        add(f"lrp.{which}.class", f"the class {role}'s map explains (its prediction)", str,
            lambda v, w=which: v.role(w).class_names[_lrp(v, w).target])
        add(f"lrp.{which}.logit", f"{role}'s logit of that class, which the method explains", float,
            lambda v, w=which: _lrp(v, w).logit, ".2f")
        add(f"lrp.{which}.total", f"the sum of {role}'s relevance at the pixels", float,
            lambda v, w=which: _lrp(v, w).total, ".2f")
        add(f"lrp.{which}.rest", f"what of {role}'s logit does not reach the pixels (logit − pixels' sum)", float,
            lambda v, w=which: _lrp(v, w).logit - _lrp(v, w).total, ".2f")
        add(f"lrp.{which}.conservation", f"the pixels' share of {role}'s logit (the page's conservation)", float,
            lambda v, w=which: _lrp(v, w).conservation, ".1%")


def _sandbox(v: StepView) -> View:
    """The soft-split sandbox's view of the step (`sandbox.page_view`: its parameters, the page's defaults for the
    others, clamped as the page clamps them), on the models in use."""
    from app import sandbox

    return sandbox.page_view(v.state, v.ctx.t2t, v.ctx.vit)


def _sandbox_stage(v: StepView, index: int, paper: bool = False) -> Stage:
    """Soft split `index` of the step's configuration (or of the paper's at the same image size); raises with
    the page's message when a split before it gives no token."""
    box = _sandbox(v).paper if paper else _sandbox(v).box
    if index >= len(box.stages):
        raise ValueError(" ".join(p.text for p in box.problems if p.level == "error"))
    return box.stages[index]


def _sandbox_attention(v: StepView, layer: int, paper: bool = False) -> int:
    from app.sandbox import attention_cost

    return attention_cost(_sandbox_stage(v, layer - 1, paper))


def _sandbox_fields(add: Callable[..., None]) -> None:
    """The soft-split sandbox's numbers for the step's configuration (app/sandbox.py), and the paper's splits at the
    same image size."""
    view = _sandbox  # the page's view of the step
    add("sandbox.model", "the T2T-ViT the sandbox builds (the sidebar's)", str, lambda v: view(v).name)
    add("sandbox.size", "the sandbox's image side in pixels", int, lambda v: view(v).box.img_size)
    for i in (0, 1, 2):
        for j, what in enumerate(("kernel", "stride", "padding")):
            add(f"sandbox.split{i}.{what}", f"the {what} of the step's soft split {i}", int,
                lambda v, i=i, j=j: view(v).box.splits[i][j])
            add(f"sandbox.paper.split{i}.{what}", f"the {what} of the paper's soft split {i}", int,
                lambda v, i=i, j=j: view(v).paper.splits[i][j])
        add(f"sandbox.split{i}.tokens", f"tokens after the step's soft split {i}", int,
            lambda v, i=i: _sandbox_stage(v, i).tokens, ",")
        add(f"sandbox.paper.split{i}.tokens", f"tokens after the paper's soft split {i} at the same image side", int,
            lambda v, i=i: _sandbox_stage(v, i, paper=True).tokens, ",")
        add(f"sandbox.split{i}.grid", f"token grid of the step's soft split {i}, e.g. 111×111", str,
            lambda v, i=i: "{0}×{0}".format(_sandbox_stage(v, i).grid))
        add(f"sandbox.split{i}.field", f"pixels across the window a middle token of the step's soft split {i} is "
            "made of", int, lambda v, i=i: _sandbox_stage(v, i).field)
        add(f"sandbox.split{i}.overlap", f"pixels two neighbouring windows of the step's soft split {i} share "
            "(negative: a gap)", int, lambda v, i=i: _sandbox_stage(v, i).overlap)
    add("sandbox.vit.tokens", "ViT's hard patches on an image of the sandbox's side", int,
        lambda v: view(v).vit_grid ** 2, ",")
    for layer in (1, 2):
        add(f"sandbox.attn{layer}.cost", f"multiply-adds of T2T attention {layer}'s scores in the step's configuration "
            "(tokens² × width, the page's cost)", int, lambda v, n=layer: _sandbox_attention(v, n), ",")
        add(f"sandbox.attn{layer}.ratio", f"that cost as a multiple of the paper's (T2T attention {layer})", float,
            lambda v, n=layer: _sandbox_attention(v, n) / _sandbox_attention(v, n, paper=True), ".3g")
    add("sandbox.params", "parameters of the sandbox's model with the step's configuration", int,
        lambda v: view(v).cost[0], ",")
    add("sandbox.paper.params", "parameters of the same model with the paper's splits at the same image side", int,
        lambda v: view(v).paper_cost[0], ",")
    add("sandbox.gmacs", "GMACs of one image through the sandbox's model with the step's configuration", float,
        lambda v: view(v).cost[1] / 1e9, ".3f")
    add("sandbox.paper.gmacs", "GMACs of the same model with the paper's splits at the same image side", float,
        lambda v: view(v).paper_cost[1] / 1e9, ".3f")
    add("sandbox.gmacs_ratio", "the step's GMACs as a multiple of the paper's", float,
        lambda v: view(v).cost[1] / view(v).paper_cost[1], ".3g")


def _patch_heads(v: StepView, which: str):
    """The heads' activation patching of the step's pair (the `QUICK` queue's job, waited for: a worker's job in a
    server); refused when the two images give the same metric (nothing to bring back)."""
    from app import mechanisms

    pending = mechanisms.heads_patching(v.ctx, v.role(which), v.second)
    result = pending.value if pending.ready else pending.job.future.result()
    if result.nothing_to_recover:
        raise ValueError("the two images give the same metric: there is nothing to bring back")
    return result


def _knock_verdict(v: StepView, which: str, role: str) -> str:
    out = _knockout(v, which)
    return f"it is still {role}'s top class" if out["top"] == out["class"] else f"{role} now answers **{out['top']}**"


def _invalid_verdict(v: StepView) -> str:
    """As the Feature richness page words it, from the mean invalid share over blocks of each model."""
    t, w = _invalid_all(v, "t2t"), _invalid_all(v, "vit")
    if t < w:
        return "as the paper reports, T2T-ViT has the fewer invalid channels here"
    if t == 0 and w == 0:
        return "the paper's claim is not visible with these models: neither has any invalid channel at this threshold"
    return "the paper's claim is not visible with these models: ViT does not have more invalid channels than T2T-ViT"


def _concentration(v: StepView, level: int) -> dict[str, float]:
    from app.explanations import t2t_concentration

    return t2t_concentration(v.ctx, v.ctx.t2t, f"t2t.attn{level}_map")


def _query_name(v: StepView) -> str:
    query = v.att_query
    if query == 0:
        return "the class token"
    grid = v.ctx.trace(v.att_model).grid("blocks.0")
    return "token ({}, {})".format(*divmod(query - 1, grid[1]))


FIELDS: dict[str, Field] = _fields()
_FORMATTER = string.Formatter()
_SAMPLES = {int: 1, float: 0.5, str: "x"}


def used_fields(text: str) -> list[tuple[str, str]]:
    """The (field, format spec) pairs of a text, in order; raises ValueError on an unknown field, a bad spec
    or a stray brace ({{ and }} write a brace)."""
    try:
        parts = list(_FORMATTER.parse(text))
    except ValueError as err:
        raise ValueError(f"{err} (write {{{{ and }}}} for a brace)") from None
    out = []
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        if name not in FIELDS:
            raise ValueError(f"unknown field `{{{name[:40]}}}` (fields: lessons/README.md)")
        if conversion:
            raise ValueError(f"`{{{name}!{conversion}}}`: no conversions, only a format spec after ':'")
        try:
            format(_SAMPLES[FIELDS[name].kind], spec or FIELDS[name].spec)
        except ValueError as err:
            raise ValueError(f"`{{{name}:{spec}}}`: {err}") from None
        out.append((name, spec))
    return out


def fill(text: str, view: StepView) -> tuple[str, list[str]]:
    """The text with each `{field}` computed on `view`; a field that cannot be computed here shows as "?",
    with the reason in the second value."""
    values: dict[str, Any] = {}
    problems: list[str] = []
    out = []
    for literal, name, spec, _ in _FORMATTER.parse(text):
        out.append(literal)
        if name is None:
            continue
        if name not in values:
            try:
                values[name] = FIELDS[name].compute(view)
            except Exception as err:  # a model without the part a field reads: said, never fatal
                values[name] = None
                problems.append(f"`{{{name}}}` cannot be computed with these models: {type(err).__name__}: {err}")
        value = values[name]
        out.append("?" if value is None or (isinstance(value, float) and not math.isfinite(value))
                   else format(value, spec or FIELDS[name].spec))
    return "".join(out), problems


def step_state(step: Step) -> dict[str, Any]:
    """A step's widget values (session-state key -> value)."""
    return {k: v for k, (_, v) in step.state.items()}


# ----------------------------------------------------------------------------------------------
# The tour in a session: entering a step, the bar, the sidebar's list, the address
# ----------------------------------------------------------------------------------------------

TOUR_KEY = "_tour"  # {"name": ..., "step": K} while a tour is followed
GOTO_KEY = "_tour_goto"  # the page of a step just entered, until main.py has switched to it
SCROLL_KEY = "_tour_scroll"  # scroll to the step's figure once, in the run that shows it first
URL_READ = "_tour_url_read"
BAR_KEY = "tour_bar"


def active() -> tuple[Tour, Step] | None:
    """The tour followed in this session and its step, or None."""
    where = st.session_state.get(TOUR_KEY)
    if not where:
        return None
    tour = load_tours().tours.get(where["name"])
    if tour is None:  # its file was removed or broken meanwhile
        st.session_state.pop(TOUR_KEY, None)
        return None
    return tour, tour.step(where["step"])


def go(name: str, number: int) -> None:
    """Enter step `number` of tour `name`: every page's view back to its default, the step's view set, its
    page to be switched to (`switch_to`). A button's callback, or called at a first run (`open_from_url`)."""
    tour = load_tours().tours.get(name)
    if tour is None:
        st.session_state.pop(TOUR_KEY, None)
        return
    step = tour.step(number)
    for key in links.view_keys():
        st.session_state.pop(key, None)
    for key, (_, value) in step.state.items():
        st.session_state[key] = list(value) if isinstance(value, list) else value  # the session's own copy
    links.expect({k: (p, list(v) if isinstance(v, list) else v) for k, (p, v) in step.state.items()})
    st.session_state[TOUR_KEY] = {"name": tour.name, "step": step.number}
    st.session_state[GOTO_KEY] = step.page
    st.session_state[SCROLL_KEY] = True


def leave() -> None:
    """Stop following the tour (the view stays as it is)."""
    st.session_state.pop(TOUR_KEY, None)


def open_from_url() -> list[str]:
    """At a session's first run: `?tour=NAME&step=K` enters that step. Returns a notice for a tour that does
    not exist or was refused (naming the file, step and field) and for a step out of range."""
    if st.session_state.get(URL_READ):
        return []
    st.session_state[URL_READ] = True
    query = st.query_params.to_dict()
    name = query.get(links.TOUR_PARAMS[0])
    if name is None:
        return []
    loaded = load_tours()
    shown = links.shown(name)
    if name not in loaded.tours:
        if name in loaded.refused:
            return [f"The link's tour {shown} could not be opened: {loaded.refused[name]}"]
        known = ", ".join(f"`{n}`" for n in loaded.tours) or "none"
        return [f"The link's tour {shown} does not exist here (tours: {known})."]
    tour = loaded.tours[name]
    text = query.get(links.TOUR_PARAMS[1], "1")
    notices = []
    try:
        number = int(text)
    except ValueError:
        number = 1
        notices.append(f"The link's `step` value {links.shown(text)} is not a whole number: showing step 1.")
    if not 1 <= number <= len(tour.steps):
        clamped = min(max(number, 1), len(tour.steps))
        notices.append(f"The tour `{name}` has steps 1 to {len(tour.steps)}: showing step {clamped}.")
        number = clamped
    go(name, number)
    return notices


def switch_to(path: str) -> str | None:
    """The page a step just entered is on, when it is not `path` (main.py then switches to it)."""
    target = st.session_state.pop(GOTO_KEY, None)
    return target if target and target != (path or "tokens") else None


def where() -> dict[str, Any]:
    """The tour followed and its step: {"tour": NAME, "step": K} (for links.tour_query)."""
    now = st.session_state.get(TOUR_KEY) or {}
    return {"tour": now.get("name", ""), "step": int(now.get("step", 1))}


def write_url(path: str) -> None:
    """The address bar: on the step's page, the tour's address; elsewhere (the student went on to another
    page), the lesson link of the view shown."""
    now = active()
    if now is not None and now[1].page == (path or "tokens"):
        links.write_tour_to_url(now[0].name, now[1].number)
    else:
        links.write_to_url(path)


# The bar stays in view under Streamlit's header: its layout wrapper (the element as tall as the bar, inside
# the page's scrolling column) is made sticky; the bar itself scrolls inside when its text is long.
BAR_CSS = """
[data-testid="stLayoutWrapper"]:has(> .st-key-tour_bar) { position: sticky; top: 3.75rem; z-index: 99; }
.st-key-tour_bar {
  background: var(--background-color, #fff); border: 2px solid #ff9100; border-radius: 0.6rem;
  padding: 0.5rem 0.9rem 0.5rem; box-shadow: 0 4px 14px rgba(0, 0, 0, 0.12); max-height: 42vh;
  overflow-y: auto; gap: 0.5rem;
}
.st-key-tour_bar > * { flex-shrink: 0; }  /* a column with a max height: its text must not be squeezed */
"""
FRAME_CSS = """
.st-key-{key} {{ outline: 4px solid #ff9100; outline-offset: 6px; border-radius: 4px; }}
"""
# Scroll once to the step's figure, below the sticky bar (the element may not exist yet when this runs).
SCROLL_JS = """<script>
(() => {{
  let tries = 0;
  const go = () => {{
    const el = document.querySelector('.st-key-{key}');
    const bar = document.querySelector('.st-key-tour_bar');
    if (!el || !bar) {{ if (tries++ < 100) setTimeout(go, 100); return; }}
    el.style.scrollMarginTop = (bar.getBoundingClientRect().bottom + 16) + 'px';
    el.scrollIntoView({{block: 'start', behavior: 'instant'}});
  }};
  setTimeout(go, 50);
}})();
</script>"""


@dataclass
class Bar:
    """What `draw_bar` leaves for `after_page`: the slot for a note under the buttons."""

    note: Any


def draw_bar(slot: Any, ctx: Context, path: str, titles: dict[str, str],
             exporter: Callable[[str, Context], bytes] | None = None) -> Bar | None:
    """The tour bar in `slot` (a container above the page, kept in view): tour, "step K of N", the step's
    text computed on `ctx`, Back / Next, its view again, the lesson to take home (`exporter(tour, ctx)`:
    the HTML file's bytes, built when the button is pressed) and leaving the tour."""
    now = active()
    if now is None:
        return None
    tour, step = now
    n = len(tour.steps)
    path = path or "tokens"
    with slot:
        st.html(f"<style>{BAR_CSS}</style>")
        head = f":material/school: **{tour.title}** · step {step.number} of {n}"
        st.markdown(head + (f": *{step.title}*" if step.title else ""))
        text, problems = fill(step.text, StepView(ctx, step_state(step)))
        st.markdown(text)
        for problem in problems:
            st.caption(problem)
        if step.page != path:
            st.caption(f"This step is on the **{titles.get(step.page, step.page)}** page; you are looking at "
                       f"**{titles.get(path, path)}**.")
        with st.container(horizontal=True, gap="small"):
            st.button("Back", key="tour_back", icon=":material/arrow_back:", on_click=go,
                      args=(tour.name, step.number - 1), disabled=step.number == 1)
            if step.number < n:
                st.button("Next", key="tour_next", icon=":material/arrow_forward:", type="primary", on_click=go,
                          args=(tour.name, step.number + 1))
            else:
                st.button("Finish the tour", key="tour_finish", icon=":material/flag:", type="primary", on_click=leave)
            st.button("This step's view again" if step.page == path else f"Back to step {step.number}",
                      key="tour_again", icon=":material/restart_alt:", on_click=go, args=(tour.name, step.number),
                      help="Every choice back to what this step shows")
            if exporter is not None:
                st.download_button("Lesson to take home", data=functools.partial(exporter, tour.name, ctx),
                                   file_name=f"{tour.name}.html", mime="text/html", key="tour_export",
                                   icon=":material/download:", on_click="ignore",
                                   help="One HTML file: every step's text and figures for these models and this "
                                   "image; it opens in any browser, with no server and no network. Takes a few "
                                   "seconds to write.")
            st.button("Leave the tour", key="tour_leave", icon=":material/close:", on_click=leave, type="tertiary")
        return Bar(st.empty())


def after_page(bar: Bar | None, path: str) -> None:
    """After the page: frame the figure the step is about and, the first time it is shown, scroll to it; when
    the page did not draw it (the student changed a choice), say so under the bar's buttons."""
    now = active()
    if bar is None or now is None:
        return
    tour, step = now
    if step.page != (path or "tokens") or not step.look_at:
        return
    if step.look_at not in widgets.shown_keys():
        bar.note.caption("The figure this step is about is not on the page with the choices made since: "
                         "*This step's view again* brings it back.")
        return
    with bar.note.container():
        st.html(f"<style>{FRAME_CSS.format(key=step.look_at)}</style>")
        if st.session_state.pop(SCROLL_KEY, False):
            st.html(SCROLL_JS.format(key=step.look_at), unsafe_allow_javascript=True)


def sidebar_list() -> None:
    """The tours of the lesson folders in the sidebar, each a button that starts it, and each refused file
    with its message."""
    loaded = load_tours()
    with st.sidebar.expander("Guided tours", icon=":material/school:", expanded=active() is None):
        for tour in loaded.tours.values():
            st.button(f"{tour.title} ({len(tour.steps)} steps)", key=f"tour_start_{tour.name}", on_click=go,
                      args=(tour.name, 1), type="tertiary", icon=":material/play_circle:",
                      help=tour.description or None)
        for problem in loaded.problems:
            st.warning(f"Not loaded: {problem}", icon=":material/error:")
        if not loaded.tours and not loaded.problems:
            st.caption("No tours found.")
        st.caption("Teachers: add your own tours to lessons/ of a checkout, or to a folder named by "
                   f"${LESSONS_ENV} (lessons/README.md).")
