//! The engine: a request queue and a scheduler thread doing continuous batching over one session.
//!
//! Sequences join and leave between steps. A step holds one decode token for every running sequence, then
//! prefill chunks of newer ones up to `MAX_STEP_TOKENS`, so a long prompt never stalls the others for more than
//! a chunk. Each request streams its events over its own channel; `cancel`, or dropping the receiver (a
//! client gone), frees its slot before the next step.
//!
//! Memory is fixed at start-up and never grows: a request waits in the queue until a slot is free and the
//! KV page pool (`kv::PagePool`) holds its prompt. A decoding sequence that needs a page when none is
//! free takes one back from the cached prefixes of idle slots, else preempts the youngest running
//! sequence: its KV is dropped and it waits at the head of the queue, then resumes by prefilling its prompt
//! and the tokens it had generated, continuing its stream and sampler where they were (vLLM's recompute
//! preemption). One sequence always fits: a pool smaller than the model's context bounds the context.
//!
//! Asynchronous: while the device runs step n, the scheduler plans step n+1 and the session records it
//! (`Session::prepare`), each decoding sequence's row holding a placeholder for the token step n is
//! choosing. Then it collects step n's ids, streams them, fills them into step n+1 (`launch`) and starts
//! it, so the device waits only for that short hand-over, not for the recording. A sequence that ends at
//! step n has computed one discarded token in step n+1. On the CPU reference `prepare` only keeps the step
//! and the same order runs without the overlap.
//!
//! Prefix reuse: a slot keeps the tokens of its last sequence after it ends, so a request that starts with
//! them (the next turn of a chat, a shared system prompt) continues from the cached KV and prefills only
//! what is new. A sliding-window layer keeps only its recent positions, so a slot is reused only where the
//! cache still holds the window the first new token attends to (`KvSlots::can_truncate`); otherwise the
//! prompt is prefilled again.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use crate::backend::LayerRouting;
use crate::error::Result;
pub use crate::generate::Completion;
use crate::generate::{check_request, GenerateOptions, SequenceOutput};
use crate::kv::KV_PAGE;
use crate::sampler::{Sampler, SamplingParams};
use crate::session::Session;
use crate::step::{Step, MAX_STEP_TOKENS};
use crate::tokenizer::Tokenizer;

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

/// What the engine is doing, for health checks and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub running: usize,
    pub queued: usize,
    /// Requests that ran to the end (`Done`).
    pub completed: u64,
    /// Requests stopped by `cancel` or by their receiver going away.
    pub cancelled: u64,
    /// Times a running sequence gave up its KV for an older one (it resumes later).
    pub preempted: u64,
    /// Steps recorded on the device while the one before them was running.
    pub prepared_ahead: u64,
}

/// KV-cache occupancy by the `ModelSpec::kv_bytes` accounting (what `volt info` reports) in the session's KV
/// dtype: the tokens every slot holds, running or kept for prefix reuse, against every slot filled to the
/// context.
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
    preempted: AtomicU64,
    prepared_ahead: AtomicU64,
    kv_used_bytes: AtomicU64,
    kv_cached_tokens: AtomicUsize,
}

enum Control {
    Submit(u64, Request, Sender<Event>),
    Cancel(u64),
    TraceRouting(Option<Sender<Vec<LayerRouting>>>),
    Shutdown,
}

