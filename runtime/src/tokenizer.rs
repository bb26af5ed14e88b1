//! Text <-> token ids through a Hugging Face `tokenizer.json` (or the tokenizer a GGUF file carries,
//! `gguf_tokenizer.rs`), the special tokens named in `tokenizer_config.json`, and an incremental
//! detokenizer for streaming output.

use std::path::Path;
use std::sync::Arc;

use serde_json::Value;

use crate::bail;
use crate::checkpoint::is_gguf;
use crate::error::{Error, Result, ResultExt};
use crate::gguf::{GgufFile, Value as Meta};
use crate::gguf_tokenizer;

/// A model folder's tokenizer: `tokenizer.json` plus the special tokens of `tokenizer_config.json`.
/// Clones share one loaded tokenizer.
#[derive(Clone)]
pub struct Tokenizer {
    inner: Arc<tokenizers::Tokenizer>,
    config: Arc<TokenizerConfig>,
}

impl Tokenizer {
    /// The tokenizer of a model folder (`tokenizer.json`) or of a GGUF file; Ok(None) when it has none
    /// (commands taking ids still work).
    pub fn open(dir: &Path) -> Result<Option<Tokenizer>> {
        if is_gguf(dir) {
            let file = GgufFile::open(dir)?;
            let Some(vocab) = gguf_tokenizer::read(&file).with_context(|| dir.display())? else {
                return Ok(None);
            };
            let inner = tokenizers::Tokenizer::from_bytes(vocab.json.as_bytes())
                .map_err(|e| Error::msg(format!("{}: its tokenizer could not be built: {e}", dir.display())))?;
            let config = TokenizerConfig {
                bos_token: vocab.bos,
                eos_token: vocab.eos,
                unk_token: vocab.unk,
                chat_template: gguf_chat_template(&file),
            };
            return Ok(Some(Tokenizer {
                inner: Arc::new(inner),
                config: Arc::new(config),
            }));
        }
        let path = dir.join("tokenizer.json");
        if !path.is_file() {
            return Ok(None);
        }
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let inner = tokenizers::Tokenizer::from_bytes(bytes)
            .map_err(|e| Error::msg(format!("{}: not a valid tokenizer.json: {e}", path.display())))?;
        Ok(Some(Tokenizer {
            inner: Arc::new(inner),
            config: Arc::new(TokenizerConfig::load(dir)?),
        }))
    }

    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        // encode_fast: same ids, without the character offsets Volt never reads.
        let encoding = self
            .inner
            .encode_fast(text, add_special_tokens)
            .map_err(|e| Error::msg(format!("tokenizing: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The text of `ids`, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| Error::msg(format!("decoding token ids: {e}")))
    }

    /// Number of ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// `bos_token` of tokenizer_config.json, when it names one.
    pub fn bos_token(&self) -> Option<&str> {
        self.config.bos_token.as_deref()
    }

    /// `eos_token` of tokenizer_config.json, when it names one.
    pub fn eos_token(&self) -> Option<&str> {
        self.config.eos_token.as_deref()
    }

    /// `unk_token` of tokenizer_config.json, when it names one.
    pub fn unk_token(&self) -> Option<&str> {
        self.config.unk_token.as_deref()
    }

    /// The eos id(s) this tokenizer knows of (eos_token resolved to its id).
    pub fn eos_ids(&self) -> Vec<u32> {
        self.eos_token().and_then(|t| self.token_to_id(t)).into_iter().collect()
    }
}

/// The parts of `tokenizer_config.json` Volt reads (shared with the chat template loader).
#[derive(Clone, Debug, Default)]
pub(crate) struct TokenizerConfig {
    pub bos_token: Option<String>,
    pub eos_token: Option<String>,
    pub unk_token: Option<String>,
    /// `chat_template` as written: a string, or a list of {"name", "template"}.
    pub chat_template: Option<Value>,
}

impl TokenizerConfig {
    /// From a model folder's tokenizer_config.json (all fields empty without one), or a GGUF file's
    /// metadata.
    pub(crate) fn load(dir: &Path) -> Result<TokenizerConfig> {
        if is_gguf(dir) {
            return Ok(match Tokenizer::open(dir)? {
                Some(t) => (*t.config).clone(),
                None => TokenizerConfig {
                    chat_template: gguf_chat_template(&GgufFile::open(dir)?),
                    ..TokenizerConfig::default()
                },
            });
        }
        let path = dir.join("tokenizer_config.json");
        if !path.is_file() {
            return Ok(TokenizerConfig::default());
        }
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let json: Value = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let token = |key: &str| special_token(&json, key).with_context(|| path.display());
        Ok(TokenizerConfig {
            bos_token: token("bos_token")?,
            eos_token: token("eos_token")?,
            unk_token: token("unk_token")?,
            chat_template: json.get("chat_template").filter(|t| !t.is_null()).cloned(),
        })
    }
}

/// `tokenizer.chat_template` of a GGUF file.
fn gguf_chat_template(file: &GgufFile) -> Option<Value> {
    file.get("tokenizer.chat_template")
        .and_then(Meta::as_str)
        .map(|t| Value::String(t.to_string()))
}

/// A special token is written either as a string or as an AddedToken object {"content": ...}.
fn special_token(config: &Value, key: &str) -> Result<Option<String>> {
    match config.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Object(o)) => match o.get("content") {
            Some(Value::String(s)) => Ok(Some(s.clone())),
            _ => bail!("{key} is an object without a string \"content\""),
        },
        Some(_) => bail!("{key} is neither a string nor an object {{\"content\": ...}}"),
    }
}

