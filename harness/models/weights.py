"""A saved model's weight files: which they are, whether a safetensors file is whole, whether two models hold the
same tensors, and renaming the tensors of a safetensors file. Read by the trainers (checkpoint checks), the sweep
(verification of trained models) and the family adapters (key names of saved checkpoints)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def weight_files(folder: Path) -> list[Path]:
    """A saved model's top-level weight files (``*.safetensors``, ``*.bin`` but the Trainer's ``training_args.bin``,
    and their indexes), sorted."""
    if not folder.is_dir():
        return []
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file()
        and p.name != "training_args.bin"
        and (p.suffix in (".safetensors", ".bin") or p.name.endswith((".safetensors.index.json", ".bin.index.json")))
    )


def safetensors_header(path: Path) -> tuple[dict[str, Any], int]:
    """(tensor name -> {dtype, shape, data_offsets}, offset of the data) of a safetensors file; ValueError when the
    file is not a whole one."""
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise ValueError("truncated")
        n = int.from_bytes(head, "little")
        size = path.stat().st_size
        if n <= 0 or 8 + n > size:
            raise ValueError("truncated")
        header = json.loads(fh.read(n))
    if not isinstance(header, dict):
        raise ValueError("not a safetensors header")  # noqa: TRY004 - a malformed file, as the other cases
    header.pop("__metadata__", None)
    for value in header.values():
        begin, end = value["data_offsets"]
        if not 0 <= begin <= end or 8 + n + end > size:
            raise ValueError("truncated")
    return header, 8 + n


def _tensors(folder: Path) -> dict[str, tuple[Path, dict[str, Any], int]]:
    out: dict[str, tuple[Path, dict[str, Any], int]] = {}
    for path in sorted(folder.glob("*.safetensors")):
        header, start = safetensors_header(path)
        for name, info in header.items():
            out[name] = (path, info, start)
    return out


def _read_tensor_bytes(entry: tuple[Path, dict[str, Any], int]) -> bytes:
    path, info, start = entry
    begin, end = info["data_offsets"]
    with open(path, "rb") as fh:
        fh.seek(start + begin)
        return fh.read(end - begin)


def same_weights(a: Path, b: Path) -> bool:
    """Whether the safetensors weights of model folders ``a`` and ``b`` are the same tensors (same names and
    values; a dtype that differs is compared after conversion), reading one tensor at a time."""
    ta, tb = _tensors(a), _tensors(b)
    if not ta or set(ta) != set(tb):
        return False
    for name in sorted(ta):
        ea, eb = ta[name], tb[name]
        if ea[1]["shape"] != eb[1]["shape"]:
            return False
        if ea[1]["dtype"] == eb[1]["dtype"]:
            if _read_tensor_bytes(ea) != _read_tensor_bytes(eb):
                return False
            continue
        from safetensors import safe_open

        with safe_open(str(ea[0]), "pt") as fa, safe_open(str(eb[0]), "pt") as fb:
            x, y = fa.get_tensor(name), fb.get_tensor(name)
        if not bool((x.double() == y.double()).all()):
            return False
    return True


def rename_tensor_prefixes(path: Path, rename: dict[str, str]) -> None:
    """Rewrite the safetensors file ``path`` with key prefixes renamed (``rename``: old prefix -> new prefix; a key
    that already starts with the new prefix is kept), keys sorted."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    out = {}
    for key in sorted(tensors):
        new = key
        for old_prefix, new_prefix in rename.items():
            if key.startswith(old_prefix) and not key.startswith(new_prefix):
                new = new_prefix + key[len(old_prefix) :]
                break
        out[new] = tensors[key].contiguous()
    save_file(out, str(path), metadata={"format": "pt"})
