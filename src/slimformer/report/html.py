"""Render results as one self-contained HTML page with plotly charts (plotly's JavaScript inlined:
it opens offline). Everything shown comes from the result JSON; nothing is measured here.

    render_html(result)                 # one run: report.html beside its result.json
    render_comparison([(label, d), ...])  # several runs on one quality / speed / bytes front

The page embeds the JSON it was drawn from (`<script id="slimformer-data" type="application/json">`),
and every chart is a `<div class="sf-chart">` with a `data-points` count, so a test can check in a
browser that what rendered is what the JSON says.
"""
from __future__ import annotations

import html
import json

from .markdown import _side_by_side, fmt, speed_summary
from .pareto import pareto_front

LOWER_IS_BETTER = ("perplexity", "loss", "wer", "kl")
# details keys holding a figure per layer (factorization ranks, sparsity, sensitivities, sizes left by pruning)
PER_LAYER_KEYS = ("per_layer", "sensitivity", "units_per_layer", "intermediate_per_layer")


def quality_key(d: dict) -> tuple[str | None, bool]:
    """(the figure that stands for quality, whether higher is better): the first task metric, else
    the fidelity cosine."""
    b = (d.get("baseline") or {}).get("metrics") or {}
    for k, v in b.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return k, not any(s in k for s in LOWER_IS_BETTER)
    if (d.get("compressed") or {}).get("fidelity", {}).get("cosine") is not None:
        return "cosine", True
    return None, True


def stage_points(d: dict) -> list[dict]:
    """The original and every evaluated stage as {label, quality, throughput_x, mb}; a stage with
    no figure for one axis keeps None there."""
    key, _ = quality_key(d)
    b = d.get("baseline") or {}
    be = b.get("efficiency") or {}
    tb = be.get("throughput")

    def point(label, metrics, eff, fidelity=None):
        q = (metrics or {}).get(key) if key != "cosine" else (fidelity or {}).get("cosine", 1.0)
        t = eff.get("throughput")
        return {"label": label, "quality": q, "throughput_x": t / tb if t and tb else None,
                "mb": eff["bytes"] / 1e6 if eff.get("bytes") else None}

    pts = [point("original", b.get("metrics"), be, {"cosine": 1.0})] if b else []
    stages = d.get("stages") or []
    for st in stages:
        pts.append(point(f"{st['step']}. {st['method']}", st.get("metrics"), st.get("efficiency") or {}))
    if not stages and d.get("compressed"):
        c = d["compressed"]
        pts.append(point("compressed", c.get("metrics"), c.get("efficiency") or {}, c.get("fidelity")))
    return pts


def _esc(v) -> str:
    return html.escape(fmt(v) if not isinstance(v, str) else v)


def _table(headers: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


class _Page:
    def __init__(self, title: str):
        self.title, self.parts, self.n = title, [], 0

    def add(self, text: str) -> None:
        self.parts.append(text)

    def chart(self, fig, points: int, name: str) -> None:
        """A plotly figure as a div (its data-points: the number of points drawn)."""
        self.n += 1
        div = fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"sf-chart-{self.n}",
                          config={"displaylogo": False, "responsive": True})
        self.add(f'<div class="sf-chart" data-name="{html.escape(name)}" data-points="{points}">{div}</div>')

    def render(self, data) -> str:
        from plotly.offline import get_plotlyjs

        blob = json.dumps(data, default=str).replace("</", "<\\/")
        return "\n".join([
            "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{html.escape(self.title)}</title>", f"<style>{CSS}</style>",
            f"<script>{get_plotlyjs()}</script>", "</head><body>",
            f"<h1>{html.escape(self.title)}</h1>", *self.parts,
            f'<script id="slimformer-data" type="application/json">{blob}</script>', "</body></html>"])


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}.note{color:#555}.bad{color:#b00}
.sf-chart{margin:1em 0}code{background:#f3f3f3;padding:0 .2em}"""


def _scatter(points: list[dict], x: str, xtitle: str, qname: str, higher: bool, title: str, front: bool = False):
    import plotly.graph_objects as go

    pts = [p for p in points if p.get(x) is not None and p.get("quality") is not None]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[p[x] for p in pts], y=[p["quality"] for p in pts], mode="markers+text",
                             text=[p["label"] for p in pts], textposition="top center", name="runs",
                             marker={"size": 11}))
    if front and len(pts) > 1:
        idx = pareto_front([(p[x] if x != "mb" else -p[x], p["quality"] if higher else -p["quality"]) for p in pts])
        f = sorted((pts[i] for i in idx), key=lambda p: p[x])
        fig.add_trace(go.Scatter(x=[p[x] for p in f], y=[p["quality"] for p in f], mode="lines",
                                 name="Pareto front", line={"dash": "dot"}, hoverinfo="skip"))
    fig.update_layout(title=title, xaxis_title=xtitle, yaxis_title=qname + ("" if higher else " (lower is better)"),
                      height=420, margin={"t": 50, "l": 60, "r": 20, "b": 50}, showlegend=front)
    return fig, len(pts)


