#!/usr/bin/env python3
"""Regenerate tests/fixtures/tokenizer_tiny/: a tiny byte-level BPE tokenizer with a ChatML chat template.

    python3 tools/make_tokenizer_fixture.py

Writes
  * tokenizer.json         trained here with the `tokenizers` library on the paragraphs below
                           (vocabulary 400, special tokens <|im_start|>, <|im_end|>, <|endoftext|>);
  * tokenizer_config.json  eos_token "<|im_end|>", bos_token as an AddedToken object, and a chat template
                           that depends on trim_blocks/lstrip_blocks, raise_exception, `| trim`, `.strip()`,
                           loop.first and loop.last;
  * expected.json          only if `transformers` is importable: what transformers itself produces, so that
                           the Rust tests compare against the reference rather than against themselves:
      "chat":      apply_chat_template(..., tokenize=False) for a 3-message conversation, with and
                   without add_generation_prompt;
      "templates": extra templates (tojson with indent, [::-1], Python string methods, namespace)
                   rendered through apply_chat_template(chat_template=...);
      "encode":    ids for a few strings (digits, emoji, non-Latin text, special tokens) with
                   add_special_tokens=False, and their decode with skip_special_tokens=True.

The output is deterministic: running the script twice gives the same files byte for byte.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "tokenizer_tiny"

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
VOCAB_SIZE = 400

CORPUS = [
    "The quick brown fox jumps over the lazy dog. A tokenizer splits text into pieces that a model "
    "can look up in its vocabulary; frequent pieces become single tokens and rare ones fall apart "
    "into bytes.",
    "Hello world! Hello there, how are you today? I am fine, thank you. The weather is nice and the "
    "sun is shining over the hills.",
    "Numbers appear everywhere: 1, 2, 3, 10, 42, 100, 2024, 3.14159 and 1000000. Counting from one "
    "to ten: one two three four five six seven eight nine ten.",
    "You are a helpful assistant. The user asks a question and the assistant answers it clearly, "
    "politely and without making things up.",
    "Les élèves étudient à l'école. Der Bär läuft über die Straße. El niño come una manzana.",
    "日本語のテキストも少し入れておきます。中文文本也在这里。Русский текст тоже есть.",
    "Emoji are bytes too: 🦀 🚀 ✨ 👍🏽 — and so are symbols like € £ ¥ ©.",
]

CHAT_TEMPLATE = (
    "{{ bos_token }}\n"
    "{% for message in messages %}\n"
    "    {% if message['role'] not in ['system', 'user', 'assistant'] %}\n"
    "        {{ raise_exception('Unknown role: ' + message['role']) }}\n"
    "    {% endif %}\n"
    "    {% if loop.first and message['role'] != 'system' %}\n"
    "<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n"
    "    {% endif %}\n"
    "    {% if message['role'] == 'system' %}\n"
    "<|im_start|>system\n"
    "{{ message['content'].strip() }}<|im_end|>\n"
    "    {% else %}\n"
    "<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] | trim }}<|im_end|>\n"
    "    {% endif %}\n"
    "    {% if loop.last and message['role'] == 'assistant' %}\n"
    "{{ eos_token }}\n"
    "    {% endif %}\n"
    "{% endfor %}\n"
    "{% if add_generation_prompt %}\n"
    "<|im_start|>assistant\n"
    "{% endif %}\n"
)

CONVERSATION = [
    {"role": "system", "content": "  You are a terse assistant.\n"},
    {"role": "user", "content": "What is 2 + 2? Answer in one word, s'il vous plaît. 🙂"},
    {"role": "assistant", "content": "Four.\n\n"},
]

# Each extra template is rendered for EXTRA_CONVERSATION with and without add_generation_prompt.
EXTRA_TEMPLATES = {
    "tojson": "{{ messages | tojson }}\n{{ messages[0] | tojson(indent=2) }}\n{{ {'a': [1, 2.5, true, none], 'b': {}} | tojson(indent=4) }}",
    "reverse_slice": "{% for m in messages[::-1] %}{{ m.role }}:{{ m.content[::-1] }};{% endfor %}{{ 'abc'[::-1] }}",
    "string_methods": (
        "{% for m in messages %}\n"
        "{{ m.content.split() | join('|') }} {{ m.role.title() }} {{ m.role.upper() }} {{ m.content.lower() }}"
        " {{ m.content.startswith('Say') }} {{ m.content.endswith('?') }} {{ m.content.replace(' ', '_') }}"
        " {{ m.content.lstrip().rstrip() }}\n"
        "{% endfor %}"
    ),
    "namespace_loop": (
        "{% set ns = namespace(last_user=-1) %}\n"
        "{% for m in messages %}\n"
        "    {% if m.role == 'user' %}{% set ns.last_user = loop.index0 %}{% endif %}\n"
        "    {%- if loop.index is even %}[{{ loop.index }}/{{ loop.length }}]{% endif %}\n"
        "{% endfor %}\n"
        "last user at {{ ns.last_user }}{% if add_generation_prompt %} +prompt{% endif %}\n"
    ),
}

EXTRA_CONVERSATION = [
    {"role": "user", "content": "Say <b>\"hi\"</b> & 'bye' — naïve 🦀\tend?"},
    {"role": "assistant", "content": " Hi there! "},
    {"role": "user", "content": "Again?"},
]

ENCODE_TEXTS = [
    "Hello world! The quick brown fox.",
    "Numbers 0123456789, 3.14159 and 2024-06-01.",
    "Emoji 🦀🚀👍🏽 and symbols € © ✨",
    "日本語のテキスト, 中文, Русский текст, Straße",
    "<|im_start|>user\nHi there<|im_end|>\n",
    "  leading spaces,\ttabs\nand newlines  ",
]


def train() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    return tok


def tokenizer_config() -> dict:
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": 2048,
        "clean_up_tokenization_spaces": False,
        # The object form, as many Hub configs spell it; the Rust loader must read both forms.
        "bos_token": {
            "__type": "AddedToken",
            "content": "<|endoftext|>",
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        },
        "eos_token": "<|im_end|>",
        "unk_token": None,
        "pad_token": "<|endoftext|>",
        "chat_template": CHAT_TEMPLATE,
    }


def expected(out: Path) -> dict | None:
    try:
        import transformers
        from transformers import AutoTokenizer
    except ImportError:
        return None
    tok = AutoTokenizer.from_pretrained(str(out))
    chat = {
        "messages": CONVERSATION,
        "with_generation_prompt": tok.apply_chat_template(CONVERSATION[:2], tokenize=False, add_generation_prompt=True),
        "without_generation_prompt": tok.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=False),
    }
    templates = []
    for name, source in EXTRA_TEMPLATES.items():
        for add in (False, True):
            rendered = tok.apply_chat_template(
                EXTRA_CONVERSATION, chat_template=source, tokenize=False, add_generation_prompt=add
            )
            templates.append({"name": name, "template": source, "add_generation_prompt": add, "output": rendered})
    encode = []
    for text in ENCODE_TEXTS:
        ids = tok.encode(text, add_special_tokens=False)
        encode.append({"text": text, "ids": ids, "decoded": tok.decode(ids, skip_special_tokens=True)})
    return {
        "transformers": transformers.__version__,
        "chat": chat,
        "extra_messages": EXTRA_CONVERSATION,
        "templates": templates,
        "encode": encode,
    }


def write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    train().save(str(OUT / "tokenizer.json"))
    write_json(OUT / "tokenizer_config.json", tokenizer_config())
    exp = expected(OUT)
    if exp is None:
        print("transformers is not importable: expected.json not written")
    else:
        write_json(OUT / "expected.json", exp)
    for f in sorted(OUT.iterdir()):
        print(f"{f.relative_to(OUT.parent.parent.parent)}: {f.stat().st_size} bytes")


if __name__ == "__main__":
    main()
