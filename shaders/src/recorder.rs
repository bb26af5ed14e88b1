//! Recording a step and reading results back. Each op records dispatches: the kernel's parameter struct
//! goes into one uniform ring at a dynamic offset, its bind group comes from a cache keyed by the buffers it
//! binds. Nothing runs until the step is submitted as one compute pass (`flush`); a read copies one buffer
//! to a staging buffer and maps it.

use std::collections::HashMap;
use std::sync::mpsc::Receiver;
use std::sync::Arc;

use volt_runtime::{bail, Error, Result};

use crate::buffers::{Buffers, GpuBuffer};
use crate::device::Gpu;
use crate::kernels::{Kernel, PARAMS_STRIDE};
use crate::params::KernelParams;

struct Dispatch {
    kernel: Arc<Kernel>,
    bind_group: Arc<wgpu::BindGroup>,
    params_offset: u32,
    groups: [u32; 3],
}

pub(crate) struct Recorder {
    params: Vec<u8>,
    ring: Arc<GpuBuffer>,
    bind_groups: HashMap<(u32, Vec<u64>), Arc<wgpu::BindGroup>>,
    dispatches: Vec<Dispatch>,
    /// Part of the current step was submitted while it was recorded (it outgrew the ring): its tokens can no
    /// longer be filled in late.
    pub submitted_mid_step: bool,
    staging: Option<wgpu::Buffer>,
}

/// A copy to the staging buffer that was submitted and is being mapped.
pub(crate) struct PendingRead {
    size: u64,
    len: u64,
    mapped: Receiver<std::result::Result<(), wgpu::BufferAsyncError>>,
}

const UNIFORM: wgpu::BufferUsages = wgpu::BufferUsages::UNIFORM.union(wgpu::BufferUsages::COPY_DST);

impl Recorder {
    pub fn new(device: &wgpu::Device, buffers: &mut Buffers) -> Recorder {
        Recorder {
            params: Vec::new(),
            ring: buffers.create(device, "params", 64 * PARAMS_STRIDE, UNIFORM),
            bind_groups: HashMap::new(),
            dispatches: Vec::new(),
            submitted_mid_step: false,
            staging: None,
        }
    }

    /// Makes the ring hold `dispatches` parameter blocks (a whole step), when it holds fewer.
    pub fn reserve(&mut self, gpu: &Gpu, buffers: &mut Buffers, dispatches: usize) -> Result<()> {
        let bytes = (dispatches as u64 * PARAMS_STRIDE).next_power_of_two();
        if bytes > self.ring.buffer.size() {
            self.flush(gpu)?;
            let size = bytes.min(gpu.limits.max_buffer_size);
            self.ring = buffers.create(&gpu.device, "params", size, UNIFORM);
            self.bind_groups.clear();
        }
        Ok(())
    }

    /// Forgets cached bind groups (their kernels were rebuilt).
    pub fn clear_bind_groups(&mut self) {
        self.bind_groups.clear();
    }

    /// Records one dispatch of `kernel` with `params` and `buffers` at bindings 1.. A step longer than the
    /// ring is submitted in parts (still no read-back).
    pub fn record<P: KernelParams>(
        &mut self,
        gpu: &Gpu,
        kernel: Arc<Kernel>,
        params: &P,
        buffers: &[&Arc<GpuBuffer>],
        groups: [u32; 3],
    ) -> Result<()> {
        if kernel.bindings != buffers.len() + 1 {
            bail!(
                "{}: {} buffers bound, the kernel has {} bindings",
                kernel.label,
                buffers.len(),
                kernel.bindings - 1
            );
        }
        if (self.params.len() as u64 + PARAMS_STRIDE) > self.ring.buffer.size() {
            self.flush(gpu)?;
            self.submitted_mid_step = true;
        }
        let offset = self.params.len();
        self.params.extend_from_slice(bytemuck::bytes_of(params));
        self.params.resize(offset + PARAMS_STRIDE as usize, 0);
        let bind_group = self.bind_group(gpu, &kernel, buffers);
        self.dispatches.push(Dispatch {
            kernel,
            bind_group,
            params_offset: offset as u32,
            groups,
        });
        Ok(())
    }

