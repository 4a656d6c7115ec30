"""Per-row log-probabilities of many (image condition, response) rows in one forward.

A preference method scores each example under several conditions: JoMPO needs the responses ``y_w`` and
``y_l`` under the matched image ``m_w``, the contrast image ``m_l`` and no image (6 rows per example); DPO
needs 2 rows, MPO 4. This module turns such rows into one right-padded batch and computes, for every row, the
summed log-probability of its response tokens given the prompt (and image):

- :class:`Row` is one (question, response, image) triple with the caller's key (e.g. ``(example index,
  condition, response)``) and an ``image_id`` that says which rows hold the same image.
- :func:`tokenize_rows` renders every row with the model family's adapter
  (:meth:`harness.models.base.ModelFamily.render_prompt`, the very template the evaluation uses), tokenizes it
  with the checkpoint's processor and marks the response tokens. "No image" is the prompt rendered without the
  image placeholder and without pixels, not a blank image. Each unique image is preprocessed into the batch once.
- :func:`row_logps` runs one forward over the batch: the vision tower encodes the batch's unique images in one
  call (the family adapter's :meth:`~harness.models.base.ModelFamily.encode_images`), their features are scattered into the rows that show them (the model's own ``mm_encoder_outputs`` path,
  so LLaVA's placeholder expansion and Qwen2-VL's M-RoPE positions are computed by transformers itself), the
  language model runs to hidden states, and the LM head is applied only at the positions that predict a response
  token. It is differentiable (the trainers use it for the policy) and deterministic (no atomic adds).
- :class:`LogpsModel` wraps a model as an ``nn.Module`` whose ``forward(batch)`` is :func:`row_logps`; wrap
  *that* with ``accelerate`` (DDP, FSDP, DeepSpeed), so the wrapper's forward hooks see the whole computation.

Response tokens are everything the template adds after the generation prompt: the response and the template's
end-of-turn marker (LLaVA's ``</s>``, Qwen2-VL's ``<|im_end|>``), as TRL counts a conversational completion.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from torch import nn

from harness.errors import HarnessError
from harness.models.base import ModelFamily, families

IGNORE_INDEX = -100  # label of the tokens that are not scored (prompt, image, padding)


def _logps_family(family: ModelFamily | str) -> type[ModelFamily]:
    """The adapter class of ``family`` (an adapter or a family name); an error naming the supported families when
    its adapter cannot score rows (:attr:`~harness.models.base.ModelFamily.supports_logprobs`)."""
    name = family if isinstance(family, str) else family.name
    cls = families().get(name) if isinstance(family, str) else type(family)
    if cls is None or not cls.supports_logprobs:
        supported = sorted(n for n, c in families().items() if c.supports_logprobs)
        raise HarnessError(f"log-probabilities are implemented for model families {', '.join(supported)}, not {name!r}")
    return cls


@dataclass(frozen=True)
class Row:
    """One (question, response, image) row to score.

    ``image`` is a PIL image, or ``None`` for the "no image" condition. Rows whose ``image_id`` is equal hold the
    same image: it is preprocessed and encoded once per batch. Without an ``image_id`` rows share an encoding only
    when they hold the very same PIL object. ``key`` is opaque to this module; it comes back in
    :attr:`RowBatch.keys` and keys the precomputed reference cache (:mod:`trainers.reference`).
    """

    question: str
    response: str
    image: Any | None  # PIL.Image.Image | None
    key: tuple[Hashable, ...] = ()
    image_id: str | None = None


@dataclass
class RowBatch:
    """Tokenized rows, right-padded, with the pixels of each unique image once.

    - ``input_ids``, ``attention_mask``: ``[n_rows, seq_len]``; image placeholders already expanded to the
      image's token count by the processor.
    - ``labels``: ``input_ids`` with :data:`IGNORE_INDEX` everywhere except the response tokens.
    - ``pixel_values``: the unique images' pixels, in unique-image order (LLaVA ``[n_unique, 3, H, W]``; Qwen2-VL
      the images' patches concatenated, ``[sum t*h*w, C*T*P*P]``), or ``None`` when no row has an image.
    - ``image_grid_thw``: ``[n_unique, 3]`` (Qwen2-VL), else ``None``.
    - ``image_index``: ``[n_rows]``, the unique image each row shows, ``-1`` for no image.
    - ``mm_token_type_ids``: ``[n_rows, seq_len]`` (Qwen2-VL: 1 on image tokens), else ``None``.
    - ``keys``: the rows' keys, in row order.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    image_index: torch.Tensor
    keys: list[tuple[Hashable, ...]]
    pixel_values: torch.Tensor | None = None
    image_grid_thw: torch.Tensor | None = None
    mm_token_type_ids: torch.Tensor | None = None
    family: str = ""  # the family adapter and template the rows were rendered with
    template: str = ""

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def response_mask(self) -> torch.Tensor:
        """``[n_rows, seq_len]`` bool: the scored (response) tokens."""
        return self.labels != IGNORE_INDEX

    @property
    def token_counts(self) -> torch.Tensor:
        """``[n_rows]`` long: how many response tokens each row's log-probability sums over."""
        return self.response_mask.sum(dim=1)

    @property
    def num_unique_images(self) -> int:
        if self.pixel_values is None:
            return 0
        if self.image_grid_thw is not None:
            return int(self.image_grid_thw.shape[0])
        return int(self.pixel_values.shape[0])

    def to(self, device: torch.device | str) -> RowBatch:
        """A copy with every tensor on ``device``."""
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return replace(self, **moved)

    def select(self, rows: Sequence[int]) -> RowBatch:
        """The sub-batch of ``rows`` (in that order), keeping only the images they show; padding columns that
        every selected row pads are dropped."""
        idx = torch.as_tensor(list(rows), dtype=torch.long)
        image_index = self.image_index[idx]
        used = sorted({int(i) for i in image_index.tolist() if i >= 0})
        remap = {old: new for new, old in enumerate(used)}
        new_index = torch.tensor([remap.get(int(i), -1) for i in image_index.tolist()], dtype=torch.long)
        pixel_values, grid = _select_images(self.pixel_values, self.image_grid_thw, used)
        attention_mask = self.attention_mask[idx]
        width = int(attention_mask.sum(dim=1).max().item()) if len(idx) else 0
        mm = self.mm_token_type_ids[idx, :width] if self.mm_token_type_ids is not None else None
        return replace(
            self,
            input_ids=self.input_ids[idx, :width],
            attention_mask=attention_mask[:, :width],
            labels=self.labels[idx, :width],
            image_index=new_index.to(self.image_index.device),
            keys=[self.keys[i] for i in idx.tolist()],
            pixel_values=pixel_values,
            image_grid_thw=grid,
            mm_token_type_ids=mm,
        )


