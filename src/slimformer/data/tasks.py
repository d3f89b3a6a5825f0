"""A `Task` is a kind plus its examples; `load_task` reads one from local files or HF `datasets`.

Examples by kind:
  stsb            (s1: str, s2: str, score: float)
  classification  (text: str, label: int)
  lm              one str: the whole text, lines joined with "\\n" (CRLF normalised)
  translation     (src: str, tgt: str)
  summarization   (document: str, summary: str)
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..core.errors import ConfigError, DataError
from . import readers

TASK_KINDS = ("stsb", "classification", "lm", "translation", "summarization")
_TABLE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json")


@dataclass
class Task:
    kind: str
    examples: list
    source: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_kind(self.kind)

    def __len__(self) -> int:
        return len(self.examples)

    def head(self, n: int) -> "Task":
        """The first n examples (for lm: the first n lines of the text)."""
        if not isinstance(n, int) or n < 0:
            raise ConfigError(f"head(n): expected an integer n >= 0, got {n!r}")
        if self.kind == "lm":
            examples = ["\n".join(t.split("\n")[:n]) for t in self.examples]
        else:
            examples = list(self.examples[:n])
        return replace(self, examples=examples, meta=dict(self.meta))

    def texts(self) -> list[str]:
        """Input texts for calibration: stsb s1/s2 interleaved, classification texts, lm
        non-empty lines (stripped), translation sources, summarization documents."""
        if self.kind == "stsb":
            return [s for s1, s2, _ in self.examples for s in (s1, s2)]
        if self.kind == "lm":
            return [ln.strip() for t in self.examples for ln in t.split("\n") if ln.strip()]
        return [ex[0] for ex in self.examples]


def load_task(kind: str, path: str | os.PathLike | None = None, *, limit: int | None = None,
              split: str | None = None, **options) -> Task:
    """Load a task from `path`:

    - a file: stsb `.csv`/`.tsv` (`s1,s2,score`) or `.jsonl`; classification `.tsv` (default for
      other suffixes), `.csv` (`text,label`) or `.jsonl` ({"text", "label"}); a header row is
      optional (a first row whose last field is not a number). lm: any UTF-8 text file.
      summarization: `.jsonl` with document/summary or article/highlights.
    - a directory (stsb, classification): the file whose stem is `split` (default "dev"), else the
      one table file whose name contains it as a word (e.g. `stsb-en-dev.csv`), else, with no
      `split` given, the directory's only .csv/.tsv/.jsonl file.
    - translation: "SRC_FILE,TGT_FILE", or a prefix such as `.../test_2016_flickr` resolved with
      `pair=("en", "de")` (the default) to `prefix.en`/`prefix.de`; a directory plus
      `split=PREFIX_NAME` works too. The files must have equal line counts.
    - "hf:NAME[:CONFIG]": `datasets.load_dataset(NAME, CONFIG, split=split)` (default split:
      "validation" for stsb/classification, "test" otherwise); other `options` are passed on.
    - None: only for lm, the packaged sample sentences (see `calibration.sample_sentences`).

    `limit` keeps the first `limit` examples (lm: lines).
    """
    _check_kind(kind)
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise DataError(f"limit: expected an integer >= 0 or None, got {limit!r}")
    pair = _pair(options.pop("pair", ("en", "de"))) if kind == "translation" else None
    source = os.fspath(path) if path is not None else None
    if source is not None and source.startswith("hf:"):
        examples, meta = readers.read_hf(kind, source, split, limit, pair, options)
    else:
        if options:
            accepted = "pair" if kind == "translation" else "none"
            raise DataError(f"unknown option(s) {', '.join(sorted(options))} for a local {kind} "
                            f"task; accepted: {accepted}")
        examples, meta, source = _load_local(kind, source, split, pair)
    if pair:
        meta["pair"] = pair
    task = Task(kind, examples, source, meta)
    return task.head(limit) if limit is not None else task


def _check_kind(kind) -> None:
    if kind not in TASK_KINDS:
        raise DataError(f"unknown task kind {kind!r}; accepted: {', '.join(TASK_KINDS)}")


def _pair(pair) -> tuple[str, str]:
    if isinstance(pair, str):
        pair = tuple(pair.split("-"))
    if (not isinstance(pair, (tuple, list)) or len(pair) != 2
            or not all(isinstance(p, str) and p for p in pair)):
        raise DataError(f"pair: expected two language codes such as ('en', 'de') or 'en-de', "
                        f"got {pair!r}")
    return tuple(pair)


def _load_local(kind, source, split, pair):
    if source is None:
        if kind != "lm":
            raise DataError(f"load_task({kind!r}) needs a path: a file, a directory or "
                            "'hf:NAME[:CONFIG]'")
        from .samples import sample_sentences
        return ["\n".join(sample_sentences())], {"format": "text"}, "slimformer:samples/sentences.txt"
    if kind == "translation":
        src, tgt = _translation_files(source, split, pair)
        examples, meta = readers.read_parallel(src, tgt)
        return examples, meta, f"{src},{tgt}"
    p = Path(source)
    if kind == "lm":
        examples, meta = readers.read_lm(p)
        return examples, meta, source
    if p.is_dir():
        p = _pick_file(p, split)
    suffix = p.suffix.lower()
    if kind == "summarization" or suffix in (".jsonl", ".json"):
        examples, meta = readers.read_jsonl(kind, p)
    else:
        examples, meta = readers.read_table(kind, p)
    return examples, meta, str(p)


def _pick_file(d: Path, split: str | None) -> Path:
    want = split or "dev"
    files = sorted(f for f in d.iterdir() if f.is_file() and f.suffix.lower() in _TABLE_SUFFIXES)
    found = ([f for f in files if f.stem == want]
             or [f for f in files if want in re.split(r"[-_.]", f.stem)]
             or (files if split is None else []))
    if len(found) != 1:
        names = ", ".join(f.name for f in (found or files)) or "none"
        raise DataError(f"{d}: expected one data file for split {want!r} (e.g. {want}.tsv or "
                        f"stsb-en-{want}.csv), found {names}; pass the file's path instead")
    return found[0]


def _translation_files(source: str, split: str | None, pair) -> tuple[Path, Path]:
    if "," in source:
        parts = source.split(",")
        if len(parts) != 2 or not all(s.strip() for s in parts):
            raise DataError(f"{source!r}: expected 'SRC_FILE,TGT_FILE' or a file prefix")
        return Path(parts[0].strip()), Path(parts[1].strip())
    prefix = Path(source)
    if prefix.is_dir():
        if not split:
            raise DataError(f"{source}: is a directory; pass split=PREFIX (e.g. "
                            f"split='test_2016_flickr'), a prefix path or 'SRC_FILE,TGT_FILE'")
        prefix = prefix / split
    return Path(f"{prefix}.{pair[0]}"), Path(f"{prefix}.{pair[1]}")
