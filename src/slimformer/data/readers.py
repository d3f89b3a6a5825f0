"""Parsers for task files (CSV/TSV/JSONL/raw text/parallel text) and HF `datasets` splits.

Each reader returns `(examples, meta)`; `tasks.load_task` wraps them in a `Task`. Every problem
raises `DataError` naming the file (or dataset), the line (or row) and what was expected.
"""
from __future__ import annotations

import csv
import io
import json
import math
import re
import numbers
from itertools import islice
from pathlib import Path

from ..core.errors import DataError

csv.field_size_limit(2**31 - 1)  # a long document in one field is data, not an error (the default is 128 KB)

# Column (key) names accepted in JSONL files and HF datasets, tried in order.
COLUMNS = {
    "stsb": (("sentence1", "sentence2", "score"), ("sentence1", "sentence2", "label"),
             ("s1", "s2", "score")),
    "classification": (("text", "label"), ("sentence", "label")),
    "summarization": (("document", "summary"), ("article", "highlights")),
}
# Positional layout of CSV/TSV rows; the last field is the number.
TABLES = {"stsb": (("s1", "s2", "score"), "a numeric score"),
          "classification": (("text", "label"), "an integer label")}
HF_DEFAULT_SPLIT = {"stsb": "validation", "classification": "validation", "lm": "test",
                    "translation": "test", "summarization": "test"}


def read_text(path: Path) -> str:
    """The file as UTF-8 text with CRLF/CR normalised to LF and one final newline dropped."""
    if not path.is_file():
        what = "a directory" if path.is_dir() else "nothing"
        raise DataError(f"{path}: file not found (expected a data file, found {what} there)")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{path} line {line}: expected UTF-8 text, got byte {raw[e.start]:#04x}") from None
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text[:-1] if text.endswith("\n") else text


def _none_found(where) -> DataError:
    return DataError(f"{where}: expected at least one example, found none")


# ----------------------------------------------------------------------------- value checks
def _text(v, name, where) -> str:
    if not isinstance(v, str):
        raise DataError(f"{where}: expected {name} to be a string, got {type(v).__name__}")
    return v.strip()


def _number(v, kind, where):
    if kind == "classification":
        if isinstance(v, numbers.Integral) and not isinstance(v, bool):
            return int(v)
    elif isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v):
        return float(v)
    raise DataError(f"{where}: expected {TABLES[kind][1]}, got {v!r}")


def example(kind: str, values, where: str) -> tuple:
    """Validate one record's values (in COLUMNS order) and return the example tuple."""
    if kind == "summarization":
        return _text(values[0], "the document", where), _text(values[1], "the summary", where)
    names = TABLES[kind][0]
    texts = tuple(_text(v, n, where) for v, n in zip(values[:-1], names))
    value = _number(values[-1], kind, where)
    if kind == "stsb" and not 0.0 <= value <= 5.0:
        raise DataError(f"{where}: expected an STS-B similarity score in 0..5, got {value:g}")
    return texts + (value,)


def columns(row: dict, kind: str, where: str) -> list:
    for cols in COLUMNS[kind]:
        if all(c in row for c in cols):
            return [row[c] for c in cols]
    want = " or ".join("/".join(c) for c in COLUMNS[kind])
    raise DataError(f"{where}: expected keys {want}, got keys {sorted(row)}")


# ----------------------------------------------------------------------------- local files
def _parse_number(s: str, kind: str):
    try:
        v = int(s) if kind == "classification" else float(s)
    except ValueError:
        return None
    return v if kind == "classification" or math.isfinite(v) else None


_NOT_NAMES = {"nan", "inf", "na", "n/a", "none", "null", "-", "?"}


def _looks_like_header(fields: list[str]) -> bool:
    """A header row names its columns: its last field is a short word (score, label,
    similarity_score...), not a malformed value such as '4,0', '' or 'n/a'."""
    last = fields[-1].strip()
    return bool(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_ ]{0,31}", last)) and last.lower() not in _NOT_NAMES


