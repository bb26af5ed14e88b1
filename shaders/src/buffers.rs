//! Device memory: every buffer the backend creates, with an id (bind groups are cached by the ids they bind)
//! and counted in `allocated`. Activations come from a pool of power-of-two buffers reused across steps (no
//! allocation once the shapes have been seen); buffers the host rewrites while a step is recorded are kept
//! apart by name, since a pooled one may still be in use by the step.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use wgpu::util::DeviceExt;

use volt_runtime::{bail, Result};

use crate::device::Gpu;

/// A device buffer with an id for bind-group caching.
pub struct GpuBuffer {
    pub buffer: wgpu::Buffer,
    pub id: u64,
}

type Pool = Arc<Mutex<HashMap<u64, Vec<Arc<GpuBuffer>>>>>;

/// A pooled buffer that goes back to the pool when the tensor holding it is dropped.
pub struct Pooled {
    buf: Arc<GpuBuffer>,
    pool: Pool,
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let size = self.buf.buffer.size();
        self.pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(size)
            .or_default()
            .push(self.buf.clone());
    }
}

/// Activations: `rows` x `cols` f32 on the device.
pub struct GpuTensor {
    mem: Pooled,
    pub rows: usize,
    pub cols: usize,
}

impl GpuTensor {
    pub(crate) fn buf(&self) -> &Arc<GpuBuffer> {
        &self.mem.buf
    }
}

/// A vector kept in f32 (norm weights, biases, sinks).
pub struct GpuVector {
    pub(crate) buf: Arc<GpuBuffer>,
}

pub(crate) const STORAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_DST)
    .union(wgpu::BufferUsages::COPY_SRC);

pub(crate) struct Buffers {
    next_id: u64,
    pool: Pool,
    /// Buffers the host writes while a step is recorded, by name.
    dedicated: HashMap<&'static str, Arc<GpuBuffer>>,
    /// Bytes of every buffer created.
    pub allocated: u64,
    /// Bound where a kernel's optional input is absent.
    pub dummy: Arc<GpuBuffer>,
}

impl Buffers {
    pub fn new(device: &wgpu::Device) -> Buffers {
        let mut buffers = Buffers {
            next_id: 0,
            pool: Arc::new(Mutex::new(HashMap::new())),
            dedicated: HashMap::new(),
            allocated: 0,
            dummy: Arc::new(GpuBuffer {
                buffer: device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("absent input"),
                    size: 16,
                    usage: STORAGE,
                    mapped_at_creation: false,
                }),
                id: 0,
            }),
        };
        buffers.allocated = 16;
        buffers
    }

    fn wrap(&mut self, buffer: wgpu::Buffer) -> Arc<GpuBuffer> {
        self.allocated += buffer.size();
        self.next_id += 1;
        Arc::new(GpuBuffer {
            buffer,
            id: self.next_id,
        })
    }

    /// A new buffer of `size` bytes.
    pub fn create(
        &mut self,
        device: &wgpu::Device,
        label: &str,
        size: u64,
        usage: wgpu::BufferUsages,
    ) -> Arc<GpuBuffer> {
        let buffer = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage,
            mapped_at_creation: false,
        });
        self.wrap(buffer)
    }

    /// A storage buffer holding `bytes`, or an error when it exceeds what one binding may hold.
    pub fn upload(&mut self, gpu: &Gpu, bytes: &[u8], what: &str) -> Result<Arc<GpuBuffer>> {
        let max = gpu.max_binding();
        if bytes.len() as u64 > max {
            bail!(
                "{what} takes {} bytes, more than one buffer binding holds on {} ({max})",
                bytes.len(),
                gpu.name()
            );
        }
        // Zero-length bindings are invalid; pad to one word.
        let contents: &[u8] = if bytes.is_empty() { &[0; 4] } else { bytes };
        let buffer = gpu.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: None,
            contents,
            usage: STORAGE,
        });
        Ok(self.wrap(buffer))
    }

    /// The buffer named `name`, at least `bytes` long (replaced by a larger one when needed).
    pub fn dedicated(&mut self, device: &wgpu::Device, name: &'static str, bytes: u64) -> Arc<GpuBuffer> {
        if let Some(b) = self.dedicated.get(name).filter(|b| b.buffer.size() >= bytes) {
            return b.clone();
        }
        let b = self.create(device, name, bytes.max(16).next_power_of_two(), STORAGE);
        self.dedicated.insert(name, b.clone());
        b
    }

    /// An activation tensor from the pool (sizes rounded up to a power of two so shapes share buffers).
    pub fn tensor(&mut self, device: &wgpu::Device, rows: usize, cols: usize) -> GpuTensor {
        let bytes = ((rows * cols * 4).max(16) as u64).next_power_of_two();
        let reused = self
            .pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&bytes)
            .and_then(Vec::pop);
        let buf = reused.unwrap_or_else(|| self.create(device, "activations", bytes, STORAGE));
        GpuTensor {
            mem: Pooled {
                buf,
                pool: self.pool.clone(),
            },
            rows,
            cols,
        }
    }
}
