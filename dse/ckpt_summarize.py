"""Summarize a PyTorch or safetensors checkpoint without loading its tensor data.

``python -m dse.ckpt_summarize PATH [depth=1] [top=10] [format=table|json]``

PATH is a ``.pt``/``.pth``/``.bin``/``.ckpt`` file (read with ``torch.load(weights_only=True,
mmap=True)``, so no code runs and tensor data stays on disk), a ``.safetensors`` file (only its JSON
header is read), a sharded Hugging Face ``*.index.json``, or a directory holding one of these.

The summary counts distinct tensors once: names that share storage (tied weights) are reported as
aliases. Non-tensor leaves of nested checkpoints (step counts, hyper-parameters) are counted apart.

The pure part (:func:`summarize`, :func:`walk`, :func:`render_table`) works on already-read
metadata (:class:`TensorMeta`); the readers (:func:`read_safetensors`, :func:`read_torch`) are small
and separate.
"""

from __future__ import annotations

import json
import math
import re
import struct
import warnings
from collections.abc import Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from costmodels.errors import ConfigError
from dse._app import format_table, print_json, run_app

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
SAFETENSORS_SUFFIX = ".safetensors"
ROOT_NAME = "<root>"
MAX_SAFETENSORS_HEADER = 100_000_000  # the safetensors format's own limit

# safetensors dtype tag -> (torch-style name, bits per element)
SAFETENSORS_DTYPES: dict[str, tuple[str, int]] = {
    "F64": ("float64", 64),
    "F32": ("float32", 32),
    "F16": ("float16", 16),
    "BF16": ("bfloat16", 16),
    "I64": ("int64", 64),
    "I32": ("int32", 32),
    "I16": ("int16", 16),
    "I8": ("int8", 8),
    "U64": ("uint64", 64),
    "U32": ("uint32", 32),
    "U16": ("uint16", 16),
    "U8": ("uint8", 8),
    "BOOL": ("bool", 8),
    "C64": ("complex64", 64),
    "F8_E4M3": ("float8_e4m3fn", 8),
    "F8_E4M3FNUZ": ("float8_e4m3fnuz", 8),
    "F8_E5M2": ("float8_e5m2", 8),
    "F8_E5M2FNUZ": ("float8_e5m2fnuz", 8),
    "F8_E8M0": ("float8_e8m0fnu", 8),
    "F6_E2M3": ("float6_e2m3fn", 6),
    "F6_E3M2": ("float6_e3m2fn", 6),
    "F4": ("float4_e2m1fn", 4),
}

# Messages of torch's weights-only unpickler that mean "this pickle wants to run code".
_REFUSAL_MARKERS = (
    "Unsupported global",
    "unsupported GLOBAL",
    "Trying to call reduce for unrecognized function",
    "Can only create new object for nn.Parameter",
    "Can only build Tensor, Parameter, OrderedDict",
)


@dataclass(frozen=True)
class TensorMeta:
    """What the summary needs about one named tensor; no data.

    ``storage_key`` identifies the bytes behind the tensor: names with the same key are one tensor
    (tied weights). ``None`` means "always distinct". ``nbytes`` defaults to elements × dtype size.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    storage_key: Hashable | None = None
    nbytes: int | None = None

    @property
    def elements(self) -> int:
        """Number of elements (the product of the shape; 1 for a scalar)."""
        return math.prod(self.shape)

    @property
    def size_bytes(self) -> int:
        """Bytes of the tensor's data: ``nbytes`` when the reader knew it, else from the dtype."""
        if self.nbytes is not None:
            return self.nbytes
        return math.ceil(self.elements * dtype_bits(self.dtype) / 8)


def dtype_bits(dtype: str) -> int:
    """Bits per element of a torch-style dtype name (``float32`` → 32)."""
    for name, bits in SAFETENSORS_DTYPES.values():
        if name == dtype:
            return bits
    try:
        import torch

        return getattr(torch, dtype).itemsize * 8
    except (AttributeError, TypeError) as exc:
        raise ConfigError(f"unknown dtype {dtype!r}: cannot size it") from exc


