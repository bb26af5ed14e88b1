//! The app's state and everything it does, apart from drawing (`view.rs`): conversations, the model and
//! its loading, the reply being generated, the routing trace. The UI thread calls `tick` each frame to
//! take what the engine, the loader and the store sent; nothing here waits on them.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, TryRecvError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use volt_runtime::backend::LayerRouting;
use volt_runtime::chat_template::ChatMessage;
use volt_runtime::engine::{Event, KvUsage};
use volt_runtime::generate::FinishReason;
use volt_runtime::routing_stats::{LayerStats, RoutingAccumulator};
use volt_runtime::Result;

pub use super::saved::{Conversation, Finish, Message, ReplyInfo, Role, Sampling, Settings};
use super::store::Store;
use crate::backends::{BackendChoice, Dtypes};
use crate::chat_model::ChatModel;

/// Sequence slots of the engine: the open conversation and the one before keep their KV between turns.
pub const SLOTS: usize = 2;
/// Unsaved changes (typing, a streaming reply) reach the disk within this long.
const SAVE_EVERY: Duration = Duration::from_millis(500);
pub const NEW_TITLE: &str = "New chat";

pub struct Loading {
    pub dir: PathBuf,
    pub stage: String,
    /// Stages started, of `LOAD_STAGES`.
    pub stages_started: usize,
    pub started: Instant,
    messages: Receiver<LoadMessage>,
}

/// `ChatModel::open` reports this many stages.
pub const LOAD_STAGES: usize = 3;

enum LoadMessage {
    Stage(String),
    Done(Result<Box<ChatModel>>),
}

/// The reply being streamed.
pub struct Generation {
    pub conversation: String,
    pub message: usize,
    request: u64,
    events: Receiver<Event>,
    first_token: Option<Instant>,
    pub tokens: usize,
}

impl Generation {
    /// What is known of the reply without the engine's summary (stopped, or failed).
    fn info(&self, finish: Finish) -> ReplyInfo {
        ReplyInfo {
            tokens: self.tokens,
            tokens_per_s: self.tokens_per_s(),
            prompt_tokens: 0,
            cached_tokens: 0,
            finish,
        }
    }

    /// Decode speed so far: tokens after the first over the time since the first.
    pub fn tokens_per_s(&self) -> f64 {
        match self.first_token {
            Some(t) if self.tokens > 1 => (self.tokens - 1) as f64 / t.elapsed().as_secs_f64().max(1e-6),
            _ => 0.0,
        }
    }
}

/// MoE routing of the current reply's steps (prompt and generated tokens), per MoE layer.
#[derive(Default)]
pub struct Experts {
    pub layers: Vec<(usize, LayerStats)>,
    accumulators: Vec<(usize, RoutingAccumulator)>,
    trace: Option<Receiver<Vec<LayerRouting>>>,
    changed: bool,
}

impl Experts {
    fn reset(&mut self) {
        self.accumulators.clear();
        self.layers.clear();
    }

    fn add(&mut self, step: Vec<LayerRouting>) {
        for r in step {
            let i = match self.accumulators.iter().position(|(l, _)| *l == r.layer) {
                Some(i) => i,
                None => {
                    self.accumulators.push((r.layer, RoutingAccumulator::new(r.n_experts)));
                    self.accumulators.sort_by_key(|(l, _)| *l);
                    self.accumulators
                        .iter()
                        .position(|(l, _)| *l == r.layer)
                        .expect("just added")
                }
            };
            self.accumulators[i].1.add(&r.probs, &r.chosen);
            self.changed = true;
        }
    }

    fn refresh(&mut self) {
        if std::mem::take(&mut self.changed) {
            self.layers = self
                .accumulators
                .iter()
                .filter_map(|(l, a)| a.stats(1, 1).ok().map(|s| (*l, s)))
                .collect();
        }
    }

    /// Tokens the statistics cover (every MoE layer sees every token).
    pub fn tokens(&self) -> usize {
        self.layers.first().map_or(0, |(_, s)| s.tokens)
    }
}