    fn bind_group(&mut self, gpu: &Gpu, kernel: &Kernel, buffers: &[&Arc<GpuBuffer>]) -> Arc<wgpu::BindGroup> {
        let ring = &self.ring;
        let key = (
            kernel.id,
            std::iter::once(ring.id)
                .chain(buffers.iter().map(|b| b.id))
                .collect::<Vec<_>>(),
        );
        if let Some(bg) = self.bind_groups.get(&key) {
            return bg.clone();
        }
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: &ring.buffer,
                offset: 0,
                size: wgpu::BufferSize::new(PARAMS_STRIDE),
            }),
        }];
        entries.extend(buffers.iter().enumerate().map(|(i, b)| wgpu::BindGroupEntry {
            binding: i as u32 + 1,
            resource: b.buffer.as_entire_binding(),
        }));
        let bg = Arc::new(gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &kernel.layout,
            entries: &entries,
        }));
        self.bind_groups.insert(key, bg.clone());
        bg
    }

    /// Submits everything recorded so far as one compute pass.
    pub fn flush(&mut self, gpu: &Gpu) -> Result<()> {
        if self.dispatches.is_empty() {
            return Ok(());
        }
        gpu.queue.write_buffer(&self.ring.buffer, 0, &self.params);
        let mut encoder = gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("step") });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("step"),
                timestamp_writes: None,
            });
            for d in &self.dispatches {
                pass.set_pipeline(&d.kernel.pipeline);
                pass.set_bind_group(0, d.bind_group.as_ref(), &[d.params_offset]);
                pass.dispatch_workgroups(d.groups[0], d.groups[1], d.groups[2]);
            }
        }
        gpu.queue.submit([encoder.finish()]);
        self.dispatches.clear();
        self.params.clear();
        gpu.check()
    }

    /// Runs what was recorded and reads `len` bytes of `buf` back.
    pub fn read(&mut self, gpu: &Gpu, buf: &GpuBuffer, len: u64) -> Result<Vec<u8>> {
        self.flush(gpu)?;
        let read = self.start_read(gpu, buf, len);
        self.finish_read(gpu, read)
    }

    /// Submits a copy of `len` bytes of `buf` to the staging buffer and starts mapping it. Submits nothing
    /// else: dispatches recorded since the last flush stay recorded.
    pub fn start_read(&mut self, gpu: &Gpu, buf: &GpuBuffer, len: u64) -> PendingRead {
        let size = len.max(4).next_multiple_of(4);
        if self.staging.as_ref().is_none_or(|s| s.size() < size) {
            self.staging = Some(gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("read-back"),
                size: size.next_power_of_two(),
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            }));
        }
        let staging = self.staging.as_ref().expect("created above");
        let mut encoder = gpu
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("read") });
        encoder.copy_buffer_to_buffer(&buf.buffer, 0, staging, 0, size);
        gpu.queue.submit([encoder.finish()]);
        let (tx, mapped) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, 0..size, move |r| {
            let _ = tx.send(r);
        });
        PendingRead { size, len, mapped }
    }

    /// Waits for a read to land and returns its bytes.
    pub fn finish_read(&mut self, gpu: &Gpu, read: PendingRead) -> Result<Vec<u8>> {
        gpu.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::msg(format!("waiting for {}: {e}", gpu.name())))?;
        gpu.check()?;
        match read.mapped.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => bail!("reading results back from {}: {e}", gpu.name()),
            Err(_) => bail!("reading results back from {}: the device went away", gpu.name()),
        }
        let Some(staging) = self.staging.as_ref() else {
            bail!("reading results back from {}: no read is in flight", gpu.name());
        };
        let bytes = staging
            .get_mapped_range(0..read.size)
            .map_err(|e| Error::msg(e.to_string()))?[..read.len as usize]
            .to_vec();
        staging.unmap();
        Ok(bytes)
    }
}
