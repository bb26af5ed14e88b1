//! The step's inputs on the device: token ids, positions, sequence slots (followed by every slot's KV page
//! table, `wgsl/kv_pages.wgsl`), the rows that need logits, and the blocks of the tiled prefill attention.

use std::sync::Arc;

use volt_runtime::step::{Step, MAX_STEP_TOKENS};
use volt_runtime::Result;

use crate::attention::attention_blocks;
use crate::buffers::{Buffers, GpuBuffer, STORAGE};
use crate::device::Gpu;
use crate::recorder::Recorder;

pub(crate) struct StepBuffers {
    pub tokens: Arc<GpuBuffer>,
    pub positions: Arc<GpuBuffer>,
    /// The step's sequence slots, then the page tables from word `MAX_STEP_TOKENS` on.
    pub seqs: Arc<GpuBuffer>,
    pub rows: Arc<GpuBuffer>,
    /// (first row, rows) of each block of the tiled prefill attention; `n_blocks` of them this step.
    pub blocks: Arc<GpuBuffer>,
    pub n_blocks: usize,
    /// The step as the host knows it.
    pub step: Step,
}

impl StepBuffers {
    pub fn new(device: &wgpu::Device, buffers: &mut Buffers) -> StepBuffers {
        let bytes = (MAX_STEP_TOKENS * 4) as u64;
        let mut make = |label, size| buffers.create(device, label, size, STORAGE);
        StepBuffers {
            tokens: make("step tokens", bytes),
            positions: make("step positions", bytes),
            seqs: make("step seqs and page tables", bytes),
            rows: make("logit rows", bytes),
            blocks: make("attention blocks", 2 * bytes),
            n_blocks: 0,
            step: Step::default(),
        }
    }

    /// Writes a step's inputs. What an earlier step recorded must have run (they are rewritten).
    pub fn write(&mut self, gpu: &Gpu, step: &Step) {
        let q = &gpu.queue;
        q.write_buffer(&self.tokens.buffer, 0, bytemuck::cast_slice(&step.tokens));
        let words = |v: &[usize]| v.iter().map(|&x| x as u32).collect::<Vec<u32>>();
        q.write_buffer(&self.positions.buffer, 0, bytemuck::cast_slice(&words(&step.positions)));
        q.write_buffer(&self.seqs.buffer, 0, bytemuck::cast_slice(&words(&step.seqs)));
        let blocks = attention_blocks(step);
        q.write_buffer(&self.blocks.buffer, 0, bytemuck::cast_slice(&blocks));
        self.n_blocks = blocks.len() / 2;
        self.step = step.clone();
    }

    /// Writes the ids of rows whose tokens were not known when the step was recorded.
    pub fn fill_tokens(&self, gpu: &Gpu, fills: &[(usize, u32)]) {
        for &(row, id) in fills {
            let offset = (row * 4) as u64;
            gpu.queue
                .write_buffer(&self.tokens.buffer, offset, bytemuck::bytes_of(&id));
        }
    }

    /// Writes the rows `select_rows` gathers.
    pub fn write_rows(&self, gpu: &Gpu, rows: &[usize]) {
        let ids: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        gpu.queue.write_buffer(&self.rows.buffer, 0, bytemuck::cast_slice(&ids));
    }

    /// Makes room for `entries` page-table entries after the step's sequence slots; true when the buffer
    /// was replaced (the tables it held are gone).
    pub fn hold_page_tables(
        &mut self,
        gpu: &Gpu,
        buffers: &mut Buffers,
        recorder: &mut Recorder,
        entries: usize,
    ) -> Result<bool> {
        let bytes = ((MAX_STEP_TOKENS + entries) * 4) as u64;
        if bytes <= self.seqs.buffer.size() {
            return Ok(false);
        }
        // Steps recorded so far bind the old buffer: they run first.
        recorder.flush(gpu)?;
        self.seqs = buffers.create(&gpu.device, "step seqs and page tables", bytes, STORAGE);
        Ok(true)
    }

    pub fn write_page_tables(&self, gpu: &Gpu, tables: &[u32]) {
        let offset = (MAX_STEP_TOKENS * 4) as u64;
        gpu.queue
            .write_buffer(&self.seqs.buffer, offset, bytemuck::cast_slice(tables));
    }
}
