"""Shared fixtures: a private harness cache, tiny checkpoints built once per session, drawn test images.

``harness`` is imported first: it installs the torchvision import hook that transformers needs here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

import harness  # noqa: F401  (import hook, before anything imports transformers)

#: Benchmark files and golden cases (responses with the numbers the official scorers printed); see its README.
FIXTURES = Path(__file__).resolve().parent / "fixtures"

SHAPES_CORPUS = [
    "there is a red circle on the left .",
    "there is a blue square on the right .",
    "a green triangle is above a yellow circle .",
    "the yellow square is below the red triangle .",
    "is there a blue circle in the image ? yes , there is .",
    "is there a green square in the image ? no , there is not .",
    "what colour is the shape ? it is red .",
    "how many shapes are there ? there are two shapes .",
    "describe the image . the image shows a small blue triangle and a large green circle .",
]


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory):
    """Point the harness cache (``HARNESS_CACHE``: hashes, embedded model, toy data) at a temporary folder,
    so tests never read or write the user's cache. Tests may override it with ``monkeypatch.setenv``."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HARNESS_CACHE", str(tmp_path_factory.mktemp("harness-cache")))
        yield


@pytest.fixture(scope="session")
def shapes_corpus() -> list[str]:
    """Sentences about coloured shapes: the vocabulary of the tiny test models."""
    return list(SHAPES_CORPUS)


@pytest.fixture(scope="session")
def tiny_llava_path(tmp_path_factory) -> str:
    """A tiny LLaVA-1.5 checkpoint (seed 0, :data:`SHAPES_CORPUS`), built once per session."""
    from harness.models.tiny import build_tiny_llava

    return str(build_tiny_llava(tmp_path_factory.mktemp("tiny") / "llava", SHAPES_CORPUS, seed=0))


@pytest.fixture(scope="session")
def tiny_qwen2vl_path(tmp_path_factory) -> str:
    """A tiny Qwen2-VL checkpoint (seed 0, :data:`SHAPES_CORPUS`), built once per session."""
    from harness.models.tiny import build_tiny_qwen2vl

    return str(build_tiny_qwen2vl(tmp_path_factory.mktemp("tiny") / "qwen2vl", SHAPES_CORPUS, seed=0))


@pytest.fixture(scope="session")
def shape_image() -> Callable[..., object]:
    """``shape_image(colour, shape="circle", size=48)``: an RGB PIL image of one filled shape on white."""
    from PIL import Image, ImageDraw

    def draw(colour: str, shape: str = "circle", size: int = 48):
        img = Image.new("RGB", (size, size), "white")
        box = (size // 8, size // 8, size - size // 8, size - size // 8)
        d = ImageDraw.Draw(img)
        if shape == "circle":
            d.ellipse(box, fill=colour)
        elif shape == "square":
            d.rectangle(box, fill=colour)
        else:
            d.polygon([(size // 2, box[1]), (box[2], box[3]), (box[0], box[3])], fill=colour)
        return img

    return draw


def _forbid_reads_under(root: str) -> None:
    """Fail any file open under ``root`` (CI sets ``HARNESS_FORBIDDEN_ROOT`` to a folder beside the checkout that
    users do not have, so that its presence cannot hide a dependency on it)."""
    import sys

    prefixes = tuple({os.path.join(os.path.abspath(root), ""), os.path.join(os.path.realpath(root), "")})

    def hook(event: str, args: tuple) -> None:
        if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            path = os.fsdecode(args[0])
            if os.path.join(os.path.abspath(path), "").startswith(prefixes):
                raise RuntimeError(f"the test suite read {path}, outside the repository ({root} is not a user's)")

    sys.addaudithook(hook)


if os.environ.get("HARNESS_FORBIDDEN_ROOT"):
    _forbid_reads_under(os.environ["HARNESS_FORBIDDEN_ROOT"])