def render_html(result) -> str:
    """One run (a CompressionResult or its dict) as a self-contained HTML page."""
    import plotly.graph_objects as go

    d = result if isinstance(result, dict) else result.to_dict()
    empty = {"metrics": {}, "fidelity": {}, "efficiency": {}, "env": {}}
    b, c = d.get("baseline") or empty, d.get("compressed") or empty
    recipe = d.get("recipe") or {}
    page = _Page(f"slimformer report: {recipe.get('name', '')}")
    page.add(f"<p>model <code>{html.escape(str(d.get('model', '')))}</code>; recipe: "
             f"{html.escape(recipe.get('description', '') or str(recipe.get('source', '')))}</p>")
    if d.get("baseline") is None:
        page.add('<p class="note">Not evaluated (steps only): no before / after figures.</p>')
    for title, section, change in (("Task metrics", "metrics", True), ("Efficiency", "efficiency", False)):
        rows = _side_by_side(b.get(section) or {}, c.get(section) or {}, change=change)
        if rows:
            page.add(f"<h2>{title}</h2>" + _table(["figure", "original", "compressed", "change" if change else "ratio"],
                                                  rows))
    said = speed_summary(b.get("efficiency") or {}, c.get("efficiency") or {})
    if said:
        page.add(f"<p>{html.escape(said.replace('**', ''))}</p>")
    if c.get("fidelity"):
        page.add("<h2>Fidelity to the original</h2>" + _table(["measure", "value"],
                                                              [[k, v] for k, v in c["fidelity"].items()]))
    key, higher = quality_key(d)
    pts = stage_points(d)
    if key and len(pts) > 1:
        page.add("<h2>Trade-off</h2><p class='note'>The original and each stage of the recipe.</p>")
        for x, xt, t in (("throughput_x", "throughput / original's", "quality vs speed"),
                         ("mb", "MB on disk", "quality vs bytes")):
            fig, n = _scatter(pts, x, xt, key, higher, t)
            if n:
                page.chart(fig, n, t)
    steps = d.get("steps") or []
    if steps:
        rows = [[s["method"], s["seconds"], s["params_before"], s["params_after"], s["bytes_before"] / 1e6,
                 s["bytes_after"] / 1e6, "; ".join(s.get("warnings") or [])] for s in steps]
        page.add("<h2>Steps</h2>" + _table(["method", "seconds", "params before", "params after", "MB before",
                                            "MB after", "notes"], rows))
    mb = d.get("module_bytes") or {}
    if mb:
        fig = go.Figure(go.Bar(x=[v / 1e6 for v in mb.values()], y=list(mb), orientation="h"))
        fig.update_layout(title="bytes per module (MB, as saved)", height=120 + 22 * len(mb),
                          margin={"t": 40, "l": 200, "r": 20, "b": 40})
        page.chart(fig, len(mb), "bytes per module")
    for i, s in enumerate(steps):
        _per_layer(page, i, s)
        _curve(page, i, s)
    env = c.get("env") or b.get("env") or {}
    if env:
        keep = [k for k in ("slimformer", "torch", "transformers", "cpu_model", "cpu_capability", "cpu_flags", "threads",
                            "python", "machine", "runtime", "commit") if k in env]
        page.add("<h2>Environment</h2>" + _table(["", "value"], [[k, ", ".join(env[k]) if isinstance(env[k], list)
                                                                  else str(env[k])] for k in keep]))
    return page.render(d)


