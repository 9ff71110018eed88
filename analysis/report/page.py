"""report.html: one page built from the report's JSON (settings, run, summaries, skipped files, pictured images)."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from analysis.report.analyse import ATTENTION_METRICS, LRP_METHODS, METRIC_LABELS, REDUNDANCY_METRICS
from analysis.report.pictures import SIGNED_LEGEND, SIGNED_MAPS, signed_lut

STYLE = ("body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;"
         "margin:.5em 0}td,th{border:1px solid #ccc;padding:4px 6px;vertical-align:top;font-size:13px}"
         "th{background:#f4f4f4}img{margin:1px}.cmd code{font-size:12px;word-break:break-all}"
         "figure{margin:1em 0}figure img{max-width:100%}figcaption{font-size:13px;color:#555}"
         ".map{display:inline-block;vertical-align:top;text-align:center;font-size:11px;margin:0 2px}"
         ".warn{color:#b00020;font-weight:600}")


def image_src(out: Path, rel: str, embed: bool) -> str:
    if not embed:
        return html.escape(rel)
    mime = "image/png" if rel.endswith(".png") else "image/jpeg"
    return f"data:{mime};base64," + base64.b64encode((out / rel).read_bytes()).decode("ascii")


def gap_note(check: dict[str, Any] | None, tolerance: float) -> str:
    """The IG completeness gap shown beside its map, flagged when above the tolerance."""
    if check is None:
        return ""
    gap = check.get("relative_gap")
    if gap is None:
        return "<br><span class=warn>completeness gap undefined: f(x) = f(baseline)</span>"
    text = f"completeness gap {gap:.1%}"
    if gap > tolerance:
        return (f"<br><span class=warn title='|sum of attributions - (f(x) - f(baseline))| / |f(x) - f(baseline)| "
                f"above {tolerance:.0%}: the attributions do not add up to the output change; use more --ig-steps'>"
                f"&#9888; {text} &gt; {tolerance:.0%}</span>")
    return f"<br><small>{text}</small>"


def conservation_note(check: dict[str, Any] | None) -> str:
    """An LRP map's conservation shown beside it: the pixels' share of the explained logit, and that logit."""
    if check is None:
        return ""
    logit = "n/a" if check["logit"] is None else f"{check['logit']:.2f}"
    title = ("title='sum of the pixels&#39; relevance / the explained logit (the predicted class&#39;s): 100% = the "
             "relevance of the logit all reaches the pixels'")
    if check["share"] is None:
        return f"<br><small class=conservation {title}>conservation undefined: the logit is {logit}</small>"
    return f"<br><small class=conservation {title}>conservation {check['share']:.1%} of the logit {logit}</small>"


def signed_legend(names: list[str], others: bool) -> str:
    """The legend of the signed maps drawn (`pictures.SIGNED_MAPS`), with swatches of the colours `overlays`
    gives +max and -max (`pictures.SIGNED_LEGEND`); `others`: unsigned maps are drawn too."""
    if not names:
        return ""
    lut = signed_lut()
    swatch = lambda i: (f"<span style='display:inline-block;width:.9em;height:.9em;vertical-align:middle;"  # noqa: E731
                        f"border:1px solid #999;background:rgb{tuple(int(c) for c in lut[i])}'></span> ")
    words = ", ".join((swatch(i) if i is not None else "") + html.escape(text) for i, text in SIGNED_LEGEND)
    rest = " The other maps: each map's min (dark) to max (bright)." if others else ""
    return f"<p class=legend>{html.escape(', '.join(names))}: signed maps, {words}.{rest}</p>"


def grid_table(grid: list[list[float]], caption: str = "") -> str:
    """A (blocks, heads) grid as a small HTML table, cells coloured red (positive) / blue (negative) by value."""
    lim = max((abs(v) for row in grid for v in row), default=0.0) or 1.0
    rows = []
    for b, row in enumerate(grid):
        cells = []
        for v in row:
            a = min(abs(v) / lim, 1.0)
            colour = f"rgba(200,30,30,{a:.2f})" if v >= 0 else f"rgba(30,80,200,{a:.2f})"
            cells.append(f"<td style='background:{colour};padding:1px 4px;font-size:10px'>{v:+.2f}</td>")
        rows.append(f"<tr><th style='font-size:10px;padding:1px 3px'>{b}</th>{''.join(cells)}</tr>")
    head = "".join(f"<th style='font-size:10px;padding:1px 3px'>h{h}</th>" for h in range(len(grid[0]) if grid else 0))
    cap = f"<caption style='font-size:11px'>{html.escape(caption)}</caption>" if caption else ""
    return f"<table class=grid>{cap}<tr><th></th>{head}</tr>{''.join(rows)}</table>"


def knockout_summary(summary: dict[str, Any], total_s: float) -> str:
    """The mean head-importance grid of each model and what computing the grids cost."""
    with_grids = {m: s["knockouts"] for m, s in summary.items() if "knockouts" in s}
    if not with_grids:
        return ""
    spent = sum(k["seconds"] for k in with_grids.values())
    parts = ["<h2>Head knock-outs</h2><p>Per image, the predicted class's logit drop when each backbone head "
             "alone is zero-ablated (its slice of attn&nbsp;@&nbsp;v set to 0; rows blocks, columns heads); here "
             "the mean over images. Cost: "
             + "; ".join(f"{html.escape(m)} {k['seconds']:.1f} s ({k['seconds_per_image'] * 1e3:.0f} ms per image)"
                         for m, k in with_grids.items())
             + f", {spent / max(total_s, 1e-9):.0%} of the run's {total_s:.1f} s.</p><div>"]
    for m, k in with_grids.items():
        caption = f"{m}, mean over {k['images']} images"
        parts.append(f"<div style='display:inline-block;margin-right:2em;vertical-align:top'>"
                     f"{grid_table(k['mean_logit_drop'], caption)}</div>")
    return "".join(parts) + "</div>"


def scorecard_section(card: dict[str, Any] | None) -> str:
    """The scorecard: per model a table (methods x metrics: mean [interval] (rank)), Kendall's tau between the
    metrics' rankings, and the verdicts read off the numbers."""
    if not card:
        return ""
    esc = html.escape
    metrics = card["metrics"]
    cells = {(r["model"], r["method"], r["metric"]): r for r in card["table"]}
    num = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    parts = ["<h2 id=scorecard>Explanation scorecard</h2><p>Every map and a random map (the floor) scored per image; "
             f"mean over images [{card['level']:.0%} percentile-bootstrap interval] (rank among the methods, "
             "1 = best). "
             "Deletion / insertion: AUC of the predicted class's probability, blurred baseline; ROAD: mean probability "
             "with the most (MoRF) / least (LeRF) relevant pixels replaced by noisy linear imputation (Rong et al. "
             "2022); random logit: Quantus's SSIM between the maps of the predicted and of a random other class "
             "(Sixt et al. 2020); sanity check: |Spearman| between the absolute maps of the intact and of the fully "
             "re-initialised model (Adebayo et al. 2018).</p>"]
    for model in card["images"]:
        head = "".join(f"<th>{esc(m['label'])}<br><small>{'lower' if m['lower_is_better'] else 'higher'} is better"
                       f"</small></th>" for m in metrics.values())
        rows = []
        for method in card["methods"]:
            if (model, method, next(iter(metrics))) not in cells:
                continue
            tds = []
            for metric in metrics:
                c = cells[model, method, metric]
                rank = f" <small>({c['rank']})</small>" if c["rank"] is not None else ""
                tds.append("<td>n/a</td>" if not c["n"] else
                           f"<td>{num(c['mean'])} [{num(c['low'])}, {num(c['high'])}]{rank}</td>")
            rows.append(f"<tr><td>{esc(method)}</td>{''.join(tds)}</tr>")
        parts.append(f"<h3>{esc(model)} ({card['images'][model]} images)</h3><table class=scorecard><tr><th>method</th>"
                     f"{head}</tr>{''.join(rows)}</table>")
        taus = card["kendall"].get(model, [])
        if taus:
            parts.append("<table class=kendall><caption style='font-size:12px'>Kendall's tau between the rankings "
                         "of two metrics [bootstrap interval]</caption><tr><th>metrics</th><th>tau</th></tr>" + "".join(
                             f"<tr><td>{esc(metrics[t['metrics'][0]]['label'])} vs "
                             f"{esc(metrics[t['metrics'][1]]['label'])}</td><td>{num(t['tau'])} "
                             f"[{num(t['low'])}, {num(t['high'])}]</td></tr>" for t in taus) + "</table>")
    parts.append("<h3>Verdicts</h3><ul class=verdicts>" + "".join(f"<li>{esc(v)}</li>" for v in card["verdicts"])
                 + "</ul>")
    return "".join(parts)


