//! A chat model: the engine on a loaded backend with the tokenizer and chat template, shared by the
//! terminal chat and the desktop app. Each turn renders the whole history through the template; the engine
//! continues from the cached KV of the earlier turns and prefills only the new tokens.

use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;

use volt_runtime::chat_template::{ChatMessage, ChatTemplate};
use volt_runtime::engine::{Engine, Event, Request};
use volt_runtime::generate::{self as gen, GenerateOptions};
use volt_runtime::spec::ModelSpec;
use volt_runtime::tokenizer::Tokenizer;
use volt_runtime::{bail, Result};

use crate::backends::{BackendChoice, Dtypes};

pub struct ChatModel {
    pub dir: PathBuf,
    pub engine: Engine,
    pub spec: ModelSpec,
    /// Backend, adapter and precision, as the backend describes itself.
    pub describe: String,
    tokenizer: Tokenizer,
    template: ChatTemplate,
}

impl ChatModel {
    /// Loads `dir` on `backend`; `stage` hears each step's name before it starts (loading takes seconds on
    /// large models).
    pub fn open(
        dir: &Path,
        backend: BackendChoice,
        dtypes: &Dtypes,
        slots: usize,
        mut stage: impl FnMut(&str),
    ) -> Result<ChatModel> {
        stage("reading the tokenizer and chat template");
        let Some(tokenizer) = Tokenizer::open(dir)? else {
            bail!("{} has no tokenizer.json: chat needs one", dir.display())
        };
        let Some(template) = ChatTemplate::open(dir)? else {
            bail!("{} has no chat template", dir.display())
        };
        stage("loading the weights");
        let session = backend.resolve().open(dir, dtypes, slots, None)?;
        stage("starting the engine");
        let eos = gen::eos_ids(dir, session.spec(), Some(&tokenizer));
        let describe = session.describe();
        let spec = session.spec().clone();
        let engine = Engine::start(session, Some(tokenizer.clone()), eos);
        Ok(ChatModel {
            dir: dir.to_path_buf(),
            engine,
            spec,
            describe,
            tokenizer,
            template,
        })
    }

    /// The folder's name, for titles and saved conversations.
    pub fn name(&self) -> String {
        self.dir
            .file_name()
            .map_or_else(|| self.dir.display().to_string(), |n| n.to_string_lossy().into_owned())
    }

    /// Starts the assistant's next message after `history`; `partial` is the start of that message when
    /// continuing a stopped reply (the model goes on from its last token).
    pub fn reply(
        &self,
        history: &[ChatMessage],
        partial: &str,
        options: GenerateOptions,
    ) -> Result<(u64, Receiver<Event>)> {
        let text = self.template.render(history, true)? + partial;
        let prompt = self.tokenizer.encode(&text, false)?;
        Ok(self.engine.submit(Request { prompt, options }))
    }
}
