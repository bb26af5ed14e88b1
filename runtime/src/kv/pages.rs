//! Pages of the full-attention layers' KV (paged attention): one pool, sized at start-up and shared by every
//! sequence slot, handed out `KV_PAGE` positions at a time as sequences grow and returned when they shrink.
//! Every full-attention layer grows in step with the others, so one page table per slot serves them all: page
//! `table[slot][j / KV_PAGE]` holds position `j` in each full layer's pool. Sliding layers keep fixed rings per
//! slot (`Ring`) and layers that reuse another layer's KV hold nothing, so neither takes pages.

use crate::error::Result;
use crate::spec::ModelSpec;
use crate::step::Step;

/// Positions per page. The kernels' `kv_row` (`shaders/wgsl/kv_pages.wgsl`, `native-cuda/kernels/attention.cu`)
/// hold the same number.
pub const KV_PAGE: usize = 32;

/// A sliding layer's KV rows per slot: the last `rows` positions, position `j` at row `j % rows` on the GPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ring {
    pub window: usize,
    pub rows: usize,
}

impl Ring {
    /// The window plus `extra` positions, never more than `context`. A GPU ring keeps one step more
    /// (`MAX_STEP_TOKENS`), so a step never overwrites a key one of its own rows still sees; the CPU
    /// reference trims to the window after every step (`extra` 0).
    pub fn new(window: usize, extra: usize, context: usize) -> Ring {
        Ring {
            window,
            rows: (window + extra).min(context),
        }
    }

    /// Whether the ring, filled up to `seq_len`, still holds every key a token at `len` sees:
    /// (len - window, len] within the last `rows` positions.
    pub fn keeps(&self, seq_len: usize, len: usize) -> bool {
        (len + 1).saturating_sub(self.window) >= seq_len.saturating_sub(self.rows)
    }
}

/// The KV widths of the layers whose KV is paged: full-attention layers that own their KV.
pub fn paged_kv_dims(spec: &ModelSpec) -> impl Iterator<Item = usize> + Clone + '_ {
    spec.layers
        .iter()
        .enumerate()
        .filter(|(i, l)| l.attn.kv_source == *i && l.attn.window().is_none())
        .map(|(_, l)| l.attn.kv_dim())
}

pub struct PagePool {
    /// Per slot, its pages in position order.
    tables: Vec<Vec<u32>>,
    free: Vec<u32>,
    pages: usize,
    /// False when the model has no full-attention layer that owns KV: nothing is paged.
    in_use: bool,
}

impl PagePool {
    /// A pool of `tokens` positions (rounded up to whole pages) for `slots` sequences.
    pub fn new(slots: usize, tokens: usize, in_use: bool) -> PagePool {
        let pages = if in_use { tokens.div_ceil(KV_PAGE) } else { 0 };
        PagePool {
            tables: vec![Vec::new(); slots],
            // Popped from the end: low pages go first.
            free: (0..pages as u32).rev().collect(),
            pages,
            in_use,
        }
    }

    pub fn pages(&self) -> usize {
        self.pages
    }

    /// The longest sequence a cache with this pool holds: `context`, or fewer positions than that when it
    /// pages and the pool is smaller (a sequence never outgrows the pool).
    pub fn bound(&self, context: usize) -> usize {
        if self.in_use {
            context.min(self.pages * KV_PAGE)
        } else {
            context
        }
    }

    pub fn free_pages(&self) -> usize {
        self.free.len()
    }

    /// Pages a slot must gain to hold positions `0..len`.
    pub fn pages_needed(&self, slot: usize, len: usize) -> usize {
        if !self.in_use {
            return 0;
        }
        len.div_ceil(KV_PAGE).saturating_sub(self.tables[slot].len())
    }

    /// Gives every sequence of the step the pages its new positions fall in; true when a table changed.
    /// Takes nothing when the pool cannot cover the whole step.
    pub fn reserve(&mut self, step: &Step) -> Result<bool> {
        let ends = step.ends(self.tables.len());
        let needed: Vec<usize> = ends
            .iter()
            .enumerate()
            .map(|(slot, &end)| self.pages_needed(slot, end))
            .collect();
        let total: usize = needed.iter().sum();
        if total > self.free.len() {
            crate::bail!(
                "the KV pool is full: the step needs {total} more page(s) of {KV_PAGE} positions, {} of {} are free",
                self.free.len(),
                self.pages
            );
        }
        for (table, &n) in self.tables.iter_mut().zip(&needed) {
            let at = self.free.len() - n;
            table.extend(self.free.drain(at..).rev());
        }
        Ok(total > 0)
    }

    /// Returns the pages of a slot past position `len`.
    pub fn shrink(&mut self, slot: usize, len: usize) {
        let keep = len.div_ceil(KV_PAGE);
        let table = &mut self.tables[slot];
        while table.len() > keep {
            self.free.push(table.pop().expect("longer than keep"));
        }
    }

    /// Each slot's table padded to `stride` entries, slot after slot (what the kernels index).
    pub fn flat_tables(&self, stride: usize) -> Vec<u32> {
        let mut flat = vec![0; self.tables.len() * stride];
        for (slot, table) in self.tables.iter().enumerate() {
            flat[slot * stride..][..table.len()].copy_from_slice(table);
        }
        flat
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_handed_out_as_sequences_grow_and_returned_when_they_shrink() {
        let mut pool = PagePool::new(2, 4 * KV_PAGE - 5, true);
        assert_eq!(pool.pages(), 4);
        // A sequence can take the whole pool, no more.
        assert_eq!((pool.bound(1000), pool.bound(50)), (4 * KV_PAGE, 50));
        assert!(pool.reserve(&Step::single(0, &[0; 40], 0)).unwrap());
        assert!(pool.reserve(&Step::single(1, &[0; 10], 0)).unwrap());
        assert_eq!(pool.free_pages(), 1);
        assert_eq!(pool.flat_tables(3), [0, 1, 0, 2, 0, 0]);
        // Growing inside its last page takes nothing.
        assert!(!pool.reserve(&Step::single(1, &[0; 5], 10)).unwrap());
        assert_eq!(pool.pages_needed(0, 3 * KV_PAGE), 1);
        assert!(pool.reserve(&Step::single(0, &[0; 60], 40)).is_err());
        pool.shrink(0, KV_PAGE);
        assert_eq!(pool.free_pages(), 2);
        pool.reserve(&Step::single(1, &[0; 60], 15)).unwrap();
        assert_eq!(pool.flat_tables(3), [0, 0, 0, 2, 1, 3]);
    }

    #[test]
    fn a_ring_keeps_the_window_of_a_resumed_prefix_only_while_it_is_unwritten() {
        let ring = Ring::new(100, 512, 10_000);
        assert_eq!(ring.rows, 612);
        assert_eq!(Ring::new(100, 512, 300).rows, 300);
        // Filled to 1000: rows hold positions 388..1000; resuming at 600 needs 501..=600.
        assert!(ring.keeps(1000, 600));
        // Resuming at 450 needs 351..=450, of which 351..388 were overwritten.
        assert!(!ring.keeps(1000, 450));
    }

    #[test]
    fn a_model_without_full_attention_takes_no_pages() {
        let mut pool = PagePool::new(1, 1000, false);
        assert_eq!(pool.bound(5000), 5000);
        assert_eq!(pool.pages_needed(0, 500), 0);
        assert!(!pool.reserve(&Step::single(0, &[0; 100], 0)).unwrap());
    }
}
