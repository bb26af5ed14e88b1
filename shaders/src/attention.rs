//! Attention on the device: the new K/V written into the cache of the layer's KV source (`kv_write.wgsl`),
//! then one of three kernels by the shape of the step. Prefill steps (more than `SPLIT_MAX_ROWS` rows, heads
//! of at most `TILED_ATTENTION_MAX_DIM`) take `attention_tiled.wgsl`: one workgroup per head and block of
//! consecutive tokens of one sequence, keys and values staged in workgroup memory. Decode steps over long
//! ranges take split-K flash decoding (`attention_split.wgsl`): chunks of the range in parallel, then a merge.
//! Other steps take one workgroup per (head, row) (`attention.wgsl`).

use volt_runtime::kv::{KvCache, KvLayout};
use volt_runtime::spec::AttnSpec;
use volt_runtime::step::Step;
use volt_runtime::Result;

use crate::backend::WgpuBackend;
use crate::buffers::{GpuTensor, GpuVector};
use crate::cache::{kv_values_per_word, WgpuCache};
use crate::kernels::{groups_1d, Op};
use crate::params::{AttentionParams, KvWriteParams};

/// Split attention: steps of at most this many query rows (decode), over visible ranges longer than
/// SPLIT_MIN_RANGE positions, in chunks of at least SPLIT_MIN_CHUNK positions and at most SPLIT_MAX_CHUNKS
/// chunks per (head, row).
const SPLIT_MAX_ROWS: usize = 8;
const SPLIT_MIN_RANGE: usize = 256;
const SPLIT_MIN_CHUNK: usize = 128;
const SPLIT_MAX_CHUNKS: usize = 32;
/// Query rows per workgroup of the tiled prefill attention, used for steps of more than SPLIT_MAX_ROWS rows
/// on heads of at most TILED_ATTENTION_MAX_DIM dimensions.
const TILED_ATTENTION_ROWS: usize = 16;
const TILED_ATTENTION_MAX_DIM: usize = 128;

/// How split (flash-decoding) attention divides the visible key range of each query row: chunks of
/// `chunk_len` positions, `chunks` of them this step, at most `max_chunks` for the layer.
struct SplitAttention {
    chunk_len: usize,
    chunks: usize,
    max_chunks: usize,
}

/// Split attention for a step of `rows` query rows up to position `max_pos`, on a layer whose rows see at
/// most `layer_range` keys: only for decode-sized steps (one workgroup per (head, row) would leave the GPU
/// idle) over ranges long enough to fill several chunks. Chunks grow past SPLIT_MIN_CHUNK with the layer's
/// range so there are at most SPLIT_MAX_CHUNKS, which bounds the partials buffer.
fn split_attention(rows: usize, max_pos: usize, layer_range: usize) -> Option<SplitAttention> {
    let range = layer_range.min(max_pos + 1);
    if rows > SPLIT_MAX_ROWS || range <= SPLIT_MIN_RANGE {
        return None;
    }
    let chunk_len = layer_range
        .div_ceil(SPLIT_MAX_CHUNKS)
        .next_multiple_of(64)
        .max(SPLIT_MIN_CHUNK);
    Some(SplitAttention {
        chunk_len,
        chunks: range.div_ceil(chunk_len),
        max_chunks: layer_range.div_ceil(chunk_len),
    })
}

/// The step's rows as (first row, rows) blocks of consecutive tokens of one sequence, at most
/// TILED_ATTENTION_ROWS each: the workgroups of the tiled prefill attention.
pub(crate) fn attention_blocks(step: &Step) -> Vec<u32> {
    let mut blocks: Vec<u32> = Vec::new();
    for r in 0..step.len() {
        let continues = r > 0
            && step.seqs[r] == step.seqs[r - 1]
            && step.positions[r] == step.positions[r - 1] + 1
            && blocks.last().is_some_and(|&n| (n as usize) < TILED_ATTENTION_ROWS);
        match blocks.last_mut() {
            Some(n) if continues => *n += 1,
            _ => blocks.extend([r as u32, 1]),
        }
    }
    blocks
}

