"""Per-row log-probabilities (trainers.logprobs) and reference log-probabilities (trainers.reference).

On the tiny LLaVA-1.5 and Qwen2-VL checkpoints: one batched forward over a mixed image / no-image batch with a
shared image gives each row the log-probability of a single-row forward and of the model's plain full-logits
forward; the vision tower runs once per forward on the unique images; only response tokens count; gradients
flow; the three references the trainer uses (adapter disabled, frozen copy, precomputed cache) agree on a
zero-initialised LoRA model; a mismatched cache is refused.

The equality checks run the models in float64, so they test the computation and not float32 rounding (summed
log-probabilities of these tiny random models are ~-100, where float32 spacing is ~1e-5).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from harness.errors import HarnessError
from harness.models import family_for
from trainers.logprobs import LogpsModel, Row, RowBatch, row_logps, tokenize_rows

QUESTION = "what colour is the shape ?"
Y_W = "it is red ."
Y_L = "there is a blue square on the right ."


def _load(path: str, dtype: torch.dtype) -> Any:
    from transformers import AutoModelForImageTextToText
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    return AutoModelForImageTextToText.from_pretrained(path, dtype=dtype).eval()


@pytest.fixture(scope="module", params=["llava", "qwen2_vl"])
def vlm(request, tiny_llava_path, tiny_qwen2vl_path) -> dict[str, Any]:
    """Family adapter, processor and float64 model (and a float32 one) of one tiny checkpoint."""
    from transformers import AutoProcessor

    path = tiny_llava_path if request.param == "llava" else tiny_qwen2vl_path
    return {
        "path": path,
        "family": family_for(path),
        "processor": AutoProcessor.from_pretrained(path),
        "model": _load(path, torch.float64),
        "model32": _load(path, torch.float32),
    }


@pytest.fixture(scope="module")
def rows(shape_image) -> list[Row]:
    """A JoMPO-like micro-batch: two responses under a matched image, a contrast image and no image; the
    images are shared between rows (distinct PIL objects, the same ``image_id``) and have different sizes."""

    def red():
        return shape_image("red", "circle", 48)

    def blue():
        return shape_image("blue", "square", 64)

    return [
        Row(QUESTION, Y_W, red(), key=("ex0", "w", "w"), image_id="red"),
        Row(QUESTION, Y_L, red(), key=("ex0", "w", "l"), image_id="red"),
        Row(QUESTION, Y_W, None, key=("ex0", "none", "w")),
        Row(QUESTION, Y_W, blue(), key=("ex0", "l", "w"), image_id="blue"),
        Row(QUESTION, Y_L, None, key=("ex0", "none", "l")),
        Row(QUESTION, Y_L, blue(), key=("ex0", "l", "l"), image_id="blue"),
    ]


def _naive(vlm: dict[str, Any], row: Row) -> tuple[float, float, int]:
    """(sum of response log-probs from full logits, -loss * n from ``forward(labels=...)``, n) of one row,
    tokenized on its own by the family adapter. The response tokens are the last ``n``: those of the text the
    template appends after the generation prompt."""
    family, processor, model = vlm["family"], vlm["processor"], vlm["model"]
    n_images = 0 if row.image is None else 1
    prompt = family.render_prompt(row.question, n_images)
    full = family.render_prompt(row.question, n_images, response=row.response)
    assert full.startswith(prompt)
    n = len(processor.tokenizer(full[len(prompt) :], add_special_tokens=False)["input_ids"])
    inputs = family.processor_inputs(processor, [full], [[row.image]] if row.image is not None else [[]])
    labels = inputs["input_ids"].clone()
    labels[:, :-n] = -100
    with torch.no_grad():
        out = model(**inputs, labels=labels)
    logp = out.logits[0, :-1].log_softmax(-1).gather(-1, inputs["input_ids"][0, 1:, None]).squeeze(-1)
    return float(logp[-n:].sum()), float(-out.loss * n), n


def test_mixed_batch_equals_single_row_forwards(vlm, rows):
    family, processor, model = vlm["family"], vlm["processor"], vlm["model"]
    batch = tokenize_rows(family, processor, rows)
    assert batch.num_unique_images == 2
    assert batch.image_index.tolist() == [0, 0, -1, 1, -1, 1]
    assert batch.keys == [r.key for r in rows]
    with torch.no_grad():
        batched = row_logps(model, family, batch)
        single = torch.stack([row_logps(model, family, tokenize_rows(family, processor, [r]))[0] for r in rows])
        selected = torch.stack([row_logps(model, family, batch.select([i]))[0] for i in range(len(rows))])
    assert batched.shape == (len(rows),)
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=0)
    torch.testing.assert_close(batched, selected, atol=1e-5, rtol=0)
    assert (batched < 0).all()


def test_families_without_log_probabilities_are_refused(vlm, rows):
    from harness.models.llava import LlavaFamily

    class Unscored(LlavaFamily):  # an adapter that does not implement the vision-tower calls
        name = "unscored"
        supports_logprobs = False

    family, processor = vlm["family"], vlm["processor"]
    message = r"implemented for model families llava, qwen2_vl, not 'unscored'"
    with pytest.raises(HarnessError, match=message):
        tokenize_rows(Unscored(vlm["path"]), processor, rows)
    batch = tokenize_rows(family, processor, rows[:1])
    with pytest.raises(HarnessError, match=message):
        row_logps(vlm["model"], "unscored", batch)


def test_float32_batch_matches_single_rows(vlm, rows):
    family, processor = vlm["family"], vlm["processor"]
    model = vlm["model32"]
    batch = tokenize_rows(family, processor, rows)
    with torch.no_grad():
        batched = row_logps(model, family, batch)
        single = torch.cat([row_logps(model, family, batch.select([i])) for i in range(len(rows))])
    assert batched.dtype == torch.float32
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=2e-6)


def test_matches_naive_full_logits_forward_and_counts_only_response_tokens(vlm, rows):
    family, processor, model = vlm["family"], vlm["processor"], vlm["model"]
    batch = tokenize_rows(family, processor, rows)
    with torch.no_grad():
        ours = row_logps(model, family, batch)
    naive = [_naive(vlm, r) for r in rows]
    torch.testing.assert_close(ours, torch.tensor([n[0] for n in naive], dtype=ours.dtype), atol=1e-5, rtol=0)
    # transformers' loss casts the logits to float32: equal to float32 precision
    torch.testing.assert_close(
        ours,
        torch.tensor([n[1] for n in naive], dtype=ours.dtype),
        atol=1e-5,
        rtol=1e-6,
    )
    # the response and the template's end-of-turn marker, nothing of the prompt or the image
    assert batch.token_counts.tolist() == [n[2] for n in naive]
    assert batch.token_counts.tolist() == [len(r.response.split()) + 1 for r in rows]  # words + end of turn
    image_token = model.config.image_token_id
    for i, row in enumerate(rows):
        scored = batch.input_ids[i][batch.response_mask[i]]
        assert image_token not in scored.tolist()
        if row.image is None:  # "no image" is the prompt without the placeholder, not a blank image
            assert image_token not in batch.input_ids[i].tolist()
        else:
            assert image_token in batch.input_ids[i].tolist()


def _count_vision_calls(vlm: dict[str, Any]) -> tuple[list[int], Any]:
    """Hook the vision tower; the list receives the number of images of each call."""
    inner = vlm["model"].model
    tower = getattr(inner, "vision_tower", None) or inner.visual
    calls: list[int] = []

    def hook(module, args, kwargs, output):
        if vlm["family"].name == "qwen2_vl":
            grid = kwargs.get("grid_thw", args[1] if len(args) > 1 else None)
            calls.append(int(grid.shape[0]))
        else:
            pixels = args[0] if args else kwargs["pixel_values"]
            calls.append(int(pixels.shape[0]))

    return calls, tower.register_forward_hook(hook, with_kwargs=True)


def test_vision_tower_runs_once_on_the_unique_images(vlm, rows):
    family, processor, model = vlm["family"], vlm["processor"], vlm["model"]
    batch = tokenize_rows(family, processor, rows)
    text_only = tokenize_rows(family, processor, [r for r in rows if r.image is None])
    calls, handle = _count_vision_calls(vlm)
    try:
        with torch.no_grad():
            row_logps(model, family, batch)
            assert calls == [2]  # one call, 2 unique images for 4 image rows
            calls.clear()
            with_dummy = row_logps(model, family, text_only)
            assert calls == [1]  # a batch without images still calls the tower once (sharded training)
            calls.clear()
            without = row_logps(model, family, text_only, one_vision_call=False)
            assert calls == []
    finally:
        handle.remove()
    assert torch.equal(with_dummy, without)


def test_deterministic(vlm, rows):
    family, processor, model = vlm["family"], vlm["processor"], vlm["model"]
    with torch.no_grad():
        a = row_logps(model, family, tokenize_rows(family, processor, rows))
        b = row_logps(model, family, tokenize_rows(family, processor, rows))
    assert torch.equal(a, b)


def test_gradient_flows_to_language_model_and_vision_tower(vlm, rows):
    family, processor, model = vlm["family"], vlm["processor"], vlm["model"]
    batch = tokenize_rows(family, processor, rows)
    scorer = LogpsModel(model, family)
    try:
        logps = scorer(batch)
        assert logps.requires_grad
        (-logps.mean()).backward()
        inner = model.model
        tower = getattr(inner, "vision_tower", None) or inner.visual
        grads = {
            "lm_head": model.lm_head.weight.grad,
            "embed": inner.get_input_embeddings().weight.grad,
            "decoder": next(p for n, p in inner.language_model.named_parameters() if "q_proj.weight" in n).grad,
            "vision": next(p for p in tower.parameters() if p.ndim == 2).grad,
        }
        for name, grad in grads.items():
            assert grad is not None and grad.abs().sum() > 0, name
    finally:
        model.zero_grad(set_to_none=True)


def test_max_length_truncates_the_response(vlm, rows):
    family, processor = vlm["family"], vlm["processor"]
    full = tokenize_rows(family, processor, rows[:2])  # Y_W is 5 tokens, Y_L 9
    lengths = full.attention_mask.sum(1).tolist()
    width = min(lengths) - 2
    cut = tokenize_rows(family, processor, rows[:2], max_length=width)
    assert cut.input_ids.shape[1] == width
    assert cut.token_counts.tolist() == [c - (n - width) for c, n in zip(full.token_counts.tolist(), lengths)]
    assert torch.equal(cut.input_ids, full.input_ids[:, :width])
    with pytest.raises(HarnessError, match="max_length"):
        tokenize_rows(family, processor, rows[:1], max_length=5)


# ---------------------------------------------------------------------------------------------------------
# references


@pytest.fixture()
def lora_setup(tiny_llava_path, shape_image):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoProcessor

    from trainers.trainer import enable_row_forward

    family = family_for(tiny_llava_path)
    processor = AutoProcessor.from_pretrained(tiny_llava_path)
    policy = get_peft_model(
        enable_row_forward(_load(tiny_llava_path, torch.float64), family),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
    )
    policy.train()
    return family, processor, policy


def test_three_references_agree_on_zero_initialised_lora(lora_setup, rows, tiny_llava_path, tmp_path):
    """The references the trainer builds (trainers.trainer.build_reference / PreferenceTrainer): the policy with
    its adapter disabled, a frozen copy loaded from the checkpoint, and the precomputed cache."""
    import copy

    from trainers.reference import (
        ModelReference,
        Reference,
        ReferenceFromCache,
        ReferenceMeta,
        precompute_reference,
    )
    from trainers.trainer import enable_row_forward, load_model

    family, processor, policy = lora_setup
    batch = tokenize_rows(family, processor, rows)
    adapter = ModelReference(policy, adapter_off=True)
    frozen = enable_row_forward(load_model(tiny_llava_path, dtype=torch.float64), family).requires_grad_(False)
    frozen_copy = ModelReference(frozen)
    meta = ReferenceMeta.for_model(tiny_llava_path, family, strategy="crop", seed=0)
    path = precompute_reference(
        frozen,
        family,
        processor,
        rows,
        tmp_path / "ref.jsonl",
        meta,
        batch_size=4,
        progress=False,
    )
    cache = ReferenceFromCache(path, meta)
    assert len(cache) == len(rows)
    for ref in (adapter, frozen_copy, cache):
        assert isinstance(ref, Reference)
    assert adapter.describe() == {"reference": "adapter_disabled"}
    assert frozen_copy.describe() == {"reference": "frozen_copy"}

    ref_adapter, ref_copy, ref_cache = (
        adapter.logps(batch),
        frozen_copy.logps(batch),
        cache.logps(batch),
    )
    assert not ref_adapter.requires_grad and policy.training  # the policy's mode is restored
    torch.testing.assert_close(ref_adapter, ref_copy, atol=1e-5, rtol=0)
    torch.testing.assert_close(ref_cache, ref_copy.float(), atol=1e-5, rtol=0)
    with torch.no_grad():
        policy_logps = row_logps(policy, family, batch)
    torch.testing.assert_close(policy_logps, ref_copy, atol=1e-5, rtol=0)  # B = 0: the policy is the base

    # a trained adapter moves the policy, not the adapter-disabled reference
    with torch.no_grad():
        for name, param in policy.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
        moved = row_logps(policy, family, batch)
    assert (moved - ref_copy).abs().max() > 1e-3
    torch.testing.assert_close(adapter.logps(batch), ref_copy, atol=1e-5, rtol=0)
    assert policy.training
    # a frozen copy of the policy (adapter merged) scores like the policy
    merged = copy.deepcopy(policy).merge_and_unload().requires_grad_(False)
    torch.testing.assert_close(
        ModelReference(merged).logps(batch),
        moved,
        atol=1e-5,
        rtol=0,
    )


def test_cache_refuses_mismatched_meta_and_names_missing_rows(lora_setup, rows, tiny_llava_path, tmp_path):
    from dataclasses import replace

    from trainers.reference import (
        ModelReference,
        ReferenceFromCache,
        ReferenceMeta,
        precompute_reference,
    )

    family, processor, policy = lora_setup
    meta = ReferenceMeta.for_model(tiny_llava_path, family, strategy="crop", seed=0)
    path = precompute_reference(
        policy,
        family,
        processor,
        {r.key: r for r in rows[:3]},
        tmp_path / "ref.jsonl",
        meta,
        progress=False,
    )
    for field, value in (
        ("model_hash", "0" * 64),
        ("template", "hub"),
        ("strategy", "black"),
        ("seed", 1),
    ):
        with pytest.raises(HarnessError, match=field):
            ReferenceFromCache(path, replace(meta, **{field: value}))

    cache = ReferenceFromCache(path, meta)
    assert cache.logps(tokenize_rows(family, processor, rows[:3])).shape == (3,)
    with pytest.raises(HarnessError, match=r"\('ex0', 'l', 'w'\)"):
        cache.logps(tokenize_rows(family, processor, rows))
    one = tokenize_rows(family, processor, rows[1:2])
    truncated: RowBatch = tokenize_rows(family, processor, rows[1:2], max_length=one.input_ids.shape[1] - 1)
    with pytest.raises(HarnessError, match="response tokens"):
        cache.logps(truncated)
    with pytest.raises(HarnessError, match="not found"):
        ReferenceFromCache(tmp_path / "absent.jsonl", meta)
    with pytest.raises(HarnessError, match="LoRA policy"):
        ModelReference(policy.get_base_model(), adapter_off=True).logps(one)


def test_each_unique_image_is_preprocessed_once_and_inputs_equal_the_processors(vlm, rows, monkeypatch):
    """Collation runs the image processor once per unique image of the micro-batch (not once per row and prompt),
    and every row's tokens, mask and image-token types equal what the processor gives for that row alone."""
    family, processor = vlm["family"], vlm["processor"]
    image_processor = processor.image_processor
    calls: list[int] = []
    real = type(image_processor).__call__

    def counting(self, images, *args, **kwargs):
        calls.append(1)
        return real(self, images, *args, **kwargs)

    monkeypatch.setattr(type(image_processor), "__call__", counting)
    batch = tokenize_rows(family, processor, rows)
    assert len(calls) == 2 == batch.num_unique_images  # two unique images, six rows
    monkeypatch.undo()
    for i, row in enumerate(rows):
        text = family.render_prompt(row.question, 0 if row.image is None else 1, response=row.response)
        own = family.processor_inputs(processor, [text], [[row.image]] if row.image is not None else [[]])
        n = own["input_ids"].shape[1]
        assert batch.input_ids[i, :n].tolist() == own["input_ids"][0].tolist()
        assert batch.attention_mask[i, :n].tolist() == own["attention_mask"][0].tolist()
        assert int(batch.attention_mask[i].sum()) == n
        if "mm_token_type_ids" in own:
            assert batch.mm_token_type_ids[i, :n].tolist() == own["mm_token_type_ids"][0].tolist()
        if row.image is not None:
            slot = int(batch.image_index[i])
            pixels = own["pixel_values"]
            start = (
                sum(int(g.prod()) for g in batch.image_grid_thw[:slot]) if batch.image_grid_thw is not None else slot
            )
            got = batch.pixel_values[start : start + pixels.shape[0]]
            torch.testing.assert_close(got, pixels)


