//! KV-cache bookkeeping, one implementation every backend's cache embeds (`KvSlots`): which positions each
//! sequence slot holds, the full-attention layers' page pool (`pages.rs`), the sliding layers' rings, and
//! which layers store KV at all (a layer that reuses another layer's KV stores none). A backend's cache adds
//! only its storage, sized from `KvSlots::rows`.

mod pages;

use std::sync::atomic::{AtomicU64, Ordering};

pub use pages::{paged_kv_dims, PagePool, Ring, KV_PAGE};

use crate::bail;
use crate::error::Result;
use crate::spec::ModelSpec;
use crate::step::Step;

/// Where a layer that owns its KV keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvLayout {
    /// Full attention: pages of the shared pool, through each slot's page table.
    Paged,
    /// Sliding window: the last `rows` positions of each slot.
    Ring(Ring),
}

/// The cache a backend keeps: its storage beside the bookkeeping every backend shares.
pub trait KvCache {
    fn kv(&self) -> &KvSlots;
    fn kv_mut(&mut self) -> &mut KvSlots;
}

pub struct KvSlots {
    /// Tells caches apart (a GPU backend remembers whose page tables it last uploaded).
    id: u64,
    lens: Vec<usize>,
    /// The most positions a sequence may reach.
    context: usize,
    pages: PagePool,
    /// Page-table entries per slot: enough for `context` positions.
    pages_per_seq: usize,
    /// Per layer: None when it reuses another layer's KV.
    layers: Vec<Option<KvLayout>>,
}

impl KvSlots {
    /// Bookkeeping for `slots` sequences of up to `context` positions (fewer when the pool is smaller). The
    /// full layers' pool holds `pool_tokens` positions (default: every slot's whole context); sliding layers
    /// keep `ring_extra` positions beyond their window (see `Ring::new`).
    pub fn new(
        spec: &ModelSpec,
        slots: usize,
        context: usize,
        pool_tokens: Option<usize>,
        ring_extra: usize,
    ) -> KvSlots {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let paged = paged_kv_dims(spec).next().is_some();
        let pages = PagePool::new(slots, pool_tokens.unwrap_or(slots * context), paged);
        let context = pages.bound(context);
        let layers = spec
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| {
                (l.attn.kv_source == i).then(|| match l.attn.window() {
                    Some(w) => KvLayout::Ring(Ring::new(w, ring_extra, context)),
                    None => KvLayout::Paged,
                })
            })
            .collect();
        KvSlots {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            lens: vec![0; slots],
            pages_per_seq: context.div_ceil(KV_PAGE),
            context,
            pages,
            layers,
        }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn slots(&self) -> usize {
        self.lens.len()
    }

    /// Tokens cached so far for a sequence slot.
    pub fn seq_len(&self, slot: usize) -> usize {
        self.lens[slot]
    }

    /// The most positions a sequence may reach: the model's context, bounded by the cache and its pool.
    pub fn capacity(&self) -> usize {
        self.context
    }

    /// How layer `layer` keeps its KV; None when it reuses another layer's.
    pub fn layout(&self, layer: usize) -> Option<KvLayout> {
        self.layers[layer]
    }

    /// KV rows a layer's storage needs for every slot: a ring per slot, or the whole page pool.
    pub fn rows(&self, layer: usize) -> Option<usize> {
        self.layers[layer].map(|l| match l {
            KvLayout::Paged => self.pages.pages() * KV_PAGE,
            KvLayout::Ring(r) => self.slots() * r.rows,
        })
    }

    /// The full-attention layers' page pool the positions are counted in.
    pub fn pages(&self) -> &PagePool {
        &self.pages
    }

    pub fn pages_per_seq(&self) -> usize {
        self.pages_per_seq
    }

    /// Every slot's page table padded to `pages_per_seq` entries, slot after slot (what the kernels index).
    pub fn flat_tables(&self) -> Vec<u32> {
        self.pages.flat_tables(self.pages_per_seq)
    }

    /// Forget a sequence so its slot can start again at position 0. Storage is rewritten as it grows again.
    pub fn reset(&mut self, slot: usize) {
        self.truncate(slot, 0);
    }

    /// Whether the slot can continue from position `len` (at most its length) after dropping what follows:
    /// every sliding layer must still hold the window a token at `len` attends to (pages keep every position).
    pub fn can_truncate(&self, slot: usize, len: usize) -> bool {
        let seq_len = self.lens[slot];
        len <= seq_len
            && self.layers.iter().all(|l| match l {
                Some(KvLayout::Ring(ring)) => ring.keeps(seq_len, len),
                _ => true,
            })
    }