def _image_slices(pixel_values: torch.Tensor, grid: torch.Tensor | None) -> list[torch.Tensor]:
    """The pixels of each image: rows of ``pixel_values`` (one per image, or ``t*h*w`` patches per image)."""
    if grid is None:
        return list(pixel_values.split(1, dim=0))
    return list(pixel_values.split(grid.prod(dim=-1).tolist(), dim=0))


def _select_images(
    pixel_values: torch.Tensor | None, grid: torch.Tensor | None, used: list[int]
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    if pixel_values is None or not used:
        return None, None
    slices = _image_slices(pixel_values, grid)
    return torch.cat([slices[i] for i in used], dim=0), (grid[used] if grid is not None else None)


# ---------------------------------------------------------------------------------------------------------
# tokenization


def _image_key(row: Row) -> Hashable:
    return ("id", row.image_id) if row.image_id is not None else ("obj", id(row.image))


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class _PlaceholderExpander:
    """Tokenizes rows' texts without preprocessing their images again, all the texts of a batch in one call.

    A processor expands a prompt's image placeholder (LLaVA's ``<image>``, Qwen2-VL's ``<|image_pad|>``) into as many
    image tokens as the image's features, at the string level, then tokenizes. :meth:`image_inputs` runs the
    processor once per unique image on a one-placeholder prompt and counts those tokens. :meth:`tokenize` runs the
    processor once, without images, over every distinct text of the batch (padded, then each text's padding cut
    off again: the tokens of a text do not depend on the other texts of the call); :meth:`text_inputs` takes a
    text's tokens (placeholder unexpanded, one image token) and repeats that token as many times as its image has.
    The rows that share a response under different images (``m_w``, ``m_l``) share one text, tokenized once. The
    result equals the processor's own output for each row alone (tested); a text with other than one image
    token, or a processor without an ``image_token_id``, goes through the processor with its image as before.
    """

    def __init__(self, family: ModelFamily, processor: Any):
        self.family = family
        self.processor = processor
        self.token_id = getattr(processor, "image_token_id", None)
        self._plain: dict[str, dict[str, torch.Tensor]] = {}

    def image_inputs(self, image: Any) -> dict[str, Any]:
        out = self.family.processor_inputs(self.processor, [self.family.render_prompt("", 1)], [[image]])
        n = int((out["input_ids"][0] == self.token_id).sum()) if self.token_id is not None else 0
        return {**out, "n_image_tokens": n}

    def tokenize(self, texts: Sequence[str]) -> None:
        """Tokenize (without images) those of ``texts`` not tokenized yet, in one processor call."""
        todo = list(dict.fromkeys(t for t in texts if t not in self._plain))
        if not todo:
            return
        out = self.family.processor_inputs(self.processor, todo, [[] for _ in todo])
        for i, text in enumerate(todo):
            keep = out["attention_mask"][i].bool()  # left padding: the text's own tokens are where the mask is 1
            self._plain[text] = {
                k: v[i][keep][None]
                for k, v in out.items()
                if isinstance(v, torch.Tensor) and v.shape == out["attention_mask"].shape
            }

    def plain(self, text: str) -> dict[str, torch.Tensor]:
        """The processor's inputs for ``text`` alone, without images."""
        if text not in self._plain:
            self.tokenize([text])
        return self._plain[text]

    def text_inputs(self, text: str, n_tokens: int, image: Any) -> dict[str, torch.Tensor]:
        if self.token_id is not None and n_tokens > 0:
            plain = self.plain(text)
            ids = plain["input_ids"][0]
            where = (ids == self.token_id).nonzero().flatten()
            if len(where) == 1:
                at = int(where[0])
                ids = torch.cat([ids[:at], ids.new_full((n_tokens,), self.token_id), ids[at + 1 :]])
                out = {"input_ids": ids[None], "attention_mask": torch.ones_like(ids)[None]}
                if "mm_token_type_ids" in plain:
                    out["mm_token_type_ids"] = (ids == self.token_id).to(plain["mm_token_type_ids"].dtype)[None]
                return out
        return self.family.processor_inputs(self.processor, [text], [[image]])


def tokenize_rows(
    family: ModelFamily,
    processor: Any,
    rows: Sequence[Row],
    *,
    max_length: int | None = None,
) -> RowBatch:
    """Render, tokenize and right-pad ``rows`` for :func:`row_logps`.

    Each row is rendered twice with ``family.render_prompt``: the prompt alone (ending with the generation
    prompt) and the prompt followed by the response; the response tokens are those of the second after the
    first (when a tokenizer merges across the boundary, the merged token counts as a response token). A row
    with an image renders one image placeholder, which the processor expands to the image's tokens; a row
    without renders none. Rows sharing an image (same ``image_id``) share one entry of ``pixel_values``.

    ``max_length`` truncates a row's response from the right; a prompt (with its image tokens) that does not
    fit is an error, as image tokens cannot be cut.
    """
    if not rows:
        raise HarnessError("tokenize_rows: no rows to tokenize")
    _logps_family(family)
    tokenizer = getattr(processor, "tokenizer", processor)

    unique_pixels: list[torch.Tensor] = []
    unique_grids: list[torch.Tensor] = []
    image_slot: dict[Hashable, int] = {}
    image_tokens: dict[Hashable, int] = {}  # unique image -> the number of tokens its placeholder expands to
    prompt_cache: dict[tuple[str, Hashable | None], list[int]] = {}
    expander = _PlaceholderExpander(family, processor)

    def inputs(text: str, image: Any | None, img_key: Hashable | None) -> dict[str, torch.Tensor]:
        """The processor's inputs for one row's text; each unique image is preprocessed once per batch."""
        if image is None:
            return expander.plain(text)
        if img_key not in image_slot:
            first = expander.image_inputs(image)
            image_slot[img_key] = len(unique_pixels)
            unique_pixels.append(first["pixel_values"])
            if "image_grid_thw" in first:
                unique_grids.append(first["image_grid_thw"])
            image_tokens[img_key] = first["n_image_tokens"]
        return expander.text_inputs(text, image_tokens[img_key], image)

    # every distinct text of the batch (full rows and prompts, a row with an image as its one-placeholder text),
    # tokenized in one processor call
    rendered: dict[tuple[str, int, str | None], str] = {}

    def render(question: str, num_images: int, response: str | None = None) -> str:
        key = (question, num_images, response)
        if key not in rendered:
            rendered[key] = family.render_prompt(question, num_images, response=response)
        return rendered[key]

    expander.tokenize(
        [
            render(row.question, 0 if row.image is None else 1, response)
            for row in rows
            for response in (row.response, None)
        ]
    )

    seqs: list[dict[str, torch.Tensor]] = []
    prompt_lens: list[int] = []
    image_index: list[int] = []
    for n, row in enumerate(rows):
        has_image = row.image is not None
        num_images = 1 if has_image else 0
        img_key = _image_key(row) if has_image else None

        full_text = render(row.question, num_images, row.response)
        full = inputs(full_text, row.image, img_key)
        ids = full["input_ids"][0]

        pkey = (row.question, img_key)
        if pkey not in prompt_cache:
            prompt_text = render(row.question, num_images)
            prompt_cache[pkey] = inputs(prompt_text, row.image, img_key)["input_ids"][0].tolist()
        prompt_ids = prompt_cache[pkey]
        prompt_len = min(len(prompt_ids), _common_prefix(prompt_ids, ids.tolist()))
        if prompt_len >= len(ids):
            raise HarnessError(f"row {row.key or n}: the response {row.response!r} renders to no tokens")

        image_index.append(image_slot[img_key] if has_image else -1)

        seq = {"input_ids": ids, "attention_mask": full["attention_mask"][0]}
        if "mm_token_type_ids" in full:
            seq["mm_token_type_ids"] = full["mm_token_type_ids"][0]
        if max_length is not None and len(ids) > max_length:
            if prompt_len >= max_length:
                raise HarnessError(
                    f"row {row.key or n}: the prompt is {prompt_len} tokens (images included), "
                    f"more than max_length={max_length}"
                )
            seq = {k: v[:max_length] for k, v in seq.items()}
        seqs.append(seq)
        prompt_lens.append(prompt_len)

    width = max(len(s["input_ids"]) for s in seqs)
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    n_rows = len(rows)
    input_ids = torch.full((n_rows, width), int(pad_id), dtype=torch.long)
    attention_mask = torch.zeros((n_rows, width), dtype=torch.long)
    labels = torch.full((n_rows, width), IGNORE_INDEX, dtype=torch.long)
    has_mm = any("mm_token_type_ids" in s for s in seqs)
    mm_token_type_ids = torch.zeros((n_rows, width), dtype=torch.long) if has_mm else None
    for i, (seq, plen) in enumerate(zip(seqs, prompt_lens)):
        length = len(seq["input_ids"])
        input_ids[i, :length] = seq["input_ids"]
        attention_mask[i, :length] = seq["attention_mask"]
        labels[i, plen:length] = seq["input_ids"][plen:]
        if mm_token_type_ids is not None and "mm_token_type_ids" in seq:
            mm_token_type_ids[i, :length] = seq["mm_token_type_ids"]

    return RowBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        labels=labels,
        image_index=torch.tensor(image_index, dtype=torch.long),
        keys=[row.key for row in rows],
        pixel_values=torch.cat(unique_pixels, dim=0) if unique_pixels else None,
        image_grid_thw=torch.cat(unique_grids, dim=0) if unique_grids else None,
        mm_token_type_ids=mm_token_type_ids,
        family=family.name,
        template=family.template,
    )


