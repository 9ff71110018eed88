"""The method x metric scorecard: Kendall's tau against SciPy, the card's numbers against direct calls of each
metric, its shapes and rankings, new explainers picked up from EXPLAINERS, and verdicts that follow the data."""

from __future__ import annotations

import importlib
import re

import numpy as np
import pytest
import scipy.stats
import torch

from analysis import faithfulness, sanity
from analysis.scorecard import (
    METRICS,
    RANDOM,
    Scorecard,
    Settings,
    agreement_verdict,
    available_methods,
    grouped_cascade,
    kendall_tau,
    leader_verdict,
    merge_scorecards,
    random_floor_verdict,
    random_map,
    sanity_verdict,
    scorecard,
    verdicts,
)
from tests.analysis.test_knockout import assert_untouched, images, small_t2t, small_vit, snapshot

explain_module = importlib.import_module("analysis.explain")  # the package exports a function of the same name

FAST = Settings(deletion_steps=4, road_percentages=(25, 75))


# --- Kendall's tau ---------------------------------------------------------------------------------------


def test_kendall_tau_equals_scipy_with_and_without_ties():
    rng = np.random.default_rng(0)
    for _ in range(30):
        m = int(rng.integers(3, 10))
        x, y = rng.integers(0, 4, m).astype(float), rng.normal(size=m)  # x has ties
        for a, b in ((x, y), (y, x), (x, x[::-1].copy()), (y, -y)):
            want = scipy.stats.kendalltau(a, b).statistic
            assert kendall_tau(a, b) == pytest.approx(want, abs=1e-12) if np.isfinite(want) else np.isnan(
                kendall_tau(a, b))
    batch_x, batch_y = rng.normal(size=(5, 7)), rng.normal(size=(5, 7))
    want = [scipy.stats.kendalltau(a, b).statistic for a, b in zip(batch_x, batch_y, strict=True)]
    assert kendall_tau(batch_x, batch_y) == pytest.approx(want, abs=1e-12)
    assert np.isnan(kendall_tau(np.ones(4), np.arange(4.0)))  # a constant ranking has no order


# --- computing a card -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def card() -> tuple[Scorecard, dict, dict]:
    models = {"T2T": small_t2t("transformer"), "ViT": small_vit()}
    x = {k: images(4, seed=i + 1) for i, k in enumerate(models)}
    before = {k: snapshot(m) for k, m in models.items()}
    result = scorecard(models, x, methods=["rollout", "chefer", "grad_rollout"], settings=FAST, n_boot=300)
    for k, m in models.items():
        assert_untouched(m, before[k])
    return result, models, x


def test_card_has_every_method_metric_and_model(card):
    card, models, x = card
    assert card.methods == ["rollout", "chefer", "grad_rollout", RANDOM] and card.metrics == list(METRICS)
    for key in [(mo, me, mt) for mo in models for me in card.methods for mt in METRICS]:
        assert card.scores[key].shape == (4,), key
    rows = card.table()
    assert len(rows) == 2 * 4 * len(METRICS)
    assert {r["rank"] for r in rows if r["method"] == RANDOM} == {None}
    assert all(sorted(r["rank"] for r in rows if r["model"] == "ViT" and r["metric"] == mt and r["rank"])
               == [1, 2, 3] for mt in METRICS)
    for r in rows:
        if r["n"]:
            assert r["low"] <= r["mean"] <= r["high"]
    text = card.markdown()
    assert text.count("| rollout |") == 2 and text.count("| random |") == 2
    rows = [line for line in text.splitlines() if line.startswith("|")]
    assert {len(re.split(r"(?<!\\)\|", line)) for line in rows} == {len(METRICS) + 3}  # a cell per metric
    taus = card.kendall("ViT")
    assert len(taus) == len(METRICS) * (len(METRICS) - 1) // 2
    for tau, lo, hi in taus.values():
        assert -1 <= lo <= hi <= 1 and (np.isnan(tau) or -1 <= tau <= 1)
    assert card.curves["ViT", "chefer"].deletion.shape == (4, FAST.deletion_steps + 1)
    assert card.road["T2T", RANDOM].morf.shape == (4, 2)