/// How the app starts: from `volt chat` flags, or from a test.
#[derive(Clone, Debug)]
pub struct AppOptions {
    pub data_dir: PathBuf,
    /// The model to open; `None`: the last one used, else the shipped model.
    pub model: Option<PathBuf>,
    /// `None`: the saved choice.
    pub backend: Option<BackendChoice>,
    pub dtypes: Dtypes,
}

pub struct ChatApp {
    pub store: Store,
    pub settings: Settings,
    pub conversations: Vec<Conversation>,
    pub selected: usize,
    /// The model replies come from; it serves on while another loads.
    pub model: Option<Box<ChatModel>>,
    pub loading: Option<Loading>,
    /// Why there is no model, when loading failed.
    pub load_error: Option<String>,
    pub generation: Option<Generation>,
    pub experts: Experts,
    /// Problems to show the user (damaged files, failed loads, engine errors), oldest first.
    pub notices: Vec<String>,
    dtypes: Dtypes,
    unsaved: BTreeSet<String>,
    settings_unsaved: bool,
    last_save: Instant,
    next_id: u64,
}

impl ChatApp {
    /// `--dtype` and `--kv-dtype` as `volt chat` was given them.
    pub fn dtypes(&self) -> &Dtypes {
        &self.dtypes
    }

    /// Reads the saved conversations and settings and starts loading the model in the background.
    pub fn new(options: AppOptions) -> ChatApp {
        let store = Store::open(&options.data_dir);
        let (conversations, mut notices) = store.load_conversations();
        let (mut settings, settings_notice) = store.load_settings();
        notices.extend(settings_notice);
        if let Some(b) = options.backend {
            settings.backend = b;
        }
        let mut app = ChatApp {
            store,
            settings,
            conversations,
            selected: 0,
            model: None,
            loading: None,
            load_error: None,
            generation: None,
            experts: Experts::default(),
            notices,
            dtypes: options.dtypes,
            unsaved: BTreeSet::new(),
            settings_unsaved: false,
            last_save: Instant::now(),
            next_id: 0,
        };
        if app.conversations.is_empty() {
            app.new_conversation();
        }
        let model = options
            .model
            .or_else(|| app.settings.model_dir.clone().filter(|d| d.exists()))
            .map_or_else(|| crate::model_path(None), Ok);
        match model {
            Ok(dir) => app.load_model(dir),
            Err(e) => app.load_error = Some(e.to_string()),
        }
        app
    }

    pub fn current(&self) -> &Conversation {
        &self.conversations[self.selected]
    }

    pub fn current_mut(&mut self) -> &mut Conversation {
        self.touch(self.selected);
        &mut self.conversations[self.selected]
    }

    /// Marks a conversation changed: it moves nowhere, but is saved soon.
    fn touch(&mut self, index: usize) {
        let c = &mut self.conversations[index];
        c.updated = now_ms();
        self.unsaved.insert(c.id.clone());
    }

    pub fn settings_mut(&mut self) -> &mut Settings {
        self.settings_unsaved = true;
        &mut self.settings
    }

    pub fn chat_model(&self) -> Option<&ChatModel> {
        self.model.as_deref()
    }

    pub fn is_generating(&self) -> bool {
        self.generation.is_some()
    }

    /// Whether the open conversation is the one receiving the reply.
    pub fn generating_here(&self) -> bool {
        self.generation
            .as_ref()
            .is_some_and(|g| g.conversation == self.current().id)
    }

    pub fn kv_usage(&self) -> Option<KvUsage> {
        self.chat_model().map(|m| m.engine.kv_usage())
    }

    // ---- the frame's input from the other threads ----

    /// Takes what arrived from the loader, the engine and the store; saves what changed. Returns whether
    /// something is still running (the caller keeps repainting at a bounded rate then).
    pub fn tick(&mut self) -> bool {
        self.poll_loading();
        self.poll_generation();
        if let Some(trace) = &self.experts.trace {
            let steps: Vec<_> = trace.try_iter().collect();
            steps.into_iter().for_each(|s| self.experts.add(s));
        }
        self.experts.refresh();
        self.notices.extend(self.store.failures());
        if self.last_save.elapsed() >= SAVE_EVERY {
            self.save_now();
        }
        self.loading.is_some() || self.generation.is_some()
    }

