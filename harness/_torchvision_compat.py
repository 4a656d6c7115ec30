"""Let a CUDA build of torchvision import beside a CPU build of torch.

PyPI's torchvision wheels are CUDA builds. Beside a CPU-only torch their compiled
extension does not load, and ``import torchvision`` then fails with
``operator torchvision::nms does not exist`` because its Python code registers fake
kernels for operators the extension would have defined. transformers and vLLM import
torchvision, so on a CPU machine that has vLLM's CPU build installed nothing loads.

:func:`install` adds an import hook that, right before torchvision is first imported,
defines the schemas of the two operators torchvision registers fake kernels for
(``nms`` and ``qnms``) when, and only when, torch is a CPU build and torchvision is a
CUDA build. The operators still have no CPU kernels: code that calls them fails, code
that only imports torchvision (as transformers and vLLM do for LLaVA) works.

The hook is activated in every interpreter of the environment by a ``.pth`` file that
``scripts/install.sh`` writes (spawned vLLM engine processes need it too), and by the
``harness`` package itself.
"""

from __future__ import annotations

import importlib.abc
import importlib.metadata
import sys

_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_library = None  # keeps the torch.library.Library alive for the interpreter's lifetime


def needed() -> bool:
    """True when torchvision is a CUDA build and torch a CPU build."""
    try:
        files = importlib.metadata.files("torchvision") or []
    except importlib.metadata.PackageNotFoundError:
        return False
    version_file = next((f for f in files if str(f).replace("\\", "/") == "torchvision/version.py"), None)
    if version_file is None:
        return False
    try:
        text = version_file.read_text()
    except OSError:
        return False
    if "+cu" not in text:
        return False
    import torch

    return torch.version.cuda is None


def define_schemas() -> None:
    global _library
    if _library is not None:
        return
    import torch

    _library = torch.library.Library("torchvision", "DEF")
    for schema in _SCHEMAS:
        _library.define(schema)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):  # noqa: D401 - importlib API
        if fullname == "torchvision":
            sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _Finder)]
            if needed():
                define_schemas()
        return None  # let the normal finders import it


def install() -> None:
    """Register the hook (idempotent; a no-op once torchvision is imported)."""
    if "torchvision" in sys.modules:
        return
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