def test_card_numbers_are_the_metrics_called_directly(card):
    card, models, x = card
    model, xs = models["ViT"], x["ViT"]
    target = model(xs).argmax(-1)
    maps = explain_module.explain("chefer", model, xs, target=target)
    curves = faithfulness.faithfulness(model, xs, maps, target=target, steps=FAST.deletion_steps)
    np.testing.assert_allclose(card.scores["ViT", "chefer", "deletion"], curves.deletion_auc.numpy(), atol=1e-6)
    np.testing.assert_allclose(card.scores["ViT", "chefer", "insertion"], curves.insertion_auc.numpy(), atol=1e-6)
    road = faithfulness.road(model, xs, maps, target=target, percentages=FAST.road_percentages)
    np.testing.assert_allclose(card.scores["ViT", "chefer", "road_morf"], road.morf_mean.numpy(), atol=1e-6)
    np.testing.assert_allclose(card.scores["ViT", "chefer", "road_lerf"], road.lerf_mean.numpy(), atol=1e-6)
    rl = sanity.random_logit("chefer", model, xs, target)
    np.testing.assert_allclose(card.scores["ViT", "chefer", "random_logit"], rl.numpy(), atol=1e-6)
    curve = sanity.cascading_randomization("chefer", model, xs, target, layers=grouped_cascade(model, 1))
    np.testing.assert_allclose(card.scores["ViT", "chefer", "sanity"], curve.spearman_abs[-1].abs().numpy(),
                               atol=1e-9)
    # the random map ignores model and class: it never changes, the worst score of both randomisation tests
    np.testing.assert_allclose(card.scores["ViT", RANDOM, "random_logit"], 1.0, atol=1e-9)
    np.testing.assert_allclose(card.scores["ViT", RANDOM, "sanity"], 1.0, atol=1e-9)
    # rollout ignores the class: Random Logit 1 as well
    np.testing.assert_allclose(card.scores["ViT", "rollout", "random_logit"], 1.0, atol=1e-6)


def test_merged_cards_equal_one_card_of_both_models(card):
    """Scoring one model per call and merging gives the card of one call on both: scores, rankings, tau, verdicts."""
    whole, models, x = card
    parts = [scorecard({k: m}, x, methods=["rollout", "chefer", "grad_rollout"], settings=FAST, n_boot=300)
             for k, m in models.items()]
    merged = merge_scorecards(parts)
    assert merged.models == whole.models and merged.methods == whole.methods
    assert merged.scores.keys() == whole.scores.keys()
    for key, values in whole.scores.items():
        np.testing.assert_allclose(merged.scores[key], values, rtol=0, atol=1e-6, err_msg=str(key))
    for got, want in zip(merged.table(), whole.table(), strict=True):
        assert {k: got[k] for k in ("model", "method", "metric", "n", "rank")} == {
            k: want[k] for k in ("model", "method", "metric", "n", "rank")}
        numbers = ("mean", "low", "high")
        np.testing.assert_allclose([got[k] for k in numbers], [want[k] for k in numbers], rtol=0, atol=1e-6)
    assert merged.verdicts() == whole.verdicts()
    with pytest.raises(ValueError, match="more than one scorecard"):
        merge_scorecards([parts[0], parts[0]])
    with pytest.raises(ValueError, match="different metrics"):
        merge_scorecards([parts[0], scorecard({"other": models["ViT"]}, x | {"other": x["ViT"]}, methods=["rollout"],
                                              metrics=["deletion"], settings=FAST, n_boot=300)])


def test_ranking_follows_the_means_and_the_direction(card):
    card = card[0]
    for metric, (_, lower) in METRICS.items():
        ranking = card.ranking("T2T", metric)
        means = [np.nanmean(card.scores["T2T", m, metric]) for m in ranking]
        means = [v for v in means if np.isfinite(v)]
        assert means == sorted(means, reverse=not lower), metric


def test_precomputed_maps_are_used_and_a_new_explainer_is_picked_up(monkeypatch):
    calls = []

    def centre(model, images, target=None):
        calls.append(len(images))
        m = torch.zeros(len(images), 4, 4)
        m[:, 1:3, 1:3] = 1.0
        return m + 0.01 * images[:, 0, ::8, ::8]

    monkeypatch.setitem(explain_module.EXPLAINERS, "centre", (centre, True))
    assert available_methods()[-1] == "centre"
    model, x = small_vit(), images(3)
    given = centre(model, x)
    calls.clear()
    card = scorecard({"ViT": model}, {"ViT": x}, methods=None, metrics=["deletion"], settings=FAST,
                     maps={"ViT": {m: given for m in available_methods()}}, n_boot=50)  # every method by default
    assert card.methods == [*available_methods(), RANDOM] and ("ViT", "centre", "deletion") in card.scores
    assert calls == []  # the given maps were used, none recomputed
    card = scorecard({"ViT": model}, {"ViT": x}, methods=["centre"], metrics=["random_logit"], settings=FAST,
                     maps={"ViT": {"centre": given}}, n_boot=50)
    assert calls == [3]  # only Random Logit's other-class run
    with pytest.raises(ValueError, match="unknown metrics"):
        scorecard({"ViT": model}, {"ViT": x}, metrics=["accuracy"])


