"""Command line: parses arguments and calls the public API, nothing else. Each command's arguments
are built beside the command (look.py: inspect, evaluate, recipes; shrink.py: compress, quantize,
prune, export; training.py: distill, finetune, train, translate); every command that compresses
is one `slimformer.compress` run of a recipe (common.run_recipe)."""
from __future__ import annotations

import argparse
import sys

from . import look, plan, shrink, training


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr (what was wrong and where --help is), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"slimformer: error: {self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    ap = _Parser(
        prog="slimformer",
        description="Make Transformer models smaller and faster, and measure what it cost "
                    "(quality on real data, fidelity to the original, size, latency, memory).",
    )
    ap.add_argument("--version", action="version", version=f"slimformer {__version__}")
    ap.add_argument("--verbose", action="store_true", help="on an error, also show the full traceback")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    for module in (look, shrink, training, plan):
        module.add_parsers(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    from ..core.errors import SlimformerError

    ap = build_parser()
    a = ap.parse_args(argv)
    if not a.command:
        ap.print_help()
        return 0
    try:
        a.run(a)
    except SlimformerError as e:
        print(f"slimformer: error: {_one_line(e)}", file=sys.stderr)
        if getattr(a, "verbose", False):
            raise
        return 2
    except OSError as e:  # a file or folder the user named: missing, unreadable, read-only, full disk
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(f"slimformer: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("slimformer: interrupted", file=sys.stderr)
        return 130
    finally:
        _end_distributed()
    return 0


def _one_line(e: BaseException) -> str:
    """An error message on one line (YAML and loader messages span several)."""
    return " ".join(line.strip() for line in str(e).splitlines() if line.strip())


def _end_distributed() -> None:
    """Under torchrun / accelerate launch: tear the process group down before exit (gloo's
    threads otherwise may abort the interpreter's exit)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
