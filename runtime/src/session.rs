//! A model loaded on a backend together with its KV cache, behind an object-safe trait so commands and the
//! engine can drive any backend without naming its type.

use std::path::Path;

use crate::backend::{Backend, LayerRouting};
use crate::bail;
use crate::dtype::{KvDtype, Precision};
use crate::error::Result;
use crate::kv::{KvCache, KvSlots};
use crate::model::Model;
use crate::sampler::Pick;
use crate::spec::ModelSpec;
use crate::step::Step;

pub trait Session {
    fn spec(&self) -> &ModelSpec;
    /// Backend and precision, for messages and `--json` outputs.
    fn describe(&self) -> String;
    /// How the cache keeps K and V values.
    fn kv_dtype(&self) -> KvDtype;
    /// Runs a step and returns the logits of `logit_rows`, row-major [rows.len(), vocab].
    fn forward(&mut self, step: &Step, logit_rows: &[usize]) -> Result<Vec<f32>>;
    /// Runs a step and chooses a token for each of `logit_rows` (`picks` in the same order); only the ids
    /// leave the device.
    fn forward_pick(&mut self, step: &Step, logit_rows: &[usize], picks: &[Pick]) -> Result<Vec<u32>> {
        self.prepare(step, logit_rows)?;
        self.launch(&[], picks)?;
        self.collect()
    }
    /// `forward_pick` in three parts, so the caller can prepare the next step while the device runs this
    /// one: `prepare` records the step (on a backend that records ahead; otherwise it only keeps it), with
    /// the tokens of some rows still unknown; `launch` fills those in (row, id) and starts the step with a
    /// pick per logit row; `collect` waits for the chosen ids. At most one step is launched at a time.
    fn prepare(&mut self, step: &Step, logit_rows: &[usize]) -> Result<()>;
    fn launch(&mut self, fills: &[(usize, u32)], picks: &[Pick]) -> Result<()>;
    fn collect(&mut self) -> Result<Vec<u32>>;
    /// Whether `prepare` records on the device ahead of `launch` (the overlap is real), or only keeps
    /// the step (the CPU reference).
    fn records_ahead(&self) -> bool;
    /// The cache's bookkeeping: what each slot holds, truncation, the page pool the engine schedules within.
    fn kv(&self) -> &KvSlots;
    fn kv_mut(&mut self) -> &mut KvSlots;
    /// The most positions a sequence may reach: the model's context, bounded by the cache.
    fn context(&self) -> usize {
        self.kv().capacity()
    }
    /// Bytes the backend holds (weights, caches, activations).
    fn allocated_bytes(&self) -> u64;
    /// Bytes one stored weight of the bulk matrices takes.
    fn bytes_per_weight(&self, precision: Precision) -> f64;
    /// Measured copy bandwidth of the backend's memory, bytes (read + written) per second.
    fn copy_bandwidth(&mut self) -> Result<f64>;
    /// Start or stop recording MoE routing; `take_routing` returns what was recorded.
    fn trace_routing(&mut self, on: bool);
    fn take_routing(&mut self) -> Result<Vec<LayerRouting>>;
}

pub struct BackendSession<B: Backend> {
    backend: B,
    model: Model<B>,
    cache: B::Cache,
    prepared: Option<Prepared<B>>,
    launched: Option<Launched<B>>,
}

/// A step `prepare` took: its logits when the backend recorded it ahead.
struct Prepared<B: Backend> {
    step: Step,
    logit_rows: Vec<usize>,
    logits: Option<B::Tensor>,
}

/// A launched step: its logits stay alive until its ids are collected.
struct Launched<B: Backend> {
    logits: B::Tensor,
    picks: Vec<Pick>,
    ids: Option<Vec<u32>>,
}

impl<B: Backend> BackendSession<B> {
    pub fn load(backend: B, dir: &Path, slots: usize) -> Result<Self> {
        Self::load_with_pool(backend, dir, slots, None)
    }