# ---------------------------------------------------------------------------------------------
# Pure summarizing logic
# ---------------------------------------------------------------------------------------------


def prefix_of(name: str, depth: int) -> str:
    """The first ``depth`` dotted components of ``name`` (``model.layers.0.w``, 2 → ``model.layers``)."""
    return ".".join(name.split(".")[:depth])


def _is_tensor(obj: Any) -> bool:
    return type(obj).__module__.startswith("torch") and hasattr(obj, "untyped_storage")


def _is_container(obj: Any) -> bool:
    return isinstance(obj, dict | list | tuple)


def walk(obj: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Yield ``(dotted name, leaf)`` for every leaf of a loaded checkpoint.

    Dicts are walked by key, lists/tuples by index when they hold tensors or containers; a list or
    tuple of plain values (``betas=(0.9, 0.999)``, ``params=[0, 1]``) is one non-tensor leaf. An
    empty dict yields nothing. A bare tensor at the root is named ``<root>``.
    """
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from walk(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(obj, list | tuple) and any(_is_tensor(v) or _is_container(v) for v in obj):
        for i, value in enumerate(obj):
            yield from walk(value, f"{prefix}.{i}" if prefix else str(i))
    else:
        yield (prefix or ROOT_NAME), obj


def _group_row() -> dict[str, int]:
    return {"tensors": 0, "parameters": 0, "bytes": 0}


def summarize(
    tensors: Iterable[TensorMeta],
    *,
    non_tensor_entries: int = 0,
    depth: int = 1,
    top: int = 10,
    path: str = "",
    files: Sequence[str] = (),
) -> dict[str, Any]:
    """Summary of named tensors as a JSON-ready dict (the ``format=json`` document).

    A name whose ``storage_key`` was already seen is an alias: it is counted in ``aliases`` (and
    listed in ``alias_of``) but adds no tensors, parameters or bytes; the first name owns the tensor.
    """
    seen: dict[Hashable, str] = {}
    alias_of: dict[str, str] = {}
    distinct: list[TensorMeta] = []
    for meta in tensors:
        if meta.storage_key is not None:
            owner = seen.setdefault(meta.storage_key, meta.name)
            if owner != meta.name:
                alias_of[meta.name] = owner
                continue
        distinct.append(meta)

    by_dtype: dict[str, dict[str, int]] = {}
    by_prefix: dict[str, dict[str, int]] = {}
    for meta in distinct:
        for group in (
            by_dtype.setdefault(meta.dtype, _group_row()),
            by_prefix.setdefault(prefix_of(meta.name, depth), _group_row()),
        ):
            group["tensors"] += 1
            group["parameters"] += meta.elements
            group["bytes"] += meta.size_bytes
    by_dtype = dict(sorted(by_dtype.items(), key=lambda kv: (-kv[1]["bytes"], kv[0])))

    largest = sorted(distinct, key=lambda m: (-m.size_bytes, -m.elements, m.name))[: max(top, 0)]
    return {
        "path": path,
        "files": list(files),
        "tensors": len(distinct),
        "parameters": sum(m.elements for m in distinct),
        "bytes": sum(m.size_bytes for m in distinct),
        "by_dtype": by_dtype,
        "by_prefix": by_prefix,
        "largest": [
            {
                "name": m.name,
                "dtype": m.dtype,
                "shape": list(m.shape),
                "elements": m.elements,
                "bytes": m.size_bytes,
            }
            for m in largest
        ],
        "non_tensor_entries": non_tensor_entries,
        "aliases": len(alias_of),
        "alias_of": alias_of,
    }


def human_bytes(n: int) -> str:
    """``512 B``, ``1.50 KiB``, ``13.48 GiB``: binary units, two decimals above one KiB."""
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        value /= 1024
        if value < 1024 or unit == "PiB":
            break
    return f"{value:.2f} {unit}"


def human_count(n: int) -> str:
    """``999``, ``15.00K``, ``6.74B``: decimal units for parameter counts."""
    if n < 1000:
        return str(n)
    value = float(n)
    for unit in ("K", "M", "B", "T"):
        value /= 1000
        if value < 1000 or unit == "T":
            break
    return f"{value:.2f}{unit}"


def _aliases_note(n: int) -> str:
    return f" (+{n} alias name{'s' if n > 1 else ''} sharing storage, counted once)" if n else ""


def _count_note(n: int) -> str:
    return f" ({human_count(n)})" if n >= 1000 else ""


def _share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def render_table(summary: dict[str, Any], depth: int = 1, max_aliases: int = 5) -> str:
    """Human-readable report of a :func:`summarize` result."""
    total = summary["bytes"]
    files = summary["files"]
    lines = [
        f"checkpoint: {summary['path']}" + (f" ({len(files)} files)" if len(files) > 1 else ""),
        f"tensors: {summary['tensors']:,}" + _aliases_note(summary["aliases"]),
    ]
    alias_items = list(summary.get("alias_of", {}).items())
    for alias, owner in alias_items[:max_aliases]:
        lines.append(f"  alias: {alias} -> {owner}")
    if len(alias_items) > max_aliases:
        lines.append(f"  ... and {len(alias_items) - max_aliases} more aliases")
    lines += [
        f"parameters: {summary['parameters']:,}" + _count_note(summary["parameters"]),
        f"bytes: {total:,} ({human_bytes(total)})",
        f"non-tensor entries: {summary['non_tensor_entries']:,}",
    ]

    def group_table(title: str, groups: dict[str, dict[str, int]]) -> list[str]:
        rows = [
            [
                key,
                f"{g['tensors']:,}",
                f"{g['parameters']:,}",
                f"{g['bytes']:,}",
                human_bytes(g["bytes"]),
                _share(g["bytes"], total),
            ]
            for key, g in groups.items()
        ]
        table = format_table([title, "tensors", "parameters", "bytes", "size", "% bytes"], rows, "lrrrrr")
        return ["", table]

    lines += group_table("dtype", summary["by_dtype"])
    lines += group_table(f"prefix (depth {depth})", summary["by_prefix"])
    if summary["largest"]:
        rows = [
            [
                t["name"],
                t["dtype"],
                "[" + ", ".join(map(str, t["shape"])) + "]",
                f"{t['elements']:,}",
                f"{t['bytes']:,}",
                human_bytes(t["bytes"]),
            ]
            for t in summary["largest"]
        ]
        lines += [
            "",
            f"largest {len(rows)} tensors:",
            format_table(["name", "dtype", "shape", "elements", "bytes", "size"], rows, "lllrrr"),
        ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Reading files
# ---------------------------------------------------------------------------------------------


def read_safetensors(path: Path, file_key: Hashable = None) -> list[TensorMeta]:
    """Tensor metadata from a safetensors header (8-byte little-endian length + JSON); no data read."""
    corrupt = f"{path}: not a valid safetensors file (corrupt or truncated?)"
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise ConfigError(f"{corrupt}: only {size} bytes, no header; re-download or re-save it")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_SAFETENSORS_HEADER or 8 + n > size:
            raise ConfigError(
                f"{corrupt}: header claims {n:,} bytes but the file has {size:,}; re-download or re-save it"
            )
        raw = fh.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{corrupt}: header is not valid JSON ({exc}); re-download or re-save it") from exc
    if not isinstance(header, dict):
        raise ConfigError(f"{corrupt}: header is not a JSON object; re-download or re-save it")

    data_size = size - 8 - n
    metas = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            tag, shape, (start, end) = info["dtype"], info["shape"], info["data_offsets"]
            ok = (
                isinstance(tag, str)
                and all(isinstance(d, int) and d >= 0 for d in shape)
                and isinstance(start, int)
                and isinstance(end, int)
                and 0 <= start <= end
            )
        except (TypeError, KeyError, ValueError):
            ok = False
        if not ok:
            raise ConfigError(f"{corrupt}: malformed header entry for {name!r}; re-download or re-save it")
        if end > data_size:
            raise ConfigError(
                f"{corrupt}: tensor {name!r} ends at byte {end:,} of a {data_size:,}-byte data section; "
                "re-download or re-save it"
            )
        dtype, bits = SAFETENSORS_DTYPES.get(tag, (tag.lower(), 0))
        if bits and (math.prod(shape) * bits) % 8 == 0 and end - start != math.prod(shape) * bits // 8:
            raise ConfigError(
                f"{corrupt}: tensor {name!r} has {end - start} bytes for shape {shape} of {tag}; "
                "re-download or re-save it"
            )
        metas.append(TensorMeta(name, dtype, tuple(shape), (file_key, start, end), end - start))
    return metas


def _load_torch(path: Path) -> Any:
    """``torch.load`` with weights_only and mmap; one-line ConfigErrors for refused or unreadable files."""
    import pickle

    import torch

    def load(mmap: bool) -> Any:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": keep stderr to one line
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)

    if path.stat().st_size == 0:
        raise ConfigError(f"{path}: the file is empty (0 bytes); re-download or re-save it")
    try:
        try:
            return load(mmap=True)
        except RuntimeError as exc:
            if "mmap can only be used with files saved with" not in str(exc):
                raise
            return load(mmap=False)  # legacy (non-zip) torch.save format: mmap cannot open it
    except pickle.UnpicklingError as exc:
        inner = str(exc.__context__ or exc)
        if any(marker in inner for marker in _REFUSAL_MARKERS):
            found = re.search(r"GLOBAL ([\w.]+)|function (\S+)|got (<[^>]*>)", inner)
            what = next((g for g in found.groups() if g), "") if found else ""
            raise ConfigError(
                f"{path}: the pickle needs arbitrary code execution"
                + (f" (it references {what})" if what else "")
                + ", which weights_only loading refuses on purpose; re-save it as a plain state_dict "
                "(torch.save(model.state_dict(), ...)) or as safetensors"
            ) from None
        raise ConfigError(_unreadable(path, inner)) from None
    except Exception as exc:  # torch reports damaged files with many exception types
        raise ConfigError(_unreadable(path, str(exc) or type(exc).__name__)) from None


def _unreadable(path: Path, reason: str) -> str:
    reason = re.sub(r"\x1b\[[0-9;]*m", "", reason).replace("Weights only load failed.", "")
    reason = " ".join(reason.split()).split(". ")[0].rstrip(".") or "unexpected end of file"
    if len(reason) > 120:
        reason = reason[:117] + "..."
    return (
        f"{path}: not a readable PyTorch checkpoint (corrupt, truncated, or not written by torch.save): "
        f"{reason}; re-download or re-save it"
    )


def read_torch(path: Path, file_key: Hashable = None) -> tuple[list[TensorMeta], int]:
    """Tensor metadata and the non-tensor leaf count of a ``torch.save`` file."""
    obj = _load_torch(path)
    metas: list[TensorMeta] = []
    non_tensor = 0
    for name, leaf in walk(obj):
        if _is_tensor(leaf):
            metas.append(torch_meta(name, leaf, file_key))
        else:
            non_tensor += 1
    return metas, non_tensor


def torch_meta(name: str, tensor: Any, file_key: Hashable = None) -> TensorMeta:
    """Metadata of a loaded (possibly mmap-backed) tensor; storage identity keys tied weights."""
    dtype = str(tensor.dtype).removeprefix("torch.")
    shape = tuple(int(d) for d in tensor.shape)
    key: Hashable | None = None
    try:
        storage = tensor.untyped_storage()
        if storage.nbytes() > 0:  # empty storages can share a null pointer without being tied
            key = (
                file_key,
                storage.data_ptr(),
                tensor.storage_offset(),
                shape,
                tuple(tensor.stride()),
                dtype,
            )
    except (RuntimeError, NotImplementedError, TypeError):  # sparse and other storage-less layouts
        key = None
    return TensorMeta(name, dtype, shape, key, tensor.numel() * tensor.element_size())


def _shards_from_index(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(
            f"{index}: not a valid shard index (needs a JSON object with a 'weight_map'): {exc}; "
            "re-download it or pass one shard file"
        ) from exc
    paths = [index.parent / str(shard) for shard in shards]
    for shard in paths:
        if not shard.is_file():
            raise ConfigError(f"shard {shard} listed in {index} does not exist: download all shards")
    if not paths:
        raise ConfigError(f"{index}: the weight_map lists no shards; pass a checkpoint file instead")
    return paths


def resolve_files(path: Path) -> list[Path]:
    """The checkpoint files behind PATH: itself, the shards of an index, or those in a directory.

    A directory uses its ``*.safetensors.index.json``, else another ``*.index.json``, else its
    ``*.safetensors`` files, else its torch files (``training_args.bin`` excluded).
    """
    if not path.exists():
        raise ConfigError(f"path {path} does not exist: pass an existing checkpoint file or directory")
    if path.is_file():
        if path.name.endswith(".index.json"):
            return _shards_from_index(path)
        if path.suffix in (*TORCH_SUFFIXES, SAFETENSORS_SUFFIX):
            return [path]
        raise ConfigError(
            f"unsupported checkpoint extension {path.suffix or '(none)'!r} for {path}: expected "
            f"{', '.join((*TORCH_SUFFIXES, SAFETENSORS_SUFFIX))}, or a *.index.json"
        )
    indexes = sorted(path.glob("*.safetensors.index.json")) or sorted(path.glob("*.index.json"))
    if len(indexes) > 1:
        raise ConfigError(
            f"{path} holds several shard indexes ({', '.join(i.name for i in indexes)}): pass one of them"
        )
    if indexes:
        return _shards_from_index(indexes[0])
    files = sorted(path.glob(f"*{SAFETENSORS_SUFFIX}")) or sorted(
        p
        for p in path.iterdir()
        if p.is_file() and p.suffix in TORCH_SUFFIXES and p.name != "training_args.bin"
    )
    if not files:
        raise ConfigError(
            f"no checkpoint files in directory {path}: expected *.index.json, *.safetensors or "
            f"{'/'.join('*' + s for s in TORCH_SUFFIXES)} files"
        )
    return files


def collect(path: Path) -> tuple[list[Path], list[TensorMeta], int]:
    """Files, tensor metadata and non-tensor entry count of everything PATH names."""
    files = resolve_files(path)
    metas: list[TensorMeta] = []
    non_tensor = 0
    for i, file in enumerate(files):
        if file.suffix == SAFETENSORS_SUFFIX:
            metas += read_safetensors(file, file_key=i)
        else:
            found, extra = read_torch(file, file_key=i)
            metas += found
            non_tensor += extra
    if not metas:
        raise ConfigError(
            f"{path} holds no tensors ({non_tensor} non-tensor entries): it is not a model checkpoint; "
            "pass a file saved from a state_dict"
        )
    return files, metas, non_tensor


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def task(cfg: DictConfig) -> dict[str, Any]:
    """Read, summarize and print the checkpoint named by ``cfg.path``."""
    if cfg.path is None or str(cfg.path) == "":
        raise ConfigError("missing checkpoint path: pass PATH or path=...")
    fmt = str(cfg.format)
    if fmt not in ("table", "json"):
        raise ConfigError(f"unknown format {fmt!r}: use format=table or format=json")
    depth, top = cfg.depth, cfg.top
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
        raise ConfigError(f"depth must be an integer >= 1, got {depth!r}: pass e.g. depth=2")
    if not isinstance(top, int) or isinstance(top, bool) or top < 0:
        raise ConfigError(f"top must be an integer >= 0, got {top!r}: pass e.g. top=20")

    path = Path(str(cfg.path)).expanduser()
    files, metas, non_tensor = collect(path)
    summary = summarize(
        metas,
        non_tensor_entries=non_tensor,
        depth=depth,
        top=top,
        path=str(cfg.path),
        files=[str(f) for f in files],
    )
    if fmt == "json":
        print_json(summary)
    else:
        print(render_table(summary, depth=depth))
    return summary


def main() -> None:
    """``python -m dse.ckpt_summarize PATH [depth=1] [top=10] [format=table|json]``."""
    run_app(task, "ckpt_summarize", positional=("path",))


if __name__ == "__main__":
    main()
