//! The engine: a request queue and a scheduler thread doing continuous batching over one session.
//!
//! Sequences join and leave between steps. A step holds one decode token for every running sequence, then
//! prefill chunks of newer ones up to `STEP_TOKENS`, so a long prompt never stalls the others for more than
//! a chunk. Each request streams its events over its own channel; `cancel`, or dropping the receiver (a
//! client gone), frees its slot before the next step. Requests wait in the queue while every slot is busy:
//! memory is fixed at start-up and never grows.
//!
//! Prefix reuse: a slot keeps the tokens of its last sequence after it ends, so a request that starts with
//! them (the next turn of a chat, a shared system prompt) continues from the cached KV and prefills only
//! what is new. A sliding-window layer keeps only its recent positions, so a slot is reused only where the
//! cache still holds the window the first new token attends to (`Session::can_truncate`); otherwise the
//! prompt is prefilled again.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::backend::{LayerRouting, Step};
use crate::error::Result;
use crate::generate::{check_request, FinishReason, GenerateOptions, SequenceOutput, PREFILL_CHUNK};
use crate::sampler::{Pick, Sampler};
use crate::session::Session;
use crate::tokenizer::Tokenizer;

/// Tokens per step, decode tokens and prefill chunks together.
pub const STEP_TOKENS: usize = PREFILL_CHUNK;

pub struct Request {
    pub prompt: Vec<u32>,
    pub options: GenerateOptions,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A generated token and the text that became final with it (empty while held back, or without a
    /// tokenizer).
    Token { id: u32, text: String },
    /// Held-back text made final at the end without a new token (e.g. before an end-of-sequence id).
    Text(String),
    /// The last event of a request that ran.
    Done(Completion),
    /// The last event of a request that could not run (bad input, a backend failure).
    Error(String),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Completion {
    pub tokens: Vec<u32>,
    pub text: Option<String>,
    pub finish: FinishReason,
    pub prompt_tokens: usize,
    /// Prompt tokens continued from the cache instead of being prefilled.
    pub cached_tokens: usize,
}

/// What the engine is doing, for health checks and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub running: usize,
    pub queued: usize,
    /// Requests that ran to the end (`Done`).
    pub completed: u64,
    /// Requests stopped by `cancel` or by their receiver going away.
    pub cancelled: u64,
}

/// KV-cache occupancy by the `ModelSpec::kv_bytes` accounting (what `volt info` reports): the tokens every
/// slot holds, running or kept for prefix reuse, against every slot filled to the context.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KvUsage {
    pub used_bytes: u64,
    pub capacity_bytes: u64,
    pub cached_tokens: usize,
}

#[derive(Default)]
struct Counters {
    running: AtomicUsize,
    queued: AtomicUsize,
    completed: AtomicU64,
    cancelled: AtomicU64,
    kv_used_bytes: AtomicU64,
    kv_cached_tokens: AtomicUsize,
}

enum Control {
    Submit(u64, Request, Sender<Event>),
    Cancel(u64),
    TraceRouting(Option<Sender<Vec<LayerRouting>>>),
    Shutdown,
}

/// A handle to the scheduler thread; shareable between threads (e.g. HTTP handlers).
pub struct Engine {
    control: Sender<Control>,
    next_id: AtomicU64,
    counters: Arc<Counters>,
    kv_capacity_bytes: u64,
    thread: Option<JoinHandle<()>>,
}

impl Engine {
    /// Starts the scheduler thread on `session`; every slot of its cache serves one sequence at a time.
    pub fn start(session: Box<dyn Session + Send>, tokenizer: Option<Tokenizer>, eos_ids: Vec<u32>) -> Engine {
        let (control, inbox) = mpsc::channel();
        let slots = (0..session.slots()).map(|_| Slot::default()).collect();
        let counters = Arc::new(Counters::default());
        let kv_capacity_bytes = session.slots() as u64 * session.spec().kv_bytes(session.context());
        let scheduler = Scheduler {
            counters: counters.clone(),
            session,
            tokenizer,
            eos_ids,
            inbox,
            queue: VecDeque::new(),
            running: Vec::new(),
            slots,
            clock: 0,
            routing: None,
        };
        let thread = std::thread::Builder::new()
            .name("volt-engine".into())
            .spawn(move || scheduler.run())
            .expect("spawning the engine thread");
        Engine {
            control,
            next_id: AtomicU64::new(1),
            counters,
            kv_capacity_bytes,
            thread: Some(thread),
        }
    }

    pub fn stats(&self) -> Stats {
        let c = &self.counters;
        Stats {
            running: c.running.load(Ordering::Relaxed),
            queued: c.queued.load(Ordering::Relaxed),
            completed: c.completed.load(Ordering::Relaxed),
            cancelled: c.cancelled.load(Ordering::Relaxed),
        }
    }

    /// KV bytes the slots hold, as of the end of the last step.
    pub fn kv_usage(&self) -> KvUsage {
        KvUsage {
            used_bytes: self.counters.kv_used_bytes.load(Ordering::Relaxed),
            capacity_bytes: self.kv_capacity_bytes,
            cached_tokens: self.counters.kv_cached_tokens.load(Ordering::Relaxed),
        }
    }

