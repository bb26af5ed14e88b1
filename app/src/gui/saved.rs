//! What the app saves (`store.rs`): conversations with their messages and how each reply was made, and the
//! settings.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use volt_runtime::generate::GenerateOptions;
use volt_runtime::sampler::SamplingParams;
use volt_runtime::Result;

use crate::backends::BackendChoice;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sampling {
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: usize,
    pub max_tokens: usize,
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        let d = SamplingParams::default();
        Sampling {
            temperature: d.temperature,
            top_p: d.top_p,
            top_k: d.top_k,
            max_tokens: 256,
            seed: d.seed,
        }
    }
}

impl Sampling {
    /// The request options; `variant` shifts the seed so a regenerated reply differs from the last one.
    pub(crate) fn options(&self, variant: u64) -> Result<GenerateOptions> {
        let sampling = SamplingParams {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            seed: self.seed.wrapping_add(variant),
            ..SamplingParams::default()
        };
        sampling.validate()?;
        if self.max_tokens == 0 {
            volt_runtime::bail!("max tokens must be at least 1");
        }
        Ok(GenerateOptions {
            max_tokens: self.max_tokens,
            sampling,
            stop_strings: Vec::new(),
            ignore_eos: false,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Assistant,
}

/// How a reply ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Finish {
    /// End of sequence: the model finished.
    Stop,
    /// Max tokens reached.
    Length,
    /// The user stopped it.
    Stopped,
    Error(String),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReplyInfo {
    pub tokens: usize,
    pub tokens_per_s: f64,
    pub prompt_tokens: usize,
    /// Prompt tokens the engine continued from the cached KV of earlier turns.
    pub cached_tokens: usize,
    pub finish: Finish,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    pub content: String,
    /// Assistant messages: how the reply was generated (none while streaming).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<ReplyInfo>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Conversation {
    pub id: String,
    pub title: String,
    #[serde(default)]
    pub system_prompt: String,
    pub messages: Vec<Message>,
    /// What is typed in the input box and not yet sent.
    #[serde(default)]
    pub draft: String,
    #[serde(default)]
    pub sampling: Sampling,
    /// The model folder the replies came from.
    #[serde(default)]
    pub model: String,
    /// Unix time in milliseconds of the last change.
    pub updated: u64,
    /// Replies requested so far: each uses its own seed.
    #[serde(default)]
    pub replies: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    pub dark: bool,
    /// The model folder last loaded.
    pub model_dir: Option<PathBuf>,
    pub backend: BackendChoice,
    /// What new conversations start with.
    pub system_prompt: String,
    pub sampling: Sampling,
    pub show_experts: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            dark: true,
            model_dir: None,
            backend: BackendChoice::Auto,
            system_prompt: String::new(),
            sampling: Sampling::default(),
            show_experts: false,
        }
    }
}