impl WgpuBackend {
    pub(crate) fn record_attention(
        &mut self,
        cache: &mut WgpuCache,
        spec: &AttnSpec,
        q: &GpuTensor,
        kv: Option<(&GpuTensor, &GpuTensor)>,
        sinks: Option<&GpuVector>,
    ) -> Result<GpuTensor> {
        let (kc, vc) = cache.buffers(spec.kv_source)?;
        let slots = cache.kv();
        // A ring's row count, or 0 for a paged layer (kv_pages.wgsl).
        let ring = match slots.layout(spec.kv_source) {
            Some(KvLayout::Ring(r)) => Some(r.rows),
            _ => None,
        };
        let (capacity, pages_per_seq) = (ring.unwrap_or(0) as u32, slots.pages_per_seq() as u32);
        let context = slots.capacity();
        let inputs = &self.step_buffers;
        let (pos, seqs) = (inputs.positions.clone(), inputs.seqs.clone());
        if let Some((k, v)) = kv {
            let params = KvWriteParams {
                rows: k.rows as u32,
                kv_dim: spec.kv_dim() as u32,
                capacity,
                pages_per_seq,
            };
            let bufs = [k.buf(), v.buf(), &pos, &seqs, &kc, &vc];
            let words = k.rows * spec.kv_dim() / kv_values_per_word(self.kernels.kv_dtype());
            self.dispatch(Op::KvWrite, None, &params, &bufs, groups_1d(words))?;
        }
        let out = self.tensor(q.rows, spec.q_dim());
        let max_pos = self.step_buffers.step.positions.iter().copied().max().unwrap_or(0);
        let layer_range = spec.window().unwrap_or(context).min(ring.unwrap_or(context));
        let split = split_attention(q.rows, max_pos, layer_range);
        let params = AttentionParams {
            n_heads: spec.n_heads as u32,
            heads_per_kv: (spec.n_heads / spec.n_kv_heads) as u32,
            head_dim: spec.head_dim as u32,
            kv_dim: spec.kv_dim() as u32,
            capacity,
            pages_per_seq,
            window: spec.window().unwrap_or(0) as u32,
            has_sinks: sinks.is_some() as u32,
            scale: spec.softmax_scale,
            chunk_len: split.as_ref().map_or(0, |s| s.chunk_len as u32),
            n_chunks: split.as_ref().map_or(0, |s| s.chunks as u32),
        };
        let s = sinks.map_or(self.buffers.dummy.clone(), |s| s.buf.clone());
        let (heads, rows) = (spec.n_heads as u32, q.rows as u32);
        let (qb, ob) = (q.buf(), out.buf());
        match split {
            None if q.rows > SPLIT_MAX_ROWS && spec.head_dim <= TILED_ATTENTION_MAX_DIM => {
                let blocks = self.step_buffers.blocks.clone();
                let bufs = [qb, &kc, &vc, &pos, &seqs, &s, ob, &blocks];
                let groups = [heads, self.step_buffers.n_blocks as u32, 1];
                self.dispatch(Op::AttentionTiled, None, &params, &bufs, groups)?;
            }
            None => {
                let bufs = [qb, &kc, &vc, &pos, &seqs, &s, ob];
                self.dispatch(Op::Attention, None, &params, &bufs, [heads, rows, 1])?;
            }
            Some(split) => {
                // Sized for the most chunks the layer may need, so every decode step reuses one pooled buffer.
                let partials = self.tensor(q.rows * spec.n_heads * split.max_chunks, spec.head_dim + 2);
                let bufs = [qb, &kc, &vc, &pos, &seqs, &s, partials.buf(), ob];
                let groups = [heads, rows, split.chunks as u32];
                self.dispatch(Op::AttentionSplit, None, &params, &bufs, groups)?;
                self.dispatch(Op::AttentionMerge, None, &params, &bufs, [heads, rows, 1])?;
            }
        }
        Ok(out)
    }
}
