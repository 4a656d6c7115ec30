"""Tiny, randomly initialised vision-language checkpoints built locally in seconds.

They have the real architectures (LLaVA-1.5: CLIP vision tower + Llama; Qwen2-VL), real processors and chat
templates, and word-level tokenizers whose vocabulary comes from a given corpus. Tests and the CLI's default
model (the embedded tiny LLaVA, see :func:`ensure_embedded_model`) run the whole pipeline (engines, runner,
scorers, trainers) on them without any download. The weights are seeded: a checkpoint built twice with the
same seed and corpus is byte-identical.

The LLaVA checkpoint is written with the key names of the ``llava-hf`` checkpoints
(``vision_tower.vision_model.*``, ``language_model.model.*``), which both transformers and vLLM load.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from harness.models import cache_dir
from harness.models.llava import LLAVA_V1_SYSTEM
from harness.models.qwen2vl import QWEN2VL_SYSTEM
from harness.models.weights import rename_tensor_prefixes

EMBEDDED_MODEL_NAME = "tiny-llava-v1"

# Template text the tiny models see in every prompt; added to the corpus so the prompt is not all <unk>.
LLAVA_TEMPLATE_TEXT = f"{LLAVA_V1_SYSTEM} USER: ASSISTANT:"
QWEN_TEMPLATE_TEXT = f"{QWEN2VL_SYSTEM} system user assistant"

LLAVA_SPECIALS = ("<unk>", "<s>", "</s>", "<pad>", "<image>")
QWEN_SPECIALS = (
    "<unk>",
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# Chat template of the tiny LLaVA: renders exactly the original LLaVA ``conv_llava_v1`` prompt
# ("{system} USER: <image>\n{question} ASSISTANT:"), so a server that applies the checkpoint's template
# (``vllm serve``) sends the model the same text as :class:`harness.models.llava.LlavaFamily`. It accepts
# string content and OpenAI-style lists of parts (image parts first, then text).
LLAVA_V1_CHAT_TEMPLATE = (
    "{%- set system = '" + LLAVA_V1_SYSTEM.replace("'", "\\'") + "' -%}"
    "{%- set loop_messages = messages -%}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}{%- set system = messages[0]['content'] -%}"
    "{%- else -%}{%- set system = messages[0]['content'] | selectattr('type', 'equalto', 'text')"
    " | map(attribute='text') | join(' ') -%}{%- endif -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- endif -%}"
    "{{- system + ' ' -}}"
    "{%- for message in loop_messages -%}"
    "{%- if message['content'] is string -%}{%- set text = message['content'] -%}{%- set n_images = 0 -%}"
    "{%- else -%}"
    "{%- set text = message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text')"
    " | join(' ') -%}"
    "{%- set n_images = message['content'] | rejectattr('type', 'equalto', 'text') | list | length -%}"
    "{%- endif -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{- 'USER: ' + '<image>\\n' * n_images + text + ' ' -}}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{- 'ASSISTANT: ' + text + '</s>' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
)

# The chat template of Qwen2-VL-Instruct (images only; no video, no vision ids).
QWEN2VL_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if loop.first and message['role'] != 'system' -%}"
    "{{- '<|im_start|>system\\n" + QWEN2VL_SYSTEM + "<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'text' -%}{{- part['text'] -}}"
    "{%- else -%}{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


def word_level_tokenizer(corpus: Iterable[str], specials: tuple[str, ...], bos: str | None, **special_map: Any) -> Any:
    """A word-level ``PreTrainedTokenizerFast`` over the words of ``corpus``.

    The vocabulary is the special tokens (ids 0..) followed by the corpus words ordered by decreasing count,
    then alphabetically, so it does not depend on hash order. Words are split on whitespace and punctuation.
    ``bos``, when given, is prepended to every encoded text (as Llama's tokenizer does).
    """
    from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.Whitespace()
    counts: Counter[str] = Counter()
    for text in corpus:
        counts.update(word for word, _ in pre.pre_tokenize_str(text))
    vocab = {tok: i for i, tok in enumerate(specials)}
    for word, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        if word not in vocab:
            vocab[word] = len(vocab)

    tok = Tokenizer(WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # words joined by single spaces
    if bos is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, vocab[bos])]
        )
    tok.add_special_tokens(list(specials))
    return PreTrainedTokenizerFast(tokenizer_object=tok, **special_map)


def init_weights(model: Any, seed: int, std: float, embed_std: float) -> None:
    """Seeded re-initialisation of every parameter, in name order: norms to one, biases to zero, embeddings
    and the LM head with ``embed_std`` (large enough for greedy decoding to produce varied words rather
    than one token over and over), other matrices with ``std``."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            if "norm" in name and name.endswith("weight"):
                param.fill_(1.0)
            elif name.endswith("bias"):
                param.zero_()
            else:
                s = embed_std if ("embed_tokens" in name or "lm_head" in name) else std
                param.copy_(torch.randn(param.shape, generator=gen, dtype=torch.float32) * s)


def never_generate(model: Any, token_ids: Iterable[int]) -> None:
    """Zero the output-embedding rows of ``token_ids``: their logit is then 0 while the other logits spread
    widely around it, so greedy decoding practically never picks them (placeholders, padding, BOS...)."""
    import torch

    with torch.no_grad():
        weight = model.get_output_embeddings().weight
        for i in token_ids:
            weight[i].zero_()


def _prepare_out_dir(out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return out


@contextlib.contextmanager
def no_progress_bars() -> Iterator[None]:
    """Silence transformers' progress bars (``Writing model shards``) while a tiny checkpoint is saved."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def build_tiny_llava(out_dir: str | Path, corpus: Iterable[str], seed: int = 0) -> Path:
    """Write a tiny LLaVA-1.5 checkpoint (``LlavaForConditionalGeneration``) to ``out_dir`` and return it.

    CLIP vision tower: 32x32 images, 8x8 patches (16 image tokens), 2 layers of width 32. Llama decoder:
    width 128, 2 layers, 4 heads of 32 (the smallest head size vLLM's CPU attention supports). Its tokenizer
    is word-level over ``corpus`` plus the words of the llava_v1 template, with ``<s>`` prepended; the
    processor's chat template renders the llava_v1 prompt.
    """
    import torch
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        GenerationConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    out = _prepare_out_dir(out_dir)
    tokenizer = word_level_tokenizer(
        [*corpus, LLAVA_TEMPLATE_TEXT],
        LLAVA_SPECIALS,
        bos="<s>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    )
    tokenizer.padding_side = "left"
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in LLAVA_SPECIALS}

    image_size, patch_size = 32, 8
    vision = CLIPVisionConfig(
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        projection_dim=32,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=1024,
        bos_token_id=ids["<s>"],
        eos_token_id=ids["</s>"],
        pad_token_id=ids["<pad>"],
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=ids["<image>"],
        image_seq_length=(image_size // patch_size) ** 2,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng():  # leaves the caller's random state alone
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config).eval()
    init_weights(model, seed, std=0.1, embed_std=1.0)
    never_generate(model, [i for t, i in ids.items() if t != "</s>"])
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<s>"], eos_token_id=ids["</s>"], pad_token_id=ids["<pad>"]
    )
    with no_progress_bars():
        model.save_pretrained(out)
    # llava-hf key names: the vision tower keeps CLIPVisionModel's "vision_model." level, which vLLM requires
    rename_tensor_prefixes(out / "model.safetensors", {"vision_tower.": "vision_tower.vision_model."})

    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        do_center_crop=True,
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token, dropped by the "default" strategy
        chat_template=LLAVA_V1_CHAT_TEMPLATE,
    )
    processor.save_pretrained(out)
    tokenizer.chat_template = LLAVA_V1_CHAT_TEMPLATE
    tokenizer.save_pretrained(out)
    return out


def build_tiny_qwen2vl(out_dir: str | Path, corpus: Iterable[str], seed: int = 0) -> Path:
    """Write a tiny Qwen2-VL checkpoint (``Qwen2VLForConditionalGeneration``) to ``out_dir`` and return it.

    Vision: 14-pixel patches merged 2x2, 2 blocks of width 32; images are resized to between 56x56 and
    112x112 pixels (4 to 16 image tokens). Decoder: width 128, 2 layers, 4 heads of 32 (2 KV heads), M-RoPE.
    The tokenizer is word-level over ``corpus`` plus Qwen's special tokens; the chat template is Qwen2-VL's.
    """
    import torch
    from transformers import (
        GenerationConfig,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    out = _prepare_out_dir(out_dir)
    tokenizer = word_level_tokenizer(
        [*corpus, QWEN_TEMPLATE_TEXT],
        QWEN_SPECIALS,
        bos=None,
        unk_token="<unk>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    tokenizer.padding_side = "left"
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}

    hidden, heads = 128, 4
    head_dim = hidden // heads
    config = Qwen2VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": hidden,
            "intermediate_size": 256,
            "num_hidden_layers": 2,
            "num_attention_heads": heads,
            "num_key_value_heads": 2,
            "max_position_embeddings": 1024,
            "max_window_layers": 2,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 1_000_000.0,
                "mrope_section": [head_dim // 8, 3 * head_dim // 16, 3 * head_dim // 16],
            },
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": 2,
            "embed_dim": 32,
            "hidden_size": hidden,
            "mlp_ratio": 2,
            "num_heads": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng():  # leaves the caller's random state alone
        torch.manual_seed(seed)
        model = Qwen2VLForConditionalGeneration(config).eval()
    init_weights(model, seed, std=0.1, embed_std=1.0)
    never_generate(model, [i for t, i in ids.items() if t != "<|im_end|>"])
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"],
    )
    with no_progress_bars():
        model.save_pretrained(out)

    size = {"shortest_edge": 56 * 56, "longest_edge": 112 * 112}  # min_pixels, max_pixels
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=size, patch_size=14, merge_size=2, temporal_patch_size=2),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(size=size, patch_size=14, merge_size=2, temporal_patch_size=2),
        chat_template=QWEN2VL_CHAT_TEMPLATE,
    )
    processor.save_pretrained(out)
    tokenizer.chat_template = QWEN2VL_CHAT_TEMPLATE
    tokenizer.save_pretrained(out)
    return out


def embedded_model_dir(corpus: Iterable[str], seed: int = 0) -> Path:
    """Where :func:`ensure_embedded_model` keeps the tiny LLaVA checkpoint built from ``corpus`` and ``seed``:
    ``<cache>/models/tiny-llava-v1-<hash>``, so a changed corpus (a new tokenizer) never reuses an old build."""
    digest = hashlib.sha256(json.dumps([list(corpus), seed]).encode()).hexdigest()[:12]
    return cache_dir() / "models" / f"{EMBEDDED_MODEL_NAME}-{digest}"


def ensure_embedded_model(corpus: Iterable[str], seed: int = 0) -> Path:
    """The embedded tiny LLaVA checkpoint (the quick-start model), built on first use.

    It is built in a temporary folder beside its final place and renamed into place, so concurrent
    callers and interrupted builds never leave a partial checkpoint. A checkpoint already there is reused
    as is, whatever corpus built it.
    """
    corpus = list(corpus)
    target = embedded_model_dir(corpus, seed)
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build_tiny_llava(tmp, corpus, seed=seed)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():  # lost a race only if the winner finished
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
