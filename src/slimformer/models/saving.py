"""Save a SlimModel atomically: safetensors + config + tokenizer (+ pooling) + slimformer.json."""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from ..core.errors import SlimformerError
from .._version import __version__
from .loading import META_FILE, SLIM_WEIGHTS, quiet_transformers
from .wrapper import SlimModel

# files that mark a folder as written by slimformer (a saved model or an exported artifact)
MARKERS = [META_FILE, "slimformer_onnx.json", "slimformer_export.json"]
STALE_SECONDS = 3600  # temporary folders of an interrupted save older than this are removed


def check_out_dir(out_dir, markers=tuple(MARKERS)) -> Path:
    """Check, before any work, that `out_dir` can receive a model: a new folder, an empty one or
    one slimformer wrote, whose parent can be created and written. Returns the resolved path;
    raises a one-line SlimformerError naming the folder otherwise."""
    out = Path(out_dir).expanduser().resolve()
    if out.exists():
        if not out.is_dir():
            raise SlimformerError(f"{out} exists and is a file; give a folder path for the saved model")
        if any(out.iterdir()) and not any((out / m).exists() for m in markers):
            raise SlimformerError(
                f"{out} exists and holds files slimformer did not write; refusing to overwrite it "
                "(give a new or empty folder)"
            )
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise SlimformerError(f"cannot create {out}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK) or (out.exists() and not os.access(out.parent, os.W_OK)):
        raise SlimformerError(f"cannot write {out}: no write permission in {parent}")
    return out


def check_out_file(path, ours) -> Path:
    """Check, before any work, that the file `path` can be written: new, or one `ours(path)` says
    slimformer wrote, in a folder that can be created and written."""
    out = Path(path).expanduser().resolve()
    if out.exists() and (not out.is_file() or not ours(out)):
        raise SlimformerError(f"{out} exists and was not written by slimformer; refusing to overwrite it (give a new "
                              "path)")
    check_out_dir(out.parent / f".{out.name}.check")  # its folder can be created and written
    return out


def write_file_atomically(path, text: str, ours) -> Path:
    """Write `text` to `path` through a temporary file renamed into place (checked as check_out_file)."""
    out = check_out_file(path, ours)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def atomic_folder(out_dir, write, markers=tuple(MARKERS)) -> Path:
    """Call write(tmp folder) on a temporary folder beside `out_dir`, then rename it into place
    (replacing a folder slimformer wrote). Nothing half-written is ever left at `out_dir`; stale
    temporary folders of earlier interrupted saves to the same place are removed. Files get the
    permissions the umask allows, as if created directly. markers: the files that make an
    existing folder one this may replace."""
    out = check_out_dir(out_dir, markers)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SlimformerError(f"cannot create {out.parent}: {e.strerror}") from None
    remove_stale(out)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
    except OSError as e:
        raise SlimformerError(f"cannot write in {out.parent}: {e.strerror}") from None
    try:
        write(tmp)
        _write_manifest(tmp)
        _keep_user_files(out, tmp)
        _apply_umask(tmp)
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def save(sm: SlimModel, out_dir, extra_files: dict[str, str] | None = None) -> Path:
    """Write the model to `out_dir`, reloadable with `slimformer.load`.

    Everything is written to a temporary folder beside `out_dir` and renamed into place, so an
    interrupted save never leaves a half-written model. An existing `out_dir` is replaced only
    if it is empty or was written by slimformer (has slimformer.json); otherwise it is an error.
    extra_files: {relative name: text, or a Path to copy} written beside the weights (e.g.
    result.json, report.md, training logs).
    """
    def write(tmp: Path) -> None:
        with quiet_transformers():
            _write(sm, tmp)
        write_extra(tmp, extra_files)

    return atomic_folder(out_dir, write)


def write_extra(folder: Path, extra_files: dict | None) -> None:
    """{relative name: text, or a Path to copy (a file or a folder)} into `folder`."""
    for name, content in (extra_files or {}).items():
        dest = folder / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Path):
            if content.is_dir():
                shutil.copytree(content, dest, dirs_exist_ok=True)
            elif content.exists():
                shutil.copyfile(content, dest)
        else:
            dest.write_text(content)


MANIFEST = ".slimformer-files.json"  # what slimformer wrote in an output folder (the rest is the user's)


def _write_manifest(folder: Path) -> None:
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    (folder / MANIFEST).write_text(json.dumps(files))


def _keep_user_files(out: Path, tmp: Path) -> None:
    """Files in the existing `out` that slimformer did not write (not in its manifest) move over to
    the new folder; one the new folder would replace is an error naming it (nothing is lost)."""
    manifest = out / MANIFEST
    if not out.is_dir() or not manifest.exists():
        return
    try:
        ours = set(json.loads(manifest.read_text()))
    except ValueError:
        return
    for f in sorted(p for p in out.rglob("*") if p.is_file()):
        rel = f.relative_to(out).as_posix()
        if rel in ours or rel == MANIFEST:
            continue
        if (tmp / rel).exists():
            raise SlimformerError(f"{f} is not a file slimformer wrote, and the new output has a file of that name; "
                                  "move it away and run again")
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, tmp / rel)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _owner_pid(name: str, marker: str) -> int | None:
    """The pid in a temporary name `...{marker}<pid>-<random>` (None for names without one)."""
    rest = name.split(marker, 1)[-1]
    head = rest.split("-", 1)[0]
    return int(head) if head.isdigit() and "-" in rest else None


