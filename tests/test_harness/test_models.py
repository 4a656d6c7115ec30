"""Model-family adapters, tiny checkpoints, model resolution and content hashes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from harness.errors import ModelError
from harness.models import ModelInfo, content_hash, resolve_model
from harness.models.llava import LlavaFamily
from harness.models.qwen2vl import Qwen2VLFamily

SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)


# -- prompt templates ------------------------------------------------------------------------------------


def test_llava_v1_prompt_with_an_image() -> None:
    fam = LlavaFamily("unused")
    assert fam.template == "llava_v1"
    assert fam.render_prompt("Is there a cat?", 1) == SYSTEM + " USER: <image>\nIs there a cat? ASSISTANT:"
    assert (
        fam.render_prompt("Is there a cat?", 1, response="Yes.")
        == SYSTEM + " USER: <image>\nIs there a cat? ASSISTANT: Yes.</s>"
    )


def test_llava_v1_prompt_without_an_image() -> None:
    fam = LlavaFamily("unused", "llava_v1")
    assert fam.render_prompt("Say hi.", 0) == SYSTEM + " USER: Say hi. ASSISTANT:"
    assert fam.render_prompt("Say hi.", 0, response="hi") == SYSTEM + " USER: Say hi. ASSISTANT: hi</s>"


def test_qwen2vl_prompt() -> None:
    fam = Qwen2VLFamily("unused")
    head = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    assert fam.render_prompt("Is there a cat?", 1) == (
        head + "<|vision_start|><|image_pad|><|vision_end|>Is there a cat?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert fam.render_prompt("Say hi.", 0, response="hi") == (
        head + "Say hi.<|im_end|>\n<|im_start|>assistant\nhi<|im_end|>\n"
    )


def test_unknown_template_is_refused() -> None:
    with pytest.raises(ModelError, match="no prompt template 'vicuna'.*llava_v1, hub"):
        LlavaFamily("unused", "vicuna")


@pytest.mark.parametrize("which", ["llava", "qwen2vl"])
def test_checkpoint_chat_template_renders_the_adapter_prompt(which, tiny_llava_path, tiny_qwen2vl_path) -> None:
    """The tiny checkpoints' own chat templates (used by `vllm serve`) give the adapters' prompts."""
    path = tiny_llava_path if which == "llava" else tiny_qwen2vl_path
    _, default = resolve_model(path)
    _, hub = resolve_model(path, "hub")
    assert hub.template == "hub"
    for n_images in (0, 1):
        for response in (None, "yes , there is ."):
            expected = default.render_prompt("is there a red circle ?", n_images, response)
            assert hub.render_prompt("is there a red circle ?", n_images, response) == expected


def test_processor_inputs_are_left_padded(tiny_llava_path, tiny_qwen2vl_path, shape_image) -> None:
    from transformers import AutoProcessor

    for path in (tiny_llava_path, tiny_qwen2vl_path):
        _, fam = resolve_model(path)
        processor = AutoProcessor.from_pretrained(path)
        texts = [fam.render_prompt("describe the image .", 1), fam.render_prompt("yes", 0)]
        inputs = fam.processor_inputs(processor, texts, [[shape_image("red")], []])
        mask = inputs["attention_mask"]
        assert mask[0].all() and not mask[1, 0] and mask[1, -1]  # the shorter prompt is padded on the left
        assert "pixel_values" in inputs
        if fam.name == "qwen2_vl":
            assert inputs["image_grid_thw"].shape == (1, 3)
            assert inputs["mm_token_type_ids"].shape == inputs["input_ids"].shape
            assert int(inputs["mm_token_type_ids"][0].sum()) > 0


# -- training quirks of the adapters ---------------------------------------------------------------------


def test_family_classes_by_model_type() -> None:
    from harness.models.base import families, family_class

    assert family_class("llava") is LlavaFamily and family_class("qwen2_vl") is Qwen2VLFamily
    assert family_class("llama") is None and family_class(None) is None
    assert {n for n, cls in families().items() if cls.supports_logprobs} == {"llava", "qwen2_vl"}


def test_module_groups_of_each_family() -> None:
    assert LlavaFamily.module_group("model.multi_modal_projector.linear_1") == "projector"
    assert LlavaFamily.module_group("model.vision_tower.encoder.layers.0.self_attn.q_proj") == "vision_tower"
    assert LlavaFamily.module_group("model.language_model.layers.0.self_attn.q_proj") == "language_model"
    assert LlavaFamily.module_group("lm_head") == "language_model"
    assert Qwen2VLFamily.module_group("model.visual.merger.mlp.0") == "projector"
    assert Qwen2VLFamily.module_group("model.visual.blocks.0.attn.qkv") == "vision_tower"
    assert Qwen2VLFamily.module_group("model.language_model.layers.0.mlp.up_proj") == "language_model"
    assert Qwen2VLFamily.module_group("lm_head.weight") == "language_model"
    for family in (LlavaFamily, Qwen2VLFamily):
        assert family.module_group("model.rotary_emb") is None


def test_llava_vision_layers_after_the_feature_layer_are_unused() -> None:
    from types import SimpleNamespace

    vision = SimpleNamespace(num_hidden_layers=24)
    llava15 = SimpleNamespace(vision_config=vision, vision_feature_layer=-2)  # LLaVA-1.5: the penultimate layer
    assert LlavaFamily.unused_vision_modules(llava15) == [
        "vision_tower.post_layernorm",
        "vision_tower.encoder.layers.23.",
    ]
    several = SimpleNamespace(vision_config=vision, vision_feature_layer=[3, -5])  # hidden_states[3]: layer 2
    assert LlavaFamily.unused_vision_modules(several) == ["vision_tower.post_layernorm"] + [
        f"vision_tower.encoder.layers.{i}." for i in range(20, 24)
    ]
    last = SimpleNamespace(vision_config=vision, vision_feature_layer=-1)
    assert LlavaFamily.unused_vision_modules(last) == ["vision_tower.post_layernorm"]
    assert Qwen2VLFamily.unused_vision_modules(llava15) == []


def test_llava_checkpoint_postprocessing_writes_llava_hf_names(tmp_path) -> None:
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    def saved(folder: Path, with_config: bool) -> Path:
        folder.mkdir()
        if with_config:
            (folder / "config.json").write_text("{}")
        tensors = {"vision_tower.encoder.w": torch.zeros(2), "language_model.w": torch.ones(1)}
        save_file(tensors, str(folder / "model-00001-of-00001.safetensors"))
        (folder / "model.safetensors.index.json").write_text(
            json.dumps({"weight_map": {k: "model-00001-of-00001.safetensors" for k in tensors}})
        )
        return folder

    def keys(folder: Path) -> list[str]:
        with safe_open(str(folder / "model-00001-of-00001.safetensors"), "pt") as f:
            return sorted(f.keys())

    full = saved(tmp_path / "full", with_config=True)
    LlavaFamily(full).postprocess_checkpoint(full)
    expected = ["language_model.w", "vision_tower.vision_model.encoder.w"]
    assert keys(full) == expected
    assert sorted(json.loads((full / "model.safetensors.index.json").read_text())["weight_map"]) == expected
    LlavaFamily(full).postprocess_checkpoint(full)  # already llava-hf names: unchanged
    assert keys(full) == expected

    adapter_only = saved(tmp_path / "adapter", with_config=False)  # no config.json: not a full model
    LlavaFamily(adapter_only).postprocess_checkpoint(adapter_only)
    assert keys(adapter_only) == ["language_model.w", "vision_tower.encoder.w"]
    qwen = saved(tmp_path / "qwen", with_config=True)
    Qwen2VLFamily(qwen).postprocess_checkpoint(qwen)  # nothing to do for Qwen2-VL
    assert keys(qwen) == ["language_model.w", "vision_tower.encoder.w"]


# -- tiny checkpoints --------------------------------------------------------------------------------------


def test_tiny_llava_is_deterministic(tmp_path, tiny_llava_path, shapes_corpus) -> None:
    from harness.models.tiny import build_tiny_llava

    again = build_tiny_llava(tmp_path / "again", shapes_corpus, seed=0)
    other = build_tiny_llava(tmp_path / "other", shapes_corpus, seed=1)
    assert content_hash(again) == content_hash(tiny_llava_path)
    assert (again / "model.safetensors").read_bytes() == (Path(tiny_llava_path) / "model.safetensors").read_bytes()
    assert (other / "model.safetensors").read_bytes() != (again / "model.safetensors").read_bytes()
    assert (other / "tokenizer.json").read_bytes() == (again / "tokenizer.json").read_bytes()


def test_tiny_qwen2vl_is_deterministic(tmp_path, tiny_qwen2vl_path, shapes_corpus) -> None:
    from harness.models.tiny import build_tiny_qwen2vl

    again = build_tiny_qwen2vl(tmp_path / "again", shapes_corpus, seed=0)
    assert content_hash(again) == content_hash(tiny_qwen2vl_path)


def test_tiny_llava_loads_with_transformers_and_vllm_key_names(tiny_llava_path) -> None:
    from safetensors import safe_open
    from transformers import AutoTokenizer, LlavaForConditionalGeneration

    with safe_open(os.path.join(tiny_llava_path, "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    vision = [k for k in keys if k.startswith("vision_tower.")]
    assert vision and all(k.startswith("vision_tower.vision_model.") for k in vision)  # what vLLM expects
    assert any(k.startswith("language_model.model.") for k in keys)

    model, info = LlavaForConditionalGeneration.from_pretrained(tiny_llava_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    tok = AutoTokenizer.from_pretrained(tiny_llava_path)
    assert model.config.text_config.vocab_size == len(tok)
    ids = tok("there is a red circle").input_ids
    assert ids[0] == tok.bos_token_id and tok.unk_token_id not in ids
    assert model.config.image_token_index == tok.convert_tokens_to_ids("<image>")


def test_tiny_qwen2vl_loads_with_transformers(tiny_qwen2vl_path) -> None:
    from transformers import AutoTokenizer, Qwen2VLForConditionalGeneration

    model, info = Qwen2VLForConditionalGeneration.from_pretrained(tiny_qwen2vl_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    tok = AutoTokenizer.from_pretrained(tiny_qwen2vl_path)
    for special in (
        "<|im_start|>",
        "<|im_end|>",
        "<|vision_start|>",
        "<|vision_end|>",
        "<|image_pad|>",
        "<|endoftext|>",
    ):
        assert tok.convert_tokens_to_ids(special) != tok.unk_token_id
    assert model.config.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")


def test_ensure_embedded_model_builds_once(tmp_path, monkeypatch, shapes_corpus) -> None:
    from harness.models import tiny

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    target = tiny.embedded_model_dir(shapes_corpus)
    assert target.parent == tmp_path / "cache" / "models" and target.name.startswith("tiny-llava-v1-")
    assert tiny.embedded_model_dir(shapes_corpus + ["another sentence"]) != target  # a new corpus, a new build
    path = tiny.ensure_embedded_model(shapes_corpus)
    assert path == target and (path / "config.json").is_file()
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # no temporary folder left

    def fail(*args, **kwargs):
        raise AssertionError("rebuilt")

    monkeypatch.setattr(tiny, "build_tiny_llava", fail)
    assert tiny.ensure_embedded_model(shapes_corpus) == target


# -- resolve_model -----------------------------------------------------------------------------------------


def test_resolve_model(tiny_llava_path, tiny_qwen2vl_path) -> None:
    info, fam = resolve_model(tiny_llava_path)
    assert isinstance(fam, LlavaFamily) and fam.template == "llava_v1"
    assert info == ModelInfo(
        path=str(os.path.realpath(tiny_llava_path)),
        family="llava",
        architecture="LlavaForConditionalGeneration",
        content_hash=content_hash(tiny_llava_path),
    )
    info, fam = resolve_model(tiny_qwen2vl_path)
    assert isinstance(fam, Qwen2VLFamily)
    assert (info.family, info.architecture) == ("qwen2_vl", "Qwen2VLForConditionalGeneration")


def test_resolve_model_errors(tmp_path) -> None:
    with pytest.raises(ModelError, match="model path does not exist: .*nowhere"):
        resolve_model(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        resolve_model(empty)
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    with pytest.raises(
        ModelError,
        match=r"unsupported architecture \(model_type='bert', architectures=BertModel\)"
        r".*supported model types: llava, qwen2_vl",
    ):
        resolve_model(bert)


# -- content_hash ------------------------------------------------------------------------------------------


def test_content_hash_is_stable_and_cached(tmp_path, monkeypatch) -> None:
    import harness.cache as cache_module

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    ckpt = tmp_path / "ckpt"
    (ckpt / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (ckpt / "config.json").write_text("{}")
    (ckpt / "weights.bin").write_bytes(b"\x00" * 1000)
    first = content_hash(ckpt)
    assert len(first) == 64 and int(first, 16) >= 0

    cache = json.loads((tmp_path / "cache" / "hashes.json").read_text())
    assert cache[f"{ckpt.resolve()} (top level)"]["sha256"] == first

    def no_hashing(*args):
        raise AssertionError("hashed again")

    with monkeypatch.context() as m:
        m.setattr(cache_module, "_hash_files", no_hashing)
        assert content_hash(ckpt) == first  # served from the cache
        (ckpt / ".hidden").write_text("not part of the checkpoint")
        (ckpt / "checkpoints" / "checkpoint-2" / "optimizer.pt").write_bytes(b"\x02" * 5000)  # training state
        assert content_hash(ckpt) == first

    (ckpt / "weights.bin").write_bytes(b"\x01" * 1000)  # same size, new mtime
    os.utime(ckpt / "weights.bin", ns=(1, 1))
    second = content_hash(ckpt)
    assert second != first

    # the hash depends on the contents only, not on where the checkpoint lives or on the cache
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "config.json").write_text("{}")
    (copy / "weights.bin").write_bytes(b"\x01" * 1000)
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "other-cache"))
    assert content_hash(copy) == second


def test_content_hash_of_missing_path(tmp_path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        content_hash(tmp_path / "nothing")