    /// Writes every changed conversation and the settings.
    pub fn save_now(&mut self) {
        for id in std::mem::take(&mut self.unsaved) {
            if let Some(c) = self.conversations.iter().find(|c| c.id == id) {
                self.store.save_conversation(c);
            }
        }
        if std::mem::take(&mut self.settings_unsaved) {
            self.store.save_settings(&self.settings);
        }
        self.last_save = Instant::now();
    }

    fn poll_loading(&mut self) {
        let Some(loading) = &mut self.loading else { return };
        let loaded = loop {
            match loading.messages.try_recv() {
                Ok(LoadMessage::Stage(s)) => {
                    loading.stage = s;
                    loading.stages_started += 1;
                }
                Ok(LoadMessage::Done(result)) => break result,
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => break Err(volt_runtime::Error::msg("the loader stopped")),
            }
        };
        let dir = self.loading.take().expect("checked above").dir;
        match loaded {
            Ok(model) => {
                // The reply in flight belongs to the old engine.
                self.stop();
                if let Some(old) = self.model.replace(model) {
                    // Its engine thread finishes its step before it stops: let it, off the UI thread.
                    std::thread::spawn(move || drop(old));
                }
                self.load_error = None;
                self.settings.model_dir = Some(dir);
                self.settings_unsaved = true;
                self.experts.trace = None;
                if self.settings.show_experts {
                    self.trace_routing(true);
                }
            }
            Err(e) => {
                let msg = format!("could not load {}: {e}", dir.display());
                self.notices.push(msg.clone());
                self.load_error = Some(msg);
            }
        }
    }

    fn poll_generation(&mut self) {
        let Some(conversation) = self.generation.as_ref().map(|g| g.conversation.clone()) else {
            return;
        };
        let Some(index) = self.conversations.iter().position(|c| c.id == conversation) else {
            self.stop();
            return;
        };
        let generation = self.generation.as_mut().expect("checked above");
        let message = &mut self.conversations[index].messages[generation.message];
        let mut finished = None;
        loop {
            match generation.events.try_recv() {
                Ok(Event::Token { text, .. }) => {
                    generation.first_token.get_or_insert_with(Instant::now);
                    generation.tokens += 1;
                    message.content.push_str(&text);
                }
                Ok(Event::Text(text)) => message.content.push_str(&text),
                Ok(Event::Done(c)) => {
                    let finish = match c.finish {
                        FinishReason::Stop => Finish::Stop,
                        FinishReason::Length => Finish::Length,
                    };
                    finished = Some(ReplyInfo {
                        tokens: c.tokens.len(),
                        tokens_per_s: generation.tokens_per_s(),
                        prompt_tokens: c.prompt_tokens,
                        cached_tokens: c.cached_tokens,
                        finish,
                    });
                    break;
                }
                Ok(Event::Error(e)) => {
                    self.notices.push(format!("the reply failed: {e}"));
                    finished = Some(generation.info(Finish::Error(e)));
                    break;
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    finished = Some(generation.info(Finish::Error("the engine stopped".into())));
                    break;
                }
            }
        }
        self.touch(index);
        if let Some(info) = finished {
            self.finish_reply(index, info);
        }
    }

    fn finish_reply(&mut self, index: usize, info: ReplyInfo) {
        let g = self.generation.take().expect("a reply is being generated");
        let message = &mut self.conversations[index].messages[g.message];
        let kept = message.content.trim_end().len();
        message.content.truncate(kept);
        message.reply = Some(info);
        self.touch(index);
        self.save_now();
    }

    // ---- what the user does ----

    /// Sends the draft of the open conversation and starts the reply.
    pub fn send(&mut self) {
        let text = self.current().draft.trim().to_string();
        if text.is_empty() || self.is_generating() || self.chat_model().is_none() {
            return;
        }
        let c = self.current_mut();
        c.draft.clear();
        if c.title == NEW_TITLE {
            c.title = title_from(&text);
        }
        c.messages.push(Message {
            role: Role::User,
            content: text,
            reply: None,
        });
        self.start_reply(false);
    }