def remove_stale(out: Path) -> None:
    """Remove what interrupted runs left beside `out`: temporary and replaced folders of a save
    (`.OUT.tmp-*`, `.OUT.old-*`) and temporary work folders (`.slimformer-work-*`) whose process is
    gone (or, for names without a pid, older than an hour). A resumable work folder
    (`.OUT.slimformer-work`) is kept: re-running the command resumes from it."""
    now = time.time()
    candidates = [(p, f".{out.name}.tmp-") for p in out.parent.glob(f".{out.name}.tmp-*")]
    candidates += [(p, f".{out.name}.old-") for p in out.parent.glob(f".{out.name}.old-*")]
    candidates += [(p, ".slimformer-work-") for p in out.parent.glob(".slimformer-work-*")]
    for p, marker in candidates:
        try:
            pid = _owner_pid(p.name, marker)
            gone = (pid != os.getpid() and not _pid_alive(pid)) if pid is not None else \
                now - p.stat().st_mtime > STALE_SECONDS
            if gone and p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass


@contextlib.contextmanager
def flock(path: Path):
    """Hold an exclusive lock on the file at `path` (created if missing) while the block runs; other
    processes taking the same lock wait."""
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class OutputLock:
    """`.OUT.slimformer-lock` beside an output path, holding the pid of the run writing it: a second
    run with the same output is refused while the first is alive; a lock whose process is gone
    (kill -9) is taken over."""

    def __init__(self, out):
        out = Path(out).expanduser().resolve()
        self.path = out.parent / f".{out.name}.slimformer-lock"
        self.out = out

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    pid = int(self.path.read_text().strip() or 0)
                except (OSError, ValueError):
                    pid = 0
                if pid and pid != os.getpid() and _pid_alive(pid):
                    raise SlimformerError(f"another slimformer run (pid {pid}) is writing {self.out}; wait for it, or "
                                          "give another --out") from None
                self.path.unlink(missing_ok=True)  # its process is gone: take the lock over
                continue
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            return self

    def __exit__(self, *exc):
        self.path.unlink(missing_ok=True)
        return False


def _apply_umask(folder: Path) -> None:
    """mkdtemp makes the folder 0700; give the tree the modes a plain mkdir/open would have."""
    mask = os.umask(0)
    os.umask(mask)
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o777 & ~mask)
        for f in files:
            os.chmod(os.path.join(root, f), 0o666 & ~mask)
    os.chmod(folder, 0o777 & ~mask)


def _swap_into_place(tmp: Path, out: Path) -> None:
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}-{tmp.name.rsplit('-', 1)[-1]}"
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write(sm: SlimModel, folder: Path) -> None:
    model = sm.model
    cfg = model.config
    if sm.stream is not None:  # weights streamed: the step's shards move in, then the files around them
        sm.stream.write_into(folder, swapped=bool(sm.meta.get("modules")))
        _write_around(sm, folder, bool(sm.meta.get("modules")))
        return
    # a GGUF-loaded model was dequantized: its quantization_config no longer applies
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    from .hooks import shared_aliases

    aliases = tuple(a + "." for a in shared_aliases(sm.meta))
    # a module shared across layers is stored once, under its first name (rebuilt shared on load)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(aliases)} if aliases else None
    type(model).save_pretrained(model, folder, safe_serialization=True,  # past guard.guard_plain_save's refusal
                                **({"state_dict": state} if state is not None else {}))
    swapped = bool(sm.meta.get("modules"))
    if swapped:
        # modules plain transformers does not know: name the weights so that plain loaders find
        # none and refuse, instead of building the float model with random weights
        for f in sorted(folder.glob("model*.safetensors*")):
            f.rename(folder / (SLIM_WEIGHTS if f.name == "model.safetensors" else "slimformer-" + f.name))
    _write_around(sm, folder, swapped)


def _write_around(sm: SlimModel, folder: Path, swapped: bool) -> None:
    """Tokenizer, sentence-transformers files, model card and slimformer.json beside the weights."""
    if sm.tokenizer is not None:
        sm.tokenizer.save_pretrained(folder)
    st_layout = sm.kind == "embedding" and sm.pooling is not None and not swapped
    if st_layout:
        _write_pooling(sm, folder)
    from .card import model_card

    (folder / "README.md").write_text(model_card(sm, sentence_transformers=st_layout))
    meta = dict(sm.meta)
    meta.update({"slimformer_version": __version__, "kind": sm.kind, "source": sm.source})
    if sm.pooling is not None:
        meta["pooling"] = dataclasses.asdict(sm.pooling)
    (folder / META_FILE).write_text(json.dumps(meta, indent=2, default=str))


def _write_pooling(sm: SlimModel, folder: Path) -> None:
    """sentence-transformers layout, so the folder also loads with SentenceTransformer(folder)."""
    p = sm.pooling
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if p.normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (folder / "2_Normalize").mkdir(exist_ok=True)
    (folder / "modules.json").write_text(json.dumps(modules, indent=2))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    modes = {"cls": "pooling_mode_cls_token", "mean": "pooling_mode_mean_tokens", "max": "pooling_mode_max_tokens",
             "mean_sqrt_len": "pooling_mode_mean_sqrt_len_tokens", "last": "pooling_mode_lasttoken"}
    pcfg = {"word_embedding_dimension": sm.model.config.hidden_size}
    pcfg.update({v: (k == p.mode) for k, v in modes.items()})
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pcfg, indent=2))
    import importlib.metadata as md

    versions = {"slimformer": __version__}
    for pkg in ("sentence_transformers", "transformers", "torch"):
        try:
            versions[pkg] = md.version(pkg.replace("_", "-"))
        except md.PackageNotFoundError:
            pass
    (folder / "config_sentence_transformers.json").write_text(json.dumps(
        {"__version__": versions, "prompts": {}, "default_prompt_name": None, "similarity_fn_name": "cosine"}, indent=2))
    if p.max_seq_length:
        (folder / "sentence_bert_config.json").write_text(
            json.dumps({"max_seq_length": p.max_seq_length, "do_lower_case": False}, indent=2))