    /// Keeps the first `len` positions of a slot (see `can_truncate`); positions from `len` on are rewritten
    /// as the sequence grows again.
    pub fn truncate(&mut self, slot: usize, len: usize) {
        self.lens[slot] = len.min(self.lens[slot]);
        self.pages.shrink(slot, len);
    }

    /// Slots in range, each sequence continuing where its cache ends, and no position past the context.
    pub fn check(&self, step: &Step) -> Result<()> {
        let mut next = std::collections::HashMap::new();
        for (&pos, &seq) in step.positions.iter().zip(&step.seqs) {
            if seq >= self.slots() {
                bail!("sequence slot {seq} is out of range ({} slots)", self.slots());
            }
            let expected = next.entry(seq).or_insert_with(|| self.lens[seq]);
            if pos != *expected {
                bail!("sequence {seq}: token at position {pos}, expected position {expected}");
            }
            if pos >= self.context {
                bail!("sequence {seq} reached the context of {} tokens", self.context);
            }
            *expected += 1;
        }
        Ok(())
    }

    /// Gives the step's sequences the pages their new positions need (an error when the pool cannot); true
    /// when a page table changed.
    pub fn reserve(&mut self, step: &Step) -> Result<bool> {
        self.pages.reserve(step)
    }

    /// Counts the step's positions as cached, after the step ran.
    pub fn advance(&mut self, step: &Step) {
        let ends = step.ends(self.lens.len());
        for (len, end) in self.lens.iter_mut().zip(ends) {
            *len = (*len).max(end);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{AttnKind, AttnSpec, FfnSpec, LayerSpec, QkNorm, RopeScaling, RopeSpec};

    fn layer(window: Option<usize>, kv_source: usize) -> LayerSpec {
        LayerSpec {
            attn: AttnSpec {
                kind: window.map_or(AttnKind::Full, |window| AttnKind::Sliding { window }),
                n_heads: 2,
                n_kv_heads: 1,
                head_dim: 4,
                qkv_bias: false,
                o_bias: false,
                qk_norm: QkNorm::None,
                clip_qkv: None,
                sinks: false,
                softmax_scale: 0.5,
                rope: RopeSpec {
                    theta: 10000.0,
                    scaling: RopeScaling::None,
                },
                kv_source,
            },
            ffn: FfnSpec::Dense { intermediate: 1 },
        }
    }

    fn spec(layers: Vec<LayerSpec>) -> ModelSpec {
        ModelSpec {
            family: "test".into(),
            vocab_size: 10,
            hidden_size: 8,
            tie_word_embeddings: true,
            rms_norm_eps: 1e-6,
            max_position_embeddings: 1000,
            bos_token_id: None,
            eos_token_ids: vec![],
            layers,
        }
    }

    #[test]
    fn layers_store_by_kind_and_reusing_layers_store_nothing() {
        let spec = spec(vec![layer(Some(8), 0), layer(None, 1), layer(None, 1)]);
        let kv = KvSlots::new(&spec, 2, 1000, Some(100), 16);
        assert_eq!(kv.layout(0), Some(KvLayout::Ring(Ring { window: 8, rows: 24 })));
        assert_eq!(kv.layout(1), Some(KvLayout::Paged));
        assert_eq!(kv.layout(2), None);
        // A pool of 100 positions rounds up to 4 pages and bounds the context.
        assert_eq!((kv.rows(0), kv.rows(1), kv.rows(2)), (Some(48), Some(128), None));
        assert_eq!(kv.capacity(), 128);
        assert_eq!(kv.pages_per_seq(), 4);
    }

    #[test]
    fn steps_advance_slots_and_truncation_respects_the_rings() {
        let spec = spec(vec![layer(Some(4), 0), layer(None, 1)]);
        let mut kv = KvSlots::new(&spec, 2, 1000, None, 0);
        let step = Step::single(1, &[0; 10], 0);
        kv.check(&step).unwrap();
        assert!(kv.reserve(&step).unwrap());
        kv.advance(&step);
        assert_eq!((kv.seq_len(0), kv.seq_len(1)), (0, 10));
        assert!(kv.check(&Step::single(1, &[0], 11)).is_err());
        assert!(kv.check(&Step::single(2, &[0], 0)).is_err());
        // A ring of exactly the window (the CPU reference) resumes only at its last position.
        assert!(kv.can_truncate(1, 9));
        assert!(!kv.can_truncate(1, 8));
        kv.truncate(1, 9);
        assert_eq!(kv.seq_len(1), 9);
        kv.reset(1);
        assert_eq!((kv.seq_len(1), kv.pages().free_pages()), (0, kv.pages().pages()));
    }
}
