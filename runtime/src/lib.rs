//! volt-runtime: the model spec every backend executes, Hugging Face loaders, the CPU reference backend and
//! the forward pass written once against the backend trait.

pub mod error;
pub use error::{Error, Result, ResultExt};
pub mod backend;
pub mod chat_template;
pub mod checkpoint;
pub mod conformance;
pub mod engine;
pub mod eval;
pub mod fp8;
pub mod generate;
pub mod hf_config;
pub mod model;
pub mod models;
pub mod mxfp4;
pub mod rope;
pub mod routing_stats;
pub mod sampler;
pub mod session;
pub mod spec;
pub mod tokenizer;