impl Sequence {
    /// Tokens including the one the step in flight is choosing for it.
    fn total(&self) -> usize {
        self.tokens.len() + self.pending as usize
    }
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
        let n_slots = session.kv().slots();
        let slots = (0..n_slots).map(|_| Slot::default()).collect();
        let counters = Arc::new(Counters::default());
        let kv_capacity_bytes = n_slots as u64 * session.spec().kv_bytes(session.context(), session.kv_dtype());
        let scheduler = Scheduler {
            counters: counters.clone(),
            session,
            tokenizer,
            eos_ids,
            inbox,
            queue: VecDeque::new(),
            preempted: VecDeque::new(),
            running: Vec::new(),
            in_flight: None,
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
            preempted: c.preempted.load(Ordering::Relaxed),
            prepared_ahead: c.prepared_ahead.load(Ordering::Relaxed),
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
    /// Order of first admission: the older keeps its KV when pages run out.
    age: u64,
    slot: usize,
    events: Sender<Event>,
    /// Prompt then generated tokens; the first `fed` positions are in the cache (or in the step prepared).
    tokens: Vec<u32>,
    fed: usize,
    /// Its next token is being chosen by the step in flight.
    pending: bool,
    prompt_tokens: usize,
    cached_tokens: usize,
    /// When it was admitted and when its first token was chosen (for its completion's speeds).
    admitted: Instant,
    first_token: Option<Instant>,
    sampler: Sampler,
    output: SequenceOutput,
}

/// The rows of a prepared step that `launch` completes.
#[derive(Default)]
struct Prepared {
    logit_rows: Vec<usize>,
    /// The sequence of each logit row that picks a token (empty when no row does).
    pickers: Vec<u64>,
    /// (row, sequence) of rows whose token the step in flight is choosing.
    late: Vec<(usize, u64)>,
}

struct Scheduler {
    counters: Arc<Counters>,
    session: Box<dyn Session + Send>,
    tokenizer: Option<Tokenizer>,
    eos_ids: Vec<u32>,
    inbox: Receiver<Control>,
    queue: VecDeque<(u64, Request, Sender<Event>)>,
    /// Sequences that gave up their KV, oldest first; they resume before the queue is served.
    preempted: VecDeque<Sequence>,
    running: Vec<Sequence>,
    /// The sequences whose tokens the launched step chooses, in pick order.
    in_flight: Option<Vec<u64>>,
    slots: Vec<Slot>,
    clock: u64,
    routing: Option<Sender<Vec<LayerRouting>>>,
}

impl Scheduler {
    fn run(mut self) {
        loop {
            // Idle: sleep until something arrives; busy: take what has arrived and go on.
            let idle = self.running.is_empty() && self.queue.is_empty() && self.preempted.is_empty();
            if idle && self.in_flight.is_none() {
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
            if let Err(e) = self.step() {
                // A failed step leaves the caches unknown: end every running sequence with the error.
                self.in_flight = None;
                for seq in self.running.drain(..) {
                    let _ = seq.events.send(Event::Error(e.to_string()));
                    self.session.kv_mut().reset(seq.slot);
                    self.slots[seq.slot] = Slot::default();
                }
            }
            self.publish();
        }
    }

    /// Prepares the next step while the device runs the one in flight, then collects that one and launches
    /// the next. Where the session cannot record ahead the order is the same, only without the overlap.
    fn step(&mut self) -> Result<()> {
        if self.routing.is_some() {
            // The routing trace reads the device after each step (in `collect`): nothing may be recorded
            // ahead of it.
            let chosen = self.collect()?;
            if !self.running.is_empty() {
                if let Some(next) = self.prepare()? {
                    self.launch(next, &chosen)?;
                }
            }
            return Ok(());
        }
        let next = if self.running.is_empty() { None } else { self.prepare()? };
        let chosen = self.collect()?;
        if let Some(next) = next {
            self.launch(next, &chosen)?;
        }
        Ok(())
    }

    /// Sends the routing of the step just collected to the trace's receiver; stops tracing when it is gone.
    fn send_routing(&mut self) -> Result<()> {
        let routing = self.session.take_routing()?;
        if let Some(to) = &self.routing {
            if to.send(routing).is_err() {
                self.session.trace_routing(false);
                self.routing = None;
            }
        }
        Ok(())
    }

    fn publish(&self) {
        self.counters.running.store(self.running.len(), Ordering::Relaxed);
        self.counters
            .queued
            .store(self.queue.len() + self.preempted.len(), Ordering::Relaxed);
        let (spec, kv_dtype) = (self.session.spec(), self.session.kv_dtype());
        let kv: u64 = self.slots.iter().map(|s| spec.kv_bytes(s.tokens.len(), kv_dtype)).sum();
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
                if let Some(i) = self.preempted.iter().position(|s| s.id == id) {
                    self.preempted.remove(i);
                    self.counters.cancelled.fetch_add(1, Ordering::Relaxed);
                }
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

    /// Resumes preempted sequences, then moves queued requests in, while a slot is free and the KV pool
    /// holds their tokens; first come, first served.
    fn admit(&mut self) {
        while let Some(mut seq) = self.preempted.pop_front() {
            match self.place(&seq.tokens) {
                Some((slot, cached)) => {
                    seq.slot = slot;
                    seq.fed = cached;
                    self.running.push(seq);
                }
                None => {
                    self.preempted.push_front(seq);
                    return;
                }
            }
        }
        while let Some((id, request, events)) = self.queue.pop_front() {
            let (vocab, context) = (self.session.spec().vocab_size, self.session.context());
            if let Err(e) = check_request(&request.prompt, &request.options, vocab, context) {
                let _ = events.send(Event::Error(e.to_string()));
                continue;
            }
            let Some((slot, cached)) = self.place(&request.prompt) else {
                self.queue.push_front((id, request, events));
                return;
            };
            let prompt = request.prompt;
            let max_tokens = request.options.max_tokens.min(context - prompt.len());
            self.running.push(Sequence {
                id,
                age: self.clock,
                slot,
                events,
                fed: cached,
                pending: false,
                prompt_tokens: prompt.len(),
                cached_tokens: cached,
                admitted: Instant::now(),
                first_token: None,
                sampler: Sampler::new(request.options.sampling.clone()),
                output: SequenceOutput::new(self.tokenizer.as_ref(), &self.eos_ids, &request.options, max_tokens),
                tokens: prompt,
            });
        }
    }

    /// Claims a free slot for a sequence of `tokens`, the one whose cached tokens it continues furthest, and
    /// the pages the rest of them need. Returns the slot and how many tokens it continues from the cache,
    /// or None when no slot is free or the pool cannot hold them.
    fn place(&mut self, tokens: &[u32]) -> Option<(usize, usize)> {
        // At least the last token is fed again: its logits choose the next one.
        let reusable = |slot: usize, s: &Slot| {
            let common = s.tokens.iter().zip(tokens).take_while(|(a, b)| a == b).count();
            let len = common.min(tokens.len() - 1);
            if len > 0 && self.session.kv().can_truncate(slot, len) {
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
            .map(|(i, cached, _)| (i, cached))?;
        self.session.kv_mut().truncate(slot, cached);
        self.slots[slot].tokens.truncate(cached);
        // Running prefills keep a claim on the pages the rest of their prompts need.
        let outstanding: usize = self.running.iter().map(|s| self.pages_needed(s.slot, s.total())).sum();
        if !self.reclaim(outstanding + self.pages_needed(slot, tokens.len()), Some(slot)) {
            return None;
        }
        self.clock += 1;
        let s = &mut self.slots[slot];
        s.busy = true;
        s.last_used = self.clock;
        Some((slot, cached))
    }

    /// Frees pages held by idle slots' cached prefixes, least recently used first, until `pages` are free;
    /// false when even that is not enough. The cache of `keep` is left alone.
    fn reclaim(&mut self, pages: usize, keep: Option<usize>) -> bool {
        while self.session.kv().pages().free_pages() < pages {
            let idle = (0..self.slots.len())
                .filter(|&i| Some(i) != keep && !self.slots[i].busy && self.session.kv().seq_len(i) > 0)
                .min_by_key(|&i| self.slots[i].last_used);
            let Some(i) = idle else {
                return false;
            };
            self.session.kv_mut().reset(i);
            self.slots[i].tokens.clear();
        }
        true
    }

    /// Drops the KV of the running sequence at `i`; it waits to resume, oldest first.
    fn preempt(&mut self, i: usize) {
        let mut seq = self.running.remove(i);
        self.session.kv_mut().reset(seq.slot);
        self.slots[seq.slot] = Slot::default();
        seq.fed = 0;
        let at = self
            .preempted
            .iter()
            .position(|p| p.age > seq.age)
            .unwrap_or(self.preempted.len());
        self.preempted.insert(at, seq);
        self.counters.preempted.fetch_add(1, Ordering::Relaxed);
    }

    /// How many tokens each running sequence feeds this step, in `running` order, which it sets: decodes
    /// first, then prefills, each oldest first. Every decode gets its token: where the pool is short, idle
    /// caches are reclaimed, then the youngest sequences preempted. Prefill chunks fill the rest of the
    /// token budget with the pages left.
    fn plan(&mut self) -> Vec<usize> {
        let decoding = |s: &Sequence| s.total() - s.fed == 1;
        self.running.sort_by_key(|s| s.age);
        // Pages the sequences planned so far will take.
        let mut promised = 0;
        let mut i = 0;
        while i < self.running.len() {
            let seq = &self.running[i];
            if decoding(seq) {
                let need = self.pages_needed(seq.slot, seq.total());
                if !self.reclaim(promised + need, None) {
                    // The youngest gives way (this sequence itself when it is the youngest).
                    self.preempt(self.running.len() - 1);
                    continue;
                }
                promised += need;
            }
            i += 1;
        }
        self.running.sort_by_key(|s| !decoding(s));
        let mut budget = MAX_STEP_TOKENS;
        let mut plan = Vec::with_capacity(self.running.len());
        for i in 0..self.running.len() {
            let seq = &self.running[i];
            let (slot, fed) = (seq.slot, seq.fed);
            let mut n = (seq.total() - fed).min(budget);
            if !decoding(seq) {
                let need = self.pages_needed(slot, fed + n);
                if need > 0 && !self.reclaim(promised + need, None) {
                    // The rest of the prompt waits for pages to come back.
                    let spare = self.session.kv().pages().free_pages().saturating_sub(promised);
                    n = n.min((fed.div_ceil(KV_PAGE) + spare) * KV_PAGE - fed);
                }
                promised += self.pages_needed(slot, fed + n);
            }
            budget -= n;
            plan.push(n);
        }
        if plan.iter().all(|&n| n == 0) && !self.running.is_empty() {
            // Every prefill waits on pages the others hold: the youngest gives way.
            self.preempt(self.running.len() - 1);
            plan.pop();
        }
        plan
    }

    /// Plans and prepares the next step (`plan`): every running sequence's rows, where a sequence whose
    /// token is still being chosen by the step in flight gets a late row, filled in at `launch`.
    fn prepare(&mut self) -> Result<Option<Prepared>> {
        let plan = self.plan();
        let mut prepared = Prepared::default();
        let mut step = Step::default();
        for (seq, &n) in self.running.iter_mut().zip(&plan) {
            if n == 0 {
                continue;
            }
            for pos in seq.fed..seq.fed + n {
                let token = match seq.tokens.get(pos) {
                    Some(&t) => t,
                    None => {
                        prepared.late.push((step.len(), seq.id));
                        0
                    }
                };
                step.tokens.push(token);
                step.positions.push(pos);
                step.seqs.push(seq.slot);
            }
            if seq.fed + n == seq.total() {
                prepared.logit_rows.push(step.len() - 1);
                prepared.pickers.push(seq.id);
            }
            // The slot holds what the step writes; a late token joins when it is known.
            let known = (seq.fed + n).min(seq.tokens.len());
            self.slots[seq.slot]
                .tokens
                .extend_from_slice(&seq.tokens[seq.fed.min(known)..known]);
            seq.fed += n;
        }
        if step.is_empty() {
            return Ok(None);
        }
        if prepared.logit_rows.is_empty() {
            // Only prefill chunks that end mid-prompt: no token is chosen, but a step needs one logit row.
            prepared.logit_rows.push(step.len() - 1);
        }
        self.session.prepare(&step, &prepared.logit_rows)?;
        if self.in_flight.is_some() && self.session.records_ahead() {
            self.counters.prepared_ahead.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Some(prepared))
    }

    /// Starts a prepared step: late rows get the ids just chosen, pick rows their sampler's draw (a
    /// sequence that ended meanwhile computes one discarded token).
    fn launch(&mut self, prepared: Prepared, chosen: &[(u64, u32)]) -> Result<()> {
        let id_of = |seq: u64| chosen.iter().find(|(s, _)| *s == seq).map_or(0, |&(_, id)| id);
        let fills: Vec<(usize, u32)> = prepared.late.iter().map(|&(row, seq)| (row, id_of(seq))).collect();
        let mut picks = Vec::with_capacity(prepared.pickers.len());
        for &id in &prepared.pickers {
            match self.running.iter_mut().find(|s| s.id == id) {
                Some(seq) => {
                    picks.push(seq.sampler.pick(&seq.tokens));
                    seq.pending = true;
                }
                None => picks.push(Sampler::new(SamplingParams::greedy()).pick(&[])),
            }
        }
        if prepared.pickers.is_empty() {
            picks.clear();
        }
        self.session.launch(&fills, &picks)?;
        self.in_flight = Some(prepared.pickers);
        Ok(())
    }

    /// Waits for the step in flight and hands each chosen id to its sequence: streamed, and the sequence
    /// ended on a stop or a receiver gone. Returns (sequence, id) for the late rows of a prepared step.
    fn collect(&mut self) -> Result<Vec<(u64, u32)>> {
        let Some(pickers) = self.in_flight.take() else {
            return Ok(Vec::new());
        };
        let ids = self.session.collect()?;
        if self.routing.is_some() {
            // Before the tokens go out, so whoever receives `Done` has the trace of every step.
            self.send_routing()?;
        }
        let chosen: Vec<(u64, u32)> = pickers.iter().copied().zip(ids).collect();
        for &(seq_id, id) in &chosen {
            // A sequence preempted meanwhile still takes its token: the step ran on its cache.
            let (running, at) = match self.running.iter().position(|s| s.id == seq_id) {
                Some(i) => (true, i),
                None => match self.preempted.iter().position(|s| s.id == seq_id) {
                    Some(i) => (false, i),
                    // Cancelled.
                    None => continue,
                },
            };
            let seq = if running {
                &mut self.running[at]
            } else {
                &mut self.preempted[at]
            };
            seq.pending = false;
            seq.first_token.get_or_insert_with(Instant::now);
            let kept_before = seq.output.tokens.len();
            let (text, finish) = seq.output.push(id)?;
            // An end-of-sequence id is not part of the output; text it releases still is.
            let event = if seq.output.tokens.len() > kept_before {
                Some(Event::Token { id, text })
            } else {
                (!text.is_empty()).then_some(Event::Text(text))
            };
            let delivered = event.is_none_or(|e| seq.events.send(e).is_ok());
            // Some(None): the receiver is gone, the client stopped listening.
            let ended = if delivered { finish.map(Some) } else { Some(None) };
            let Some(ended) = ended else {
                seq.tokens.push(id);
                if running && seq.fed == seq.tokens.len() {
                    // Its late row in the prepared step holds this token.
                    self.slots[seq.slot].tokens.push(id);
                }
                continue;
            };
            let seq = if running {
                self.running.remove(at)
            } else {
                self.preempted.remove(at).expect("found above")
            };
            match ended {
                None => {
                    self.counters.cancelled.fetch_add(1, Ordering::Relaxed);
                }
                Some(finish) => {
                    // Counted first, so whoever receives `Done` sees it in `stats`.
                    self.counters.completed.fetch_add(1, Ordering::Relaxed);
                    let first_token = seq.first_token.unwrap_or(seq.admitted);
                    let completion =
                        seq.output
                            .complete(finish, seq.prompt_tokens, seq.cached_tokens, seq.admitted, first_token);
                    let _ = seq.events.send(Event::Done(completion));
                }
            }
            if running {
                self.release(&seq);
            }
        }
        Ok(chosen)
    }

    /// Pages a slot must gain to hold positions `0..len`.
    fn pages_needed(&self, slot: usize, len: usize) -> usize {
        self.session.kv().pages().pages_needed(slot, len)
    }

    /// Frees a sequence's slot; the slot keeps its cached tokens for a later request to continue.
    fn release(&mut self, seq: &Sequence) {
        let slot = &mut self.slots[seq.slot];
        slot.busy = false;
        slot.tokens.truncate(seq.fed);
    }
}