def test_texts_are_tokenized_in_one_call_and_rows_equal_a_row_by_row_tokenization(vlm, rows, monkeypatch):
    """Collation calls the processor once per unique image and once for all the batch's texts (a text shared by
    the ``m_w`` and ``m_l`` rows of a response tokenized once); the batch equals the rows tokenized one at a time
    (each in a batch of its own), labels included."""
    family, processor = vlm["family"], vlm["processor"]
    calls: list[bool] = []
    real = type(processor).__call__

    def counting(self, *args, **kwargs):
        calls.append(kwargs.get("images") is not None)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(type(processor), "__call__", counting)
    batch = tokenize_rows(family, processor, rows)
    assert calls.count(True) == 2 and calls.count(False) == 1
    monkeypatch.undo()
    for i, row in enumerate(rows):
        alone = tokenize_rows(family, processor, [row])
        n = alone.input_ids.shape[1]
        assert batch.input_ids[i, :n].tolist() == alone.input_ids[0].tolist()
        assert batch.labels[i, :n].tolist() == alone.labels[0].tolist()
        assert (batch.labels[i, n:] == -100).all() and int(batch.attention_mask[i].sum()) == n


def test_rows_sharing_a_prefix_are_packed_and_score_as_unpacked(vlm, rows, monkeypatch):
    """LLaVA rows run as prefix trees (a prefix shared by rows, the same image included, computed once; each position
    attending to its own row's earlier positions): their log-probabilities and gradients equal the unpacked
    forward's (float64, to the float32 rounding of the model's rotary tables, as for batched vs single rows), whatever
    the trees' size. Qwen2-VL's rows are never packed."""
    import trainers.logprobs as logprobs

    family, processor, model = vlm["family"], vlm["processor"], vlm["model"]
    batch = tokenize_rows(family, processor, rows)
    inner = logprobs._parts(model)[0]
    packing = logprobs._packing_for(inner, family.name, batch)
    if family.name != "llava":
        assert packing is None
        return
    token = inner.config.image_token_id
    assert packing is not None and packing.source.numel() == int(batch.token_counts.sum())
    assert int((packing.input_ids != packing.input_ids[0, 0]).sum()) < int(batch.attention_mask.sum())
    assert logprobs._pack(batch, token, budget=1) is None  # one row per tree: nothing shared, the rows as they are
    # the two images each appear once per tree that holds them
    assert sorted(set(packing.image_index.tolist())) == [0, 1]

    weight = logprobs._parts(model)[2].weight
    vision = next(p for p in logprobs._parts(model)[1].parameters() if p.requires_grad)

    def run(**kwargs):
        weight.grad = vision.grad = None
        logps = row_logps(model, family, batch, **kwargs)
        logps.sum().backward()
        return logps.detach(), weight.grad.clone(), vision.grad.clone()

    plain = run(pack=False)
    real = logprobs._pack
    for budget in (None, 70, 10**6):
        monkeypatch.setattr(logprobs, "_pack", lambda b, t, budget=budget: real(b, t, budget))
        for got, want in zip(run(), plain):
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-5)  # as batched vs single rows above
