//! The CPU reference backend: f32 arithmetic, multi-threaded with rayon, written to be read. Every other
//! backend is tested against it. Weight matrices stay in the dtype they are kept in (as published, or as
//! `--dtype` asks); each product decodes the rows it reads (`StoredTensor::decode_row`) as it goes.

use rayon::prelude::*;

use super::{kept_dtype, Backend, LayerRouting, MoeExperts, WeightAccounting, WeightTypes};
use crate::checkpoint::HostTensor;
use crate::dtype::{KvDtype, Precision, WeightDtype};
use crate::error::Result;
use crate::kv::{KvCache, KvLayout, KvSlots};
use crate::rope::RopeTable;
use crate::spec::{AttnSpec, ExpertActivation, ModelSpec, MoeSpec, RouterOrder, Scoring, Selection};
use crate::step::Step;
use crate::tensor::StoredTensor;

/// Activations: `rows` tokens of `cols` values each.
#[derive(Clone, Debug, PartialEq)]
pub struct CpuTensor {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

impl CpuTensor {
    pub fn zeros(rows: usize, cols: usize) -> Self {
        CpuTensor {
            rows,
            cols,
            data: vec![0.0; rows * cols],
        }
    }
    pub fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }
}

pub struct CpuBackend {
    /// `--dtype`; None keeps every matrix as published.
    dtype: Option<WeightDtype>,
    /// f32 unless told: the reference. f16 rounds each cached value as the GPU cache keeps it.
    kv_dtype: KvDtype,
    step: Step,
    /// Some while routing is traced.
    routing: Option<Vec<LayerRouting>>,
    weights: WeightAccounting,
}

impl CpuBackend {
    /// Keeps the weight matrices in `dtype` (`--dtype`), or as published with `None`.
    pub fn new(dtype: impl Into<Option<WeightDtype>>) -> Self {
        CpuBackend {
            dtype: dtype.into(),
            kv_dtype: KvDtype::F32,
            step: Step::default(),
            routing: None,
            weights: WeightAccounting::default(),
        }
    }

    /// Keeps cached K and V values as `kv` would (the comparison for a GPU cache in that dtype).
    pub fn with_kv_dtype(mut self, kv: KvDtype) -> Self {
        self.kv_dtype = kv;
        self
    }

    /// `w` in the dtype it is kept in at `precision`.
    fn keep(&mut self, w: StoredTensor, precision: Precision) -> Result<StoredTensor> {
        let dtype = kept_dtype(self.dtype, precision, (w.dtype, w.cols()), None);
        let w = w.convert(dtype)?;
        self.weights.add(precision, w.dtype, w.len(), w.stored_bytes());
        Ok(w)
    }
}

impl WeightTypes for CpuBackend {
    type Matrix = StoredTensor;
    type Vector = HostTensor;
    type Experts = StoredTensor;
}

/// The KV of one sequence in one layer: rows for positions `start..start + rows`, [rows, kv_dim].
#[derive(Clone, Debug, Default)]
struct SeqKv {
    start: usize,
    k: Vec<f32>,
    v: Vec<f32>,
}

/// Rows per owning layer, per slot, in f32 (the reference), beside the bookkeeping every backend shares.
/// Sliding layers keep exactly their window after each step (`ring_extra` 0); layers that reuse another
/// layer's KV have no entry. Full layers keep rows per sequence, counted in the same page pool as on the
/// GPU, so the pool bounds them alike.
pub struct CpuCache {
    kv: KvSlots,
    layers: Vec<Option<Vec<SeqKv>>>,
    kv_dims: Vec<usize>,
}

impl KvCache for CpuCache {
    fn kv(&self) -> &KvSlots {
        &self.kv
    }
    fn kv_mut(&mut self) -> &mut KvSlots {
        &mut self.kv
    }
}

impl CpuCache {
    /// KV rows currently held, summed over layers and slots (what the window trimming bounds).
    pub fn rows_held(&self) -> usize {
        self.layers
            .iter()
            .zip(&self.kv_dims)
            .filter_map(|(l, d)| l.as_ref().map(|seqs| seqs.iter().map(|s| s.k.len() / d).sum::<usize>()))
            .sum()
    }

