#!/usr/bin/env python3
"""Train Volt's BPE tokenizer (Yi-Lightning report, section 3.1) with the `tokenizers` library.

    python3 tools/train_tokenizer.py CORPUS_DIR OUT_DIR [--vocab-size 4096]

* BPE in the SentencePiece style: a Metaspace pre-tokenizer ("▁" marks a preceding
  space), newlines split off as their own pieces, and every digit its own token
  (Digits(individual_digits=True)), so numbers are decomposed into single digits.
* Byte fallback: `byte_fallback=True` on the BPE model with the 256 tokens
  `<0x00>`..`<0xFF>` in the vocabulary. Characters outside the learned alphabet
  (rare ones: the alphabet is limited to the most frequent characters) are encoded as
  their UTF-8 bytes; the decoder is Replace(▁→space), ByteFallback, Fuse, Strip, as in
  the Llama / Mistral tokenizer.json files.
* Ids: 0 `<unk>`, 1 `<|endoftext|>` (bos and document separator), 2 `<|im_start|>`,
  3 `<|im_end|>`, 4..259 the byte tokens, then the alphabet and the merges.
  The post-processor prepends `<|endoftext|>` (as training documents start with it).
* Writes OUT_DIR/tokenizer.json and OUT_DIR/tokenizer_config.json (ChatML template).

Trained on CORPUS_DIR/train.jsonl only (see tools/get_corpus.sh).
"""

import argparse
import json
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

SPECIALS = ["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
BYTES = [f"<0x{b:02X}>" for b in range(256)]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build(vocab_size, texts, limit_alphabet=100):
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex("\n+"), behavior="isolated"),
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True),
        pre_tokenizers.Digits(individual_digits=True),
    ])
    tok.decoder = decoders.Sequence([
        decoders.Replace("▁", " "),
        decoders.ByteFallback(),
        decoders.Fuse(),
        decoders.Strip(" ", 1, 0),
    ])
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(BYTES),  # the byte tokens are inserted afterwards
        special_tokens=SPECIALS,
        limit_alphabet=limit_alphabet,
        min_frequency=2,
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)

    # Insert the 256 byte tokens right after the specials (ids 4..259). They belong in the
    # model's vocabulary (not as added tokens, which would match the literal text "<0x41>").
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    n_special = len(SPECIALS)
    assert all(vocab[s] == i for i, s in enumerate(SPECIALS))
    assert not any(b in vocab for b in BYTES)
    new_vocab = {s: i for i, s in enumerate(SPECIALS)}
    for i, b in enumerate(BYTES):
        new_vocab[b] = n_special + i
    for piece, i in sorted(vocab.items(), key=lambda kv: kv[1]):
        if i >= n_special:
            new_vocab[piece] = i + len(BYTES)
    spec["model"]["vocab"] = new_vocab
    spec["model"]["byte_fallback"] = True
    spec["model"]["unk_token"] = "<unk>"
    spec["model"]["fuse_unk"] = True
    for at in spec["added_tokens"]:
        assert new_vocab[at["content"]] == at["id"]
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.post_processor = processors.TemplateProcessing(
        single="<|endoftext|> $A",
        pair="<|endoftext|> $A <|endoftext|> $B",
        special_tokens=[("<|endoftext|>", 1)],
    )
    return tok


def tokenizer_config(model_max_length):
    added = {}
    for i, s in enumerate(SPECIALS):
        added[str(i)] = {"content": s, "lstrip": False, "normalized": False, "rstrip": False,
                         "single_word": False, "special": True}
    return {
        "added_tokens_decoder": added,
        "bos_token": "<|endoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<unk>",
        "pad_token": "<|endoftext|>",
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "chat_template": CHAT_TEMPLATE,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("corpus_dir")
    ap.add_argument("out_dir")
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--model-max-length", type=int, default=4096)
    args = ap.parse_args()
    corpus, out = Path(args.corpus_dir), Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    texts = [json.loads(line)["text"] for line in open(corpus / "train.jsonl", encoding="utf-8")]
    tok = build(args.vocab_size, texts)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(args.model_max_length), indent=2) + "\n")

    # self-checks: round trip, digits, byte fallback
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    sample = "It is a truth universally acknowledged, in 1811, that a naïve café costs £12.50 — 日本.\n\nNew para."
    enc = tok.encode(sample)
    assert enc.ids[0] == 1
    dec = tok.decode(enc.ids, skip_special_tokens=True)
    assert dec == sample, (dec, sample)
    digits = [p for p in enc.tokens if not p.startswith("<0x") and any(c.isdigit() for c in p)]
    assert all(len(p.strip("▁")) == 1 for p in digits), digits
    assert any(p.startswith("<0x") for p in enc.tokens), "expected byte-fallback tokens"
    n_tokens = sum(len(tok.encode(t, add_special_tokens=False).ids) for t in texts)
    n_chars = sum(len(t) for t in texts)
    print(f"tokenizer: vocab {tok.get_vocab_size()}, train corpus {n_chars} chars -> {n_tokens} tokens "
          f"({n_chars / n_tokens:.2f} chars/token)")
    print("sample:", enc.tokens)


if __name__ == "__main__":
    main()