# ---------------------------------------------------------------------------------------------------------
# forward


def unwrap_model(model: nn.Module) -> nn.Module:
    """The transformers ``*ForConditionalGeneration`` inside ``model``: through a :class:`LogpsModel`, DDP or
    DeepSpeed's ``.module`` and peft's ``get_base_model()`` (whose LoRA layers stay in place, so an active or
    disabled adapter applies as usual)."""
    while True:
        if isinstance(model, LogpsModel):
            model = model.model
        elif hasattr(model, "get_base_model") and callable(model.get_base_model):
            model = model.get_base_model()
        elif isinstance(getattr(model, "module", None), nn.Module):
            model = model.module
        else:
            return model


def _parts(model: nn.Module) -> tuple[nn.Module, nn.Module, nn.Module]:
    """(multimodal base model, its vision encoder, LM head) of a transformers VLM."""
    hf = unwrap_model(model)
    inner = getattr(hf, getattr(hf, "base_model_prefix", "model"), None)
    lm_head = hf.get_output_embeddings() if hasattr(hf, "get_output_embeddings") else None
    vision = getattr(inner, "vision_tower", None)
    if vision is None:
        vision = getattr(inner, "visual", None)
    if inner is None or lm_head is None or vision is None or not hasattr(inner, "get_image_features"):
        raise HarnessError(
            f"{type(hf).__name__} is not a supported vision-language model "
            "(expected LlavaForConditionalGeneration or Qwen2VLForConditionalGeneration)"
        )
    return inner, vision, lm_head