/// Incremental detokenizer for streaming: push ids one at a time, get back the new text that is complete
/// (never emits half of a multi-byte UTF-8 character or a partial byte-fallback sequence; handles tokenizers
/// whose decode of a suffix differs from the suffix of the decode, e.g. SentencePiece leading spaces),
/// and `finish()` for whatever remains.
///
/// The new ids are decoded together with the ids emitted just before them (the window `ids`), and the
/// text is the part of that decode past the decode of the already emitted ids: the context token gives
/// the new ones their leading space, and a window whose decode ends in U+FFFD is waiting for more bytes.
pub struct TextStream {
    tokenizer: Tokenizer,
    /// The window: context ids whose text was emitted, then ids whose text was not.
    ids: Vec<u32>,
    /// How many of `ids` are context (already emitted).
    read_offset: usize,
}

impl TextStream {
    pub fn new(tokenizer: &Tokenizer) -> Self {
        TextStream {
            tokenizer: tokenizer.clone(),
            ids: Vec::new(),
            read_offset: 0,
        }
    }

    /// The text that `id` completes; empty while a character is still incomplete.
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.ids.push(id);
        let (emitted, window) = self.decode_window()?;
        if window.ends_with(char::REPLACEMENT_CHARACTER) {
            return Ok(String::new());
        }
        let new_text = unseen_suffix(&emitted, &window);
        if new_text.is_empty() {
            return Ok(String::new());
        }
        let new_text = new_text.to_string();
        // The ids just emitted become the next window's context.
        self.ids.drain(..self.read_offset);
        self.read_offset = self.ids.len();
        Ok(new_text)
    }

    /// Whatever text is still held back (an incomplete character comes out as U+FFFD).
    pub fn finish(&mut self) -> Result<String> {
        let (emitted, window) = self.decode_window()?;
        let rest = unseen_suffix(&emitted, &window).to_string();
        self.ids.clear();
        self.read_offset = 0;
        Ok(rest)
    }

    /// (decode of the context ids, decode of the whole window).
    fn decode_window(&self) -> Result<(String, String)> {
        Ok((
            self.tokenizer.decode(&self.ids[..self.read_offset])?,
            self.tokenizer.decode(&self.ids)?,
        ))
    }
}

