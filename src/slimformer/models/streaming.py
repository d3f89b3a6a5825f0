"""Models bigger than memory: a model whose weights stay in their safetensors shards until a step
needs them.

`load(folder, stream=True)` builds the model's skeleton on the meta device (no memory) and keeps a
`WeightStream` on the SlimModel. A layer-local step (registered with the trait `layer_local`)
then sees one Transformer layer in memory at a time: the shared layer loops
(`models/sequential.py`: `run_sequential`, `by_layer`) load layer i from the shards (in float32,
the dtype the whole-model path computes in), the step quantizes / prunes it, and the finished
layer is written to the output shards and dropped before layer i+1 is read. Modules outside the
layers (token embedding, final norm, LM head) are loaded only while a step works on them, in the
stored dtype. What no step touched is copied tensor by tensor from the input shards, in its stored
dtype. Peak memory is about one layer plus the calibration activations, whatever the model's size.

The shards are read with plain file reads (no memory map, so pages read do not count towards the
process's resident memory) after the header of every shard was checked: a missing or truncated
shard is a one-line error naming it, before any work.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import struct
import threading
from pathlib import Path

import torch
from torch import nn

from ..adapters import get_adapter
from ..core.errors import ModelLoadError, SlimformerError

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool}
SHARD_BYTES = 256 << 20  # output shard size (smaller when --max-memory asks): held in memory until written


class ShardReader:
    """The tensors of a folder's safetensors files, read one at a time on request."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        index = self.folder / "model.safetensors.index.json"
        if index.exists():
            try:
                names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (ValueError, KeyError, TypeError):
                raise ModelLoadError(f"{index}: not a safetensors index (no weight_map)") from None
            where = f"named in {index.name}"
        else:
            names = sorted(p.name for p in self.folder.glob("*.safetensors"))
            where = ""
        if not names:
            raise ModelLoadError(f"{self.folder}: no .safetensors weights in it")
        self.entries: dict[str, tuple[Path, torch.dtype, tuple, int, int]] = {}
        self._ahead: dict[str, torch.Tensor] = {}  # read ahead by prefetch()
        self._pending: set[str] = set()
        self._thread = None
        for name in names:
            path = self.folder / name
            if not path.is_file():
                raise ModelLoadError(f"{self.folder}: shard {name} {where} is missing")
            self._read_header(path)

    def _read_header(self, path: Path) -> None:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ModelLoadError(f"shard {path}: truncated ({size} bytes, no safetensors header)")
            n = struct.unpack("<Q", head)[0]
            if n > size - 8 or n > 100_000_000:
                raise ModelLoadError(f"shard {path}: truncated or not safetensors (header of {n} bytes in a file of "
                                     f"{size})")
            try:
                header = json.loads(f.read(n))
            except ValueError:
                raise ModelLoadError(f"shard {path}: damaged safetensors header") from None
        end = 0
        for key, e in header.items():
            if key == "__metadata__":
                continue
            if e.get("dtype") not in DTYPES:
                raise ModelLoadError(f"shard {path}: tensor {key} has dtype {e.get('dtype')}; readable: "
                                     f"{', '.join(DTYPES)}")
            start, stop = e["data_offsets"]
            end = max(end, stop)
            self.entries[key] = (path, DTYPES[e["dtype"]], tuple(e["shape"]), 8 + n + start, 8 + n + stop)
        if 8 + n + end > size:
            raise ModelLoadError(f"shard {path}: truncated ({size} bytes; its header needs {8 + n + end}); "
                                 "download or copy it again")

    def keys(self) -> list[str]:
        return list(self.entries)

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def dtype(self, key: str) -> torch.dtype:
        return self.entries[key][1]

    def nbytes(self, key: str | None = None) -> int:
        if key is not None:
            e = self.entries[key]
            return e[4] - e[3]
        return sum(e[4] - e[3] for e in self.entries.values())

    def prefetch(self, keys: list[str]) -> None:
        """Read `keys` in a background thread (the next layer while this one is processed: file
        reads release the GIL, so reading and computing overlap); `get` takes them from there."""
        self.wait()
        keys = [k for k in keys if k in self.entries]
        self._pending = set(keys)

        def work():
            for k in keys:
                self._ahead[k] = self._read(k)

        self._thread = threading.Thread(target=work, daemon=True)
        self._thread.start()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def get(self, key: str) -> torch.Tensor:
        if key in self._pending:
            self.wait()
            self._pending.discard(key)
        t = self._ahead.pop(key, None)
        return t if t is not None else self._read(key)

    def _read(self, key: str) -> torch.Tensor:
        path, dtype, shape, start, stop = self.entries[key]
        buf = torch.empty(stop - start, dtype=torch.uint8)
        with open(path, "rb") as f:
            f.seek(start)
            if stop > start and f.readinto(memoryview(buf.numpy())) != stop - start:
                raise ModelLoadError(f"shard {path}: truncated while reading {key}")
        return buf.view(dtype).reshape(shape)