    /// Matches the rows to the bookkeeping: rows past each slot's length go (a reset or truncated sequence,
    /// so appends land at their positions), and sliding layers keep only their window.
    fn sync(&mut self) {
        for (layer, seqs) in self.layers.iter_mut().enumerate() {
            let Some(seqs) = seqs.as_mut() else { continue };
            let kv_dim = self.kv_dims[layer];
            let kept = match self.kv.layout(layer) {
                Some(KvLayout::Ring(ring)) => Some(ring.rows),
                _ => None,
            };
            for (slot, s) in seqs.iter_mut().enumerate() {
                let len = self.kv.seq_len(slot);
                if len < s.start {
                    // Reset: the slot starts again at position 0.
                    *s = SeqKv::default();
                }
                let keep_from = kept.map_or(0, |rows| len.saturating_sub(rows)).max(s.start);
                let drop = (keep_from - s.start) * kv_dim;
                s.k.truncate((len - s.start) * kv_dim);
                s.v.truncate((len - s.start) * kv_dim);
                s.k.drain(..drop.min(s.k.len()));
                s.v.drain(..drop.min(s.v.len()));
                s.start = keep_from;
            }
        }
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight accumulators let the compiler vectorise; the order differs from PyTorch only in rounding.
    let mut acc = [0.0f32; 8];
    let chunks = a.len() / 8;
    for c in 0..chunks {
        for l in 0..8 {
            acc[l] += a[c * 8 + l] * b[c * 8 + l];
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for i in chunks * 8..a.len() {
        sum += a[i] * b[i];
    }
    sum
}

fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// x [t, n] · W[out, n]ᵀ → [t, out], parallel over output rows so each weight row is decoded and read once.
fn matmul(x: &[f32], t: usize, w: &StoredTensor) -> Vec<f32> {
    let (out, n) = (w.rows(), w.cols());
    let mut out_t = vec![0.0f32; out * t];
    out_t.par_chunks_mut(t).enumerate().for_each_init(
        || vec![0.0f32; n],
        |w_row, (o, col)| {
            w.decode_row(o, w_row);
            for (ti, v) in col.iter_mut().enumerate() {
                *v = dot(w_row, &x[ti * n..(ti + 1) * n]);
            }
        },
    );
    let mut y = vec![0.0f32; t * out];
    for o in 0..out {
        for ti in 0..t {
            y[ti * out + o] = out_t[o * t + ti];
        }
    }
    y
}

/// Expert `e` of stacked experts: `gate_up` [E, 2, i, h] (gate rows then up rows), `down` [E, h, i].
struct Expert<'a> {
    gate_up: &'a StoredTensor,
    down: &'a StoredTensor,
    e: usize,
}

/// One expert's SwiGLU on one token, with biases [2i] and [h]; adds `weight * out` into `acc`.
fn expert_forward(
    x: &[f32],
    expert: Expert,
    biases: (Option<&[f32]>, Option<&[f32]>),
    activation: ExpertActivation,
    weight: f32,
    acc: &mut [f32],
) {
    let (h, i) = (x.len(), expert.down.cols());
    let (gate_up_first, down_first) = (expert.e * 2 * i, expert.e * h);
    let mut act = vec![0.0f32; i];
    let (mut gate_row, mut up_row, mut down_row) = (vec![0.0f32; h], vec![0.0f32; h], vec![0.0f32; i]);
    for (j, a) in act.iter_mut().enumerate() {
        expert.gate_up.decode_row(gate_up_first + j, &mut gate_row);
        expert.gate_up.decode_row(gate_up_first + i + j, &mut up_row);
        let mut g = dot(&gate_row, x);
        let mut u = dot(&up_row, x);
        if let Some(b) = biases.0 {
            g += b[j];
            u += b[i + j];
        }
        *a = match activation {
            ExpertActivation::SwiGlu => silu(g) * u,
            ExpertActivation::ClampedSwiGlu { alpha, limit } => {
                let g = g.min(limit);
                let u = u.clamp(-limit, limit);
                (u + 1.0) * g * sigmoid(alpha * g)
            }
        };
    }
    for (o, out) in acc.iter_mut().enumerate() {
        expert.down.decode_row(down_first + o, &mut down_row);
        let mut y = dot(&down_row, &act);
        if let Some(b) = biases.1 {
            y += b[o];
        }
        *out += weight * y;
    }
}

/// Picks experts for one token from its router logits: the router's probability of every expert, and the
/// chosen (expert, weight) pairs.
pub fn route(logits: &[f32], spec: &MoeSpec) -> (Vec<f32>, Vec<(usize, f32)>) {
    let r = &spec.router;
    let score = |v: &mut [f32]| match r.scoring {
        Scoring::Softmax => softmax_in_place(v),
        Scoring::Sigmoid => v.iter_mut().for_each(|x| *x = sigmoid(*x)),
    };
    let mut probs = logits.to_vec();
    score(&mut probs);
    let mut order: Vec<usize> = (0..logits.len()).collect();
    let mut chosen: Vec<(usize, f32)> = match r.order {
        RouterOrder::ScoreThenSelect => {
            order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
            let count = match r.selection {
                Selection::TopK { k } => k,
                Selection::TopP {
                    p,
                    min_experts,
                    max_experts,
                } => {
                    let mut sum = 0.0;
                    let mut n = 0;
                    while n < order.len() && sum < p {
                        sum += probs[order[n]];
                        n += 1;
                    }
                    n.clamp(min_experts, max_experts)
                }
            };
            order[..count].iter().map(|&e| (e, probs[e])).collect()
        }
        RouterOrder::SelectThenScore => {
            order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
            let k = spec.router.selection.max_experts();
            let mut vals: Vec<f32> = order[..k].iter().map(|&e| logits[e]).collect();
            score(&mut vals);
            order[..k].iter().copied().zip(vals).collect()
        }
    };
    if r.renormalize {
        let sum: f32 = chosen.iter().map(|c| c.1).sum();
        chosen.iter_mut().for_each(|c| c.1 /= sum);
    }
    (probs, chosen)
}

/// Expert `e`'s slice of a stacked [E, ...] vector of `len` values per expert.
fn opt_expert_slice(t: &Option<HostTensor>, e: usize, len: usize) -> Option<&[f32]> {
    t.as_ref().map(|t| &t.data[e * len..(e + 1) * len])
}

fn softmax_in_place(v: &mut [f32]) {
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for x in v.iter_mut() {
        *x = (*x - max).exp();
        sum += *x;
    }
    v.iter_mut().for_each(|x| *x /= sum);
}

impl Backend for CpuBackend {
    type Tensor = CpuTensor;
    type Rope = RopeTable;
    type Cache = CpuCache;

    fn describe(&self) -> String {
        format!(
            "cpu ({} weights, f32 compute, {} KV, {} threads)",
            self.weights.describe(),
            self.kv_dtype.name(),
            rayon::current_num_threads()
        )
    }

    fn kv_dtype(&self) -> KvDtype {
        self.kv_dtype
    }

    fn upload_matrix(&mut self, w: StoredTensor, precision: Precision) -> Result<StoredTensor> {
        self.keep(w, precision)
    }
    fn upload_vector(&mut self, w: HostTensor) -> Result<HostTensor> {
        // Vectors (norm weights, biases, sinks) stay f32 on every backend: they are tiny.
        let n = w.data.len();
        self.weights.add(Precision::Full, WeightDtype::F32, n, 4 * n);
        Ok(w)
    }
    fn upload_experts(&mut self, w: StoredTensor) -> Result<StoredTensor> {
        self.keep(w, Precision::Storage)
    }
    fn upload_rope(&mut self, table: RopeTable) -> Result<RopeTable> {
        Ok(table)
    }

    fn new_cache(&mut self, spec: &ModelSpec, slots: usize, pool_tokens: Option<usize>) -> Result<CpuCache> {
        let kv = KvSlots::new(spec, slots, spec.max_position_embeddings, pool_tokens, 0);
        Ok(CpuCache {
            layers: (0..spec.n_layers())
                .map(|i| kv.layout(i).map(|_| vec![SeqKv::default(); slots]))
                .collect(),
            kv_dims: spec.layers.iter().map(|l| l.attn.kv_dim()).collect(),
            kv,
        })
    }

    fn begin_step(&mut self, step: &Step) -> Result<()> {
        self.step = step.clone();
        Ok(())
    }

    fn reserve_kv(&mut self, cache: &mut CpuCache, step: &Step) -> Result<()> {
        cache.kv.reserve(step)?;
        cache.sync();
        Ok(())
    }

    fn embed(&mut self, table: &StoredTensor) -> Result<CpuTensor> {
        let h = table.cols();
        let mut out = CpuTensor::zeros(self.step.len(), h);
        for (row, &tok) in out.data.chunks_exact_mut(h).zip(&self.step.tokens) {
            table.decode_row(tok as usize, row);
        }
        Ok(out)
    }

    fn rms_norm(&mut self, x: &CpuTensor, weight: &HostTensor, eps: f32, group: usize) -> Result<CpuTensor> {
        let mut out = x.clone();
        // The weight covers one group (per-head norms) or the whole row.
        let wlen = weight.data.len();
        out.data.par_chunks_mut(x.cols).for_each(|row| {
            for (g, chunk) in row.chunks_mut(group).enumerate() {
                let ms = chunk.iter().map(|v| v * v).sum::<f32>() / group as f32;
                let inv = 1.0 / (ms + eps).sqrt();
                let base = (g * group) % wlen;
                for (j, v) in chunk.iter_mut().enumerate() {
                    *v = *v * inv * weight.data[base + j];
                }
            }
        });
        Ok(out)
    }

    fn linear(&mut self, x: &CpuTensor, w: &StoredTensor, bias: Option<&HostTensor>) -> Result<CpuTensor> {
        let out = w.rows();
        let mut data = matmul(&x.data, x.rows, w);
        if let Some(b) = bias {
            data.chunks_mut(out)
                .for_each(|row| row.iter_mut().zip(&b.data).for_each(|(v, b)| *v += b));
        }
        Ok(CpuTensor {
            rows: x.rows,
            cols: out,
            data,
        })
    }

    fn clamp(&mut self, x: &mut CpuTensor, limit: f32) -> Result<()> {
        x.data.iter_mut().for_each(|v| *v = v.clamp(-limit, limit));
        Ok(())
    }

    fn apply_rope(&mut self, x: &mut CpuTensor, rope: &RopeTable, head_dim: usize) -> Result<()> {
        let cols = x.cols;
        let positions = &self.step.positions;
        x.data
            .par_chunks_mut(cols)
            .zip(positions.par_iter())
            .for_each(|(row, &pos)| {
                row.chunks_mut(head_dim).for_each(|head| rope.rotate(head, pos));
            });
        Ok(())
    }

    fn attention(
        &mut self,
        cache: &mut CpuCache,
        spec: &AttnSpec,
        q: &CpuTensor,
        kv: Option<(&CpuTensor, &CpuTensor)>,
        sinks: Option<&HostTensor>,
    ) -> Result<CpuTensor> {
        let src = spec.kv_source;
        let kv_dim = spec.kv_dim();
        let Some(seqs) = cache.layers[src].as_mut() else {
            crate::bail!("layer {src} has no KV cache of its own");
        };
        if let Some((k, v)) = kv {
            let kv_dtype = self.kv_dtype;
            for r in 0..self.step.len() {
                let s = &mut seqs[self.step.seqs[r]];
                s.k.extend(k.row(r).iter().map(|&x| kv_dtype.round(x)));
                s.v.extend(v.row(r).iter().map(|&x| kv_dtype.round(x)));
            }
        }
        let seqs = &*seqs;
        let (hd, group) = (spec.head_dim, spec.n_heads / spec.n_kv_heads);
        let window = spec.window();
        let mut out = CpuTensor::zeros(q.rows, spec.q_dim());
        let step = &self.step;
        out.data
            .par_chunks_mut(spec.q_dim())
            .enumerate()
            .for_each(|(r, out_row)| {
                let s = &seqs[step.seqs[r]];
                let pos = step.positions[r];
                // Visible keys: positions in (pos - window, pos], and only what the cache still holds.
                let first = window.map_or(0, |w| (pos + 1).saturating_sub(w)).max(s.start);
                let (lo, hi) = (first - s.start, pos + 1 - s.start);
                let mut scores = vec![0.0f32; hi - lo];
                for h in 0..spec.n_heads {
                    let kvh = h / group;
                    let qh = &q.row(r)[h * hd..(h + 1) * hd];
                    for (j, sc) in scores.iter_mut().enumerate() {
                        let krow = &s.k[(lo + j) * kv_dim + kvh * hd..][..hd];
                        *sc = dot(qh, krow) * spec.softmax_scale;
                    }
                    let sink = sinks.map(|s| s.data[h]);
                    let max = scores.iter().copied().chain(sink).fold(f32::NEG_INFINITY, f32::max);
                    let mut sum = sink.map_or(0.0, |s| (s - max).exp());
                    scores.iter_mut().for_each(|sc| {
                        *sc = (*sc - max).exp();
                        sum += *sc;
                    });
                    let o = &mut out_row[h * hd..(h + 1) * hd];
                    for (j, &p) in scores.iter().enumerate() {
                        let vrow = &s.v[(lo + j) * kv_dim + kvh * hd..][..hd];
                        o.iter_mut().zip(vrow).for_each(|(a, v)| *a += p / sum * v);
                    }
                }
            });
        Ok(out)
    }

    fn swiglu(&mut self, gate: &mut CpuTensor, up: &CpuTensor) -> Result<()> {
        gate.data.iter_mut().zip(&up.data).for_each(|(g, u)| *g = silu(*g) * u);
        Ok(())
    }

    fn moe(&mut self, x: &CpuTensor, w: &MoeExperts<Self>, spec: &MoeSpec, layer: usize) -> Result<CpuTensor> {
        let h = x.cols;
        let i = spec.expert_intermediate;
        let logits = self.linear(x, &w.router, w.router_bias.as_ref())?;
        let routes: Vec<(Vec<f32>, Vec<(usize, f32)>)> = logits
            .data
            .par_chunks(spec.n_experts)
            .map(|lg| route(lg, spec))
            .collect();
        let mut out = CpuTensor::zeros(x.rows, h);
        out.data
            .par_chunks_mut(h)
            .zip(routes.par_iter())
            .enumerate()
            .for_each(|(r, (acc, (_, chosen)))| {
                for &(e, weight) in chosen {
                    let biases = (
                        opt_expert_slice(&w.gate_up_bias, e, 2 * i),
                        opt_expert_slice(&w.down_bias, e, h),
                    );
                    let expert = Expert {
                        gate_up: &w.gate_up,
                        down: &w.down,
                        e,
                    };
                    expert_forward(x.row(r), expert, biases, spec.activation, weight, acc);
                }
            });
        if let Some(trace) = self.routing.as_mut() {
            let (probs, chosen): (Vec<Vec<f32>>, Vec<Vec<(usize, f32)>>) = routes.into_iter().unzip();
            trace.push(LayerRouting {
                layer,
                n_experts: spec.n_experts,
                probs: probs.concat(),
                chosen,
            });
        }
        Ok(out)
    }

    fn sigmoid_gate(&mut self, x: &mut CpuTensor, gate: &CpuTensor) -> Result<()> {
        let cols = x.cols;
        x.data.chunks_mut(cols).zip(&gate.data).for_each(|(row, g)| {
            let s = sigmoid(*g);
            row.iter_mut().for_each(|v| *v *= s);
        });
        Ok(())
    }

    fn add_assign(&mut self, x: &mut CpuTensor, y: &CpuTensor) -> Result<()> {
        x.data.iter_mut().zip(&y.data).for_each(|(a, b)| *a += b);
        Ok(())
    }

    fn select_rows(&mut self, x: &CpuTensor, rows: &[usize]) -> Result<CpuTensor> {
        let data = rows.iter().flat_map(|&r| x.row(r).iter().copied()).collect();
        Ok(CpuTensor {
            rows: rows.len(),
            cols: x.cols,
            data,
        })
    }

    fn end_step(&mut self, cache: &mut CpuCache) -> Result<()> {
        // Sliding layers keep only the last `window` positions of each sequence.
        cache.sync();
        Ok(())
    }

    fn read(&mut self, x: &CpuTensor) -> Result<Vec<f32>> {
        Ok(x.data.clone())
    }

    fn allocated_bytes(&self) -> u64 {
        self.weights.total_bytes()
    }

    fn bytes_per_weight(&self, precision: Precision) -> f64 {
        self.weights.bytes_per_weight(precision)
    }

    fn copy_bandwidth(&mut self) -> Result<f64> {
        const BYTES: usize = 256 << 20;
        let src = vec![1u8; BYTES];
        let mut dst = vec![0u8; BYTES];
        let chunk = BYTES / rayon::current_num_threads().max(1);
        let mut best = f64::MAX;
        for _ in 0..5 {
            let started = std::time::Instant::now();
            dst.par_chunks_mut(chunk)
                .zip(src.par_chunks(chunk))
                .for_each(|(d, s)| d.copy_from_slice(s));
            best = best.min(started.elapsed().as_secs_f64());
        }
        std::hint::black_box(&dst);
        Ok(2.0 * BYTES as f64 / best)
    }

    fn trace_routing(&mut self, on: bool) {
        self.routing = on.then(Vec::new);
    }

    fn take_routing(&mut self) -> Result<Vec<LayerRouting>> {
        Ok(self.routing.as_mut().map(std::mem::take).unwrap_or_default())
    }
}