/// The part of `window` past the `emitted` text. When decoding the window rewrote earlier text (so it no
/// longer starts with `emitted`) the cut falls on the next character boundary: emitted text cannot be
/// taken back.
fn unseen_suffix<'w>(emitted: &str, window: &'w str) -> &'w str {
    (emitted.len()..=window.len())
        .find(|&i| window.is_char_boundary(i))
        .map_or("", |i| &window[i..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::path::PathBuf;

    const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/tokenizer_tiny");

    fn fixture() -> Tokenizer {
        Tokenizer::open(Path::new(FIXTURE))
            .unwrap()
            .expect("fixture has tokenizer.json")
    }

    fn expected() -> Value {
        let text = std::fs::read_to_string(Path::new(FIXTURE).join("expected.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    /// A fresh empty folder under the system temp dir, unique to this test.
    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("volt-tokenizer-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Streams `ids` one by one and checks every piece is whole text and the pieces add up to the decode.
    fn assert_streams_like_decode(tok: &Tokenizer, ids: &[u32]) -> Vec<String> {
        let mut stream = TextStream::new(tok);
        let mut pieces: Vec<String> = ids.iter().map(|&id| stream.push(id).unwrap()).collect();
        pieces.push(stream.finish().unwrap());
        for piece in &pieces {
            assert!(
                !piece.contains(char::REPLACEMENT_CHARACTER),
                "partial character streamed: {pieces:?}"
            );
        }
        assert_eq!(pieces.concat(), tok.decode(ids).unwrap());
        pieces
    }

    /// A SentencePiece-style tokenizer (Llama 2 layout): "▁" for spaces, byte fallback, and a decoder that
    /// strips the leading space, so decoding a suffix differs from the suffix of the decode.
    /// Ids: <unk> 0, <s> 1, </s> 2, <0x00>..<0xFF> 3..=258, then ▁ Hello ▁world ! ▁caf é.
    fn write_sentencepiece_tokenizer(dir: &Path) {
        let mut vocab = serde_json::Map::new();
        for (id, token) in ["<unk>", "<s>", "</s>"].iter().enumerate() {
            vocab.insert(token.to_string(), json!(id));
        }
        for byte in 0..=255u32 {
            vocab.insert(format!("<0x{byte:02X}>"), json!(3 + byte));
        }
        for (i, token) in ["▁", "▁Hello", "▁world", "!", "▁caf", "é"].iter().enumerate() {
            vocab.insert(token.to_string(), json!(259 + i));
        }
        let special = |id: u32, content: &str| {
            json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": true})
        };
        let tokenizer = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": [special(0, "<unk>"), special(1, "<s>"), special(2, "</s>")],
            "normalizer": {"type": "Sequence", "normalizers": [
                {"type": "Prepend", "prepend": "▁"},
                {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
            "pre_tokenizer": null,
            "post_processor": {"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
            "decoder": {"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                {"type": "ByteFallback"},
                {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
            "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>", "continuing_subword_prefix": null,
                      "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                      "vocab": vocab, "merges": []}
        });
        std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
        let config =
            json!({"bos_token": {"content": "<s>", "special": true}, "eos_token": "</s>", "unk_token": "<unk>"});
        std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
    }

    #[test]
    fn fixture_loads_with_special_tokens() {
        let tok = fixture();
        assert_eq!(tok.vocab_size(), 400);
        assert_eq!(tok.eos_token(), Some("<|im_end|>"));
        // Written as an AddedToken object in tokenizer_config.json.
        assert_eq!(tok.bos_token(), Some("<|endoftext|>"));
        assert_eq!(tok.unk_token(), None);
        let im_end = tok.token_to_id("<|im_end|>").unwrap();
        assert_eq!(tok.eos_ids(), vec![im_end]);
        assert_eq!(tok.token_to_id("no such token"), None);
    }

    #[test]
    fn encode_matches_transformers_and_roundtrips() {
        let tok = fixture();
        let cases = expected()["encode"].as_array().unwrap().clone();
        assert!(!cases.is_empty());
        for case in cases {
            let text = case["text"].as_str().unwrap();
            let ids: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
            assert_eq!(tok.encode(text, false).unwrap(), ids, "ids of {text:?}");
            assert_eq!(
                tok.decode(&ids).unwrap(),
                case["decoded"].as_str().unwrap(),
                "decode of {text:?}"
            );
            if !text.contains("<|") {
                assert_eq!(tok.decode(&ids).unwrap(), text, "roundtrip of {text:?}");
            }
        }
    }

    #[test]
    fn special_tokens_encode_to_single_ids_and_decode_to_nothing() {
        let tok = fixture();
        let ids = tok.encode("<|im_start|>user\nhi<|im_end|>", false).unwrap();
        assert_eq!(ids.first().copied(), tok.token_to_id("<|im_start|>"));
        assert_eq!(ids.last().copied(), tok.token_to_id("<|im_end|>"));
        assert_eq!(tok.decode(&ids).unwrap(), "user\nhi");
    }

    #[test]
    fn stream_of_multibyte_text_equals_full_decode() {
        let tok = fixture();
        for text in [
            "Emoji 🦀🚀👍🏽 and symbols € © ✨",
            "日本語のテキスト, 中文, Русский текст, Straße",
            "Hello world! 42",
        ] {
            let ids = tok.encode(text, false).unwrap();
            assert_streams_like_decode(&tok, &ids);
        }
        // A byte-level BPE splits this emoji over several tokens: no piece may carry part of it.
        let crab = tok.encode("🦀", false).unwrap();
        assert!(crab.len() > 1, "the test needs 🦀 split across tokens, got {crab:?}");
        let mut stream = TextStream::new(&tok);
        let pieces: Vec<String> = crab.iter().map(|&id| stream.push(id).unwrap()).collect();
        assert_eq!(pieces.concat(), "🦀");
        assert_eq!(pieces.last().unwrap(), "🦀");
    }

    #[test]
    fn stream_keeps_sentencepiece_spaces_and_byte_fallback() {
        let dir = temp_dir("sentencepiece");
        write_sentencepiece_tokenizer(&dir);
        let tok = Tokenizer::open(&dir).unwrap().unwrap();
        assert_eq!(tok.bos_token(), Some("<s>"));
        assert_eq!(tok.unk_token(), Some("<unk>"));
        assert_eq!(tok.eos_ids(), vec![2]);

        let byte = |b: u8| 3 + b as u32;
        let (space, hello, world, bang, caf, e_acute) = (259, 260, 261, 262, 263, 264);
        let mut ids = vec![hello, world, bang, space];
        ids.extend("€".bytes().map(byte));
        ids.push(space);
        ids.extend("🦀".bytes().map(byte));
        ids.extend([caf, e_acute, 2]);
        assert_eq!(tok.decode(&ids).unwrap(), "Hello world! € 🦀 café");
        let pieces = assert_streams_like_decode(&tok, &ids);
        // Every token after the first keeps its leading space although decoding it alone would strip it.
        assert_eq!(&pieces[..3], ["Hello", " world", "!"]);

        // The post-processor adds <s> only with add_special_tokens; without merges the text is split into
        // single characters, those outside the vocabulary into bytes, and it all comes back intact.
        let ids = tok.encode("Hello 🦀 café!", false).unwrap();
        assert_eq!(tok.encode("Hello 🦀 café!", true).unwrap(), [&[1], &ids[..]].concat());
        assert!(ids.contains(&byte(0xF0)) && ids.contains(&bang), "{ids:?}");
        assert_eq!(tok.decode(&ids).unwrap(), "Hello 🦀 café!");
        assert_streams_like_decode(&tok, &ids);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn finish_flushes_an_incomplete_character() {
        let dir = temp_dir("finish");
        write_sentencepiece_tokenizer(&dir);
        let tok = Tokenizer::open(&dir).unwrap().unwrap();
        let mut stream = TextStream::new(&tok);
        assert_eq!(stream.push(260).unwrap(), "Hello");
        // The first two bytes of "€": held back until the end, then flushed as replacement characters.
        assert_eq!(stream.push(3 + 0xE2).unwrap(), "");
        assert_eq!(stream.push(3 + 0x82).unwrap(), "");
        assert_eq!(stream.finish().unwrap(), "\u{FFFD}\u{FFFD}");
        assert_eq!(stream.finish().unwrap(), "");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_tokenizer_is_none() {
        let dir = temp_dir("missing");
        assert!(Tokenizer::open(&dir).unwrap().is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn corrupt_files_are_errors_naming_the_file() {
        let dir = temp_dir("corrupt");
        std::fs::write(dir.join("tokenizer.json"), "{\"model\": [").unwrap();
        let err = Tokenizer::open(&dir).err().expect("corrupt tokenizer.json must fail");
        assert!(err.message().contains("tokenizer.json"), "{err}");
        assert!(!err.to_string().contains('\n'));

        std::fs::copy(Path::new(FIXTURE).join("tokenizer.json"), dir.join("tokenizer.json")).unwrap();
        std::fs::write(dir.join("tokenizer_config.json"), "{\"eos_token\": 7}").unwrap();
        let err = Tokenizer::open(&dir).err().expect("a numeric eos_token must fail");
        assert!(
            err.message().contains("tokenizer_config.json") && err.message().contains("eos_token"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