    /// Starts (or with `resume`, continues) the assistant message after the open conversation's last
    /// user message.
    fn start_reply(&mut self, resume: bool) {
        let Some(model) = self.chat_model() else { return };
        let c = &self.conversations[self.selected];
        let mut history: Vec<ChatMessage> = Vec::new();
        if !c.system_prompt.trim().is_empty() {
            history.push(ChatMessage {
                role: "system".into(),
                content: c.system_prompt.clone(),
            });
        }
        let answered = if resume { c.messages.len() - 1 } else { c.messages.len() };
        history.extend(c.messages[..answered].iter().map(|m| ChatMessage {
            role: match m.role {
                Role::User => "user".into(),
                Role::Assistant => "assistant".into(),
            },
            content: m.content.clone(),
        }));
        let partial = if resume {
            c.messages[answered].content.as_str()
        } else {
            ""
        };
        let started = c
            .sampling
            .options(c.replies)
            .and_then(|opts| model.reply(&history, partial, opts));
        let model_name = model.name();
        match started {
            Ok((request, events)) => {
                self.experts.reset();
                let c = self.current_mut();
                c.replies += 1;
                c.model = model_name;
                if resume {
                    c.messages[answered].reply = None;
                } else {
                    c.messages.push(Message {
                        role: Role::Assistant,
                        content: String::new(),
                        reply: None,
                    });
                }
                self.generation = Some(Generation {
                    conversation: c.id.clone(),
                    message: answered,
                    request,
                    events,
                    first_token: None,
                    tokens: 0,
                });
            }
            Err(e) => self.notices.push(format!("cannot start the reply: {e}")),
        }
        self.save_now();
    }

    /// Stops the reply being generated; what came so far stays and can be continued.
    pub fn stop(&mut self) {
        let Some(g) = &self.generation else { return };
        if let Some(m) = self.chat_model() {
            m.engine.cancel(g.request);
        }
        match self.conversations.iter().position(|c| c.id == g.conversation) {
            Some(index) => {
                let info = g.info(Finish::Stopped);
                self.finish_reply(index, info);
            }
            None => self.generation = None,
        }
    }

    /// Whether the open conversation ends with an assistant reply (regenerate applies).
    pub fn can_regenerate(&self) -> bool {
        !self.is_generating()
            && self.chat_model().is_some()
            && self
                .current()
                .messages
                .last()
                .is_some_and(|m| m.role == Role::Assistant)
    }

    /// Whether the open conversation ends with a reply that was stopped or ran out of tokens.
    pub fn can_continue(&self) -> bool {
        self.can_regenerate()
            && self.current().messages.last().is_some_and(|m| {
                matches!(
                    m.reply.as_ref().map(|r| &r.finish),
                    Some(Finish::Stopped | Finish::Length)
                )
            })
    }

    /// Replaces the last reply with a new one (another seed).
    pub fn regenerate(&mut self) {
        if self.can_regenerate() {
            self.current_mut().messages.pop();
            self.start_reply(false);
        }
    }

    /// Goes on with a stopped reply from where it ended.
    pub fn continue_reply(&mut self) {
        if self.can_continue() {
            self.start_reply(true);
        }
    }

    /// Replaces user message `index` with `text` and replies to it. What followed it is kept in a copy
    /// of the conversation, so nothing written is lost.
    pub fn resubmit_edit(&mut self, index: usize, text: String) {
        let text = text.trim().to_string();
        if self.is_generating() || self.chat_model().is_none() || text.is_empty() {
            return;
        }
        if self.current().messages.get(index).is_none_or(|m| m.role != Role::User) {
            return;
        }
        if index + 1 < self.current().messages.len() || self.current().messages[index].content != text {
            let mut copy = self.current().clone();
            copy.id = self.fresh_id();
            copy.title = format!("{} (before edit)", copy.title);
            copy.updated = now_ms();
            self.unsaved.insert(copy.id.clone());
            self.conversations.insert(self.selected + 1, copy);
        }
        let c = self.current_mut();
        c.messages.truncate(index);
        c.messages.push(Message {
            role: Role::User,
            content: text,
            reply: None,
        });
        self.start_reply(false);
    }

