"""``harness build-vtc``: the stages of VTC data construction, run in order, each resumable; and the report.

::

    harness build-vtc --images SOURCE --output DIR [--stage embed|mine|label|review|write|report|all]
        [--clip-model PATH] [--dino-model PATH] [--clip-threshold 0.95] [--dino-threshold 0.6]
        [--mining batch|faiss|faiss-ivf|faiss-hnsw] [--batch-size 2048] [--faiss-k 10]
        [--faiss-nlist 0] [--faiss-nprobe 32] [--hnsw-m 32] [--hnsw-ef-construction 80] [--hnsw-ef-search 128]
        [--faiss-device auto|cpu|gpu] [--faiss-recall-sample 1000] [--one-pair-per-image]
        [--llm-model gpt-4o] [--llm-base-url URL] [--decisions FILE ...]

``--stage all`` (the default) runs embed -> mine -> label (+ review pages) -> write -> report; a single stage
runs just that one, reading what the earlier stages left in ``DIR``. Every stage can be rerun: the embed stage
skips finished shards, mining is skipped when its settings and embeddings are unchanged, labelling keeps labelled
pairs and the LLM's disk cache answers repeated requests for free (also after a crash), and the records are
rewritten from the cached replies. A typical session::

    harness build-vtc --images pool/ --output vtc/ --stage embed     # GPU work (accelerate launch for several)
    harness build-vtc --output vtc/ --stage mine                      # CPU; --mining faiss for a global search
    harness build-vtc --output vtc/ --stage label --max-pairs 50      # a cheap trial of the LLM, then all pairs
    # open vtc/review/review-0001.html, accept / reject / change, export the decisions, then:
    harness build-vtc --output vtc/ --stage write --decisions decisions-review-0001.json
    harness train --method jompo --data vtc/vtc.jsonl ...

Mining (:mod:`trainers.vtc.mine`) compares pairs within consecutive batches (``--mining batch``, the paper's) or
searches globally: exactly (``faiss``) or in an approximate index for large pools (``faiss-ivf``: ``--faiss-nlist``
lists, ``--faiss-nprobe`` scanned per query; ``faiss-hnsw``: ``--hnsw-m``, ``--hnsw-ef-construction``,
``--hnsw-ef-search``). An approximate run measures its recall against exact search on ``--faiss-recall-sample``
random queries; the figures are logged and written under ``recall`` in ``DIR/mine/summary.json``.

The report (:func:`build_report`) is the paper's Table 6 layout: every contrast type with the number of written
pairs and its share, plus per-source counts along the stages (mined, labelled, accepted, written pairs, records);
written to ``DIR/report/`` as CSV and JSON and printed.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import os
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from harness.argtypes import int_at_least
from harness.errors import ConfigError
from harness.io import atomic_write_json, atomic_write_text, read_json
from harness.judge import Judge
from trainers.vtc import contrast_types
from trainers.vtc.label import read_labels
from trainers.vtc.review import write_review_pages
from trainers.vtc.write import read_outputs

log = logging.getLogger("harness.vtc")

STAGES = ("embed", "mine", "label", "review", "write", "report")
DEFAULT_LLM_MODEL = "gpt-4o"


@dataclass
class BuildConfig:
    """Every setting of ``harness build-vtc`` (the CLI's flags); see the stage modules for their meaning."""

    output: str
    images: str | None = None
    stage: str = "all"
    # embed
    clip_model: str = "openai/clip-vit-large-patch14-336"
    dino_model: str = "facebook/dinov2-large"
    dino_pooling: str = "cls"
    image_column: str | None = None
    source_column: str | None = None
    split: str | None = None
    shard_size: int = 10_000
    embed_batch_size: int = 64
    workers: int = 0
    device: str | None = None
    dtype: str = "auto"
    # mine
    clip_threshold: float = 0.95
    dino_threshold: float = 0.6
    mining: str = "batch"
    batch_size: int = 2048
    faiss_k: int = 10
    dup_clip: float = 0.995
    dup_dino: float = 0.95
    one_pair_per_image: bool = False
    faiss_nlist: int = 0
    faiss_nprobe: int = 32
    hnsw_m: int = 32
    hnsw_ef_construction: int = 80
    hnsw_ef_search: int = 128
    faiss_device: str = "auto"
    faiss_recall_sample: int = 1000
    # label and write
    llm_model: str = DEFAULT_LLM_MODEL
    llm_base_url: str | None = None
    llm_api_key_env: str = "OPENAI_API_KEY"
    llm_concurrency: int = 8
    llm_timeout: float = 120.0
    llm_max_retries: int = 6
    llm_cache: bool = True
    llm_cache_dir: str | None = None
    max_pairs: int | None = None
    image_max_side: int = 768
    review_page_size: int = 250
    decisions: list[str] = field(default_factory=list)
    tasks: tuple[str, ...] = ("description", "vqa")
    progress: bool = True

    def stages(self) -> list[str]:
        if self.stage == "all":
            return list(STAGES)
        if self.stage not in STAGES:
            raise ConfigError(f"unknown stage {self.stage!r}; stages: {', '.join(STAGES)}, all")
        return [self.stage]

    def embed_config(self) -> Any:
        from trainers.vtc.embed import EmbedConfig

        return EmbedConfig(
            self.clip_model,
            self.dino_model,
            self.dino_pooling,
            self.shard_size,  # type: ignore[arg-type]
            self.embed_batch_size,
            self.workers,
            self.device,
            self.dtype,
        )

    def mine_config(self) -> Any:
        from trainers.vtc.mine import MineConfig

        return MineConfig(  # type: ignore[arg-type]
            clip_threshold=self.clip_threshold,
            dino_threshold=self.dino_threshold,
            method=self.mining,
            batch_size=self.batch_size,
            faiss_k=self.faiss_k,
            dup_clip=self.dup_clip,
            dup_dino=self.dup_dino,
            one_pair_per_image=self.one_pair_per_image,
            faiss_nlist=self.faiss_nlist,
            faiss_nprobe=self.faiss_nprobe,
            hnsw_m=self.hnsw_m,
            hnsw_ef_construction=self.hnsw_ef_construction,
            hnsw_ef_search=self.hnsw_ef_search,
            faiss_device=self.faiss_device,
            faiss_recall_sample=self.faiss_recall_sample,
        )


def make_llm(config: BuildConfig) -> Judge:
    """The LLM client for labelling and writing: the harness judge client on an OpenAI-compatible endpoint."""
    from harness.judge_openai import OpenAIJudge

    return OpenAIJudge(
        config.llm_model,
        base_url=config.llm_base_url,
        api_key_env=config.llm_api_key_env,
        concurrency=config.llm_concurrency,
        timeout_s=config.llm_timeout,
        max_retries=config.llm_max_retries,
        use_cache=config.llm_cache,
        cache_dir=config.llm_cache_dir,
        progress=config.progress,
    )


def build_vtc(config: BuildConfig, *, llm: Judge | None = None) -> dict[str, Any]:
    """Run the configured stages; returns each stage's summary. ``llm`` replaces :func:`make_llm` (tests, reuse)."""
    out = Path(config.output)
    out.mkdir(parents=True, exist_ok=True)
    stages = config.stages()
    results: dict[str, Any] = {}
    config.embed_config()  # invalid settings fail before any model loads or any stage runs
    config.mine_config()
    own_llm = None
    try:
        for stage in stages:
            if stage == "embed":
                from trainers.vtc.embed import rank_and_world

                results["embed"] = _embed(config)
                rank, world = rank_and_world()
                if world > 1:  # several processes embed; the later stages run once, in one process
                    if stages != ["embed"]:
                        log.warning(
                            "rank %d of %d: embedding done; the stages after it run in one process: "
                            "harness build-vtc --output %s --stage all",
                            rank,
                            world,
                            config.output,
                        )
                    return results
                if results["embed"] is None:
                    raise ConfigError("the embedding is unfinished; rerun the embed stage")
            elif stage == "mine":
                from trainers.vtc.mine import run_mine_stage

                results["mine"] = run_mine_stage(out, config.mine_config(), progress=config.progress)
            elif stage in ("label", "write"):
                if llm is None:
                    llm = own_llm = make_llm(config)
                if stage == "label":
                    from trainers.vtc.label import run_label_stage

                    results["label"] = asdict(
                        run_label_stage(
                            out,
                            llm,
                            max_pairs=config.max_pairs,
                            image_max_side=config.image_max_side,
                            progress=config.progress,
                        )
                    )
                    if config.stage == "all":
                        continue  # the review stage comes next
                    results["review"] = _review(config)
                else:
                    from trainers.vtc.write import run_write_stage

                    results["write"] = asdict(
                        run_write_stage(
                            out,
                            llm,
                            tasks=config.tasks,
                            decisions=config.decisions or None,
                            image_max_side=config.image_max_side,
                            progress=config.progress,
                        )
                    )
            elif stage == "review":
                results["review"] = _review(config)
            elif stage == "report":
                results["report"] = build_report(out, echo=True)
    finally:
        if own_llm is not None:
            own_llm.close()
    return results


def _embed(config: BuildConfig) -> dict[str, Any] | None:
    from trainers.vtc.embed import embed_images, open_source

    out = Path(config.output)
    if config.images is None:
        if (out / "embed" / "summary.json").is_file():
            return read_json(out / "embed" / "summary.json")
        raise ConfigError("the embed stage needs --images SOURCE (a folder, a file list or a dataset on disk)")
    pool = open_source(
        config.images, image_column=config.image_column, source_column=config.source_column, split=config.split
    )
    result = embed_images(pool, out, config.embed_config(), progress=config.progress)
    log.info(
        "embed: %d shards embedded now, %d found finished, %d images embedded, %d unreadable",
        len(result.shards_done),
        len(result.shards_skipped),
        result.images_embedded,
        result.images_unreadable,
    )
    return result.summary


def _review(config: BuildConfig) -> dict[str, Any]:
    from trainers.vtc.embed import load_pool
    from trainers.vtc.mine import read_pairs

    out = Path(config.output)
    labels = read_labels(out)
    pages = write_review_pages(out, labels, read_pairs(out), load_pool(out), page_size=config.review_page_size)
    log.info(
        "review: %d page(s) in %s; export the decisions and pass them to --stage write --decisions FILE",
        len(pages),
        out / "review",
    )
    return {"pages": [str(p) for p in pages], "pairs": sum(lab.labelled for lab in labels)}


# --------------------------------------------------------------------------------------------------------------------
# the report


def _csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return buf.getvalue()


def contrast_type_table(types: dict[str, int]) -> list[dict[str, Any]]:
    """The paper's Table 6 layout: each of the nine types (paper order) with its count and share (%), then Total."""

    total = sum(types.values())
    rows = [
        {
            "contrast_type": t.name,
            "count": types.get(t.name, 0),
            "share": round(100 * types.get(t.name, 0) / total, 1) if total else 0.0,
        }
        for t in contrast_types()
    ]
    rows.append({"contrast_type": "Total", "count": total, "share": 100.0 if total else 0.0})
    return rows


PAPER_TABLE6 = Path(__file__).with_name("data") / "jompo_table6_vtc_types.csv"


def paper_table6() -> dict[str, int]:
    """The JoMPO paper's Table 6 (contrast types of the 5,025 VTC examples) by this project's type names."""

    names = [t.name for t in contrast_types()]
    out: dict[str, int] = {}
    for line in PAPER_TABLE6.read_text(encoding="utf-8").splitlines()[1:]:
        if not line or line.startswith("#") or line.startswith("contrast_type,"):
            continue
        label, count = line.rsplit(",", 1)
        name = next(n for n in names if n == label.lower() or n.startswith(label.lower() + " "))
        out[name] = int(count)
    return out


def with_paper_table6(table: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows of :func:`contrast_type_table` with the paper's count and share of each type beside them."""
    paper = paper_table6()
    total = sum(paper.values())
    out = []
    for row in table:
        count = total if row["contrast_type"] == "Total" else paper.get(row["contrast_type"], 0)
        out.append({**row, "paper_count": count, "paper_share": round(100 * count / total, 1)})
    return out


def build_report(out_dir: str | os.PathLike[str], *, echo: bool = False) -> dict[str, Any]:
    """The distribution of contrast types among written pairs and per-source counts, from the stages' outputs;
    written to ``DIR/report/`` (``contrast_types.csv``, ``per_source.csv``, ``report.json``) and, with ``echo``,
    printed to stdout."""
    from trainers.vtc.mine import read_pairs

    out = Path(out_dir)
    pairs = {p.pair_id: p for p in read_pairs(out)}
    labels = [lab for lab in read_labels(out, required=False) if lab.pair_id in pairs]
    outputs = read_outputs(out)
    written = [o for o in outputs if o["status"] == "written"]
    written_type = {o["pair_id"]: o["contrast_type"] for o in written}
    accepted = {o["pair_id"] for o in outputs}

    stages: dict[str, Counter[str]] = {
        "mined": Counter(p.source for p in pairs.values()),
        "labelled": Counter(pairs[lab.pair_id].source for lab in labels if lab.labelled),
        "accepted": Counter(pairs[p].source for p in accepted),
        "written_pairs": Counter(pairs[p].source for p in written_type),
        "records": Counter(pairs[o["pair_id"]].source for o in written),
    }
    sources = sorted(set().union(*stages.values()))
    per_source = [{"source": s, **{k: c.get(s, 0) for k, c in stages.items()}} for s in sources]
    per_source.append({"source": "Total", **{k: sum(c.values()) for k, c in stages.items()}})
    table = contrast_type_table(dict(Counter(written_type.values())))
    labelled_table = contrast_type_table(
        dict(Counter(lab.contrast_type for lab in labels if lab.labelled and lab.contrast_type))
    )
    report = {
        "contrast_types": table,
        "contrast_types_labelled": labelled_table,
        "contrast_types_vs_paper": with_paper_table6(table),
        "per_source": per_source,
        "statuses": {
            "label": dict(Counter(lab.status for lab in labels)),
            "write": dict(Counter(o["status"] for o in outputs)),
        },
    }
    report_dir = out / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(report_dir / "contrast_types.csv", _csv(table))
    atomic_write_text(report_dir / "contrast_types_vs_paper.csv", _csv(report["contrast_types_vs_paper"]))
    atomic_write_text(report_dir / "per_source.csv", _csv(per_source))
    atomic_write_json(report_dir / "report.json", report)
    if echo:
        print(format_report(report))
    return report


def format_report(report: dict[str, Any]) -> str:
    """The report as two plain-text tables."""
    lines = ["Contrast types of the written pairs (Table 6 layout; the paper's VTC beside them)"]
    rows = report.get("contrast_types_vs_paper") or report["contrast_types"]
    width = max(len(r["contrast_type"]) for r in rows)
    lines.append(f"{'contrast type':<{width}}  {'count':>7}  {'share %':>7}  {'paper':>7}  {'paper %':>7}")
    for r in rows:
        lines.append(
            f"{r['contrast_type']:<{width}}  {r['count']:>7}  {r['share']:>7.1f}  "
            f"{r.get('paper_count', ''):>7}  {r.get('paper_share', ''):>7}"
        )
    lines.append("")
    lines.append("Pairs per source")
    keys = ["mined", "labelled", "accepted", "written_pairs", "records"]
    swidth = max([len("source")] + [len(r["source"]) for r in report["per_source"]])
    lines.append(f"{'source':<{swidth}}  " + "  ".join(f"{k:>13}" for k in keys))
    for r in report["per_source"]:
        lines.append(f"{r['source']:<{swidth}}  " + "  ".join(f"{r[k]:>13}" for k in keys))
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------------
# the command line


def _unit_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not -1.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"a cosine similarity is in [-1, 1], got {text!r}")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def add_build_vtc_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``harness build-vtc``."""
    from trainers.vtc.mine import FAISS_DEVICES, MINING_METHODS

    p.add_argument(
        "--images",
        metavar="SOURCE",
        help="image pool: a folder (searched recursively), a file list (one path per line, optionally "
        "TAB source) or a Hugging Face dataset saved to disk; needed by the embed stage",
    )
    p.add_argument("--output", required=True, metavar="DIR", help="output folder; every stage resumes from it")
    p.add_argument("--stage", default="all", choices=[*STAGES, "all"], help="stage to run (default: all)")
    e = p.add_argument_group("embed")
    e.add_argument(
        "--clip-model",
        default="openai/clip-vit-large-patch14-336",
        metavar="PATH",
        help="CLIP checkpoint, local or hub (default: openai/clip-vit-large-patch14-336, LLaVA-1.5's)",
    )
    e.add_argument(
        "--dino-model",
        default="facebook/dinov2-large",
        metavar="PATH",
        help="DINOv2 checkpoint, local or hub (default: facebook/dinov2-large)",
    )
    e.add_argument("--dino-pooling", choices=["cls", "mean"], default="cls", help="DINOv2 embedding (default: cls)")
    e.add_argument("--image-column", help="dataset image column (default: the first Image feature)")
    e.add_argument("--source-column", help="dataset column naming each image's source (default: the folder name)")
    e.add_argument("--split", help="split of a DatasetDict on disk")
    e.add_argument("--shard-size", type=_positive, default=10_000, help="images per embedding shard")
    e.add_argument("--embed-batch-size", type=_positive, default=64, help="images per forward pass")
    e.add_argument("--workers", type=_non_negative, default=4, help="image decoding processes (default: 4)")
    e.add_argument("--device", help="torch device (default: cuda:LOCAL_RANK if available, else cpu)")
    e.add_argument(
        "--dtype",
        choices=["auto", "float32", "float16", "bfloat16"],
        default="auto",
        help="model dtype (auto: float16 on CUDA, float32 on CPU)",
    )
    m = p.add_argument_group("mine")
    m.add_argument("--clip-threshold", type=_unit_float, default=0.95, help="CLIP cosine above this (default 0.95)")
    m.add_argument("--dino-threshold", type=_unit_float, default=0.6, help="DINOv2 cosine below this (default 0.6)")
    m.add_argument(
        "--mining",
        choices=MINING_METHODS,
        default="batch",
        help="batch: all pairs within consecutive batches (the paper's); faiss: exact global nearest "
        "neighbours; faiss-ivf, faiss-hnsw: approximate global search in an IVF or HNSW index, "
        "for large pools (recall against exact search is measured and recorded)",
    )
    m.add_argument("--batch-size", type=_positive, default=2048, help="mining batch (default: 2048, the paper's)")
    m.add_argument(
        "--faiss-k",
        type=_non_negative,
        default=10,
        help="neighbours per image in faiss mining (0: every neighbour above the CLIP threshold)",
    )
    m.add_argument(
        "--faiss-nlist",
        type=_non_negative,
        default=0,
        help="faiss-ivf: inverted lists (default 0: 4 sqrt(N), at most N / 39)",
    )
    m.add_argument(
        "--faiss-nprobe",
        type=_positive,
        default=32,
        help="faiss-ivf: lists scanned per query, at most --faiss-nlist (default 32)",
    )
    m.add_argument("--hnsw-m", type=int_at_least(2), default=32, help="faiss-hnsw: links per node (default 32)")
    m.add_argument(
        "--hnsw-ef-construction",
        type=_positive,
        default=80,
        help="faiss-hnsw: candidate list while building (default 80)",
    )
    m.add_argument(
        "--hnsw-ef-search", type=_positive, default=128, help="faiss-hnsw: candidate list per query (default 128)"
    )
    m.add_argument(
        "--faiss-device",
        choices=FAISS_DEVICES,
        default="auto",
        help="auto: flat and IVF indexes on the GPU(s) when faiss has GPU support (HNSW stays on the "
        "CPU); cpu; gpu: require one",
    )
    m.add_argument(
        "--faiss-recall-sample",
        type=_non_negative,
        default=1000,
        help="faiss-ivf / faiss-hnsw: random queries on which recall against exact search is measured "
        "and recorded in the mine summary (0: not measured; default 1000)",
    )
    m.add_argument("--dup-clip", type=_unit_float, default=0.995, help="near duplicates: CLIP cosine above this")
    m.add_argument("--dup-dino", type=_unit_float, default=0.95, help="near duplicates: DINOv2 cosine above this")
    m.add_argument(
        "--one-pair-per-image",
        action="store_true",
        help="use each image in at most one pair (greedy by CLIP similarity)",
    )
    lw = p.add_argument_group("label and write (LLM)")
    lw.add_argument("--llm-model", default=DEFAULT_LLM_MODEL, help="vision-capable model (default: gpt-4o)")
    lw.add_argument("--llm-base-url", help="OpenAI-compatible endpoint (default: $OPENAI_BASE_URL, else OpenAI)")
    lw.add_argument("--llm-api-key-env", default="OPENAI_API_KEY", help="environment variable holding the key")
    lw.add_argument("--llm-concurrency", type=_positive, default=8)
    lw.add_argument("--llm-timeout", type=float, default=120.0, help="seconds per request")
    lw.add_argument("--llm-max-retries", type=_non_negative, default=6)
    lw.add_argument("--no-llm-cache", action="store_true", help="do not read or write the LLM's disk cache")
    lw.add_argument("--llm-cache-dir", help="LLM cache folder (default: <harness cache>/judge)")
    lw.add_argument("--max-pairs", type=_positive, help="label only the first N mined pairs (a cheap trial)")
    lw.add_argument("--image-max-side", type=_positive, default=768, help="longest image side sent to the LLM")
    lw.add_argument("--review-page-size", type=_positive, default=250, help="pairs per review page")
    lw.add_argument(
        "--decisions",
        action="append",
        default=[],
        metavar="FILE",
        help="review decisions exported from the review pages (repeatable); then only accepted pairs are written",
    )
    lw.add_argument(
        "--tasks", default="description,vqa", help="task types to write per pair: description, vqa or both (default)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def config_from_args(args: argparse.Namespace) -> BuildConfig:
    """A :class:`BuildConfig` from parsed ``build-vtc`` flags."""
    tasks = tuple(t.strip() for t in args.tasks.split(",") if t.strip())
    return BuildConfig(
        output=args.output,
        images=args.images,
        stage=args.stage,
        clip_model=args.clip_model,
        dino_model=args.dino_model,
        dino_pooling=args.dino_pooling,
        image_column=args.image_column,
        source_column=args.source_column,
        split=args.split,
        shard_size=args.shard_size,
        embed_batch_size=args.embed_batch_size,
        workers=args.workers,
        device=args.device,
        dtype=args.dtype,
        clip_threshold=args.clip_threshold,
        dino_threshold=args.dino_threshold,
        mining=args.mining,
        batch_size=args.batch_size,
        faiss_k=args.faiss_k,
        dup_clip=args.dup_clip,
        dup_dino=args.dup_dino,
        one_pair_per_image=args.one_pair_per_image,
        faiss_nlist=args.faiss_nlist,
        faiss_nprobe=args.faiss_nprobe,
        hnsw_m=args.hnsw_m,
        hnsw_ef_construction=args.hnsw_ef_construction,
        hnsw_ef_search=args.hnsw_ef_search,
        faiss_device=args.faiss_device,
        faiss_recall_sample=args.faiss_recall_sample,
        llm_model=args.llm_model,
        llm_base_url=args.llm_base_url,
        llm_api_key_env=args.llm_api_key_env,
        llm_concurrency=args.llm_concurrency,
        llm_timeout=args.llm_timeout,
        llm_max_retries=args.llm_max_retries,
        llm_cache=not args.no_llm_cache,
        llm_cache_dir=args.llm_cache_dir,
        max_pairs=args.max_pairs,
        image_max_side=args.image_max_side,
        review_page_size=args.review_page_size,
        decisions=list(args.decisions),
        tasks=tasks,
        progress=not args.no_progress,
    )


def run_build_vtc(args: argparse.Namespace) -> int:
    """``harness build-vtc``: run the stages; the records' path is printed last when the write stage ran."""
    config = config_from_args(args)
    results = build_vtc(config)
    if "write" in results:
        print(Path(config.output) / "vtc.jsonl", file=sys.stdout)
    return 0


__all__ = [
    "STAGES",
    "BuildConfig",
    "add_build_vtc_arguments",
    "build_report",
    "build_vtc",
    "config_from_args",
    "contrast_type_table",
    "format_report",
    "make_llm",
    "run_build_vtc",
]
