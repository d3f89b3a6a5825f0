"""Render a CompressionResult (or its JSON dict) as Markdown. Nothing is computed here beyond
formatting: every number comes from the result."""
from __future__ import annotations


def fmt(v) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.4g}" if abs(v) < 1 else f"{v:.2f}"
    return str(v)


def table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _side_by_side(b: dict, c: dict, change: bool = False) -> list[list]:
    """Rows of figure, baseline, compressed and the ratio (or, for quality metrics, the signed
    change in the metric's own units, never rounded to nothing)."""
    rows = []
    for k in list(b) + [k for k in c if k not in b]:
        bv, cv = b.get(k), c.get(k)
        if isinstance(bv, dict) or isinstance(cv, dict):
            continue
        rel = ""
        if _num(bv) and _num(cv):
            if change:
                diff = cv - bv
                rel = f"{diff:+.2f}" if abs(diff) >= 0.005 or diff == 0 else f"{diff:+.2g}"
            elif bv:
                r = cv / bv
                rel = f"{r:.3f}x" if abs(r - 1) >= 0.0005 or r == 1 else f"{r:.6f}x"
        rows.append([k, "" if bv is None else bv, "" if cv is None else cv, rel])
    return rows


def speed_summary(b: dict, c: dict) -> str:
    """Say in words whether the compressed model got faster or slower, and where to go if slower."""
    tb, tc = b.get("throughput"), c.get("throughput")
    lb, lc = b.get("latency_ms_p50"), c.get("latency_ms_p50")
    if not (_num(tb) and _num(tc) and tb > 0):
        return ""
    r = tc / tb
    lat = f", batch-1 latency {lc:.1f} ms vs {lb:.1f} ms" if _num(lb) and _num(lc) else ""
    if r >= 1.02:
        return f"**The compressed model is {r:.2f}x as fast as the original** (throughput{lat})."
    if r > 0.98:
        return f"The compressed model runs at the original's speed ({r:.2f}x throughput{lat}): it saves bytes, not time."
    return (f"**The compressed model is slower than the original: {r:.2f}x its throughput**{lat}. It is smaller, not "
            "faster, on this machine; for CPU speed end the recipe with an ONNX export (`- method: onnx`, "
            "`quantize: int8`), as the built-in `int8` recipe does.")


def stage_table(d: dict) -> str:
    """One row per stage of a multi-step recipe: the task metric, bytes, throughput and latency,
    with speed and bytes as ratios to the original."""
    b = d.get("baseline") or {"metrics": {}, "efficiency": {}}
    be = b.get("efficiency", {})
    keys = [k for k, v in b.get("metrics", {}).items() if isinstance(v, (int, float))][:2]

    def row(name, m, e):
        ratio = lambda k, inv=False: (  # noqa: E731
            f"{(be[k] / e[k] if inv else e[k] / be[k]):.2f}x" if _num(e.get(k)) and _num(be.get(k)) and e[k] and be[k]
            else "")
        mb = e.get("bytes")
        return ([name] + [m.get(k, "") for k in keys] +
                [f"{mb / 1e6:.2f}" if _num(mb) else "", ratio("bytes"), ratio("throughput"),
                 ratio("latency_ms_p50", inv=True)])

    rows = [row("original", b.get("metrics", {}), be)]
    for st in d["stages"]:
        rows.append(row(f"{st['step']}. {st['method']}", st.get("metrics", {}), st.get("efficiency", {})))
    return table(["stage"] + keys + ["MB", "bytes x", "throughput x", "latency speed-up"], rows)


def render_markdown(result) -> str:
    d = result if isinstance(result, dict) else result.to_dict()
    empty = {"metrics": {}, "fidelity": {}, "efficiency": {}, "env": {}}
    b, c = d.get("baseline") or empty, d.get("compressed") or empty
    out = [f"# slimformer report: {d['recipe'].get('name', '')}", ""]
    out += [f"- model: `{d.get('model', '')}`",
            f"- data: {c['env'].get('data', '')}",
            f"- recipe: {d['recipe'].get('description', '') or d['recipe'].get('source', '')}", ""]
    if b["metrics"] or c["metrics"]:
        out += ["## Task metrics", "", table(["metric", "baseline", "compressed", "change"],
                                              _side_by_side(b["metrics"], c["metrics"], change=True)), ""]
        if d.get("recovery"):
            out += ["Recovery (compressed / baseline; 1.0 = no loss): " +
                    ", ".join(f"{k} {v:.4f}" for k, v in d["recovery"].items()), ""]
    elif d.get("baseline") is None:
        out += ["Not evaluated (steps only).", ""]
    else:
        out += ["No task metrics: no labelled data was given (`--data`); see fidelity below.", ""]
    if c["fidelity"]:
        out += ["## Fidelity to the original", "", table(["measure", "value"], [[k, v] for k, v in c["fidelity"].items()]), ""]
    if b["efficiency"] or c["efficiency"]:
        t = c["env"].get("timing", {})
        out += ["## Efficiency", "",
                f"Batch 1 latency and batch {t.get('throughput_batch', '?')} throughput at sequence length "
                f"{t.get('seq_len', '?')}, {t.get('threads', '?')} threads, median of {t.get('repeats', '?')} "
                "runs after warm-up. Absolute times depend on the machine; ratios are the result.", "",
                table(["figure", "baseline", "compressed", "ratio"], _side_by_side(b["efficiency"], c["efficiency"])), ""]
        said = speed_summary(b["efficiency"], c["efficiency"])
        if said:
            out += [said, ""]
    if d.get("stages"):
        out += ["## What each stage bought", "", stage_table(d), ""]
    if d["steps"]:
        rows = [[s["method"], s["params_before"], s["params_after"], s["bytes_before"], s["bytes_after"],
                 s["seconds"], "; ".join(s.get("warnings") or [])] for s in d["steps"]]
        out += ["## Steps", "", table(["method", "params before", "params after", "bytes before", "bytes after",
                                        "seconds", "warnings"], rows), ""]
    env = c["env"]
    out += ["## Environment", "", ", ".join(f"{k} {env[k]}" for k in ("slimformer", "torch", "transformers", "cpu_model", "cpu_capability", "cpu_flags",
                                                                       "python", "machine", "threads") if k in env), ""]
    return "\n".join(out)