def _param_dtype(module: nn.Module) -> torch.dtype:
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def _encode_images(
    inner: nn.Module,
    vision: nn.Module,
    family: type[ModelFamily],
    pixel_values: torch.Tensor,
    grid: torch.Tensor | None,
) -> list[torch.Tensor]:
    """Features of the unique images, one ``[n_tokens, hidden]`` tensor per image, from ONE vision-tower call."""
    return family.encode_images(inner, pixel_values.to(_param_dtype(vision)), grid)


def _dummy_vision_output(
    inner: nn.Module, vision: nn.Module, family: type[ModelFamily], device: torch.device
) -> torch.Tensor:
    """A zero-valued scalar that depends on one vision-tower call on a blank input (the family's
    :meth:`~harness.models.base.ModelFamily.empty_vision_input`).

    Sharded training (DeepSpeed ZeRO-3, FSDP) gathers the vision tower's weights collectively, so every rank must
    call it once per forward, even on a micro-batch without images; adding ``0 * features.sum()`` to the output
    keeps the vision weights in the graph without changing any value."""
    pixels, grid = family.empty_vision_input(inner.config, _param_dtype(vision), device)
    feats = _encode_images(inner, vision, family, pixels, grid)
    return sum(f.sum() for f in feats) * 0.0


@dataclass
class _Packing:
    """The rows as prefix trees: rows that begin with the same tokens (the same image, when the tokens include
    image tokens) share those positions, each computed once, and every position attends to the positions of its
    own row before it (its ancestors in the tree) and to itself, at the position it has in its row. Every hidden
    state is then, mathematically, the one of each row's own forward that holds it."""

    input_ids: torch.Tensor  # [n_sequences, width], right-padded
    attention_mask: torch.Tensor  # [n_sequences, 1, width, width] bool: query attends key
    position_ids: torch.Tensor  # [n_sequences, width]
    image_index: torch.Tensor  # [n_occurrences]: the unique image of each run of image tokens, in packed order
    source: torch.Tensor  # [n_tokens]: flat packed position predicting each scored token, in row-major order
    mm_token_type_ids: torch.Tensor | None = None  # [n_sequences, width], when the batch has them


