//! volt-runtime: the GPU-free core. The model spec every backend executes, Hugging Face loaders, tokenizer
//! and chat templates, the sampler, the forward pass written once against the backend trait, the CPU
//! reference backend, the KV bookkeeping every backend's cache embeds, sessions, the engine, generation and
//! the conformance cases generic over any backend. The GPU backends are crates of their own (`volt-wgpu` in
//! `shaders/`, `volt-cuda` in `native-cuda/`).

pub mod error;
pub use error::{Error, Result, ResultExt};
pub mod backend;
pub mod chat_template;
pub mod checkpoint;
pub mod conformance;
pub mod dtype;
pub mod engine;
pub mod eval;
pub mod fp8;
pub mod generate;
pub mod gguf;
pub mod gguf_model;
pub mod gguf_tokenizer;
pub mod hf_config;
pub mod kv;
pub mod model;
pub mod models;
pub mod quant;
pub mod rope;
pub mod routing_stats;
pub mod sampler;
pub mod session;
pub mod spec;
pub mod step;
pub mod tensor;
pub mod tokenizer;