def test_a_method_a_model_cannot_run_is_skipped(monkeypatch):
    def refuse(model, images, target=None):
        raise NotImplementedError("no such rule for this architecture")

    monkeypatch.setitem(explain_module.EXPLAINERS, "refuse", (refuse, True))
    card = scorecard({"ViT": small_vit()}, {"ViT": images(2)}, methods=["refuse", "rollout"], metrics=["deletion"],
                     settings=FAST, n_boot=50)
    assert card.skipped == {("ViT", "refuse"): "no such rule for this architecture"}
    assert card.ranked_methods("ViT") == ["rollout"] and "| refuse |" not in card.markdown()


def test_grouped_cascade_and_random_map():
    model = small_vit()
    assert grouped_cascade(model, None) is None
    (label, names), = grouped_cascade(model, 1)
    assert label == "head..stem" and names == [n for _, ns in sanity.randomization_layers(model) for n in ns]
    two = grouped_cascade(model, 2)  # 6 layers: head, norm, blocks.2 | blocks.1, blocks.0, stem (3 names)
    assert [label for label, _ in two] == ["head..blocks.2", "blocks.1..stem"] and [len(n) for _, n in two] == [3, 5]
    assert torch.equal(random_map((2, 3, 3), 1), random_map((2, 3, 3), 1))


# --- verdicts follow the data ------------------------------------------------------------------------------


def synthetic_card(scores: dict[tuple[str, str], np.ndarray], metrics: list[str], n: int = 12) -> Scorecard:
    methods = sorted({m for m, _ in scores})
    card = Scorecard(["M"], methods, metrics, {("M", m, k): np.asarray(v, dtype=float) for (m, k), v in
                                                  scores.items()}, n_boot=500)
    card.images["M"] = n
    return card


def noisy(mean: float, spread: float, n: int = 12, seed: int = 0) -> np.ndarray:
    return mean + spread * np.random.default_rng(seed).normal(size=n)


def test_leader_verdict_names_the_winner_and_whether_it_is_beyond_the_noise():
    a, b = noisy(0.2, 0.02, seed=1), noisy(0.5, 0.02, seed=2)
    card = synthetic_card({("a", "deletion"): a, ("b", "deletion"): b}, ["deletion"])
    assert leader_verdict(card, "M", "deletion").startswith("M, deletion AUC: a ranks first")
    assert "beyond the noise" in leader_verdict(card, "M", "deletion")
    card = synthetic_card({("a", "deletion"): b, ("b", "deletion"): a}, ["deletion"])  # swapped: b leads
    assert leader_verdict(card, "M", "deletion").startswith("M, deletion AUC: b ranks first")
    card = synthetic_card({("a", "insertion"): a, ("b", "insertion"): b}, ["insertion"])  # higher is better
    assert leader_verdict(card, "M", "insertion").startswith("M, insertion AUC: b ranks first")
    close = synthetic_card({("a", "deletion"): noisy(0.3, 0.2, seed=3), ("b", "deletion"): noisy(0.3, 0.2, seed=4)},
                           ["deletion"])
    assert "within the noise of 12 images" in leader_verdict(close, "M", "deletion")


def test_agreement_verdict_flips_when_two_metrics_reverse_the_ranking():
    methods = ["a", "b", "c", "d"]
    base = {m: noisy(0.1 * i, 0.01, seed=i) for i, m in enumerate(methods)}
    same = synthetic_card({**{(m, "deletion"): base[m] for m in methods},
                           **{(m, "road_morf"): base[m] + 0.05 for m in methods}}, ["deletion", "road_morf"])
    tau, lo, hi = same.kendall("M")["deletion", "road_morf"]
    assert tau == 1.0 and lo > 0
    assert agreement_verdict(same, "M").endswith("the metrics rank the methods the same way.")
    reverse = synthetic_card({**{(m, "deletion"): base[m] for m in methods},
                              **{(m, "road_morf"): 1 - base[m] for m in methods}}, ["deletion", "road_morf"])
    tau, lo, hi = reverse.kendall("M")["deletion", "road_morf"]
    assert tau == -1.0 and hi < 0
    text = agreement_verdict(reverse, "M")
    assert "1 in opposite ways" in text and text.endswith("do not agree on which method is most faithful.")
    # deletion (lower is better) against insertion (higher is better): the same order of raw means is a reversal
    flipped = synthetic_card({**{(m, "deletion"): base[m] for m in methods},
                              **{(m, "insertion"): base[m] for m in methods}}, ["deletion", "insertion"])
    assert flipped.kendall("M")["deletion", "insertion"][0] == -1.0