class _Tree:
    """One packed sequence under construction: a prefix tree of token keys."""

    def __init__(self) -> None:
        self.child: dict[tuple[int, Any], int] = {}  # (parent node, key) -> node
        self.keys: list[Any] = []
        self.parent: list[int] = []
        self.depth: list[int] = []

    def matched(self, keys: Sequence[Any]) -> int:
        node, n = -1, 0
        for key in keys:
            node = self.child.get((node, key), -2)
            if node == -2:
                break
            n += 1
        return n

    def insert(self, keys: Sequence[Any]) -> list[int]:
        path, node = [], -1
        for depth, key in enumerate(keys):
            nxt = self.child.get((node, key))
            if nxt is None:
                nxt = len(self.keys)
                self.child[(node, key)] = nxt
                self.keys.append(key)
                self.parent.append(node)
                self.depth.append(depth)
            path.append(nxt)
            node = nxt
        return path

    def preorder(self) -> list[int]:
        """The nodes in depth-first order (children in insertion order): each subtree is then one contiguous run."""
        children: list[list[int]] = [[] for _ in self.keys]
        roots = []
        for node, parent in enumerate(self.parent):
            (children[parent] if parent >= 0 else roots).append(node)
        order, stack = [], roots[::-1]
        while stack:
            node = stack.pop()
            order.append(node)
            stack.extend(children[node][::-1])
        return order


