"""Batch analysis of many images with several models: a CSV, a JSON, figures and one HTML page.

    python -m analysis.report --models t2t_vit_7 deit_tiny_patch16_224 --images photos/ --out report/
    torchrun --nproc_per_node=4 -m analysis.report --images imagenet/val --out report/   # sharded over 4 processes

For every image and every model: the prediction, attention rollout, the redundancy metrics of every block
(`analysis.redundancy`), mean attention distance and entropy per block and head (`analysis.attention_stats`)
and explanation maps (gradient rollout and Chefer relevance by default; any of `analysis.explain.EXPLAINERS`
with --methods; Integrated Gradients with its completeness gap; AttnLRP and CP-LRP with their conservation,
the pixels' share of the explained logit; signed maps, `pictures.SIGNED_MAPS`, drawn red for the class and
blue against it), optionally scored by deletion / insertion AUC (--faithfulness) or by the whole explanation
scorecard (--scorecard, `analysis.scorecard`: deletion, insertion, ROAD MoRF / LeRF, Random Logit and the
sanity check per image, with a random map as the floor; report.html gets the method x metric table with
bootstrap intervals, Kendall's tau between the metrics' rankings and verdicts), and with --knockouts each
model's head-importance grid (the predicted class's logit and probability drop when each backbone head alone
is zero-ablated, `analysis.knockout`; its time is measured and shown). Files that are not usable images
(corrupt, not an image, empty) are skipped and listed with the reason: one bad file never stops the run.

Written to --out:
    results.csv   one row per (image, model), in file order: prediction, rollout peak, per-block metrics, AUCs,
                  IG completeness, LRP conservation (METHOD_conservation_share, METHOD_conservation_logit)
    results.json  everything: settings, the run (world size, files per rank), skipped files, per-model
                  summaries (mean and 95% confidence interval over images) and the per-image records
                  (token-grid maps, per-head statistics) under "results"
    figures/      the pictured images and each map over them (JPEG, or PNG with --image-format png):
                  the first --pictures and the --least-confident ones; summary plots (PNG, matplotlib)
    report.html   one page to open in a browser (figures inlined as base64 unless --html link)

Memory does not grow with the number of images (except the scorecard's few floats per image, map and
metric, which its bootstrap needs whole): finished images go to --out/journal.jsonl as they
are made (which also lets --resume continue a killed run), summaries are running statistics, and
the outputs are written from the journal at the end. Images are decoded in DataLoader worker
processes with each model's own eval transform. Under torchrun every rank analyses a disjoint
shard and rank 0 writes; the outputs do not depend on the number of processes.

The package, by stage: `inputs` (files, models, DataLoader), `analyse` (one batch through one
model), `writers` (running statistics, CSV and JSON), `pictures` (overlays, summary plots),
`page` (the HTML), `cli` (arguments and the run).
"""

from analysis.report.analyse import (
    ANALYSES,
    ATTENTION_METRICS,
    DEFAULT_ANALYSES,
    DEFAULT_METHODS,
    GRAD_METHODS,
    LRP_METHODS,
    METRIC_LABELS,
    REDUNDANCY_METRICS,
    Options,
    analyse_batch,
    image_records,
    map_entropy,
)
from analysis.report.cli import main, parse_args, run
from analysis.report.inputs import Prepared, ReportImages, Skipped, find_images, make_loader, prepare, transform_key
from analysis.report.page import write_html
from analysis.report.pictures import (
    SIGNED_MAPS,
    colour_lut,
    overlays,
    save_picture,
    signed_lut,
    signed_scale,
    slug,
    summary_figures,
)
from analysis.report.writers import RunningMean, Summary, csv_fields, flat_row, mean_ci
from t2t.loading import checkpoint_class_names, describe_model, load_model, parse_weights

__all__ = [
    "ANALYSES", "ATTENTION_METRICS", "DEFAULT_ANALYSES", "DEFAULT_METHODS", "GRAD_METHODS", "LRP_METHODS",
    "METRIC_LABELS", "REDUNDANCY_METRICS", "Options", "analyse_batch", "image_records", "map_entropy", "main",
    "parse_args", "run", "Prepared", "ReportImages", "Skipped", "find_images", "make_loader", "prepare",
    "transform_key", "write_html", "SIGNED_MAPS", "colour_lut", "signed_lut", "signed_scale", "overlays",
    "save_picture", "slug", "summary_figures", "RunningMean", "Summary", "csv_fields", "flat_row", "mean_ci",
    "checkpoint_class_names", "describe_model", "load_model", "parse_weights",
]
