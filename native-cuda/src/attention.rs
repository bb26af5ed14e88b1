//! The KV cache on the device and attention over it. Beside the shared bookkeeping (`volt_runtime::kv`) the
//! cache holds f16 K and V rows of every layer that owns its KV, laid out as on the wgpu backend
//! (`runtime/src/kv/pages.rs`): a sliding layer keeps a ring of window + one step of positions per slot, a
//! full layer takes pages of one pool through each slot's page table, which `reserve_pages` uploads when it
//! changes.

use cudarc::driver::CudaSlice;
use volt_runtime::backend::{check_kernel_limits, MAX_HEAD_DIM};
use volt_runtime::kv::{KvCache, KvLayout, KvSlots};
use volt_runtime::spec::{AttnSpec, ModelSpec};
use volt_runtime::step::{Step, MAX_STEP_TOKENS};
use volt_runtime::{bail, Result};

use crate::backend::{CudaBackend, CudaTensor, CudaVector};
use crate::kernels::{ATTENTION, KV_WRITE};
use crate::params::{AttentionArgs, KvWriteArgs};

pub struct CudaCache {
    kv: KvSlots,
    /// f16 K and V of every layer that owns its KV: `kv.rows(layer)` rows of kv_dim.
    layers: Vec<Option<(CudaSlice<u16>, CudaSlice<u16>)>>,
    /// Every slot's page table as the kernels read it: [slots, pages_per_seq].
    tables: CudaSlice<i32>,
}

impl KvCache for CudaCache {
    fn kv(&self) -> &KvSlots {
        &self.kv
    }
    fn kv_mut(&mut self) -> &mut KvSlots {
        &mut self.kv
    }
}

impl CudaBackend {
    pub(crate) fn create_cache(
        &mut self,
        spec: &ModelSpec,
        slots: usize,
        pool_tokens: Option<usize>,
    ) -> Result<CudaCache> {
        check_kernel_limits(spec)?;
        let context = self.context.min(spec.max_position_embeddings).max(1);
        let kv = KvSlots::new(spec, slots, context, pool_tokens, MAX_STEP_TOKENS);
        let mut layers = Vec::with_capacity(spec.n_layers());
        for (i, layer) in spec.layers.iter().enumerate() {
            let Some(rows) = kv.rows(i) else {
                layers.push(None);
                continue;
            };
            let n = rows * layer.attn.kv_dim();
            self.cache_bytes += 4 * n as u64;
            layers.push(Some((self.alloc::<u16>(n)?, self.alloc::<u16>(n)?)));
        }
        let tables = self.alloc::<i32>(slots * kv.pages_per_seq())?;
        Ok(CudaCache { kv, layers, tables })
    }

    /// Hands out the pages of the step's new positions and uploads the page tables when one changed.
    pub(crate) fn reserve_pages(&mut self, cache: &mut CudaCache, step: &Step) -> Result<()> {
        if cache.kv.reserve(step)? {
            let tables: Vec<i32> = cache.kv.flat_tables().iter().map(|&p| p as i32).collect();
            cache.tables = self.upload(&tables)?;
        }
        Ok(())
    }

    /// Writes the step's K and V (when the layer owns its KV) and attends every query row.
    pub(crate) fn attend(
        &self,
        cache: &CudaCache,
        spec: &AttnSpec,
        q: &CudaTensor,
        kv: Option<(&CudaTensor, &CudaTensor)>,
        sinks: Option<&CudaVector>,
    ) -> Result<CudaTensor> {
        if spec.head_dim > MAX_HEAD_DIM {
            bail!(
                "CUDA attention supports head_dim up to {MAX_HEAD_DIM}, the model has {}",
                spec.head_dim
            );
        }
        let step = self.step()?;
        if step.max_position >= cache.kv.capacity() {
            bail!(
                "position {} is past the CUDA KV cache ({} positions)",
                step.max_position,
                cache.kv.capacity()
            );
        }
        let (positions, seqs, rows) = (self.ptr(&step.positions), self.ptr(&step.seqs), step.rows);
        let kv_dim = spec.kv_dim();
        let (Some((cache_k, cache_v)), Some(layout)) = (&cache.layers[spec.kv_source], cache.kv.layout(spec.kv_source))
        else {
            bail!("layer {} has no KV cache of its own", spec.kv_source);
        };
        // A ring's rows, or 0 for a paged layer (attention.cu's kv_row).
        let ring = match layout {
            KvLayout::Ring(r) => r.rows as i32,
            KvLayout::Paged => 0,
        };
        let (tables, pages_per_seq) = (self.ptr(&cache.tables), cache.kv.pages_per_seq() as i32);
        if let Some((k, v)) = kv {
            let args = KvWriteArgs {
                k: self.ptr(&k.buf),
                v: self.ptr(&v.buf),
                cache_k: self.ptr(cache_k),
                cache_v: self.ptr(cache_v),
                seqs,
                positions,
                tables,
                rows: rows as i32,
                kv_dim: kv_dim as i32,
                ring,
                pages_per_seq,
            };
            self.launch_1d(KV_WRITE, rows * kv_dim, &args)?;
        }
        let out = self.alloc::<f32>(rows * spec.q_dim())?;
        let args = AttentionArgs {
            q: self.ptr(&q.buf),
            cache_k: self.ptr(cache_k),
            cache_v: self.ptr(cache_v),
            sinks: self.opt_ptr(sinks.map(|s| &s.data)),
            out: self.ptr(&out),
            seqs,
            positions,
            tables,
            rows: rows as i32,
            n_heads: spec.n_heads as i32,
            n_kv_heads: spec.n_kv_heads as i32,
            head_dim: spec.head_dim as i32,
            ring,
            pages_per_seq,
            window: spec.window().unwrap_or(0) as i32,
            softmax_scale: spec.softmax_scale,
        };
        // 4 heads (warps) per block.
        self.launch(ATTENTION, (rows, spec.n_heads.div_ceil(4)), 128, &args)?;
        Ok(CudaTensor {
            rows: q.rows,
            cols: spec.q_dim(),
            buf: out,
        })
    }
}
