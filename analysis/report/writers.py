"""Writers: running statistics over the records, results.csv and results.json written as a stream.

Nothing here holds the dataset: the summaries are running sums (Welford's mean and variance in
float64), the CSV and the JSON's "results" are written one record at a time.
"""

from __future__ import annotations

import csv
import heapq
import json
import math
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import IO, Any

import numpy as np

from analysis.report.analyse import ATTENTION_METRICS, LRP_METHODS, REDUNDANCY_METRICS, Options

SCALAR_FIELDS = ("image", "path", "model", "pred_index", "pred_class", "pred_prob")
ROLLOUT_FIELDS = ("rollout_peak_row", "rollout_peak_col", "rollout_entropy")
COMPLETENESS_FIELDS = ("delta", "output_change", "relative_gap")
# an LRP map's conservation: the pixels' share of the explained logit, and that logit (CSV: METHOD_conservation_KEY)
CONSERVATION_FIELDS = ("share", "logit")
# the head whose zero-ablation alone costs the predicted class's logit most, that drop, and the grid's time
KNOCKOUT_FIELDS = ("knockout_top_block", "knockout_top_head", "knockout_max_logit_drop", "knockout_seconds")


def mean_ci(values: np.ndarray) -> dict[str, list[float] | int]:
    """Mean over axis 0 and its 95% confidence interval (normal approximation: 1.96 standard errors)."""
    acc = RunningMean()
    for v in np.asarray(values, dtype=np.float64):
        acc.add(v)
    return acc.result()


class RunningMean:
    """Mean, standard deviation and 95% CI of a stream of equal-shaped arrays (Welford, float64)."""

    def __init__(self) -> None:
        self.n = 0
        self.mean: np.ndarray | float = 0.0
        self.m2: np.ndarray | float = 0.0

    def add(self, value: Any) -> None:
        v = np.asarray(value, dtype=np.float64)
        self.n += 1
        d = v - self.mean
        self.mean = self.mean + d / self.n
        self.m2 = self.m2 + d * (v - self.mean)

    def result(self) -> dict[str, Any]:
        mean = np.asarray(self.mean, dtype=np.float64)
        std = np.sqrt(np.asarray(self.m2) / (self.n - 1)) if self.n > 1 else np.zeros_like(mean)
        half = 1.96 * std / math.sqrt(self.n) if self.n > 1 else np.full_like(mean, np.nan)
        return {"n": self.n, "mean": mean.tolist(), "std": std.tolist(), "ci_low": (mean - half).tolist(),
                "ci_high": (mean + half).tolist()}