def _pack(batch: RowBatch, image_token_id: int | None, budget: int | None = None) -> _Packing | None:
    """``batch``'s rows as prefix trees (:class:`_Packing`), rows taken in order and a new tree begun when the next row
    would make the current one longer than ``budget`` positions (default: twice the longest row); ``None`` when
    the rows share no prefix worth packing or cannot be packed (no image token id, a row scored from its first
    token)."""
    if image_token_id is None:
        return None
    ids = batch.input_ids.tolist()
    types = batch.mm_token_type_ids.tolist() if batch.mm_token_type_ids is not None else None
    lengths = batch.attention_mask.sum(dim=1).tolist()
    scored = batch.response_mask
    starts = scored.int().argmax(dim=1).tolist()  # first response token of each row
    images = batch.image_index.tolist()
    if not bool(scored.any(dim=1).all()) or min(starts) < 1:
        return None
    budget = budget or 2 * max(lengths)
    trees: list[_Tree] = [_Tree()]
    paths: list[tuple[int, list[int]]] = []
    for r, row in enumerate(ids):
        keys, shown = [], None  # from its first image token on, a row's tokens are keyed by its image too
        for t in range(lengths[r]):
            if row[t] == image_token_id:
                shown = images[r]
            keys.append((row[t], types[r][t] if types is not None else 0, shown))
        tree = trees[-1]
        if tree.keys and len(tree.keys) + len(keys) - tree.matched(keys) > budget:
            trees.append(_Tree())
            tree = trees[-1]
        paths.append((len(trees) - 1, tree.insert(keys)))
    n_positions = sum(len(t.keys) for t in trees)
    if n_positions >= sum(lengths):
        return None
    width = max(len(t.keys) for t in trees)
    n = len(trees)
    fill = ids[0][0]  # the padding positions' token (a prompt's first token: never an image token)
    input_ids = torch.full((n, width), fill, dtype=torch.long)
    position_ids = torch.zeros((n, width), dtype=torch.long)
    mm = torch.zeros((n, width), dtype=batch.mm_token_type_ids.dtype) if types is not None else None
    mask = torch.zeros((n, width, width), dtype=torch.bool)
    where: list[list[int]] = []  # tree -> node -> packed position
    occurrences: list[int] = []
    for g, tree in enumerate(trees):
        order = tree.preorder()
        at = [0] * len(order)
        for position, node in enumerate(order):
            at[node] = position
        where.append(at)
        k = len(order)
        keys = [tree.keys[node] for node in order]
        input_ids[g, :k] = torch.tensor([key[0] for key in keys], dtype=torch.long)
        position_ids[g, :k] = torch.tensor([tree.depth[node] for node in order], dtype=torch.long)
        if mm is not None:
            mm[g, :k] = torch.tensor([key[1] for key in keys], dtype=mm.dtype)
        # in depth-first order a node's subtree is the run [node, node + its size): a query attends the keys whose
        # subtree holds it, i.e. its ancestors and itself
        size = [1] * len(order)
        for node in reversed(order):
            if tree.parent[node] >= 0:
                size[tree.parent[node]] += size[node]
        start = torch.arange(k)
        end = start + torch.tensor([size[node] for node in order], dtype=torch.long)
        mask[g, :k, :k] = (start[None, :] <= start[:, None]) & (start[:, None] < end[None, :])
        for node in order:  # each run of image tokens is one occurrence of its image
            key, parent = tree.keys[node], tree.parent[node]
            if key[0] == image_token_id and (parent < 0 or tree.keys[parent][0] != image_token_id):
                occurrences.append(key[2])
    mask |= torch.eye(width, dtype=torch.bool)  # a padding position attends to itself (no empty softmax)
    # the positions that predict each scored token, row by row, left to right (as ``labels[:, 1:]`` orders them)
    source: list[int] = []
    for r, (g, path) in enumerate(paths):
        source += [g * width + where[g][path[t]] for t in range(starts[r] - 1, lengths[r] - 1)]
    return _Packing(
        input_ids,
        mask[:, None],
        position_ids,
        torch.tensor(occurrences, dtype=torch.long),
        torch.tensor(source, dtype=torch.long),
        mm,
    )