    /// Sends the MoE routing of every later step (all its tokens, every MoE layer) to `to`, until tracing is
    /// turned off with `None` or the receiver is dropped. Off by default: recording costs a copy per layer.
    pub fn trace_routing(&self, to: Option<Sender<Vec<LayerRouting>>>) {
        let _ = self.control.send(Control::TraceRouting(to));
    }

    /// Queues a request; its events arrive on the receiver, ending with `Done` or `Error`.
    pub fn submit(&self, request: Request) -> (u64, Receiver<Event>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel();
        if let Err(mpsc::SendError(Control::Submit(_, _, tx))) = self.control.send(Control::Submit(id, request, tx)) {
            let _ = tx.send(Event::Error("the engine has stopped".into()));
        }
        (id, rx)
    }

    /// Stops a request (its receiver gets no more events); unknown or finished ids are ignored.
    pub fn cancel(&self, id: u64) {
        let _ = self.control.send(Control::Cancel(id));
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.control.send(Control::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A cache slot: the tokens whose KV it holds, and whether a sequence is using it.
#[derive(Default)]
struct Slot {
    tokens: Vec<u32>,
    busy: bool,
    last_used: u64,
}

struct Sequence {
    id: u64,
    slot: usize,
    events: Sender<Event>,
    /// Prompt then generated tokens; the first `fed` are in the cache.
    tokens: Vec<u32>,
    fed: usize,
    prompt_tokens: usize,
    cached_tokens: usize,
    sampler: Sampler,
    output: SequenceOutput,
}

struct Scheduler {
    counters: Arc<Counters>,
    session: Box<dyn Session + Send>,
    tokenizer: Option<Tokenizer>,
    eos_ids: Vec<u32>,
    inbox: Receiver<Control>,
    queue: VecDeque<(u64, Request, Sender<Event>)>,
    running: Vec<Sequence>,
    slots: Vec<Slot>,
    clock: u64,
    routing: Option<Sender<Vec<LayerRouting>>>,
}

impl Scheduler {
    fn run(mut self) {
        loop {
            // Idle: sleep until something arrives; busy: take what has arrived and go on.
            if self.running.is_empty() && self.queue.is_empty() {
                match self.inbox.recv() {
                    Ok(msg) => {
                        if !self.handle(msg) {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
            while let Ok(msg) = self.inbox.try_recv() {
                if !self.handle(msg) {
                    return;
                }
            }
            self.admit();
            self.publish();
            if !self.running.is_empty() {
                if let Err(e) = self.step() {
                    // A failed step leaves the caches unknown: end every running sequence with the error.
                    for seq in self.running.drain(..) {
                        let _ = seq.events.send(Event::Error(e.to_string()));
                        self.session.reset(seq.slot);
                        self.slots[seq.slot] = Slot::default();
                    }
                }
                self.publish();
            }
        }
    }

    fn publish(&self) {
        self.counters.running.store(self.running.len(), Ordering::Relaxed);
        self.counters.queued.store(self.queue.len(), Ordering::Relaxed);
        let spec = self.session.spec();
        let kv: u64 = self.slots.iter().map(|s| spec.kv_bytes(s.tokens.len())).sum();
        let tokens = self.slots.iter().map(|s| s.tokens.len()).sum();
        self.counters.kv_used_bytes.store(kv, Ordering::Relaxed);
        self.counters.kv_cached_tokens.store(tokens, Ordering::Relaxed);
    }

    /// Applies a control message; false on shutdown.
    fn handle(&mut self, msg: Control) -> bool {
        match msg {
            Control::Submit(id, request, events) => self.queue.push_back((id, request, events)),
            Control::Cancel(id) => {
                self.queue.retain(|(queued, _, _)| *queued != id);
                if let Some(i) = self.running.iter().position(|s| s.id == id) {
                    let seq = self.running.swap_remove(i);
                    self.release(&seq);
                    self.counters.cancelled.fetch_add(1, Ordering::Relaxed);
                }
            }
            Control::TraceRouting(to) => {
                self.session.trace_routing(to.is_some());
                self.routing = to;
            }
            Control::Shutdown => return false,
        }
        true
    }

    /// Moves queued requests into free slots, each into the slot whose cached tokens it continues furthest.
    fn admit(&mut self) {
        while !self.queue.is_empty() && self.slots.iter().any(|s| !s.busy) {
            let (id, request, events) = self.queue.pop_front().expect("checked non-empty");
            let (vocab, context) = (self.session.spec().vocab_size, self.session.context());
            if let Err(e) = check_request(&request.prompt, &request.options, vocab, context) {
                let _ = events.send(Event::Error(e.to_string()));
                continue;
            }
            let prompt = request.prompt;
            // At least the last prompt token is fed again: its logits choose the first new token.
            let reusable = |slot: usize, s: &Slot| {
                let common = s.tokens.iter().zip(&prompt).take_while(|(a, b)| a == b).count();
                let len = common.min(prompt.len() - 1);
                if len > 0 && self.session.can_truncate(slot, len) {
                    len
                } else {
                    0
                }
            };
            let (slot, cached) = self
                .slots
                .iter()
                .enumerate()
                .filter(|(_, s)| !s.busy)
                .map(|(i, s)| (i, reusable(i, s), s.last_used))
                .max_by_key(|&(i, cached, last_used)| (cached, std::cmp::Reverse(last_used), std::cmp::Reverse(i)))
                .map(|(i, cached, _)| (i, cached))
                .expect("a free slot exists");
            if cached > 0 {
                self.session.truncate(slot, cached);
            } else {
                self.session.reset(slot);
            }
            self.clock += 1;
            let s = &mut self.slots[slot];
            s.tokens.truncate(cached);
            s.busy = true;
            s.last_used = self.clock;
            let max_tokens = request.options.max_tokens.min(context - prompt.len());
            self.running.push(Sequence {
                id,
                slot,
                events,
                fed: cached,
                prompt_tokens: prompt.len(),
                cached_tokens: cached,
                sampler: Sampler::new(request.options.sampling.clone()),
                output: SequenceOutput::new(self.tokenizer.as_ref(), &self.eos_ids, &request.options, max_tokens),
                tokens: prompt,
            });
        }
    }

    /// One step: every decoding sequence's next token, then prefill chunks within the token budget.
    fn step(&mut self) -> Result<()> {
        // Decoding sequences (one unfed token) first, so prefills never delay them.
        self.running.sort_by_key(|s| s.tokens.len() - s.fed > 1);
        let mut step = Step::default();
        let mut fed_now = Vec::with_capacity(self.running.len());
        let mut rows = Vec::new();
        let mut picks: Vec<Pick> = Vec::new();
        let mut choosers = Vec::new();
        for (i, seq) in self.running.iter_mut().enumerate() {
            let n = (seq.tokens.len() - seq.fed).min(STEP_TOKENS - step.len());
            if n == 0 {
                fed_now.push(0);
                continue;
            }
            for (j, &t) in seq.tokens[seq.fed..seq.fed + n].iter().enumerate() {
                step.tokens.push(t);
                step.positions.push(seq.fed + j);
                step.seqs.push(seq.slot);
            }
            fed_now.push(n);
            if seq.fed + n == seq.tokens.len() {
                rows.push(step.len() - 1);
                picks.push(seq.sampler.pick(&seq.tokens));
                choosers.push(i);
            }
        }
        let ids = if rows.is_empty() {
            // Only prefill chunks that end mid-prompt: no token is chosen this step.
            self.session.forward(&step, &[step.len() - 1])?;
            Vec::new()
        } else {
            self.session.forward_pick(&step, &rows, &picks)?
        };
        if let Some(to) = &self.routing {
            if to.send(self.session.take_routing()?).is_err() {
                self.session.trace_routing(false);
                self.routing = None;
            }
        }
        for (seq, n) in self.running.iter_mut().zip(&fed_now) {
            let slot = &mut self.slots[seq.slot];
            slot.tokens.extend_from_slice(&seq.tokens[seq.fed..seq.fed + n]);
            seq.fed += n;
        }
        let mut ended = Vec::new();
        for (&i, &id) in choosers.iter().zip(&ids) {
            let seq = &mut self.running[i];
            let kept_before = seq.output.tokens.len();
            let (text, finish) = seq.output.push(id)?;
            // An end-of-sequence id is not part of the output; text it releases still is.
            let event = if seq.output.tokens.len() > kept_before {
                Some(Event::Token { id, text })
            } else {
                (!text.is_empty()).then_some(Event::Text(text))
            };
            let delivered = event.is_none_or(|e| seq.events.send(e).is_ok());
            if !delivered {
                // The receiver is gone: the client stopped listening.
                ended.push((i, None));
            } else if finish.is_some() {
                ended.push((i, finish));
            } else {
                seq.tokens.push(id);
            }
        }
        ended.sort_by_key(|&(i, _)| std::cmp::Reverse(i));
        for (i, finish) in ended {
            let seq = self.running.swap_remove(i);
            match finish {
                Some(finish) => {
                    let _ = seq.events.send(Event::Done(Completion {
                        tokens: seq.output.tokens.clone(),
                        text: seq.output.text.clone(),
                        finish,
                        prompt_tokens: seq.prompt_tokens,
                        cached_tokens: seq.cached_tokens,
                    }));
                    self.counters.completed.fetch_add(1, Ordering::Relaxed);
                }
                None => {
                    self.counters.cancelled.fetch_add(1, Ordering::Relaxed);
                }
            }
            self.release(&seq);
        }
        Ok(())
    }

    /// Frees a sequence's slot; the slot keeps its cached tokens for a later request to continue.
    fn release(&mut self, seq: &Sequence) {
        let slot = &mut self.slots[seq.slot];
        slot.busy = false;
        slot.tokens.truncate(seq.fed);
    }
}