def write_html(report: dict[str, Any], out: Path, embed: bool) -> Path:
    """report.html: settings, run, summary numbers and figures, skipped files, one row per pictured image."""
    esc = html.escape
    models = [m["name"] for m in report["models"]]
    maps = report["settings"]["maps"]
    tolerance = report["settings"].get("completeness_tolerance", 0.05)
    img = lambda rel, alt, w: (f'<img src="{image_src(out, rel, embed)}" alt="{esc(alt)}"'  # noqa: E731
                               + (f' width="{w}">' if w else ">"))
    run = report.get("run", {})
    parts = [f"<h1>t2t-lens report</h1><p>{esc(report['created'])} &middot; device {esc(report['device'])} &middot; "
             f"{report['counts']['analysed']} images analysed, {report['counts']['skipped']} skipped &middot; "
             f"{report['timing']['total_s']:.1f} s ({report['timing']['images_per_s']:.2f} images/s)"
             + (f" &middot; {run['world_size']} processes ({', '.join(map(str, run['images_per_rank']))} files each)"
                if run.get("world_size", 1) > 1 else "") + "</p>",
             f"<p class=cmd><code>{esc(report['command'])}</code></p>", "<h2>Models</h2><table><tr><th>model</th>"
             "<th>weights</th><th>trained on</th><th>attention scale</th><th>blocks</th><th>params</th><th>input</th>"
             "<th>test acc (card)</th></tr>"]
    for m in report["models"]:
        acc = f"{m['test_acc']:.2%}" if m.get("test_acc") is not None else ""
        key = f" ({esc(m['state_dict_key'])})" if m.get("state_dict_key") else ""
        scale = f"{m['qk_scale']:.4g}" if m.get("qk_scale") else ""
        parts.append(f"<tr><td>{esc(m['name'])}</td><td>{esc(str(m['weights']))}{key}</td>"
                     f"<td>{esc(str(m.get('dataset') or 'untrained'))}</td><td>{scale}</td><td>{m['num_blocks']}</td>"
                     f"<td>{m['params']:,}</td><td>{m['img_size']} px, crop {m['crop_pct']}, "
                     f"{esc(str(m.get('interpolation', 'bicubic')))}</td><td>{acc}</td></tr>")
    parts.append("</table>")

    summary = report["summary"]
    if summary:
        parts.append("<h2>Summary</h2><p>Mean over images of each block metric averaged over the blocks "
                     "(95% CI over images, normal approximation).</p><table><tr><th>metric</th>"
                     + "".join(f"<th>{esc(m)}</th>" for m in summary) + "</tr>")
        metrics = [k for k in (*REDUNDANCY_METRICS, *ATTENTION_METRICS)
                   if any(k in s["image_means"] for s in summary.values())]
        for metric in metrics:
            cells = []
            for m in summary:
                st = summary[m]["image_means"].get(metric)
                cells.append(f"<td>{st['mean']:.4g} [{st['ci_low']:.4g}, {st['ci_high']:.4g}]</td>"
                             if st and st["n"] > 1 else f"<td>{st['mean']:.4g}</td>" if st else "<td></td>")
            parts.append(f"<tr><td>{esc(METRIC_LABELS.get(metric, metric))}</td>{''.join(cells)}</tr>")
        parts.append("</table>")
        for m, s in summary.items():
            ig = s.get("completeness", {}).get("integrated_gradients")
            if ig and ig["images"]:
                flag = " class=warn" if ig["above_tolerance"] else ""
                parts.append(f"<p{flag}>{esc(m)}, Integrated Gradients completeness: mean relative gap "
                             f"{ig['mean_relative_gap']:.1%}, largest {ig['max_relative_gap']:.1%}; "
                             f"{ig['above_tolerance']} of {ig['images']} images above {ig['tolerance']:.0%}.</p>")
        for m, s in summary.items():
            for method, c in s.get("conservation", {}).items():
                if not c["images"]:
                    parts.append(f"<p class=conservation>{esc(m)}, {esc(method)} conservation undefined on every "
                                 f"image (logit 0).</p>")
                    continue
                undefined = f"; undefined on {c['undefined']} (logit 0)" if c["undefined"] else ""
                parts.append(f"<p class=conservation>{esc(m)}, {esc(method)} conservation (the pixels' share of the "
                             f"explained logit): mean {c['mean_share']:.1%}, range {c['min_share']:.1%} to "
                             f"{c['max_share']:.1%} over {c['images']} images{undefined}.</p>")
        if len(models) == 2 and report["counts"]["analysed"] and report.get("agreement") is not None:
            parts.append(f"<p>The two models predict the same class for {report['agreement']:.1%} of the images.</p>")
        for title, rel in report["figures"].items():
            parts.append(f"<figure>{img('figures/' + rel, title, None)}<figcaption>{esc(title)}</figcaption></figure>")

    parts.append(scorecard_section(report.get("scorecard")))
    if summary:
        parts.append(knockout_summary(summary, report["timing"]["total_s"]))
    parts.append(f"<h2 id=skipped>Skipped files ({len(report['skipped'])})</h2>")
    if report["skipped"]:
        parts.append("<table class=skipped><tr><th>file</th><th>reason</th></tr>" + "".join(
            f"<tr><td>{esc(s['path'])}</td><td>{esc(s['reason'])}</td></tr>" for s in report["skipped"]) + "</table>")
    else:
        parts.append("<p>None: every file was a readable image.</p>")

    pictured = report.get("pictured", [])
    parts.append(f"<h2>Images</h2><p>{len(pictured)} of {report['counts']['analysed']} images pictured "
                 f"({esc(report['settings'].get('pictures_rule', ''))}); every image's numbers are in results.csv "
                 "and results.json.</p>" + signed_legend([k for k in maps if k in SIGNED_MAPS],
                                                            any(k not in SIGNED_MAPS for k in maps))
                 + "<table class=images><tr><th>image</th>" + "".join(
                     f"<th>{esc(m)}<br><small>{' &middot; '.join(esc(k) for k in maps)}</small></th>" for m in models)
                 + "</tr>")
    for entry in pictured:
        per_model = {r["model"]: r for r in entry["models"]}
        first = entry["models"][0]
        why = "" if entry["why"] == "first" else f"<br><small>({esc(entry['why'])})</small>"
        cells = [f"<td>{img(first['figures']['input'], entry['image'], 128)}<br><small>{esc(entry['image'])}</small>"
                 f"{why}</td>"]
        for m in models:
            r = per_model.get(m)
            if r is None:
                cells.append("<td></td>")
                continue
            width = 128 if len(maps) <= 3 else 100
            figs = "".join(
                f"<span class=map style='width:{width}px'>{img(r['figures'][k], f'{m} {k}', width)}"
                f"{gap_note(r.get('completeness', {}).get(k), tolerance) if k == 'integrated_gradients' else ''}"
                f"{conservation_note(r.get('conservation', {}).get(k)) if k in LRP_METHODS else ''}"
                f"</span>" for k in maps if k in r["figures"])
            grid = (grid_table(r["knockouts"]["logit_drop"], "logit drop per knocked-out head")
                    if "knockouts" in r else "")
            cells.append(f"<td><b>{esc(r['pred_class'])}</b> {r['pred_prob']:.1%}<br>{figs}{grid}</td>")
        parts.append("<tr>" + "".join(cells) + "</tr>")
    parts.append("</table>")
    page = (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>t2t-lens report</title>"
            f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>")
    path = out / "report.html"
    tmp = out / "report.html.tmp"
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path