def _packing_for(inner: nn.Module, family: type[ModelFamily] | str, batch: RowBatch) -> _Packing | None:
    """The packing of ``batch``, or None where the family's positions cannot be set by packing
    (:attr:`~harness.models.base.ModelFamily.packs_rows`) or the attention takes no custom 4-D mask."""
    family = families()[family] if isinstance(family, str) else family
    config = inner.config.get_text_config() if hasattr(inner.config, "get_text_config") else inner.config
    if not family.packs_rows or getattr(config, "_attn_implementation", None) not in ("sdpa", "eager"):
        return None
    token = getattr(inner.config, "image_token_id", None)
    token = token if token is not None else getattr(inner.config, "image_token_index", None)
    cached = batch.__dict__.get("_packing")  # the policy and the reference forward pack the same batch
    if cached is None or cached[0] != token:
        cached = (token, _pack(batch, token))
        batch.__dict__["_packing"] = cached
    return cached[1]


def row_logps(
    model: nn.Module,
    family: ModelFamily | str,
    batch: RowBatch,
    *,
    one_vision_call: bool = True,
    pack: bool = True,
) -> torch.Tensor:
    """Summed log-probabilities of each row's response tokens, ``[n_rows]``, from ONE forward.

    The batch's unique images go through the vision tower in a single call and their features are scattered
    into every row that shows them (``mm_encoder_outputs``; for Qwen2-VL the per-row ``image_grid_thw`` and
    ``mm_token_type_ids`` give transformers' M-RoPE positions). The language model runs to its last hidden states;
    the LM head is applied only to the positions whose next token is a response token, and the log-softmax is
    taken in float32 (float64 for a float64 model), the dtype of the result. Token counts are
    :attr:`RowBatch.token_counts`.

    Rows that share a prompt (the same tokens before the response and the same image: the ``y_w`` and ``y_l`` rows
    of a condition) are packed into one sequence when the family's decoder takes plain positions (LLaVA) and the
    attention is SDPA or eager: the prompt once, then each row's response, which attends to the prompt and to
    itself only, at the positions of its own row (a custom 4-D mask and ``position_ids``). Each scored position's
    hidden state is mathematically that of the row's own forward, and the prompt is computed once instead of once
    per row. ``pack=False`` runs the rows as they are (as Qwen2-VL's always are, for its M-RoPE positions).

    ``one_vision_call`` (default) makes even a batch without images call the vision tower once (on a blank
    input, contributing exactly zero), as sharded training needs the same calls on every rank.

    Call it through :class:`LogpsModel` when the model is wrapped for distributed training.
    """
    family_cls = _logps_family(family)
    family_name = family_cls.name
    if batch.family and batch.family != family_name:
        raise HarnessError(f"the batch was tokenized for {batch.family!r}, not {family_name!r}")
    inner, vision, lm_head = _parts(model)
    device = lm_head.weight.device
    packing = _packing_for(inner, family_cls, batch) if pack else None
    batch = batch.to(device)
    # the sequences the language model runs on: the rows, or the rows packed by shared prompt
    image_index = packing.image_index.to(device) if packing is not None else batch.image_index

    extra: dict[str, Any] = {}
    zero: torch.Tensor | None = None
    with_image = (image_index >= 0).nonzero(as_tuple=True)[0]
    if batch.pixel_values is not None and len(with_image) > 0:
        unique = _encode_images(inner, vision, family_cls, batch.pixel_values, batch.image_grid_thw)
        per_row = [unique[int(i)] for i in image_index[with_image].tolist()]
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        extra["mm_encoder_outputs"] = {"image": BaseModelOutputWithPooling(pooler_output=tuple(per_row))}
        if batch.image_grid_thw is not None:
            extra["image_grid_thw"] = batch.image_grid_thw[image_index[with_image]]
    elif one_vision_call:
        zero = _dummy_vision_output(inner, vision, family_cls, device)
    if packing is not None and packing.mm_token_type_ids is not None:
        extra["mm_token_type_ids"] = packing.mm_token_type_ids.to(device)
    elif batch.mm_token_type_ids is not None:
        extra["mm_token_type_ids"] = batch.mm_token_type_ids

    if packing is not None:
        mask = packing.attention_mask.to(device)
        if getattr(inner.config.get_text_config(), "_attn_implementation", None) == "eager":  # additive mask
            dtype = _param_dtype(lm_head)
            mask = torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill(~mask, torch.finfo(dtype).min)
        out = inner(
            input_ids=packing.input_ids.to(device),
            attention_mask=mask,
            position_ids=packing.position_ids.to(device),
            use_cache=False,
            return_dict=True,
            **extra,
        )
    else:
        out = inner(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            use_cache=False,
            return_dict=True,
            **extra,
        )
    hidden = out.last_hidden_state  # [n_sequences, seq_len, hidden]

    # position t predicts token t+1: keep the positions whose next token is a response token
    targets = batch.labels[:, 1:]
    predict = targets != IGNORE_INDEX  # [n_rows, seq_len-1]
    if packing is not None:  # the packed positions that predict the rows' response tokens, in the same order
        h = hidden.reshape(-1, hidden.shape[-1])[packing.source.to(device)]
    else:
        h = hidden[:, :-1][predict]  # [n_tokens, hidden], row-major: row by row, left to right
    logits = lm_head(h)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16/fp16 -> fp32; fp64 stays
    token_logps = logits.gather(-1, targets[predict].unsqueeze(-1)).squeeze(-1) - logits.logsumexp(dim=-1)
    # deterministic per-row sums (no atomic scatter-add): place the tokens back on the grid and sum each row
    grid = torch.zeros(predict.shape, dtype=token_logps.dtype, device=device).masked_scatter(predict, token_logps)
    logps = grid.sum(dim=1)
    if zero is not None:
        logps = logps + zero.to(logps.dtype)
    return logps


class LogpsModel(nn.Module):
    """``nn.Module`` whose ``forward(batch)`` is :func:`row_logps` of the wrapped model.

    Prepare this module (not the bare model) with ``accelerate`` for DDP, FSDP or DeepSpeed: their hooks run on
    the root module's forward, and :func:`row_logps` calls the model's submodules directly.
    """

    def __init__(
        self,
        model: nn.Module,
        family: ModelFamily | str,
        *,
        one_vision_call: bool = True,
    ):
        super().__init__()
        self.model = model
        self.family_name = family if isinstance(family, str) else family.name
        self.one_vision_call = one_vision_call

    def forward(self, batch: RowBatch) -> torch.Tensor:
        return row_logps(self.model, self.family_name, batch, one_vision_call=self.one_vision_call)


__all__ = [
    "IGNORE_INDEX",
    "LogpsModel",
    "Row",
    "RowBatch",
    "row_logps",
    "tokenize_rows",
    "unwrap_model",
]
