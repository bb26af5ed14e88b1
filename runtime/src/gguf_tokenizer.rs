//! The tokenizer a GGUF file carries (`tokenizer.ggml.*`), rebuilt as the Hugging Face `tokenizer.json`
//! transformers builds from the same metadata, for the `tokenizers` crate to load: byte-level BPE (`gpt2`)
//! with the pre-tokenizer llama.cpp names in `tokenizer.ggml.pre`, control tokens as special added tokens,
//! BOS prepended when `tokenizer.ggml.add_bos_token` says so.

use serde_json::{json, Map, Value};

use crate::bail;
use crate::error::Result;
use crate::gguf::{GgufFile, Value as Meta};

/// llama.cpp's LLAMA3 split (GPT-2's, which `ByteLevel` applies itself with `use_regex`, needs none).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// LLAMA3's with single digits.
const QWEN2_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// What the file says of its tokens besides the tokenizer itself.
pub struct GgufVocab {
    /// The `tokenizer.json` text.
    pub json: String,
    pub bos: Option<String>,
    pub eos: Option<String>,
    pub unk: Option<String>,
}

fn strings(file: &GgufFile, key: &str) -> Result<Option<Vec<String>>> {
    match file.get(key) {
        None => Ok(None),
        Some(Meta::Array(items)) => items
            .iter()
            .map(|v| match v.as_str() {
                Some(s) => Ok(s.to_string()),
                None => bail!("GGUF metadata `{key}` holds a non-string"),
            })
            .collect::<Result<Vec<_>>>()
            .map(Some),
        Some(_) => bail!("GGUF metadata `{key}` is not an array"),
    }
}

/// The tokenizer of `file`, or None when it has none (`tokenizer.ggml.model` absent or `no_vocab`).
pub fn read(file: &GgufFile) -> Result<Option<GgufVocab>> {
    let model = file.get("tokenizer.ggml.model").and_then(Meta::as_str);
    match model {
        None | Some("no_vocab") => return Ok(None),
        Some("gpt2") => {}
        Some(other) => bail!("GGUF tokenizer model `{other}` is not supported yet (byte-level BPE, `gpt2`, is)"),
    }
    let Some(tokens) = strings(file, "tokenizer.ggml.tokens")? else {
        bail!("GGUF metadata has no tokenizer.ggml.tokens");
    };
    let merges = strings(file, "tokenizer.ggml.merges")?.unwrap_or_default();
    let types: Vec<u64> = match file.get("tokenizer.ggml.token_type") {
        Some(Meta::Array(t)) => t.iter().map(|v| v.as_u64().unwrap_or(1)).collect(),
        _ => Vec::new(),
    };
    let pre = file
        .get("tokenizer.ggml.pre")
        .and_then(Meta::as_str)
        .unwrap_or("default");
    let (pre_tokenizer, llama3) = pre_tokenizer(pre)?;
    let id = |key: &str| file.get(&format!("tokenizer.ggml.{key}")).and_then(Meta::as_u64);
    let token = |key: &str| id(key).and_then(|i| tokens.get(i as usize)).cloned();
    let (bos, eos, unk) = (token("bos_token_id"), token("eos_token_id"), token("unknown_token_id"));
    let add_bos = match file.get("tokenizer.ggml.add_bos_token") {
        Some(Meta::Bool(b)) => *b,
        // llama.cpp's default for the llama3 pre-tokenizers; off for the others.
        _ => llama3,
    };

    let mut vocab = Map::new();
    let mut added = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        vocab.entry(t.clone()).or_insert(json!(i));
        // 3: control (special), 4: user-defined (added, not special).
        let kind = types.get(i).copied().unwrap_or(1);
        if kind == 3 || kind == 4 {
            added.push(json!({
                "id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                "normalized": false, "special": kind == 3,
            }));
        }
    }
    let post_processor = match (&bos, add_bos) {
        (Some(b), true) => json!({
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": b, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": b, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {b: {"id": b, "ids": [id("bos_token_id")], "tokens": [b]}},
        }),
        _ => Value::Null,
    };
    let json = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": llama3,
            "vocab": vocab, "merges": merges,
        },
    });
    Ok(Some(GgufVocab {
        json: json.to_string(),
        bos,
        eos,
        unk,
    }))
}

/// The pre-tokenizer llama.cpp applies for `pre`, and whether it is of the llama3 family (merges ignored
/// for whole-token matches, BOS added by default).
fn pre_tokenizer(pre: &str) -> Result<(Value, bool)> {
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    let split = |regex: &str| {
        json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
            byte_level(false),
        ]})
    };
    Ok(match pre {
        "default" | "gpt-2" | "gpt2" => (byte_level(true), false),
        "smollm" => (
            json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true},
                byte_level(true),
            ]}),
            false,
        ),
        "llama-bpe" | "llama3" | "llama-v3" | "falcon3" | "pixtral" => (split(LLAMA3_SPLIT), true),
        "qwen2" | "deepseek-r1-qwen" | "megrez" => (split(QWEN2_SPLIT), false),
        other => bail!("GGUF pre-tokenizer `{other}` is not supported yet (gpt-2, olmo, smollm, llama3, qwen2 are)"),
    })
}
