"""The reference page of the documentation site, generated from the code: every command's --help
(the argparse parsers themselves), the built-in recipes and every registered method with its
traits. `python -m slimformer.cli.reference > docs/reference.md` regenerates it; a test fails when
the page and the code disagree."""
from __future__ import annotations

import argparse
import os


def reference_markdown() -> str:
    from ..core.config import METHODS
    from ..recipes import builtin_recipes, load_recipe
    from . import build_parser

    before = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"  # argparse wraps help to the terminal: make the page the same everywhere
    try:
        ap = build_parser()
        out = ["# Reference", "",
               "Generated from the code (`python -m slimformer.cli.reference > docs/reference.md`); a test keeps it "
               "current.", "", "## Commands", "", "```text", ap.format_help().rstrip(), "```", ""]
        sub = next(a for a in ap._actions if isinstance(a, argparse._SubParsersAction))
        for name, p in sub.choices.items():
            out += [f"### slimformer {name}", "", "```text", p.format_help().rstrip(), "```", ""]
    finally:
        if before is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = before
    out += ["## Built-in recipes", "", "`slimformer compress --recipe NAME`; each is a YAML file in "
            "`slimformer/recipes/builtin/`.", ""]
    for name in builtin_recipes():
        r = load_recipe(name)
        steps = " -> ".join(c.method for c in r.steps) or "(no steps: evaluate only)"
        out += [f"### {name}", "", r.description or "", "", f"Steps: {steps}", ""]
    out += ["## Methods", "", "A recipe step is `- method: NAME` with the config's fields; the traits tell the "
            "pipeline how the step behaves (see Design).", "", "| method | config | traits |", "|---|---|---|"]
    for name in METHODS.names():
        e = METHODS.get(name)
        out.append(f"| `{name}` | `{e.config_cls.__name__}` | {', '.join(e.traits.names()) or '-'} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(reference_markdown(), end="")