class Summary:
    """Per model, from the records of one image at a time: block metrics (mean and CI per block and of the
    per-image block mean), mean rollout map, faithfulness AUCs, prediction counts, IG completeness, the LRP
    maps' conservation (mean, min, max share), and how often the first two models agree."""

    def __init__(self, models: list[str], tolerance: float = 0.05) -> None:
        self.models, self.tolerance = models, tolerance
        self.acc: dict[str, dict[str, Any]] = {m: {"images": 0, "blocks": {}, "image_means": {}, "faithfulness": {},
                                                   "rollout": RunningMean(), "predictions": Counter(),
                                                   "knockouts": RunningMean(), "knockout_seconds": 0.0,
                                                   "scorecard": {}}
                                               for m in models}
        self.gap: dict[str, dict[str, Any]] = {m: {"n": 0, "above": 0, "max": 0.0, "sum": 0.0, "undefined": 0}
                                               for m in models}
        # per model and LRP method: running sum, min and max of the conservation share, and the images without one
        self.kept: dict[str, dict[str, dict[str, Any]]] = {m: {} for m in models}
        self.same = self.both = 0

    def add(self, records: list[dict[str, Any]]) -> None:
        by_model = {r["model"]: r for r in records}
        for name, r in by_model.items():
            a = self.acc[name]
            a["images"] += 1
            for metric, values in r["blocks"].items():
                a["blocks"].setdefault(metric, RunningMean()).add(values)
                a["image_means"].setdefault(metric, RunningMean()).add(np.mean(values))
            if "rollout" in r["maps"]:
                a["rollout"].add(r["maps"]["rollout"])
            for method, scores in r["faithfulness"].items():
                for k, v in scores.items():
                    a["faithfulness"].setdefault(method, {}).setdefault(k, RunningMean()).add(v)
            a["predictions"][r["pred_class"]] += 1
            # the scorecard's per-image scores, kept whole (a float per image, method and metric): its bootstrap
            # intervals and rankings need every image
            for method, scores in r.get("scorecard", {}).items():
                for metric, v in scores.items():
                    a["scorecard"].setdefault(method, {}).setdefault(metric, []).append(np.nan if v is None else v)
            if "knockouts" in r:
                a["knockouts"].add(r["knockouts"]["logit_drop"])
                a["knockout_seconds"] += r["knockouts"]["seconds"]
            ig = r.get("completeness", {}).get("integrated_gradients")
            if ig is not None:
                g = self.gap[name]
                if ig["relative_gap"] is None:
                    g["undefined"] += 1
                else:
                    g["n"] += 1
                    g["sum"] += ig["relative_gap"]
                    g["max"] = max(g["max"], ig["relative_gap"])
                    g["above"] += ig["relative_gap"] > self.tolerance
            for method, check in r.get("conservation", {}).items():
                c = self.kept[name].setdefault(method, {"n": 0, "sum": 0.0, "min": math.inf, "max": -math.inf,
                                                        "undefined": 0})
                share = check["share"]
                if share is None:  # the explained logit was 0
                    c["undefined"] += 1
                else:
                    c["n"] += 1
                    c["sum"] += share
                    c["min"], c["max"] = min(c["min"], share), max(c["max"], share)
        if len(self.models) >= 2 and self.models[0] in by_model and self.models[1] in by_model:
            self.both += 1
            self.same += by_model[self.models[0]]["pred_index"] == by_model[self.models[1]]["pred_index"]

    def scorecard(self, seed: int = 0) -> Any:
        """`analysis.scorecard.Scorecard` of the per-image scores seen so far (None without any)."""
        from analysis.scorecard import METRICS, RANDOM, Scorecard

        models = [m for m in self.models if self.acc[m]["scorecard"]]
        if not models:
            return None
        methods = list(dict.fromkeys(k for m in models for k in self.acc[m]["scorecard"]))
        methods = [k for k in methods if k != RANDOM] + ([RANDOM] if RANDOM in methods else [])
        scores = {(m, k, metric): np.asarray(v, dtype=np.float64) for m in models
                  for k, per in self.acc[m]["scorecard"].items() for metric, v in per.items()}
        card = Scorecard(models, methods, [k for k in METRICS], scores, seed=seed)
        card.images = {m: self.acc[m]["images"] for m in models}
        return card

    def agreement(self) -> float | None:
        """Fraction of images on which the first two models predict the same class index."""
        return self.same / self.both if self.both else None

    def result(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, a in self.acc.items():
            if not a["images"]:
                continue
            s: dict[str, Any] = {"images": a["images"], "blocks": {k: v.result() for k, v in a["blocks"].items()},
                                 "image_means": {k: v.result() for k, v in a["image_means"].items()},
                                 "faithfulness": {m: {k: v.result() for k, v in scores.items()}
                                                  for m, scores in a["faithfulness"].items()}}
            if a["rollout"].n:
                s["mean_rollout"] = a["rollout"].result()["mean"]
            if a["knockouts"].n:
                s["knockouts"] = {"mean_logit_drop": a["knockouts"].result()["mean"], "images": a["knockouts"].n,
                                  "seconds": a["knockout_seconds"],
                                  "seconds_per_image": a["knockout_seconds"] / a["knockouts"].n}
            s["predictions"] = dict(sorted(a["predictions"].items(), key=lambda kv: (-kv[1], kv[0])))
            g = self.gap[name]
            if g["n"] or g["undefined"]:
                s["completeness"] = {"integrated_gradients": {
                    "images": g["n"], "mean_relative_gap": g["sum"] / g["n"] if g["n"] else None,
                    "max_relative_gap": g["max"] if g["n"] else None, "above_tolerance": g["above"],
                    "tolerance": self.tolerance, "undefined": g["undefined"]}}
            if self.kept[name]:
                s["conservation"] = {method: {"images": c["n"], "mean_share": c["sum"] / c["n"] if c["n"] else None,
                                              "min_share": c["min"] if c["n"] else None,
                                              "max_share": c["max"] if c["n"] else None, "undefined": c["undefined"]}
                                     for method, c in self.kept[name].items()}
            out[name] = s
        return out


class LeastConfident:
    """The k images whose least confident model gives its prediction the lowest probability (ties: first image)."""

    def __init__(self, k: int) -> None:
        self.k, self.heap = k, []  # max-heap on confidence via negation: the root is the most confident kept

    def add(self, index: int, records: list[dict[str, Any]]) -> None:
        if self.k <= 0 or not records:
            return
        item = (-min(r["pred_prob"] for r in records), -index)
        if len(self.heap) < self.k:
            heapq.heappush(self.heap, item)
        elif item > self.heap[0]:
            heapq.heapreplace(self.heap, item)

    def indices(self) -> list[int]:
        """From the least confident up."""
        return [-i for _, i in sorted(self.heap, reverse=True)]


def csv_fields(depth: int, opts: Options) -> list[str]:
    """Columns, known before the first record: scalars, rollout peak, per metric its mean and blocks
    0 .. depth-1 (the deepest model's), AUCs, IG completeness, LRP conservation. A shallower model leaves deeper
    cells empty."""
    a = opts.analyses
    fields = [*SCALAR_FIELDS] + (list(ROLLOUT_FIELDS) if "rollout" in a else [])
    metrics = (list(REDUNDANCY_METRICS) if "redundancy" in a else []) + (
        list(ATTENTION_METRICS) if "attention" in a else [])
    fields += [f"{m}_{s}" for m in metrics for s in ("mean", *(f"b{i}" for i in range(depth)))]
    if "faithfulness" in a:
        fields += [f"{m}_{k}" for m in opts.maps() for k in ("deletion_auc", "insertion_auc")]
    if "explain" in a and "integrated_gradients" in opts.methods:
        fields += [f"integrated_gradients_{k}" for k in COMPLETENESS_FIELDS]
    if "explain" in a:
        fields += [f"{m}_conservation_{k}" for m in opts.methods if m in LRP_METHODS for k in CONSERVATION_FIELDS]
    if opts.knockouts:
        fields += list(KNOCKOUT_FIELDS)
    if "scorecard" in a:
        from analysis.scorecard import METRICS, RANDOM

        fields += [f"{m}_{k}" for m in (*opts.maps(), RANDOM) for k in METRICS]
    return fields


def flat_row(rec: dict[str, Any]) -> dict[str, Any]:
    """One CSV row: scalars, each block metric as METRIC_mean and METRIC_bI, AUCs as METHOD_SCORE, IG completeness
    as integrated_gradients_KEY, LRP conservation as METHOD_conservation_share / _logit."""
    row = {k: rec[k] for k in (*SCALAR_FIELDS, *ROLLOUT_FIELDS) if k in rec}
    for metric, values in rec["blocks"].items():
        row[f"{metric}_mean"] = float(np.mean(values))
        row.update({f"{metric}_b{i}": v for i, v in enumerate(values)})
    for method, scores in rec["faithfulness"].items():
        row.update({f"{method}_{k}": v for k, v in scores.items()})
    for method, scores in rec.get("scorecard", {}).items():
        row.update({f"{method}_{k}": v for k, v in scores.items()})
    for method, check in rec.get("completeness", {}).items():
        row.update({f"{method}_{k}": check[k] for k in COMPLETENESS_FIELDS})
    for method, check in rec.get("conservation", {}).items():
        row.update({f"{method}_conservation_{k}": check[k] for k in CONSERVATION_FIELDS})
    if "knockouts" in rec:
        grid = np.asarray(rec["knockouts"]["logit_drop"])
        block, head = np.unravel_index(int(grid.argmax()), grid.shape)
        row.update({"knockout_top_block": int(block), "knockout_top_head": int(head),
                    "knockout_max_logit_drop": float(grid.max()), "knockout_seconds": rec["knockouts"]["seconds"]})
    return row


class ResultWriter:
    """results.csv and the records of results.json, one record at a time, into temporary files;
    `finish` puts them in place (a reader never sees half a file)."""

    def __init__(self, out: Path, fields: list[str]) -> None:
        self.out = out
        self.csv_tmp, self.rec_tmp = out / "results.csv.tmp", out / "results.records.tmp"
        self._csv: IO[str] = open(self.csv_tmp, "w", newline="")
        self._rec: IO[str] = open(self.rec_tmp, "w")
        self.writer = csv.DictWriter(self._csv, fieldnames=fields)
        self.writer.writeheader()
        self.count = 0

    def add(self, rec: dict[str, Any]) -> None:
        self.writer.writerow(flat_row(rec))
        self._rec.write((",\n" if self.count else "\n") + json.dumps(rec))
        self.count += 1

    def finish(self, report: dict[str, Any]) -> None:
        """results.json = `report` (everything but the records) + "results": the records streamed in."""
        self._csv.close()
        self._rec.close()
        os.replace(self.csv_tmp, self.out / "results.csv")
        head = json.dumps(report, indent=1)
        tmp = self.out / "results.json.tmp"
        with open(tmp, "w") as f, open(self.rec_tmp) as records:
            f.write(head[:-2] + ',\n "results": [')  # head ends in "\n}"
            shutil.copyfileobj(records, f)
            f.write("\n ]\n}\n")
        os.replace(tmp, self.out / "results.json")
        self.rec_tmp.unlink()
