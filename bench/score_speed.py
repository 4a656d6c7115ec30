"""How long the AMBER scorer takes on the full benchmark, with and without its per-pair similarity cache.

Builds deterministic synthetic responses for all 15,220 AMBER ids (1,004 descriptions made of truth, hallucination
and other vocabulary words in fixed sentences; "Yes"/"No" alternating for the 14,216 questions), then scores them
twice in the same run: with :class:`tasks.amber.AmberScorer`'s per-pair similarity cache (the default) and without
it (every similarity recomputed, as the official ``inference.py`` does). Prints both timings and their ratio, and
the generative half's time against the 10 s target.

The default similarity backend, ``hash``, stands in for spaCy: each call derives a 300-d vector per word from a hash
of the word and returns their cosine (identical words give 1.0), so every call does a bit of work. Any
:func:`tasks.amber.parse_similarity` spec can be given instead (e.g. ``spacy:en_core_web_lg`` where installed).

    python bench/score_speed.py [--data-root tests/fixtures/data/amber] [--similarity hash|none|spacy:<model>|table:<f>]

NLTK data is found as the scorers find it: ``NLTK_DATA`` and NLTK's folders first, the project's copy last.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

AMBER_DATA = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "data" / "amber"

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from tasks.amber import AmberScorer, WordSimilarity, parse_similarity  # noqa: E402

GENERATIVE_TARGET_S = 10.0


class HashSimilarity(WordSimilarity):
    """Cosine of per-word pseudo-random 300-d vectors (seeded by a hash of the word); recomputed on every call."""

    dim = 300

    @property
    def spec(self) -> str:
        return "hash"

    def _vector(self, word: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
        return np.random.default_rng(seed).standard_normal(self.dim)

    def similarity(self, word1: str, word2: str) -> float:
        a, b = self._vector(word1), self._vector(word2)
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _a(word: str) -> str:
    return f"an {word}" if word[:1].lower() in "aeiou" else f"a {word}"


def synthetic_responses(scorer: AmberScorer) -> list[dict]:
    """One deterministic response per AMBER id, in id order."""
    vocab = sorted(scorer.vocabulary)
    out = []
    for entry in scorer.annotations:
        i = entry["id"]
        if entry["type"] == "generative":
            truth, hallu = entry["truth"], entry["hallu"]
            t = [truth[k % len(truth)] for k in range(3)] if truth else ["scene"] * 3
            assoc = scorer.association.get(t[2]) or [t[2]]
            other1, other2 = vocab[(7 * i) % len(vocab)], vocab[(13 * i + 5) % len(vocab)]
            sentences = [
                f"The image shows {_a(t[0])} next to {_a(t[1])}.",
                f"There is {_a(assoc[i % len(assoc)])} in the middle, and {_a(other1)} can be seen nearby.",
            ]
            if hallu:
                sentences.append(f"On the left, {_a(hallu[i % len(hallu)])} stands beside {_a(other2)}.")
            sentences.append("The overall atmosphere is calm and peaceful.")
            out.append({"id": i, "response": " ".join(sentences)})
        else:
            out.append({"id": i, "response": "Yes" if i % 2 == 0 else "No"})
    return out


def run(data_root: Path, similarity: str) -> None:
    def backend() -> WordSimilarity:
        return HashSimilarity() if similarity == "hash" else parse_similarity(similarity)

    probe = AmberScorer(data_root, backend())
    responses = synthetic_responses(probe)
    generative = [r for r in responses if probe.annotations[r["id"] - 1]["type"] == "generative"]
    probe.score_generative(generative[:5])  # load the NLTK tagger, tokenizer and WordNet outside the timings

    timings = {}
    for cache in (True, False):
        scorer = AmberScorer(data_root, backend(), cache=cache)
        t0 = time.perf_counter()
        result = scorer.score(responses)
        timings[cache] = (time.perf_counter() - t0, scorer.synonym.calls, result)

    t_gen = AmberScorer(data_root, backend())
    t0 = time.perf_counter()
    t_gen.score_generative(generative)
    gen_s = time.perf_counter() - t0

    (on_s, on_calls, on_res), (off_s, off_calls, off_res) = timings[True], timings[False]
    assert on_res.generative == off_res.generative and on_res.discriminative == off_res.discriminative
    g, d = on_res.generative, on_res.discriminative
    print(f"AMBER scorer, {len(responses)} responses ({len(generative)} generative), similarity {similarity}")
    print(
        f"  numbers: CHAIR {g.CHAIR} Cover {g.Cover} Hal {g.Hal} Cog {g.Cog} | "
        f"Acc {d.overall.Accuracy} P {d.overall.Precision} R {d.overall.Recall} F1 {d.overall.F1} | "
        f"AMBER Score {on_res.amber_score}"
    )
    print(f"  per-pair cache on : {on_s:8.2f} s  ({on_calls} similarity computations)")
    print(f"  per-pair cache off: {off_s:8.2f} s  ({off_calls} similarity computations, as the official scorer)")
    print(f"  ratio off/on      : {off_s / on_s:8.2f}x")
    verdict = "ok" if gen_s < GENERATIVE_TARGET_S else "OVER TARGET"
    print(
        f"  generative only (cache on, cold): {gen_s:.2f} s for {len(generative)} "
        f"(target < {GENERATIVE_TARGET_S:.0f} s: {verdict})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data-root",
        type=Path,
        default=AMBER_DATA,
        help="AMBER data/ folder (annotations.json, relation.json, safe_words.txt, metrics.txt)",
    )
    parser.add_argument(
        "--similarity",
        default="hash",
        help="hash (default, built-in stand-in), none, spacy:<model> or table:<file.json>",
    )
    args = parser.parse_args(argv)
    run(args.data_root, args.similarity)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