    /// Like `load`, with the full-attention layers' KV pool holding `pool_tokens` positions.
    pub fn load_with_pool(mut backend: B, dir: &Path, slots: usize, pool_tokens: Option<usize>) -> Result<Self> {
        let model = Model::load(&mut backend, dir)?;
        let cache = backend.new_cache(&model.spec, slots, pool_tokens)?;
        Ok(BackendSession {
            backend,
            model,
            cache,
            prepared: None,
            launched: None,
        })
    }

    pub fn cache(&self) -> &B::Cache {
        &self.cache
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }
}

impl<B: Backend> Session for BackendSession<B> {
    fn spec(&self) -> &ModelSpec {
        &self.model.spec
    }

    fn describe(&self) -> String {
        self.backend.describe()
    }

    fn kv_dtype(&self) -> KvDtype {
        self.backend.kv_dtype()
    }

    fn forward(&mut self, step: &Step, logit_rows: &[usize]) -> Result<Vec<f32>> {
        let logits = self
            .model
            .forward(&mut self.backend, &mut self.cache, step, logit_rows)?;
        self.backend.read(&logits)
    }

    fn prepare(&mut self, step: &Step, logit_rows: &[usize]) -> Result<()> {
        self.prepared = None;
        let logits = if self.backend.records_ahead() {
            Some(
                self.model
                    .forward(&mut self.backend, &mut self.cache, step, logit_rows)?,
            )
        } else {
            None
        };
        self.prepared = Some(Prepared {
            step: step.clone(),
            logit_rows: logit_rows.to_vec(),
            logits,
        });
        Ok(())
    }

    fn launch(&mut self, fills: &[(usize, u32)], picks: &[Pick]) -> Result<()> {
        let Some(prepared) = self.prepared.take() else {
            bail!("launch without a prepared step");
        };
        let logits = match prepared.logits {
            Some(logits) if self.backend.fill_tokens(fills) => logits,
            // Not recorded yet, or part of it already ran with the unknown tokens: record it whole now
            // (it rewrites the same cache positions).
            recorded => {
                if recorded.is_some() {
                    // The first recording moved the cache on: back to where the step starts.
                    for (&slot, &pos) in prepared.step.seqs.iter().zip(&prepared.step.positions).rev() {
                        self.cache.kv_mut().truncate(slot, pos);
                    }
                }
                let mut step = prepared.step;
                for &(row, id) in fills {
                    step.tokens[row] = id;
                }
                let rows = &prepared.logit_rows;
                self.model.forward(&mut self.backend, &mut self.cache, &step, rows)?
            }
        };
        let ids = self.backend.submit_pick(&logits, picks)?;
        self.launched = Some(Launched {
            logits,
            picks: picks.to_vec(),
            ids,
        });
        Ok(())
    }

    fn collect(&mut self) -> Result<Vec<u32>> {
        let Some(launched) = self.launched.take() else {
            bail!("collect without a launched step");
        };
        match launched.ids {
            Some(ids) => Ok(ids),
            None => self.backend.collect_pick(&launched.logits, &launched.picks),
        }
    }

    fn records_ahead(&self) -> bool {
        self.backend.records_ahead()
    }

    fn kv(&self) -> &KvSlots {
        self.cache.kv()
    }

    fn kv_mut(&mut self) -> &mut KvSlots {
        self.cache.kv_mut()
    }

    fn allocated_bytes(&self) -> u64 {
        self.backend.allocated_bytes()
    }

    fn copy_bandwidth(&mut self) -> Result<f64> {
        self.backend.copy_bandwidth()
    }

    fn bytes_per_weight(&self, precision: Precision) -> f64 {
        self.backend.bytes_per_weight(precision)
    }

    fn trace_routing(&mut self, on: bool) {
        self.backend.trace_routing(on)
    }

    fn take_routing(&mut self) -> Result<Vec<LayerRouting>> {
        self.backend.take_routing()
    }
}
