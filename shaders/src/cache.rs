//! The KV cache on the device, allocated at start-up beside the shared bookkeeping (`volt_runtime::kv`):
//! sliding layers hold a ring of window + one step of positions per slot, full layers one pool of pages
//! shared by every slot, KV-reusing layers nothing (they bind their source layer's buffers). Values are kept
//! in the KV dtype's words (`wgsl/kv_f16.wgsl`, `kv_f32.wgsl`, `kv_fp8.wgsl`). The page tables follow the
//! step's sequence slots in one buffer (`wgsl/kv_pages.wgsl`), so no kernel needs another binding.

use std::sync::Arc;

use volt_runtime::backend::check_kernel_limits;
use volt_runtime::dtype::KvDtype;
use volt_runtime::kv::{paged_kv_dims, KvCache, KvLayout, KvSlots, KV_PAGE};
use volt_runtime::spec::ModelSpec;
use volt_runtime::step::{Step, MAX_STEP_TOKENS};
use volt_runtime::{bail, Result};

use crate::backend::WgpuBackend;
use crate::buffers::{GpuBuffer, STORAGE};

pub struct WgpuCache {
    kv: KvSlots,
    /// K and V buffers of every layer that owns its KV.
    layers: Vec<Option<(Arc<GpuBuffer>, Arc<GpuBuffer>)>>,
}

impl KvCache for WgpuCache {
    fn kv(&self) -> &KvSlots {
        &self.kv
    }
    fn kv_mut(&mut self) -> &mut KvSlots {
        &mut self.kv
    }
}

impl WgpuCache {
    /// The K and V buffers of layer `source`.
    pub(crate) fn buffers(&self, source: usize) -> Result<(Arc<GpuBuffer>, Arc<GpuBuffer>)> {
        match &self.layers[source] {
            Some((k, v)) => Ok((k.clone(), v.clone())),
            None => bail!("layer {source} has no KV cache of its own"),
        }
    }
}

/// Values in one word of a KV cache buffer (`KV_PER_WORD` of the `wgsl/kv_*.wgsl` files).
pub(crate) fn kv_values_per_word(kv: KvDtype) -> usize {
    match kv {
        KvDtype::F32 | KvDtype::F16 => 2,
        KvDtype::Fp8 => 4,
    }
}

impl WgpuBackend {
    pub(crate) fn create_cache(
        &mut self,
        spec: &ModelSpec,
        slots: usize,
        pool_tokens: Option<usize>,
    ) -> Result<WgpuCache> {
        check_kernel_limits(spec)?;
        let context = self.context.min(spec.max_position_embeddings);
        let max = self.gpu.max_binding();
        let kv_dtype = self.kernels.kv_dtype();
        let kv_bytes = kv_dtype.bytes();
        // The pool's pages must fit one binding in the widest full layer: a smaller default pool, never less
        // than one whole context.
        let paged = paged_kv_dims(spec).next().is_some();
        let fits = paged_kv_dims(spec)
            .map(|d| max as usize / (d * kv_bytes) / KV_PAGE * KV_PAGE)
            .min()
            .unwrap_or(usize::MAX);
        let name = self.gpu.name();
        let pool_tokens = match pool_tokens {
            Some(t) if paged && t > fits => {
                bail!("a KV pool of {t} tokens is more than one buffer holds on {name} ({fits} tokens)")
            }
            Some(t) => t,
            None if paged && fits < context => bail!(
                "one sequence of {context} tokens takes more KV than one buffer holds on {name} ({fits} tokens); use a shorter context"
            ),
            None => (slots * context).min(fits),
        };
        let kv = KvSlots::new(spec, slots, context, Some(pool_tokens), MAX_STEP_TOKENS);
        let per_word = kv_values_per_word(kv_dtype);
        let mut layers = Vec::with_capacity(spec.n_layers());
        for (i, l) in spec.layers.iter().enumerate() {
            let Some(rows) = kv.rows(i) else {
                layers.push(None);
                continue;
            };
            let kv_dim = l.attn.kv_dim();
            if kv_dim % per_word != 0 {
                bail!(
                    "layer {i}: a KV width of {kv_dim} does not split into the {per_word}-value words of a {} KV cache",
                    kv_dtype.name()
                );
            }
            let bytes = (rows * kv_dim * kv_bytes) as u64;
            if bytes > max {
                let ring = match kv.layout(i) {
                    Some(KvLayout::Ring(r)) => r.rows,
                    _ => 0,
                };
                bail!("layer {i}: its KV ring for {slots} sequence(s) of {ring} tokens takes {bytes} bytes, more than one buffer holds on {name} ({max}); use a shorter context");
            }
            let device = &self.gpu.device;
            let k = self.buffers.create(device, "k cache", bytes.max(16), STORAGE);
            let v = self.buffers.create(device, "v cache", bytes.max(16), STORAGE);
            layers.push(Some((k, v)));
        }
        let entries = slots * kv.pages_per_seq();
        if (self.step_buffers).hold_page_tables(&self.gpu, &mut self.buffers, &mut self.recorder, entries)? {
            self.tables_of = None;
        }
        // A step records about two dozen dispatches per layer (26 with the grouped MoE path).
        self.recorder
            .reserve(&self.gpu, &mut self.buffers, spec.n_layers() * 26 + 16)?;
        self.gpu.check()?;
        Ok(WgpuCache { kv, layers })
    }

    /// Hands out the pages of the step's new positions and, when a table changed or another cache's tables
    /// are loaded, uploads every slot's table behind the step's sequence slots.
    pub(crate) fn reserve_pages(&mut self, cache: &mut WgpuCache, step: &Step) -> Result<()> {
        if cache.kv.reserve(step)? || self.tables_of != Some(cache.kv.id()) {
            self.step_buffers.write_page_tables(&self.gpu, &cache.kv.flat_tables());
            self.tables_of = Some(cache.kv.id());
        }
        Ok(())
    }
}