def read_table(kind: str, path: Path) -> tuple[list, dict]:
    """CSV (quoted, comma) or TSV (tab, no quoting) with the TABLES layout; an optional header
    is recognised by content: a first row whose last field is a column name (a short word), not
    a number. A first row with a malformed value is an error like any other row."""
    tsv = path.suffix.lower() == ".tsv"
    names, what = TABLES[kind]
    layout = ("<TAB>" if tsv else ",").join(names)
    expected = f"`{layout}` with {what}"
    text = io.StringIO(read_text(path))
    reader = csv.reader(text, delimiter="\t", quoting=csv.QUOTE_NONE) if tsv else csv.reader(text)
    examples, header, start = [], False, 1
    for fields in reader:
        line, start = start, reader.line_num + 1
        if not any(f.strip() for f in fields):
            continue
        if len(fields) != len(names):
            raise DataError(f"{path} line {line}: expected {expected}, got {len(fields)} fields")
        value = _parse_number(fields[-1].strip(), kind)
        if value is None:
            if not examples and not header and _looks_like_header(fields):
                header = True
                continue
            raise DataError(f"{path} line {line}: expected {expected}, got {names[-1]} {fields[-1]!r}")
        if kind == "stsb" and not 0.0 <= value <= 5.0:
            raise DataError(f"{path} line {line}: expected an STS-B similarity score in 0..5, got {value:g}")
        examples.append(tuple(f.strip() for f in fields[:-1]) + (value,))
    if not examples:
        raise _none_found(path)
    return examples, {"format": "tsv" if tsv else "csv", "header": header}


def read_jsonl(kind: str, path: Path) -> tuple[list, dict]:
    """One JSON object per line with the COLUMNS keys; blank lines are skipped."""
    examples = []
    for n, line in enumerate(read_text(path).split("\n"), 1):
        if not line.strip():
            continue
        where = f"{path} line {n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: expected a JSON object, got invalid JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        examples.append(example(kind, columns(obj, kind, where), where))
    if not examples:
        raise _none_found(path)
    return examples, {"format": "jsonl"}


def read_lm(path: Path) -> tuple[list, dict]:
    text = read_text(path)
    if not text.strip():
        raise DataError(f"{path}: expected non-empty text, got an empty file")
    return [text], {"format": "text"}


def read_parallel(src: Path, tgt: Path) -> tuple[list, dict]:
    """Two aligned files, one sentence a line."""
    a, b = read_text(src).split("\n"), read_text(tgt).split("\n")
    if len(a) != len(b):
        raise DataError(f"translation files must have equal line counts (one sentence a line, "
                        f"aligned): {src} has {len(a)} lines, {tgt} has {len(b)} lines")
    if not any(s.strip() for s in a):
        raise _none_found(src)
    return [(s.strip(), t.strip()) for s, t in zip(a, b)], {"format": "parallel",
                                                           "files": [str(src), str(tgt)]}


# ----------------------------------------------------------------------------- HF datasets
def read_hf(kind: str, spec: str, split: str | None, limit: int | None, pair, options: dict):
    """`spec` is "hf:NAME[:CONFIG]"; extra `options` go to `datasets.load_dataset`."""
    name, _, config = spec[3:].partition(":")
    if not name:
        raise DataError(f"{spec!r}: expected 'hf:NAME' or 'hf:NAME:CONFIG'")
    try:
        import datasets
    except ImportError:
        raise DataError(f"{spec}: loading Hugging Face datasets needs the `datasets` package: "
                        "pip install slimformer[datasets]") from None
    split = split or HF_DEFAULT_SPLIT[kind]
    args = (name, config) if config else (name,)
    try:
        ds = datasets.load_dataset(*args, split=split, **options)
    except Exception as e:  # network, unknown name/config/split: one clear line for the user
        raise DataError(f"{spec}: could not load split {split!r}: {e}") from e
    rows = enumerate(islice(iter(ds), limit))
    src = f"{spec} split {split}"
    if kind == "lm":
        lines = [_hf_line(r, f"{src} row {i}") for i, r in rows]
        examples = ["\n".join(lines)] if any(s.strip() for s in lines) else []
    elif kind == "translation":
        examples = [_hf_pair(r, pair, f"{src} row {i}") for i, r in rows]
    else:
        examples = [example(kind, columns(r, kind, f"{src} row {i}"), f"{src} row {i}")
                    for i, r in rows]
    if not examples:
        raise _none_found(src)
    return examples, {"format": "hf", "name": name, "config": config or None, "split": split}


def _hf_line(row: dict, where: str) -> str:
    v = row.get("text")
    if not isinstance(v, str):
        raise DataError(f"{where}: expected a string column `text`, got keys {sorted(row)}")
    return v.replace("\r\n", "\n").rstrip("\n")


def _hf_pair(row: dict, pair: tuple[str, str], where: str) -> tuple[str, str]:
    d = row.get("translation", row)
    if not isinstance(d, dict) or not all(k in d for k in pair):
        raise DataError(f"{where}: expected a `translation` dict or columns {pair[0]}/{pair[1]}, "
                        f"got keys {sorted(d) if isinstance(d, dict) else sorted(row)}")
    return _text(d[pair[0]], pair[0], where), _text(d[pair[1]], pair[1], where)
