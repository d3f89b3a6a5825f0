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


def _side_by_side(b: dict, c: dict, rec: dict | None = None) -> list[list]:
    rows = []
    for k in list(b) + [k for k in c if k not in b]:
        bv, cv = b.get(k), c.get(k)
        if isinstance(bv, dict) or isinstance(cv, dict):
            continue
        ratio = ""
        if isinstance(bv, (int, float)) and isinstance(cv, (int, float)) and bv:
            ratio = f"{cv / bv:.3f}x"
        rows.append([k, "" if bv is None else bv, "" if cv is None else cv, ratio])
    return rows


def render_markdown(result) -> str:
    d = result if isinstance(result, dict) else result.to_dict()
    b, c = d["baseline"], d["compressed"]
    out = [f"# slimformer report: {d['recipe'].get('name', '')}", ""]
    out += [f"- model: `{d.get('model', '')}`",
            f"- data: {c['env'].get('data', '')}",
            f"- recipe: {d['recipe'].get('description', '') or d['recipe'].get('source', '')}", ""]
    if b["metrics"] or c["metrics"]:
        out += ["## Task metrics", "", table(["metric", "baseline", "compressed", "ratio"],
                                              _side_by_side(b["metrics"], c["metrics"])), ""]
        if d.get("recovery"):
            out += ["Recovery (compressed / baseline; 1.0 = no loss): " +
                    ", ".join(f"{k} {v:.4f}" for k, v in d["recovery"].items()), ""]
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
    if d["steps"]:
        rows = [[s["method"], s["params_before"], s["params_after"], s["bytes_before"], s["bytes_after"],
                 s["seconds"], "; ".join(s.get("warnings") or [])] for s in d["steps"]]
        out += ["## Steps", "", table(["method", "params before", "params after", "bytes before", "bytes after",
                                        "seconds", "warnings"], rows), ""]
    env = c["env"]
    out += ["## Environment", "", ", ".join(f"{k} {env[k]}" for k in ("slimformer", "torch", "transformers",
                                                                       "python", "machine", "threads") if k in env), ""]
    return "\n".join(out)