    pub fn new_conversation(&mut self) {
        let id = self.fresh_id();
        self.conversations.insert(
            0,
            Conversation {
                id: id.clone(),
                title: NEW_TITLE.into(),
                system_prompt: self.settings.system_prompt.clone(),
                messages: Vec::new(),
                draft: String::new(),
                sampling: self.settings.sampling.clone(),
                model: String::new(),
                updated: now_ms(),
                replies: 0,
            },
        );
        self.selected = 0;
        self.unsaved.insert(id);
    }

    pub fn select(&mut self, index: usize) {
        if index < self.conversations.len() {
            self.selected = index;
        }
    }

    pub fn rename(&mut self, index: usize, title: &str) {
        let title = title.trim();
        if index < self.conversations.len() && !title.is_empty() {
            self.conversations[index].title = title.to_string();
            self.touch(index);
        }
    }

    /// Deletes conversation `index` from the list and the disk.
    pub fn delete(&mut self, index: usize) {
        if index >= self.conversations.len() {
            return;
        }
        if self
            .generation
            .as_ref()
            .is_some_and(|g| g.conversation == self.conversations[index].id)
        {
            self.stop();
        }
        let gone = self.conversations.remove(index);
        self.unsaved.remove(&gone.id);
        self.store.delete_conversation(&gone.id);
        if self.conversations.is_empty() {
            self.new_conversation();
        }
        if self.selected > index || self.selected >= self.conversations.len() {
            self.selected = self.selected.saturating_sub(1);
        }
    }

    pub fn set_dark(&mut self, dark: bool) {
        self.settings_mut().dark = dark;
    }

    /// Turns the routing trace on or off (the experts panel shows it).
    pub fn trace_routing(&mut self, on: bool) {
        let Some(model) = self.chat_model() else {
            self.experts.trace = None;
            return;
        };
        if on {
            let (to, from) = mpsc::channel();
            model.engine.trace_routing(Some(to));
            self.experts.trace = Some(from);
        } else {
            model.engine.trace_routing(None);
            self.experts.trace = None;
        }
    }

    pub fn show_experts(&mut self, on: bool) {
        self.settings_mut().show_experts = on;
        self.trace_routing(on);
    }

    /// Loads the model in `dir` on a background thread; the current one serves until it is ready. A load
    /// already running is left to finish unheard.
    pub fn load_model(&mut self, dir: PathBuf) {
        let (tx, messages) = mpsc::channel();
        let (backend, dtypes) = (self.settings.backend, self.dtypes);
        let folder = dir.clone();
        let spawned = std::thread::Builder::new().name("volt-load".into()).spawn(move || {
            let stages = tx.clone();
            let model = ChatModel::open(&folder, backend, &dtypes, SLOTS, |s| {
                let _ = stages.send(LoadMessage::Stage(s.to_string()));
            });
            let _ = tx.send(LoadMessage::Done(model.map(Box::new)));
        });
        if let Err(e) = spawned {
            self.notices
                .push(format!("could not start loading {}: {e}", dir.display()));
            return;
        }
        self.loading = Some(Loading {
            dir,
            stage: "starting".into(),
            stages_started: 0,
            started: Instant::now(),
            messages,
        });
    }

    fn fresh_id(&mut self) -> String {
        loop {
            self.next_id += 1;
            let id = format!("{:x}-{}", now_ms(), self.next_id);
            if !self.conversations.iter().any(|c| c.id == id) {
                return id;
            }
        }
    }
}

impl Drop for ChatApp {
    fn drop(&mut self) {
        self.save_now();
    }
}

pub fn mib(bytes: f64) -> String {
    if bytes >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.2} GiB", bytes / (1024.0 * 1024.0 * 1024.0))
    } else {
        format!("{:.1} MiB", bytes / (1024.0 * 1024.0))
    }
}

/// The first line of the first message, shortened.
fn title_from(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default().trim();
    let mut title: String = line.chars().take(40).collect();
    if line.chars().count() > 40 {
        title.push_str("...");
    }
    title
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
