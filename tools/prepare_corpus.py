#!/usr/bin/env python3
"""Clean the raw corpus texts exported by tools/get_corpus.sh into JSONL documents.

    python3 tools/prepare_corpus.py RAW_DIR OUT_DIR

RAW_DIR holds what get_corpus.sh exported from the Debian packages:
  austen_<n>.txt   one file per novel of r-cran-janeaustenr (package order), line-wrapped
  mobydick.txt     Moby Dick from r-cran-tokenizers (a Project Gutenberg e-text)

OUT_DIR receives (one JSON object per line: {"source", "title", "text"}):
  train.jsonl      Austen chapters, all but the last ~5%
  valid.jsonl      the last ~5% of Austen chapters (the end of Persuasion): validation
  heldout.jsonl    the first chapters of Moby Dick (another author and package):
                   "ordinary English prose the model never saw", for the perplexity check
  corpus_stats.json

A document is one chapter. Cleaning: hard line wraps are undone (a paragraph is one
line, paragraphs are separated by a blank line), runs of spaces collapse to one, the
_underscore_ emphasis marks are removed, chapter / volume headings and title pages are
dropped.
"""

import json
import re
import sys
from pathlib import Path

VALID_FRACTION = 0.05
HELDOUT_CHARS = 120_000  # whole chapters of Moby Dick up to about this many characters

CHAPTER_RE = re.compile(r"^\s*(CHAPTER|Chapter)\s+([0-9]+|[IVXLC]+)\.?\s*$")
SKIP_RE = re.compile(r"^\s*(VOLUME|Volume)\s+[IVX]+\s*$|^\s*(THE END|Finis|FINIS)\s*$")


def paragraphs(lines):
    """Join wrapped lines into paragraphs (split on blank lines) and normalise spaces."""
    paras, cur = [], []
    for line in lines:
        if line.strip():
            cur.append(line.strip())
        elif cur:
            paras.append(" ".join(cur))
            cur = []
    if cur:
        paras.append(" ".join(cur))
    out = []
    for p in paras:
        p = p.replace("_", "")
        p = re.sub(r"\s+", " ", p).strip()
        if p:
            out.append(p)
    return out


def split_chapters(lines, chapter_re):
    """Chapters of a line list; text before the first heading (title page) is dropped."""
    chapters, cur, started = [], [], False
    for line in lines:
        if chapter_re.match(line):
            if started and cur:
                chapters.append(cur)
            cur, started = [], True
            continue
        if SKIP_RE.match(line):
            continue
        if started:
            cur.append(line)
    if started and cur:
        chapters.append(cur)
    docs = []
    for ch in chapters:
        text = "\n\n".join(paragraphs(ch))
        if len(text) > 200:
            docs.append(text)
    return docs


def main():
    raw, out = Path(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)

    titles = json.loads((raw / "austen_titles.json").read_text())
    austen = []
    for i, title in enumerate(titles):
        lines = (raw / f"austen_{i}.txt").read_text(encoding="utf-8").splitlines()
        for j, text in enumerate(split_chapters(lines, CHAPTER_RE)):
            austen.append({"source": "r-cran-janeaustenr", "title": f"{title}, chapter {j + 1}", "text": text})
    n_valid = max(1, round(len(austen) * VALID_FRACTION))
    train, valid = austen[:-n_valid], austen[-n_valid:]

    md = (raw / "mobydick.txt").read_text(encoding="utf-8").replace("\r\n", "\n").lstrip("\ufeff")
    start = md.index("*** START OF")
    end = md.index("*** END OF")
    body = md[md.index("\n", start) + 1:end]
    # the table of contents lists the chapter titles too: start at the second "CHAPTER 1."
    first = [m.start() for m in re.finditer(r"^CHAPTER 1\. Loomings\.", body, flags=re.M)]
    body = body[first[-1]:]
    md_re = re.compile(r"^\s*CHAPTER\s+[0-9]+\.")
    md_lines = body.splitlines()
    heldout, total = [], 0
    for j, text in enumerate(split_chapters(md_lines, md_re)):
        if total >= HELDOUT_CHARS:
            break
        heldout.append({"source": "r-cran-tokenizers", "title": f"Moby Dick, chapter {j + 1}", "text": text})
        total += len(text)

    stats = {}
    for name, docs in (("train", train), ("valid", valid), ("heldout", heldout)):
        with open(out / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for d in docs:
                f.write(json.dumps(d, ensure_ascii=False) + "\n")
        stats[name] = {"documents": len(docs), "characters": sum(len(d["text"]) for d in docs),
                       "first": docs[0]["title"], "last": docs[-1]["title"]}
    (out / "corpus_stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    print(json.dumps(stats, indent=2))


if __name__ == "__main__":
    main()
