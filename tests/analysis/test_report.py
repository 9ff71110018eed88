"""The batch report, `python -m analysis.report`, on a folder of good and bad files.

The models are seeded random networks saved as checkpoints, so the test rebuilds exactly the same
networks and checks the report's numbers against direct calls of the library.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import t2t
from analysis import attention_stats, faithfulness, redundancy, relevance, report, rollout
from t2t.data import CLASS_NAMES, LocalStructureDataset
from t2t.images import open_image, preprocess, sample_images

MODELS = ["t2t_vit_7", "deit_tiny_patch16_224"]
GOOD = ["nested/cat.jpg", "synthetic_0.png", "synthetic_1.png", "synthetic_2.png"]
BAD = {"broken.png": "truncated", "garbage.png": "corrupt", "notes.txt": "Not an image file", "empty.jpg": "empty"}
STEPS = 4  # deletion / insertion steps


def make_images(folder: Path) -> None:
    (folder / "nested").mkdir(parents=True)
    ds = LocalStructureDataset("test", size=3)
    for i in range(3):
        ds.image(i).save(folder / f"synthetic_{i}.png")
    shutil.copy(sample_images()["cat"], folder / "nested" / "cat.jpg")
    png = io.BytesIO()
    ds.image(0).save(png, format="PNG")
    (folder / "broken.png").write_bytes(png.getvalue()[:300])  # a PNG cut off in its pixel data
    (folder / "garbage.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)  # a PNG signature, then junk
    (folder / "notes.txt").write_text("these are not pixels\n")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / ".hidden.png").write_bytes(b"hidden files are not looked at")


def make_checkpoints(folder: Path) -> list[str]:
    paths = []
    for seed, name in enumerate(MODELS):
        torch.manual_seed(seed)
        model = t2t.create_model(name, num_classes=10)
        path = folder / f"{name}.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path),
                  metadata={"class_names": json.dumps(CLASS_NAMES)})  # as t2t.train writes them
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("report")
    make_images(root / "images")
    weights = make_checkpoints(root)
    out = root / "out"
    data = report.main(["--models", *MODELS, "--weights", *weights, "--images", str(root / "images"),
                        "--out", str(out), "--batch-size", "3", "--faithfulness", "--faithfulness-steps", str(STEPS)])
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return SimpleNamespace(root=root, out=out, weights=dict(zip(MODELS, weights, strict=True)), data=data,
                           json=json.loads((out / "results.json").read_text()), rows=rows)


def test_writes_every_output(run):
    for name in ("results.csv", "results.json", "report.html", "figures/summary_blocks.png",
                 "figures/summary_rollout.png", "figures/summary_faithfulness.png"):
        assert (run.out / name).stat().st_size > 0, name
    assert run.json["counts"] == {"files": len(GOOD) + len(BAD), "analysed": len(GOOD), "skipped": len(BAD)}


def test_bad_files_are_skipped_with_the_reason(run):
    skipped = {s["path"]: s["reason"] for s in run.json["skipped"]}
    assert set(skipped) == set(BAD)
    for name, words in BAD.items():
        assert words.lower() in skipped[name].lower(), (name, skipped[name])
    page = (run.out / "report.html").read_text()
    for name, reason in skipped.items():
        assert name in page and reason.split("(")[0].strip() in page


def test_csv_has_one_row_per_image_and_model(run):
    assert sorted((r["image"], r["model"]) for r in run.rows) == sorted((g, m) for g in GOOD for m in MODELS)
    t2t_row = next(r for r in run.rows if r["model"] == "t2t_vit_7")
    vit_row = next(r for r in run.rows if r["model"] == "deit_tiny_patch16_224")
    for metric in (*report.REDUNDANCY_METRICS, *report.ATTENTION_METRICS):
        assert t2t_row[f"{metric}_b6"] != "" and t2t_row[f"{metric}_b7"] == ""  # 7 blocks
        assert vit_row[f"{metric}_b11"] != ""  # 12 blocks
    for method in ("rollout", "grad_rollout", "chefer"):
        assert 0 <= float(t2t_row[f"{method}_deletion_auc"]) <= 1


def test_csv_agrees_with_json(run):
    by_key = {(r["image"], r["model"]): r for r in run.json["results"]}
    for row in run.rows:
        rec = by_key[row["image"], row["model"]]
        assert int(row["pred_index"]) == rec["pred_index"] and row["pred_class"] == rec["pred_class"]
        for metric, values in rec["blocks"].items():
            assert [float(row[f"{metric}_b{i}"]) for i in range(len(values))] == pytest.approx(values)
            assert float(row[f"{metric}_mean"]) == pytest.approx(sum(values) / len(values))


@pytest.mark.parametrize("name", MODELS)
def test_numbers_agree_with_direct_library_calls(run, name):
    model = t2t.create_model(name, pretrained=run.weights[name])
    cfg = model.default_cfg
    x = torch.cat([preprocess(open_image(run.root / "images" / g), cfg["mean"], cfg["std"], cfg["img_size"],
                              cfg["crop_pct"]) for g in GOOD])
    recs = {r["image"]: r for r in run.json["results"] if r["model"] == name}
    close = lambda got, want: torch.testing.assert_close(torch.tensor(got), want.float(), rtol=1e-4, atol=1e-5)

    with torch.no_grad():
        tr = t2t.trace(model, x)
    probs = tr["logits"].softmax(-1)
    grid = tr.grid("blocks.0")
    roll = rollout.cls_rollout(tr.attentions()).view(-1, *grid)
    metrics = redundancy.trace_metrics(tr, len(model.blocks))
    profile = attention_stats.attention_profile(tr.attentions(), grid, (16.0, 16.0))
    grad_roll = rollout.grad_rollout_map(model, x)
    chefer = relevance.relevance_map(model, x)
    for i, g in enumerate(GOOD):
        rec = recs[g]
        assert rec["pred_index"] == int(probs[i].argmax())
        assert rec["pred_class"] == CLASS_NAMES[rec["pred_index"]]
        assert rec["pred_prob"] == pytest.approx(float(probs[i].max()), rel=1e-4)
        close(rec["maps"]["rollout"], roll[i])
        close(rec["maps"]["grad_rollout"], grad_roll[i])
        close(rec["maps"]["chefer"], chefer[i])
        for metric, values in metrics.items():
            close(rec["blocks"][metric], values[i])
        close(rec["blocks"]["attn_distance"], profile["distance"][i].mean(-1))
        close(rec["heads"]["attn_entropy"], profile["entropy"][i])
        assert (rec["rollout_peak_row"], rec["rollout_peak_col"]) == divmod(int(roll[i].argmax()), grid[1])

    curves = faithfulness.faithfulness(model, x, grad_roll, steps=STEPS)
    for i, g in enumerate(GOOD):
        auc = recs[g]["faithfulness"]["grad_rollout"]
        assert auc["deletion_auc"] == pytest.approx(float(curves.deletion_auc[i]), abs=1e-4)
        assert auc["insertion_auc"] == pytest.approx(float(curves.insertion_auc[i]), abs=1e-4)


def test_summary_is_the_mean_over_images(run):
    for name in MODELS:
        recs = [r for r in run.json["results"] if r["model"] == name]
        st = run.json["summary"][name]["blocks"]["effective_rank"]
        want = torch.tensor([r["blocks"]["effective_rank"] for r in recs], dtype=torch.float64).mean(0)
        torch.testing.assert_close(torch.tensor(st["mean"], dtype=torch.float64), want)
        assert all(lo <= m <= hi for lo, m, hi in zip(st["ci_low"], st["mean"], st["ci_high"], strict=True))


def test_every_figure_is_a_readable_image(run):
    for rec in run.json["results"]:
        assert set(rec["figures"]) == {"input", "rollout", "grad_rollout", "chefer"}
        for rel in rec["figures"].values():
            with Image.open(run.out / rel) as im:
                assert im.size == (224, 224)


@pytest.mark.browser
@pytest.mark.parametrize("embed", [True, False], ids=["embedded", "linked"])
def test_report_shows_its_figures_in_chromium(run, browser, embed, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(run.out, out)
    page_file = report.write_html(run.json, out, embed=embed)
    html = page_file.read_text()
    assert ("data:image/" in html) == embed
    page = browser.new_page()
    try:
        page.goto(page_file.as_uri())
        page.wait_for_load_state("load")
        sizes = page.evaluate("Array.from(document.images).map(i => [i.getAttribute('alt'), i.naturalWidth])")
        expected = len(run.json["figures"]) + len(GOOD) * (1 + len(MODELS) * 3)
        assert len(sizes) == expected
        assert all(width > 0 for _, width in sizes), [alt for alt, width in sizes if width == 0]
        assert page.locator("table.skipped tr").count() == 1 + len(BAD)
        assert "4 images analysed" in page.inner_text("body")
    finally:
        page.close()


def test_rollout_only(tmp_path, run):
    out = tmp_path / "out"
    report.main(["--models", "deit_tiny_patch16_224", "--weights", run.weights["deit_tiny_patch16_224"],
                 "--images", str(run.root / "images" / "synthetic_0.png"), "--out", str(out), "--only",
                 "rollout", "--html", "link"])
    (rec,) = json.loads((out / "results.json").read_text())["results"]
    assert set(rec["maps"]) == {"rollout"} and rec["blocks"] == {} and rec["faithfulness"] == {}
    header = (out / "results.csv").read_text().splitlines()[0].split(",")
    assert "rollout_entropy" in header and not any(h.startswith("invalid_fraction") for h in header)
    assert "data:image" not in (out / "report.html").read_text()


def test_only_bad_files_still_gives_a_report(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jpg").write_text("no")
    data = report.main(["--models", "deit_tiny_patch16_224", "--weights", "random", "--images", str(bad),
                        str(tmp_path / "missing.png"), "--out", str(tmp_path / "out")])
    assert data["counts"]["analysed"] == 0
    assert {s["reason"] for s in data["skipped"]} >= {"not found"}
    assert "Skipped files (2)" in (tmp_path / "out" / "report.html").read_text()


def test_wrong_arguments_exit_with_a_message(tmp_path):
    with pytest.raises(SystemExit, match="one per model"):
        report.main(["--models", *MODELS, "--weights", "random", "random", "random", "--images", str(tmp_path),
                     "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit, match="not found"):
        report.main(["--models", "t2t_vit_7", "--weights", str(tmp_path / "nope.pth"), "--images", str(tmp_path),
                     "--out", str(tmp_path / "out")])


def test_load_model_falls_back_to_random_weights_only_when_asked(monkeypatch, capsys):
    monkeypatch.setattr(t2t, "list_embedded", lambda: [])
    with pytest.raises(t2t.CheckpointError, match="--weights random"):
        report.load_model("t2t_vit_7", "embedded")
    model = report.load_model("t2t_vit_7", "embedded", fallback=True)
    assert "RANDOM weights" in capsys.readouterr().err
    assert model.default_cfg["weights"].startswith("random") and model.num_classes == 10
    again = report.load_model("t2t_vit_7", "random")  # seeded: the same network every time
    torch.testing.assert_close(model.head.weight, again.head.weight)


def test_load_model_reads_the_architecture_off_the_checkpoint(run):
    model = report.load_model("t2t_vit_7", run.weights["deit_tiny_patch16_224"])
    assert model.default_cfg["name"] == "deit_tiny_patch16_224" and not model.training


def test_parse_weights():
    assert report.parse_weights("embedded") == "embedded"
    assert report.parse_weights("ImageNet") is True and report.parse_weights("released") is True
    assert report.parse_weights("random") is None and report.parse_weights(None) is None
    assert report.parse_weights("https://x/y.pth") == "https://x/y.pth"


def test_command_line(tmp_path, run):
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "analysis.report", "--models", "deit_tiny_patch16_224",
                           "--weights", run.weights["deit_tiny_patch16_224"], "--images",
                           str(run.root / "images" / "notes.txt"), str(run.root / "images" / "synthetic_1.png"),
                           "--out", str(out), "--only", "rollout"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "1 images analysed" in done.stderr and "skipped notes.txt: Not an image file" in done.stderr
    assert (out / "report.html").exists()


def test_overlay_colours_and_weights_follow_the_map():
    """A map hot at one token: its pixels get the colormap's top colour at weight alpha, the
    coldest pixels its bottom colour at weight alpha / 4, each within 1 of the float formula."""
    import numpy as np

    crops = [np.full((224, 224, 3), 100, np.uint8), np.zeros((224, 224, 3), np.uint8)]
    maps = torch.zeros(2, 14, 14)
    maps[0, 0, 0] = 1.0
    maps[1, 13, 13] = 5.0  # min-max normalised per image: the scale does not matter
    lut = report.colour_lut("inferno").astype(float)
    a = 0.6
    out = report.overlays(crops, maps, alpha=a)
    assert [o.shape for o in out] == [(224, 224, 3)] * 2 and out[0].dtype == np.uint8
    hot, cold = (0, 0), (223, 223)
    assert np.abs(out[0][hot] - (100 * (1 - a) + lut[255] * a)).max() <= 1
    assert np.abs(out[0][cold] - (100 * (1 - a / 4) + lut[0] * a / 4)).max() <= 1
    assert np.abs(out[1][cold] - lut[255] * a).max() <= 1  # second image: its own map, not the first's
    assert np.abs(out[1][hot] - lut[0] * a / 4).max() <= 1
    # a value in between, where bilinear upsampling has spread the hot token
    from analysis.maps import normalize_map, upsample_map

    heat = float(normalize_map(upsample_map(maps[:1], 224))[0, 0, 15])  # 0.5: halfway between centres
    assert 0.1 < heat < 0.9
    w = a * (0.25 + 0.75 * heat)
    assert np.abs(out[0][0, 15] - (100 * (1 - w) + lut[round(heat * 255)] * w)).max() <= 1


def test_batches_are_the_same_decoded_in_workers_or_in_line(run):
    files, _ = report.find_images([run.root / "images"])
    keys = [report.transform_key(t2t.create_model("deit_tiny_patch16_224", img_size=32))]
    batches = [[0, 1, 2], [3, 4, 5], [6, 7]]
    inline, workers = (list(report.make_loader(files, keys, batches, w)) for w in (0, 2))
    assert [len(b) for b in inline] == [len(b) for b in workers] == [3, 3, 2]
    for a, b in zip(sum(inline, []), sum(workers, []), strict=True):
        assert type(a) is type(b)
        if isinstance(a, report.Prepared):
            assert (a.index, a.label) == (b.index, b.label)
            torch.testing.assert_close(a.inputs[keys[0]], b.inputs[keys[0]], rtol=0, atol=0)
        else:
            assert (a.path, a.reason, a.index) == (b.path, b.reason, b.index)
    assert sum(isinstance(x, report.Skipped) for x in sum(inline, [])) == len(BAD)


def test_pictures_are_capped_to_the_first_and_the_least_confident(run, tmp_path):
    """--pictures 1 --least-confident 1: pictures of image 0 and of the image whose least sure model
    gives its prediction the lowest probability, none of the others; every image still has its row."""
    out = tmp_path / "out"
    report.main(["--models", *MODELS, "--weights", *run.weights.values(), "--images", *(
        str(run.root / "images" / g) for g in GOOD), "--out", str(out), "--only", "rollout", "--pictures", "1",
        "--least-confident", "1"])
    data = json.loads((out / "results.json").read_text())
    by_image: dict[str, list] = {}
    for rec in data["results"]:
        by_image.setdefault(rec["path"], []).append(rec)
    assert len(by_image) == len(GOOD) and len(data["results"]) == len(GOOD) * len(MODELS)
    paths = list(by_image)
    least = min(paths, key=lambda p: min(r["pred_prob"] for r in by_image[p]))
    want = {paths[0], least}
    assert {p for p, recs in by_image.items() if recs[0]["figures"]} == want
    assert [e["why"] for e in data["pictured"]] == ["first"] + (["least confident"] if least != paths[0] else [])
    drawn = {f.name for f in (out / "figures").iterdir() if not f.name.startswith("summary")}
    assert drawn == {Path(v).name for p in want for r in by_image[p] for v in r["figures"].values()}
    page = (out / "report.html").read_text()
    assert page.count("<tr><td><img") == len(want) and f"{len(want)} of {len(GOOD)} images pictured" in page


def test_all_pictures_drawn_in_a_bounded_queue_and_threads_restored(run, tmp_path, monkeypatch):
    """--pictures all: every image's pictures are drawn, never more than 2 per drawing thread waiting
    at once (the records they hold would otherwise pile up with the dataset), and the process's torch
    thread count is what it was (the drawing threads run on one torch thread each)."""
    import threading

    import analysis.report.cli as cli

    waiting, most, lock = [0], [0], threading.Lock()
    real = cli.draw_pictures

    def counted(*args):
        try:
            return real(*args)
        finally:
            with lock:
                waiting[0] -= 1

    class Pool(cli.ThreadPoolExecutor):
        def submit(self, fn, *args, **kwargs):
            if fn is counted:
                with lock:
                    waiting[0] += 1
                    most[0] = max(most[0], waiting[0])
            return super().submit(fn, *args, **kwargs)

    monkeypatch.setattr(cli, "draw_pictures", counted)
    monkeypatch.setattr(cli, "ThreadPoolExecutor", Pool)
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # one drawing thread: at most 2 of the 4 images may wait at once
    try:
        out = tmp_path / "out"
        report.main(["--models", *MODELS, "--weights", *run.weights.values(), "--images", *(
            str(run.root / "images" / g) for g in GOOD), "--out", str(out), "--only", "rollout", "--pictures",
            "all"])
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    data = json.loads((out / "results.json").read_text())
    assert all(rec["figures"] for rec in data["results"])
    for rec in data["results"]:
        assert all((out / f).is_file() for f in rec["figures"].values())
    assert 1 <= most[0] <= 2


def test_knockouts_add_each_models_importance_grid_per_image(tmp_path, run):
    """--knockouts: the grid of every image equals `head_importance_scores` of the predicted class, the CSV
    names the top head, the summary averages the grids and the page states what they cost."""
    from analysis.knockout import head_importance_scores

    out = tmp_path / "out"
    images = [str(run.root / "images" / g) for g in GOOD[1:3]]
    data = report.main(["--models", *MODELS, "--weights", *run.weights.values(), "--images", *images,
                        "--out", str(out), "--only", "rollout", "--knockouts", "--html", "link"])
    results = json.loads((out / "results.json").read_text())["results"]
    for name in MODELS:
        model = t2t.create_model(name, pretrained=run.weights[name])
        cfg = model.default_cfg
        x = torch.cat([preprocess(open_image(p), cfg["mean"], cfg["std"], cfg["img_size"], cfg["crop_pct"])
                       for p in images])
        with torch.no_grad():
            want = head_importance_scores(model, x)
        recs = [r for r in results if r["model"] == name]
        for i, rec in enumerate(recs):
            assert rec["pred_index"] == int(want.target[i])
            torch.testing.assert_close(torch.tensor(rec["knockouts"]["logit_drop"]), want.logit_drop[i],
                                       rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(torch.tensor(rec["knockouts"]["prob_drop"]), want.prob_drop[i],
                                       rtol=1e-4, atol=1e-6)
            assert rec["knockouts"]["seconds"] > 0
        summary = data["summary"][name]["knockouts"]
        mean = torch.tensor([r["knockouts"]["logit_drop"] for r in recs]).mean(0)
        torch.testing.assert_close(torch.tensor(summary["mean_logit_drop"], dtype=torch.float64), mean.double(),
                                   rtol=1e-6, atol=1e-9)
        assert summary["seconds"] == pytest.approx(sum(r["knockouts"]["seconds"] for r in recs))
    rows = list(csv.DictReader(open(out / "results.csv", newline="")))
    rec = results[0]
    grid = torch.tensor(rec["knockouts"]["logit_drop"])
    block, head = divmod(int(grid.argmax()), grid.shape[1])
    assert (int(rows[0]["knockout_top_block"]), int(rows[0]["knockout_top_head"])) == (block, head)
    page = (out / "report.html").read_text()
    assert "Head knock-outs" in page and "ms per image" in page and page.count("logit drop per knocked-out head") == 4
    assert data["settings"]["knockouts"] is True


def test_lrp_maps_come_with_their_conservation_in_json_csv_and_page(tmp_path, run):
    """--methods attnlrp cp_lrp: every image's conservation (the pixels' share of the explained logit) and logit
    equal `analysis.lrp.lrp`'s for those images, in results.json, the CSV and beside each map in report.html; the
    summary holds their mean / min / max per model and method; the maps are drawn signed (checked on the PNG)."""
    import numpy as np

    from analysis.lrp import lrp  # the function (`from analysis import lrp` gives it too, not the module)

    out = tmp_path / "out"
    images = [str(run.root / "images" / g) for g in GOOD[1:3]]
    data = report.main(["--models", *MODELS, "--weights", *run.weights.values(), "--images", *images,
                        "--out", str(out), "--only", "explain", "--methods", "attnlrp", "cp_lrp",
                        "--image-format", "png", "--html", "link"])
    results = json.loads((out / "results.json").read_text())["results"]
    rows = list(csv.DictReader(open(out / "results.csv", newline="")))
    page = (out / "report.html").read_text()
    for name in MODELS:
        model = t2t.create_model(name, pretrained=run.weights[name])
        cfg = model.default_cfg
        x = torch.cat([preprocess(open_image(p), cfg["mean"], cfg["std"], cfg["img_size"], cfg["crop_pct"])
                       for p in images])
        recs = [r for r in results if r["model"] == name]
        model_rows = [r for r in rows if r["model"] == name]
        target = torch.tensor([r["pred_index"] for r in recs])
        for method, variant in (("attnlrp", "attnlrp"), ("cp_lrp", "cp")):
            want = lrp(model, x, target, variant=variant)
            share = [r["conservation"][method]["share"] for r in recs]
            logit = [r["conservation"][method]["logit"] for r in recs]
            torch.testing.assert_close(torch.tensor(share), want.conservation, rtol=0, atol=1e-5)
            torch.testing.assert_close(torch.tensor(logit), want.logit, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(torch.tensor([float(r[f"{method}_conservation_share"]) for r in model_rows]),
                                       want.conservation, rtol=0, atol=1e-5)
            torch.testing.assert_close(torch.tensor([float(r[f"{method}_conservation_logit"]) for r in model_rows]),
                                       want.logit, rtol=1e-5, atol=1e-5)
            for s, lg in zip(share, logit, strict=True):
                assert f"conservation {s:.1%} of the logit {lg:.2f}" in page
            summary = data["summary"][name]["conservation"][method]
            assert summary["images"] == len(images) and summary["undefined"] == 0
            assert summary["mean_share"] == pytest.approx(float(want.conservation.double().mean()), abs=1e-5)
            assert summary["min_share"] == pytest.approx(float(want.conservation.min()), abs=1e-5)
            assert summary["max_share"] == pytest.approx(float(want.conservation.max()), abs=1e-5)
            assert (f"{name}, {method} conservation (the pixels' share of the explained logit): mean "
                    f"{summary['mean_share']:.1%}, range {summary['min_share']:.1%} to {summary['max_share']:.1%}"
                    in page)
    assert "attnlrp, cp_lrp: signed maps" in page and "red: evidence for the predicted class" in page
    # the picture of the first model's map is `overlays` of its map, signed, over the image it saw (PNG: exact)
    rec = results[0]
    crop = np.asarray(Image.open(out / rec["figures"]["input"]).convert("RGB"))
    for method in ("attnlrp", "cp_lrp"):
        drawn = np.asarray(Image.open(out / rec["figures"][method]).convert("RGB"))
        want = report.overlays([crop], torch.tensor([rec["maps"][method]]), signed=True)[0]
        assert np.array_equal(drawn, want), method
        assert not np.array_equal(drawn, report.overlays([crop], torch.tensor([rec["maps"][method]]))[0])


def test_signed_overlay_is_red_for_and_blue_against_the_class():
    """A signed map (`signed=True`) positive on the left half, negative on the right: the left pixels are redder
    than bluer, the right ones bluer than redder; colour and weight follow s = v / max|v| (within 1); an unsigned map
    in the same call is drawn as alone; an all-zero map leaves the image as it is, without a warning (no 0 / 0)."""
    import inspect
    import warnings

    import numpy as np

    from analysis.attributions import integrated_gradients_map

    grey = np.full((224, 224, 3), 128, np.uint8)
    maps = torch.zeros(2, 14, 14)
    maps[0, :, :7], maps[0, :, 7:] = 0.5, -2.0  # max |v| = 2: s = +0.25 left, -1 right
    maps[1, 3, 4] = 1.0
    a = 0.6
    signed, unsigned = report.overlays([grey, grey], maps, alpha=a, signed=[True, False])
    left, right = signed[:, :104].astype(int), signed[:, 120:].astype(int)  # the halves beyond the blend of token 6-7
    assert (left[..., 0] > left[..., 2]).all() and (right[..., 2] > right[..., 0]).all()
    lut = report.signed_lut().astype(float)
    assert np.abs(signed[0, 200] - (128 * (1 - a) + lut[1] * a)).max() <= 1  # s = -1: full blue, weight alpha
    w = a * 0.25 ** 0.5  # weight alpha sqrt(|s|)
    assert np.abs(signed[0, 20] - (128 * (1 - w) + lut[128 + round(0.25 * 127)] * w)).max() <= 1
    assert np.array_equal(unsigned, report.overlays([grey], maps[1:], alpha=a)[0])
    # what the page's legend says of the colours drawn
    from analysis.report.pictures import SIGNED_LEGEND

    colour = {"red": 0, "blue": 2}
    for index, words in SIGNED_LEGEND:
        if index is not None:
            assert int(lut[index].argmax()) == colour[words.split(":")[0]] and lut[index].max() > 200, words
    assert (lut[128] >= 250).all()  # 0 is the middle colour, white (drawn at weight 0: the bare image)
    assert (lut[1:128, 2] >= lut[1:128, 0]).all() and (lut[129:, 0] >= lut[129:, 2]).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (zero,) = report.overlays([grey], torch.zeros(1, 14, 14), signed=True)
    assert np.array_equal(zero, grey)
    # Integrated Gradients is drawn min-max: the report's map is |attributions| summed over channels, >= 0
    assert inspect.signature(integrated_gradients_map).parameters["reduction"].default == "abs"
    assert "integrated_gradients" not in report.SIGNED_MAPS and {"attnlrp", "cp_lrp"} <= report.SIGNED_MAPS
