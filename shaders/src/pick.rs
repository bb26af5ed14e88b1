//! Token choice on the device (`sample.wgsl`, which follows `Pick::choose`): one workgroup per row, and
//! only the chosen ids come back. A row whose kept set may reach past the kernel's 1024 sorted candidates is
//! flagged and chosen from its logits on the host.

use volt_runtime::sampler::Pick;
use volt_runtime::{bail, Result};

use crate::backend::WgpuBackend;
use crate::buffers::GpuTensor;
use crate::kernels::Op;
use crate::params::SampleParams;

impl WgpuBackend {
    /// Records a choice per row of `logits`, submits the step and starts reading the ids back.
    pub(crate) fn start_pick(&mut self, logits: &GpuTensor, picks: &[Pick]) -> Result<()> {
        let (rows, vocab) = (logits.rows, logits.cols);
        let penalized: Vec<u32> = picks.iter().flat_map(|p| p.penalized.iter().copied()).collect();
        let device = &self.gpu.device;
        let pen = self
            .buffers
            .dedicated(device, "pick-penalized", (penalized.len() * 4) as u64);
        if !penalized.is_empty() {
            self.gpu
                .queue
                .write_buffer(&pen.buffer, 0, bytemuck::cast_slice(&penalized));
        }
        let keys = self.buffers.dedicated(device, "pick-keys", (rows * vocab * 4) as u64);
        let out = self.buffers.dedicated(device, "pick-out", (rows * 8) as u64);
        let mut offset = 0;
        for (row, pick) in picks.iter().enumerate() {
            let s = &pick.params;
            let params = SampleParams {
                vocab: vocab as u32,
                row: row as u32,
                top_k: s.top_k.min(u32::MAX as usize) as u32,
                n_penalized: pick.penalized.len() as u32,
                penalized_offset: offset as u32,
                temperature: s.temperature,
                top_p: s.top_p,
                min_p: s.min_p,
                penalty: s.repeat_penalty,
                draw: pick.uniform as f32,
                ..Default::default()
            };
            offset += pick.penalized.len();
            self.dispatch(Op::Sample, None, &params, &[logits.buf(), &pen, &keys, &out], [1, 1, 1])?;
        }
        self.recorder.flush(&self.gpu)?;
        self.pick_read = Some(self.recorder.start_read(&self.gpu, &out, (rows * 8) as u64));
        Ok(())
    }

    /// The ids of the choice `start_pick` started, given the same logits and picks.
    pub(crate) fn finish_pick(&mut self, logits: &GpuTensor, picks: &[Pick]) -> Result<Vec<u32>> {
        let Some(read) = self.pick_read.take() else {
            bail!("no token choice is in flight");
        };
        let words: Vec<u32> = bytemuck::pod_collect_to_vec(&self.recorder.finish_read(&self.gpu, read)?);
        let mut ids: Vec<u32> = words.chunks(2).map(|w| w[0]).collect();
        // The read submits only its copy: a next step may be recorded and waiting for its tokens.
        if words.chunks(2).any(|w| w[1] != 0) {
            let vocab = logits.cols;
            let read = self
                .recorder
                .start_read(&self.gpu, logits.buf(), (logits.rows * vocab * 4) as u64);
            let data: Vec<f32> = bytemuck::pod_collect_to_vec(&self.recorder.finish_read(&self.gpu, read)?);
            for (row, w) in words.chunks(2).enumerate() {
                if w[1] != 0 {
                    ids[row] = picks[row].choose(&data[row * vocab..(row + 1) * vocab]);
                }
            }
        }
        Ok(ids)
    }
}