def test_random_floor_and_sanity_verdicts_follow_the_numbers():
    card = synthetic_card({("good", "deletion"): noisy(0.2, 0.02, seed=1),
                           ("bad", "deletion"): noisy(0.6, 0.02, seed=2),
                           (RANDOM, "deletion"): noisy(0.5, 0.02, seed=3),
                           ("good", "sanity"): noisy(0.1, 0.02, seed=4), ("bad", "sanity"): noisy(0.9, 0.02, seed=5),
                           (RANDOM, "sanity"): np.ones(12)}, ["deletion", "sanity"])
    text = random_floor_verdict(card, "M")
    assert ": good; not shown for bad (not on deletion AUC)." in text
    text = sanity_verdict(card, "M")
    assert "passed by good; failed by bad (0.90)" in text
    card.scores["M", "good", "sanity"] = noisy(0.9, 0.02, seed=4)  # now the good map survives randomisation too
    assert "passed by no method; failed by bad (0.90), good (0.90)" in sanity_verdict(card, "M")
    assert all(isinstance(v, str) and v for v in verdicts(card))


# --- the report's --scorecard ---------------------------------------------------------------------------------


def test_report_methods_come_from_explainers(monkeypatch):
    from analysis.report import parse_args

    monkeypatch.setitem(explain_module.EXPLAINERS, "brand_new", (lambda model, images, target=None: None, True))
    for name in explain_module.EXPLAINERS:  # attnlrp and cp_lrp among them once registered
        assert parse_args(["--images", "x", "--out", "y", "--methods", name]).methods == [name]
    args = parse_args(["--images", "x", "--out", "y", "--scorecard", "--road-percentages", "10", "90",
                       "--sanity-steps", "0"])
    assert args.scorecard and args.road_percentages == [10.0, 90.0] and args.sanity_steps == 0


def test_report_writes_the_scorecard(tmp_path):
    import csv
    import json

    from analysis import report
    from t2t.data import LocalStructureDataset

    ds = LocalStructureDataset("test", size=2)
    (tmp_path / "images").mkdir()
    for i in range(2):
        ds.image(i).save(tmp_path / "images" / f"s{i}.png")
    methods = ["chefer", *(m for m in ("attnlrp",) if m in explain_module.EXPLAINERS)]
    out = tmp_path / "out"
    report.main(["--models", "deit_tiny_patch16_224", "--weights", "random", "--img-size", "48", "--images",
                 str(tmp_path / "images"), "--out", str(out), "--only", "explain", "--methods", *methods,
                 "--faithfulness", "--faithfulness-steps", "3", "--scorecard", "--road-percentages", "50",
                 "--pictures", "0", "--least-confident", "0"])
    data = json.loads((out / "results.json").read_text())
    card = data["scorecard"]
    assert card["methods"] == [*methods, RANDOM] and list(card["metrics"]) == list(METRICS)
    per_image = {(r["image"], m, k): v for r in data["results"] for m, scores in r["scorecard"].items()
                 for k, v in scores.items()}
    for row in card["table"]:
        values = [v for (_, m, k), v in per_image.items()
                  if m == row["method"] and k == row["metric"] and v is not None]
        assert row["n"] == len(values)
        if values:
            assert row["mean"] == pytest.approx(np.mean(values), abs=1e-6)
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for m in methods:  # the scorecard's deletion is the --faithfulness AUC, computed once
            assert float(r[f"{m}_deletion"]) == float(r[f"{m}_deletion_auc"])
            assert float(r[f"{m}_road_morf"]) == pytest.approx(per_image[r["image"], m, "road_morf"], abs=1e-6)
    page = (out / "report.html").read_text()
    assert "Explanation scorecard" in page and all(v.replace("'", "&#x27;") in page for v in card["verdicts"])
    assert data["settings"]["road_percentages"] == [50.0]