def _per_layer(page: _Page, i: int, s: dict) -> None:
    """A bar per layer of a step's per-layer figure (rank, sparsity, sensitivity, ...)."""
    import plotly.graph_objects as go

    det = s.get("details") or {}
    found = next(((k, det[k]) for k in PER_LAYER_KEYS if isinstance(det.get(k), dict) and det[k]), None)
    if found is None:
        return
    what, per = found
    first = next(iter(per.values()))
    if isinstance(first, dict):
        keys = [k for k, v in first.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if not keys:
            return
        key = next((k for k in ("rank", "sparsity", "relative_loss", "kl", "drop") if k in keys), keys[0])
        vals = {n: v.get(key) for n, v in per.items()}
    else:
        key, vals = what.replace("_", " "), per
    vals = {str(n): v for n, v in vals.items() if isinstance(v, (int, float))}
    if not vals:
        return
    fig = go.Figure(go.Bar(x=list(vals), y=list(vals.values())))
    fig.update_layout(title=f"step {i + 1} ({s['method']}): {key} per layer", height=360,
                      margin={"t": 40, "l": 60, "r": 20, "b": 120}, xaxis={"tickangle": -60})
    page.chart(fig, len(vals), f"{s['method']} per layer")


def _curve(page: _Page, i: int, s: dict) -> None:
    import plotly.graph_objects as go

    curve = (s.get("details") or {}).get("curve")
    if not isinstance(curve, list) or not curve or not isinstance(curve[0], dict):
        return
    pts = [p for p in curve if "step" in p and "loss" in p]
    if not pts:
        return
    fig = go.Figure(go.Scatter(x=[p["step"] for p in pts], y=[p["loss"] for p in pts], mode="lines+markers"))
    fig.update_layout(title=f"step {i + 1} ({s['method']}): training loss", xaxis_title="training step",
                      yaxis_title="loss", height=340, margin={"t": 40, "l": 60, "r": 20, "b": 50})
    page.chart(fig, len(pts), f"{s['method']} training curve")


def render_comparison(runs: list[tuple[str, dict]]) -> str:
    """Several runs (label, result dict) on one quality-vs-speed and quality-vs-bytes front, and one
    table. Each run is its final model; its original is a point too (once per model)."""
    page = _Page("slimformer: runs compared")
    keys = {quality_key(d) for _, d in runs}
    key, higher = next(iter(keys)) if len(keys) == 1 else (None, True)
    if len(keys) > 1:
        page.add(f'<p class="bad">The runs measure different things ({", ".join(sorted(str(k[0]) for k in keys))}); '
                 "quality is not comparable across them, so no front is drawn.</p>")
    pts, rows, originals = [], [], set()
    for label, d in runs:
        p = stage_points(d)
        if not p:
            continue
        same = (p[0]["quality"] if p[0]["quality"] is None else round(p[0]["quality"], 4),
                None if p[0]["mb"] is None else round(p[0]["mb"], 2))
        if p[0]["label"] == "original" and same not in originals:  # the same original measured again: once
            originals.add(same)
            pts.append({**p[0], "label": "original" if len(originals) == 1 else f"original {len(originals)}"})
        last = dict(p[-1], label=label)
        pts.append(last)
        rows.append([label, (d.get("recipe") or {}).get("name", ""), last["quality"],
                     "-" if last["throughput_x"] is None else last["throughput_x"], "-" if last["mb"] is None else last["mb"]])
    if key:
        page.add("<h2>Trade-off</h2><p class='note'>Each run's final model and the original; the dotted line joins "
                 "the runs no other run beats on both axes.</p>")
        for x, xt, t in (("throughput_x", "throughput / original's", "quality vs speed"),
                         ("mb", "MB on disk", "quality vs bytes")):
            fig, n = _scatter(pts, x, xt, key, higher, t, front=True)
            if n:
                page.chart(fig, n, t)
    page.add("<h2>Runs</h2>" + _table(["run", "recipe", key or "quality", "throughput x", "MB"], rows))
    return page.render({"runs": [{"label": lbl, "result": d} for lbl, d in runs]})


