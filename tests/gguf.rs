//! GGUF files on the CPU reference: the fixtures of `tools/make_gguf_fixtures.py` (llama with its Q/K row
//! permutation, qwen2, qwen3, qwen2moe with shared experts, qwen3moe; matrices in Q4_0, Q4_1, Q5_0, Q5_1,
//! Q8_0, MXFP4, F16, BF16 and F32) give the reference's logits at every position and its greedy ids, with
//! the tokenizer and chat template taken from the file; and the weights stay in their stored formats.

use std::path::{Path, PathBuf};

use volt_runtime::backend::cpu::CpuBackend;
use volt_runtime::chat_template::{ChatMessage, ChatTemplate};
use volt_runtime::dtype::Precision;
use volt_runtime::generate::{generate, prompt_logits, GenerateOptions};
use volt_runtime::gguf::GgufFile;
use volt_runtime::sampler::SamplingParams;
use volt_runtime::session::{BackendSession, Session};
use volt_runtime::tokenizer::Tokenizer;

const FIXTURES: [&str; 5] = ["llama", "qwen2", "qwen3", "qwen2_moe", "qwen3_moe"];

fn fixture(name: &str) -> (PathBuf, serde_json::Value) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/gguf");
    let expected = std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap();
    (
        dir.join(format!("{name}.gguf")),
        serde_json::from_str(&expected).unwrap(),
    )
}

fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn greedy(session: &mut dyn Session, prompt: &[u32], n: usize) -> Vec<u32> {
    let opts = GenerateOptions {
        max_tokens: n,
        sampling: SamplingParams::greedy(),
        stop_strings: Vec::new(),
        ignore_eos: true,
    };
    generate(session, 0, prompt, None, &[], &opts, |_| {}).unwrap().tokens
}

#[test]
fn gguf_files_give_the_references_logits_and_greedy_ids() {
    for name in FIXTURES {
        let (path, expected) = fixture(name);
        let mut s = BackendSession::load(CpuBackend::new(None), &path, 1).unwrap();
        let prompt = ids(&expected["ids"]);
        let got = prompt_logits(&mut s, 0, &prompt).unwrap();
        let mut worst = 0.0f32;
        for (p, (row, want)) in got.iter().zip(expected["logits"].as_array().unwrap()).enumerate() {
            for (i, (g, w)) in row.iter().zip(want.as_array().unwrap()).enumerate() {
                let diff = (g - w.as_f64().unwrap() as f32).abs();
                assert!(diff < 2e-3, "{name}: position {p} id {i}: expected {w}, got {g}");
                worst = worst.max(diff);
            }
        }
        assert_eq!(
            greedy(&mut s, &prompt, 10),
            ids(&expected["greedy"]),
            "{name}: greedy ids"
        );
        println!(
            "{name}: logits within {worst:.2e} of the reference ({})",
            expected["reference"]
        );
    }
}

/// The file's tokenizer gives the ids transformers' reading of it gives, and its chat template renders the
/// same prompt, whose greedy reply is the reference's.
#[test]
fn tokenizer_and_chat_template_come_from_the_file() {
    for name in FIXTURES {
        let (path, expected) = fixture(name);
        let tokenizer = Tokenizer::open(&path).unwrap().expect("the fixture has a tokenizer");
        for (text, want) in expected["texts"].as_object().unwrap() {
            assert_eq!(tokenizer.encode(text, false).unwrap(), ids(want), "{name}: {text:?}");
        }
        let template = ChatTemplate::open(&path)
            .unwrap()
            .expect("the fixture has a chat template");
        let messages = [ChatMessage {
            role: "user".into(),
            content: "What is 2 + 2?".into(),
        }];
        let chat = &expected["chat"];
        let prompt = template.render(&messages, true).unwrap();
        assert_eq!(prompt, chat["prompt"].as_str().unwrap(), "{name}: chat prompt");
        let prompt_ids = tokenizer.encode(&prompt, false).unwrap();
        assert_eq!(prompt_ids, ids(&chat["ids"]), "{name}: chat prompt ids");
        let mut s = BackendSession::load(CpuBackend::new(None), &path, 1).unwrap();
        assert_eq!(
            greedy(&mut s, &prompt_ids, 8),
            ids(&chat["greedy"]),
            "{name}: chat reply"
        );
    }
}

/// The CPU backend keeps every tensor in the format the file stores it in (the fixtures store routers and
/// vectors in f32, as llama.cpp's converter does): the bytes it holds are exactly the file's tensor bytes,
/// where widening any block-format matrix to f32 would add to them.
#[test]
fn tensors_stay_in_their_stored_formats() {
    for name in FIXTURES {
        let (path, _) = fixture(name);
        let s = BackendSession::load(CpuBackend::new(None), &path, 1).unwrap();
        let file = GgufFile::open(&path).unwrap();
        let in_file: usize = file.tensor_names().map(|t| file.tensor(t).unwrap().len).sum();
        assert_eq!(s.allocated_bytes(), in_file as u64, "{name}");
        assert!(s.bytes_per_weight(Precision::Storage) < 4.0, "{name}: matrices widened");
        println!("{name}: {in_file} bytes of tensors in the file and on the CPU backend");
    }
}
