"""OUT/report.html of a plan: every trial and peer on quality vs the objective (the Pareto front of
the trials drawn, the budget as a line), the best model with its confirmed figures, a table of
trials. Drawn from plan.json's data only (embedded in the page)."""
from __future__ import annotations

import os
from pathlib import Path

from ..report.html import _Page, _table
from ..report.pareto import pareto_front
from .study import DIRECTION, VALUE_KEY

AXIS = {"throughput": "throughput / original's (batch {b} x {s})", "latency": "latency speed-up (batch 1 x {s})",
        "bytes": "bytes / original's", "memory": "peak memory / original's"}


def plan_points(result, spec) -> dict:
    """The points the page draws: {"trials": [...], "peers": [...], "front": [...]}, each
    {label, x, quality, state}."""
    b = spec.budget_obj
    metric, key = b.metric(spec.task_kind), VALUE_KEY[b.objective]
    trials = [{"label": f"#{r['trial']} {r['label']}", "x": r[key], "quality": r[f"search_{metric}"],
               "state": "within" if r["feasible"] else "outside"}
              for r in result.trials if r["state"] == "COMPLETE"]
    peers = [{"label": p["label"], "x": p[key], "quality": p[f"search_{metric}"], "state": "peer"}
             for p in result.peers if key in p]
    peers += [{"label": f"{r['peer']} (trial #{r['trial']})", "x": r[key], "quality": r[f"search_{metric}"],
               "state": "peer"} for r in result.trials if r.get("peer") and r["state"] == "COMPLETE"]
    lower = metric == "perplexity"
    sign = 1 if DIRECTION[b.objective] == "maximize" else -1
    idx = pareto_front([(sign * t["x"], -t["quality"] if lower else t["quality"]) for t in trials])
    front = sorted((trials[i] for i in idx), key=lambda t: t["x"])
    return {"trials": trials, "peers": peers, "front": front}


def render_plan(result, spec) -> str:
    import plotly.graph_objects as go

    b = spec.budget_obj
    metric = b.metric(spec.task_kind)
    pts = plan_points(result, spec)
    page = _Page("slimformer plan")
    base = spec.baseline
    page.add(f"<p>Budget: {b.describe()}. Quality is measured on the search part of the data "
             f"({metric} {base['search_' + metric]:.2f} for the original) and the chosen model is checked on the "
             f"confirmation part ({base['confirm_' + metric]:.2f} for the original).</p>")
    page.add(f"<p><b>{result.note}</b></p>")
    fig = go.Figure()
    shown = 0
    for state, color in (("within", "#1f77b4"), ("outside", "#bbbbbb"), ("peer", "#d62728")):
        p = [t for t in (pts["peers"] if state == "peer" else pts["trials"]) if t["state"] == state]
        if not p:
            continue
        shown += len(p)
        fig.add_trace(go.Scatter(x=[t["x"] for t in p], y=[t["quality"] for t in p], mode="markers",
                                 text=[t["label"] for t in p], name={"within": "trials within the budget",
                                                                     "outside": "trials outside it",
                                                                     "peer": "peers"}[state],
                                 marker={"size": 11, "color": color, "symbol": "diamond" if state == "peer" else "circle"},
                                 hovertemplate="%{text}<br>x=%{x:.3f}<br>quality=%{y:.3f}<extra></extra>"))
    if len(pts["front"]) > 1:
        f = pts["front"]
        fig.add_trace(go.Scatter(x=[t["x"] for t in f], y=[t["quality"] for t in f], mode="lines",
                                 name="Pareto front (trials)", line={"dash": "dot"}, hoverinfo="skip"))
    limit = _limit(b, base["search_" + metric], metric)
    if limit is not None:
        fig.add_hline(y=limit, line_dash="dash", line_color="#2ca02c", annotation_text="quality budget")
    fig.update_layout(title=f"{metric} (search part) vs {b.objective}",
                      xaxis_title=AXIS[b.objective].format(b=b.batch_size, s=b.seq_len),
                      yaxis_title=metric + (" (lower is better)" if metric == "perplexity" else ""),
                      height=480, margin={"t": 50, "l": 60, "r": 20, "b": 50},
                      xaxis_type="log")  # ratios span orders of magnitude (a static embedding is ~100x faster)
    page.chart(fig, shown, "trials")
    key = VALUE_KEY[b.objective]
    rows = [[f"#{r['trial']}", r.get("label") or "", r["state"], _g(r, f"search_{metric}"), _g(r, f"confirm_{metric}"),
             _g(r, key), _g(r, "bytes_x"), _g(r, "seconds"), r.get("why", "")] for r in result.trials]
    page.add("<h2>Trials</h2>" + _table(["trial", "candidate", "state", f"{metric} (search)",
                                         f"{metric} (confirmation)", key, "bytes x", "seconds", "note"], rows))
    prow = [[p["label"], _g(p, f"search_{metric}"), _g(p, f"confirm_{metric}"), _g(p, "throughput_x"),
             _g(p, "bytes_x"), p.get("error", "")] for p in result.peers]
    page.add("<h2>Peers</h2>" + _table(["peer", f"{metric} (search)", f"{metric} (confirmation)", "throughput x",
                                        "bytes x", "note"], prow))
    return page.render({"plan": result.to_dict(), "points": pts})


def _g(d: dict, k: str):
    v = d.get(k)
    return "-" if v is None else v


def _limit(b, base: float, metric: str):
    if b.max_drop is not None:
        return base - b.max_drop
    if b.max_ppl_ratio is not None:
        return base * b.max_ppl_ratio
    if b.min_recovery is not None:
        return base / b.min_recovery if metric == "perplexity" else base * b.min_recovery
    return None


def write_plan_report(out: Path, result, spec) -> Path:
    path = out / "report.html"
    tmp = out / ".report.html.tmp"
    tmp.write_text(render_plan(result, spec))
    os.replace(tmp, path)
    return path
