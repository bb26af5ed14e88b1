#!/usr/bin/env bash
# Installs the training corpus from Debian and writes the cleaned text to OUT_DIR.
#
#   bash tools/get_corpus.sh OUT_DIR
#
# Corpus: Jane Austen's six novels from the Debian package r-cran-janeaustenr
# (1.0.0-1, bookworm; package code MIT, the novels themselves are public-domain
# Project Gutenberg texts). Held-out prose for the perplexity check: the opening
# chapters of Herman Melville's "Moby Dick" (public domain, Project Gutenberg e-text
# #2701) shipped as the `mobydick` data set of r-cran-tokenizers (0.3.0-1, MIT).
# The packages pull in GNU R (r-base-core), which exports the texts with Rscript.
#
# Output (see tools/prepare_corpus.py): OUT_DIR/train.jsonl, valid.jsonl (last ~5% of
# the Austen chapters), heldout.jsonl (Moby Dick), corpus_stats.json.
set -euo pipefail
out="${1:?usage: get_corpus.sh OUT_DIR}"
here="$(cd "$(dirname "$0")" && pwd)"

pkgs="r-cran-janeaustenr r-cran-tokenizers"
if ! dpkg -s $pkgs >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends $pkgs >/dev/null
fi
for p in $pkgs; do echo "corpus: $p $(dpkg-query -W -f='${Version}' "$p")"; done

raw="$(mktemp -d)"
trap 'rm -rf "$raw"' EXIT
Rscript --vanilla - "$raw" <<'EOF'
args <- commandArgs(trailingOnly = TRUE)
raw <- args[1]
library(janeaustenr)
books <- austen_books()
titles <- levels(books$book)
for (i in seq_along(titles)) {
  con <- file(file.path(raw, sprintf("austen_%d.txt", i - 1)), open = "w", encoding = "UTF-8")
  writeLines(books$text[books$book == titles[i]], con)
  close(con)
}
writeLines(paste0("[", paste0('"', titles, '"', collapse = ", "), "]"), file.path(raw, "austen_titles.json"))
data("mobydick", package = "tokenizers")
con <- file(file.path(raw, "mobydick.txt"), open = "w", encoding = "UTF-8")
writeLines(mobydick, con)
close(con)
EOF
python3 "$here/prepare_corpus.py" "$raw" "$out"