class ShardWriter:
    """Tensors written out in shards of about `shard_bytes`, each tensor stored once."""

    def __init__(self, folder: Path, shard_bytes: int = SHARD_BYTES):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.shard_bytes = shard_bytes
        self.buffer: dict[str, torch.Tensor] = {}
        self.size = 0
        self.parts: list[tuple[Path, list[str]]] = []
        self.bytes: dict[str, int] = {}  # every key written: its bytes

    def add(self, key: str, t: torch.Tensor) -> None:
        if key in self.bytes:
            raise SlimformerError(f"streamed write: {key} written twice")
        t = t.detach()
        if t.untyped_storage().nbytes() != t.nbytes or not t.is_contiguous():
            t = t.clone(memory_format=torch.contiguous_format)  # a view of a larger tensor: its own storage
        self.buffer[key] = t
        self.bytes[key] = t.nbytes
        self.size += t.nbytes
        if self.size >= self.shard_bytes:
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        from safetensors.torch import save_file

        path = self.folder / f"part-{len(self.parts):05d}.safetensors"
        save_file(self.buffer, str(path))
        self.parts.append((path, list(self.buffer)))
        self.buffer, self.size = {}, 0

    def move_into(self, dest: Path, stem: str) -> list[str]:
        """Rename the shards into `dest` as STEM.safetensors or STEM-0000i-of-0000N.safetensors (+ an
        index). Returns the file names."""
        self.flush()
        n = len(self.parts)
        names = [f"{stem}.safetensors"] if n == 1 else [f"{stem}-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        weight_map = {}
        for (path, keys), name in zip(self.parts, names):
            shutil.move(str(path), str(dest / name))
            weight_map.update({k: name for k in keys})
        if n > 1:
            (dest / f"{stem}.safetensors.index.json").write_text(json.dumps(
                {"metadata": {"total_size": sum(self.bytes.values())}, "weight_map": weight_map}, indent=2))
        self.parts = []
        return names


class WeightStream:
    """The link between a meta-device model skeleton and its weights on disk (see the module doc)."""

    def __init__(self, folder: Path, reader: ShardReader, model: nn.Module):
        self.folder, self.reader, self.model = Path(folder), reader, model
        self.writer: ShardWriter | None = None
        self.loaded: set[str] = set()
        self._filled: dict[str, list] = {}  # module name -> (module, attribute, is parameter) filled by load()
        self.written: set[str] = set()
        self.finished = False
        self.peak_loaded = 0  # most bytes of weights in memory at once (reported)
        # the dtype calibration activations are kept in between layers: None = float32, as the whole-model
        # path computes; the stored 16-bit dtype when float32 would not fit (set by the memory plan)
        self.activation_dtype: torch.dtype | None = None

    def stored_dtype(self) -> torch.dtype:
        """The dtype that most of the checkpoint's floating-point bytes are stored in."""
        seen: dict[torch.dtype, int] = {}
        for k in self.reader.keys():
            if self.reader.dtype(k).is_floating_point:
                seen[self.reader.dtype(k)] = seen.get(self.reader.dtype(k), 0) + self.reader.nbytes(k)
        return max(seen, key=seen.get) if seen else torch.float32

    # ------------------------------------------------------------------ reading and dropping modules

    def start(self, stage: Path, shard_bytes: int = SHARD_BYTES) -> None:
        """Begin a streamed step: finished modules go to shards in `stage` (the run's work folder)."""
        if self.writer is not None or self.finished:
            raise SlimformerError("a streamed model runs one layer-local step; save it and load the result to run "
                                  "another")
        self.writer = ShardWriter(stage, shard_bytes)

    def load(self, name: str, dtype: torch.dtype | None = None) -> nn.Module:
        """Fill module `name`'s tensors that are still on the meta device from the shards (floats in
        `dtype`, default: as stored). A tensor tied to another module's is filled for both."""
        if any(name == w or name.startswith(w + ".") for w in self.written):
            raise SlimformerError(f"streamed model: {name} was already written out; a layer-local step reads each "
                                  "module once")
        mod = self.model.get_submodule(name)
        owners = _owners(self.model)
        for key, t in list(_tensors(mod)):
            if not t.is_meta:
                continue
            full = f"{name}.{key}" if name else key
            v = self.reader.get(self._source_key(full))
            if dtype is not None and v.is_floating_point():
                v = v.to(dtype)
            self._filled.setdefault(name, []).extend(owners.get(id(t), []))
            _replace(owners, t, v)
        self.loaded.add(name)
        self.peak_loaded = max(self.peak_loaded, _loaded_bytes(self.model))
        return mod

    def prefetch(self, name: str) -> None:
        """Start reading module `name`'s tensors in the background (see ShardReader.prefetch)."""
        if any(name == w or name.startswith(w + ".") for w in self.written):
            return
        self.reader.prefetch([k for k in self.reader.keys() if k.startswith(name + ".")])

    def unload(self, name: str, write: bool = True) -> None:
        """Drop module `name`'s tensors (back to the meta device), first writing them out (`write`)."""
        mod = self.model.get_submodule(name)
        if write:
            if self.writer is None:
                raise SlimformerError("streamed model: no step is running (WeightStream.start was not called)")
            seen = set()
            for key, t in mod.state_dict().items():
                full = f"{name}.{key}" if name else key
                ptr = (t.untyped_storage().data_ptr(), t.storage_offset(), t.numel())
                if ptr in seen or t.is_meta:
                    continue
                seen.add(ptr)
                if full in self.reader and t.is_floating_point():
                    t = t.to(self.reader.dtype(full))  # a float tensor the step left as it was: its stored dtype
                self.writer.add(full, t)
            self.written.add(name)
        owners = _owners(self.model)
        for _, t in list(_tensors(mod)):
            if not t.is_meta:
                _replace(owners, t, torch.empty_like(t, device="meta"))
        # modules a step swapped out still hold what was read for them (a handler's list of targets
        # keeps them alive): drop that too
        for m, k, is_param in self._filled.pop(name, []):
            d = m._parameters if is_param else m._buffers
            if d.get(k) is not None and not d[k].is_meta:
                meta = torch.empty_like(d[k], device="meta")
                d[k] = nn.Parameter(meta, requires_grad=False) if is_param else meta
        self.loaded.discard(name)
        _return_freed_memory()


    def _source_key(self, key: str) -> str:
        if key in self.reader:
            return key
        tied = _tied_source(self.model, key)
        if tied is not None and tied in self.reader:
            return tied
        tied = (getattr(self.model, "_tied_weights_keys", None) or {})
        if isinstance(tied, dict) and tied.get(key) in self.reader:
            return tied[key]
        raise ModelLoadError(f"{self.folder}: the shards have no tensor {key}")

    def finish(self) -> None:
        """After the step: write what is still loaded, then copy every tensor of the input no step
        wrote (its stored dtype, one tensor in memory at a time)."""
        if self.writer is None:
            raise SlimformerError("streamed model: no step ran")
        for name in sorted(self.loaded, key=len):
            if name in self.loaded:
                self.unload(name)
        done = tuple(w + "." for w in self.written if w)
        for key in self.reader.keys():
            if key.startswith(done) or key in self.writer.bytes:
                continue
            self.writer.add(key, self.reader.get(key))
        self.writer.flush()
        self.finished = True

    # ------------------------------------------------------------------ what it wrote

    def saved_bytes(self) -> dict:
        if self.finished and self.writer is not None:
            b = sum(p.stat().st_size for p, _ in self.writer.parts if p.exists()) or sum(self.writer.bytes.values())
        else:
            b = self.reader.nbytes()
        return {"bytes": b, "bytes_total": b}

    def bytes_by_module(self) -> dict[str, int]:
        from ..core.targets import module_part

        out: dict[str, int] = {}
        items = self.writer.bytes.items() if self.finished and self.writer is not None else \
            ((k, self.reader.nbytes(k)) for k in self.reader.keys())
        for key, n in items:
            part = module_part(key)
            out[part] = out.get(part, 0) + n
        return out

    def write_into(self, folder: Path, swapped: bool) -> None:
        """The saved model's weight files and config (save() writes the rest)."""
        if not self.finished or self.writer is None:
            raise SlimformerError("a streamed model is saved after its layer-local step ran (slimformer.compress); "
                                  "to save it untouched, copy its folder")
        if not self.writer.parts:
            raise SlimformerError("this streamed model's weights were already saved once; load the saved folder")
        self.writer.move_into(folder, "slimformer-model" if swapped else "model")
        self.model.config.save_pretrained(folder)
        gen = getattr(self.model, "generation_config", None)
        if gen is not None and getattr(self.model, "can_generate", lambda: False)():
            gen.save_pretrained(folder)


def _return_freed_memory() -> None:
    """Hand memory freed by a dropped layer back to the system (glibc keeps large freed blocks in
    the heap once its mmap threshold has grown, so the resident size would keep the largest layer
    seen several times over)."""
    global _TRIM
    if _TRIM is None:
        try:
            import ctypes

            _TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _TRIM = False
    if _TRIM:
        _TRIM(0)


_TRIM = None


def _tensors(mod: nn.Module):
    """(name, tensor) of a module's parameters and persistent buffers, as state_dict names them."""
    for name, m in mod.named_modules(remove_duplicate=False):
        for k, p in m._parameters.items():
            if p is not None:
                yield (f"{name}.{k}" if name else k), p
        for k, b in m._buffers.items():
            if b is not None and k not in m._non_persistent_buffers_set:
                yield (f"{name}.{k}" if name else k), b


def _owners(model: nn.Module) -> dict[int, list[tuple[nn.Module, str, bool]]]:
    """id(tensor) -> every (module, attribute, is parameter) holding it (tied weights: several)."""
    out: dict[int, list] = {}
    for m in model.modules():
        for k, p in m._parameters.items():
            if p is not None:
                out.setdefault(id(p), []).append((m, k, True))
        for k, b in m._buffers.items():
            if b is not None:
                out.setdefault(id(b), []).append((m, k, False))
    return out


def _replace(owners: dict, old: torch.Tensor, new: torch.Tensor) -> None:
    """Put `new` wherever `old` is held (as a Parameter where it was one): tied modules stay tied."""
    entry = owners.pop(id(old), [])
    obj = None
    for m, k, is_param in entry:
        if obj is None:
            obj = nn.Parameter(new, requires_grad=False) if is_param else new
        (m._parameters if is_param else m._buffers)[k] = obj
    if obj is not None:
        owners[id(obj)] = entry


def _tied_source(model: nn.Module, key: str) -> str | None:
    """The name under which a checkpoint stores the tensor `key` shares (an LM head tied to the
    token embedding is stored once)."""
    mod_name, _, attr = key.rpartition(".")
    try:
        t = getattr(model.get_submodule(mod_name), attr)
    except AttributeError:
        return None
    for name, p in model.named_parameters(remove_duplicate=False):
        if p is t and name != key:
            return name
    return None


def _loaded_bytes(model: nn.Module) -> int:
    seen, n = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if not t.is_meta and id(t) not in seen:
            seen.add(id(t))
            n += t.nbytes
    return n


def layer_stack(sm) -> tuple[str, nn.ModuleList] | None:
    """(module name, ModuleList) of the one layer stack, or None (seq2seq: two stacks)."""
    if sm.kind == "seq2seq-lm":
        return None
    stacks = get_adapter(sm.model).layer_containers(sm.model)
    if len(stacks) != 1:
        return None
    layers = next(iter(stacks.values()))
    names = {id(m): n for n, m in sm.model.named_modules()}
    name = names.get(id(layers))
    return (name, layers) if name is not None and len(layers) > 0 else None


def stream_of(sm) -> WeightStream | None:
    return getattr(sm, "stream", None)


@contextlib.contextmanager
def materialized(sm, names, dtype: torch.dtype | None = None, write: bool = True):
    """Inside: modules `names` of a streamed model are in memory (floats in `dtype`, default as
    stored); on leaving they are written out (`write`) and dropped. A no-op for a model in memory."""
    stream = stream_of(sm)
    if stream is None:
        yield
        return
    names = [n for n in names if n is not None and n not in stream.loaded]
    for n in names:
        stream.load(n, dtype)
    try:
        yield
    finally:
        for n in names:
            if n in stream.loaded:
                stream.unload(n, write=write)


def outside_modules(sm, prefix: str, skip: tuple[str, ...] = ()) -> list[str]:
    """Names of the modules with their own tensors outside the layer stack `prefix` (embeddings,
    final norm, LM head), minus `skip`."""
    out = []
    for name, m in sm.model.named_modules():
        if name == prefix or name.startswith(prefix + ".") or name in skip:
            continue
        if any(True for _ in m.parameters(recurse=False)) or any(
                k not in m._non_persistent_buffers_set for k in m._buffers):
            out.append(name)
    return out


def whole_model_bytes(sm) -> int:
    """Memory a model needs loaded whole, in float32 (the estimate printed before falling back)."""
    return 4 * sm.num_params()


PROCESS_BYTES = 600e6  # Python, torch, transformers, the tokenizer and the allocator's slack (measured 0.48 GB + slack)


def estimate_bytes(sm, samples: int = 0, tokens: int = 0, shard_bytes: int = SHARD_BYTES,
                   activation_bytes: int = 4) -> dict:
    """Peak memory of a streamed layer-local step, by part. Always: the process, an output shard
    (and its serialized copy), the largest layer (float32 where calibrated, else as stored; with
    one matrix's float32 math) and the next one read ahead as stored, the largest module outside
    the layers as stored plus its int8 copy.
    Calibrated (`samples` x `tokens`): the activations kept between layers (`activation_bytes`
    per value: 4 in float32, 2 in the stored 16-bit dtype), one sample's temporaries inside a layer,
    the Hessians of one layer, GPTQ/SparseGPT's factor of the widest one with their weight copies,
    and the float32 modules in front of the layers while the first layer's inputs are made.
    The phases (front, layer, outside) do not overlap: total = process + shard + the largest
    phase. Each part is an upper bound: measured peaks on 0.36B-8B Llama shapes were 3-20% below
    the total (benchmarks/scale/growth.py records both)."""
    from ..core.hessian import factor_dtype

    stream = stream_of(sm)
    prefix, layers = layer_stack(sm)
    cfg = sm.model.config
    calib = bool(samples and tokens)
    stored = stream.stored_dtype().itemsize if stream is not None else 4
    per_layer = max(sum(p.numel() for p in l.parameters()) for l in layers)
    mats = [p.shape for l in layers[:1] for p in l.parameters() if p.dim() == 2] or [(0, 0)]
    biggest = max(o * i for o, i in mats)
    widest = max(i for _, i in mats)
    head = get_adapter(sm.model).lm_head(sm.model)
    head_name = next((n for n, m in sm.model.named_modules() if m is head), "") if head is not None else ""
    outside, front = 0.0, 0.0
    for name in outside_modules(sm, prefix):
        n = sum(p.numel() for p in sm.model.get_submodule(name).parameters(recurse=False))
        # as stored + its int8 copy (converted in row chunks) + that copy again in the output shard being written
        outside = max(outside, n * (stored + 2 + 4 / 64))
        if name != head_name:
            front += 4.0 * n
    hidden = int(getattr(cfg, "hidden_size", 0) or 0)
    ffn = int(getattr(cfg, "intermediate_size", 0) or 4 * hidden)
    heads = int(getattr(cfg, "num_attention_heads", 1) or 1)
    # a layer as it is processed, plus the next one read ahead as stored; round-to-nearest reads it as stored
    # and converts one matrix at a time, calibration computes it in float32
    layer = per_layer * (4 if calib else stored) + per_layer * stored
    parts = {"process": PROCESS_BYTES, "shard": 2.0 * shard_bytes,
             "layer": layer + (0 if calib else 3 * 4.0 * biggest), "outside": outside}
    layer_phase = parts["layer"]
    if calib:
        fb = factor_dtype(widest).itemsize
        eager = getattr(cfg, "_attn_implementation", "eager") == "eager"
        parts["activations"] = samples * tokens * hidden * float(activation_bytes)
        # one sample inside a layer (and its inputs to each observed matrix), attention scores when eager
        parts["temporaries"] = tokens * (3 * ffn + 6 * hidden) * 4.0 + (heads * tokens * tokens * 8.0 if eager else 0)
        parts["hessians"] = 4.0 * (3 * hidden * hidden + ffn * ffn)
        # GPTQ / SparseGPT on the widest matrix: its inverse Hessian factor (in place; float64 narrow ones
        # have a float32 copy) and the weight's working copies
        parts["factor"] = widest * widest * (fb + (4 if fb == 8 else 0)) + 4 * 4.0 * biggest
        layer_phase += parts["activations"] + parts["temporaries"] + parts["hessians"] + parts["factor"]
        parts["front"] = front
    phase = max(layer_phase, outside, front + parts.get("activations", 0.0))
    parts["total"] = parts["process"] + parts["shard"] + phase
    return parts


def shard_bytes_for(limit: int | None) -> int:
    """Output shard size under a memory limit: 256 MiB, an eighth of the limit when that is less."""
    return SHARD_BYTES if limit is None else int(max(16 << 20, min(SHARD_BYTES, limit // 8)))


@dataclasses.dataclass
class StreamPlan:
    shard_bytes: int
    estimate: dict  # estimate_bytes' parts and total, as planned
    activation_dtype: torch.dtype | None  # None: float32 (see WeightStream.activation_dtype)
    notes: list[str]  # what was decided, one line each (printed as progress)


def plan_stream(sm, samples: int = 0, tokens: int = 0, limit: int | None = None) -> StreamPlan:
    """Plan a streamed layer-local step under `limit` bytes (None: 90% of the memory available
    now, for choosing only): the output shard size, and the dtype the calibration activations are
    kept in between layers: float32 (as the whole-model path computes) where it fits, else the
    checkpoint's 16-bit dtype (half the bytes). Refuses up front (SlimformerError, with the
    estimate by part and how many calibration samples would fit) when `limit` cannot be met."""
    from ..core.hardware import available_memory

    stream = stream_of(sm)
    shard = shard_bytes_for(limit)
    est = estimate_bytes(sm, samples, tokens, shard)
    stored = stream.stored_dtype() if stream is not None else torch.float32
    budget = limit if limit is not None else 0.9 * (available_memory() or float("inf"))
    act, notes = None, []
    if samples and tokens and est["total"] > budget and stored.itemsize == 2:
        narrow = estimate_bytes(sm, samples, tokens, shard, activation_bytes=2)
        if narrow["total"] <= budget or limit is None:
            notes.append(f"keeping the calibration activations in {str(stored).replace('torch.', '')} between layers "
                         f"to stay under {human(budget)} (in float32: {human(est['total'])} in all)")
            act = stored
        est = narrow  # the least this run can plan for; refused below if that is still above the limit
    if limit is not None and est["total"] > limit:
        per_sample = est.get("activations", 0.0) / samples if samples else 0.0
        rest = est["total"] - est.get("activations", 0.0)
        fit = int((limit - rest) // per_sample) if samples and per_sample else 0
        hint = (f"; {fit} calibration samples of {tokens} tokens would fit" if fit > 0 else
                f"; the process and one layer alone need {human(rest)}" if rest > limit else "")
        parts = ", ".join(f"{k} {human(v)}" for k, v in est.items() if k != "total" and v)
        raise SlimformerError(f"--max-memory {human(limit)}: streaming one layer at a time needs about "
                              f"{human(est['total'])} ({parts}){hint}")
    notes.append(f"streaming {stream.folder if stream is not None else 'the model'}: one layer in memory at a time "
                 f"(about {human(est['total'])} at most)")
    return StreamPlan(shard, est, act, notes)


def parse_size(text: str) -> int:
    """'4G', '1.5GB', '800M', '512MiB' or a number of bytes -> bytes."""
    t = str(text).strip().upper().replace("IB", "").rstrip("B")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    try:
        if t and t[-1] in mult:
            return int(float(t[:-1]) * mult[t[-1]])
        return int(float(t))
    except ValueError:
        raise SlimformerError(f"memory size {text!r}: expected a size like 4G, 1.5GB, 800M or a number of bytes") from None


def human(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def rss_now() -> int:
    """Resident memory of this process now (Linux /proc; 0 elsewhere)."""
    try:
        with open(f"/proc/{os.getpid()}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0
