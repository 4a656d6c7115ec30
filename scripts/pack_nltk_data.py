"""Pack the NLTK resources the scorers use into tasks/nltk_data/, deterministically (sorted entries, fixed times).

    python scripts/pack_nltk_data.py SRC [--out tasks/nltk_data]

SRC is an unpacked NLTK data folder holding tokenizers/punkt_tab, taggers/averaged_perceptron_tagger_eng and
corpora/wordnet (for example ~/nltk_data after `python -m nltk.downloader punkt_tab averaged_perceptron_tagger_eng
wordnet`). The archives have NLTK's downloader layout, <category>/<name>.zip holding <name>/..., and the same bytes
for the same input files.
"""

from __future__ import annotations

import argparse
import sys
import zipfile
from pathlib import Path

RESOURCES = (("tokenizers", "punkt_tab"), ("taggers", "averaged_perceptron_tagger_eng"), ("corpora", "wordnet"))
STAMP = (2020, 1, 1, 0, 0, 0)


def pack(src: Path, out: Path) -> list[Path]:
    written = []
    for category, name in RESOURCES:
        base = src / category / name
        if not base.is_dir():
            sys.exit(f"pack_nltk_data: {base} is not a folder (expected the unpacked {name} resource)")
        entries = sorted([base, *(p for p in base.rglob("*"))], key=lambda p: p.relative_to(src / category).as_posix())
        target = out / category / f"{name}.zip"
        target.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(target, "w") as archive:
            for path in entries:
                rel = path.relative_to(src / category).as_posix()
                if path.is_dir():
                    info = zipfile.ZipInfo(rel + "/", date_time=STAMP)
                    info.external_attr = 0o40755 << 16
                    archive.writestr(info, b"")
                else:
                    info = zipfile.ZipInfo(rel, date_time=STAMP)
                    info.external_attr = 0o644 << 16
                    info.compress_type = zipfile.ZIP_DEFLATED
                    archive.writestr(info, path.read_bytes(), compresslevel=9)
        written.append(target)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "tasks" / "nltk_data")
    args = parser.parse_args()
    for path in pack(args.src, args.out):
        print(path)


if __name__ == "__main__":
    main()
