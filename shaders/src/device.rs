//! The device: adapter choice, limits, and turning wgpu's asynchronous errors (validation, out of memory,
//! device loss) into `Err` values instead of panics or garbage output.

use std::sync::{Arc, Mutex};

use volt_runtime::{bail, Error, Result};

pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub limits: wgpu::Limits,
    /// The first error wgpu reported since the last check (it reports them from callbacks).
    errors: Arc<Mutex<Option<String>>>,
}

/// An instance over `backends` (WGPU_BACKEND and friends in the environment can narrow the choice).
fn instance(backends: wgpu::Backends) -> wgpu::Instance {
    let desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: desc.backends & backends,
        ..desc
    })
}

/// Every adapter wgpu can open here (GPUs and software ones such as lavapipe). GL is only probed when no
/// Vulkan, Metal or DX12 adapter exists: it is the slowest path, and probing it wakes EGL.
pub fn adapters() -> Vec<wgpu::Adapter> {
    let primary = pollster::block_on(instance(wgpu::Backends::PRIMARY).enumerate_adapters(wgpu::Backends::PRIMARY));
    if !primary.is_empty() {
        return primary;
    }
    pollster::block_on(instance(wgpu::Backends::GL).enumerate_adapters(wgpu::Backends::GL))
}

/// A one-line name: "NVIDIA H100 (Vulkan, DiscreteGpu)".
pub fn adapter_name(info: &wgpu::AdapterInfo) -> String {
    format!("{} ({:?}, {:?})", info.name, info.backend, info.device_type)
}

impl Gpu {
    /// The best adapter: a discrete GPU, else an integrated one, else any (software last).
    pub fn open_default() -> Result<Gpu> {
        let mut all = adapters();
        if all.is_empty() {
            bail!("no GPU adapter found (no Vulkan, Metal, DX12 or GL driver; on Linux install mesa-vulkan-drivers)");
        }
        all.sort_by_key(|a| match a.get_info().device_type {
            wgpu::DeviceType::DiscreteGpu => 0,
            wgpu::DeviceType::IntegratedGpu => 1,
            wgpu::DeviceType::VirtualGpu => 2,
            wgpu::DeviceType::Other => 3,
            wgpu::DeviceType::Cpu => 4,
        });
        Gpu::open(all.swap_remove(0))
    }

    /// Whether a real (non-software) GPU adapter is present, for `--backend auto`.
    pub fn hardware_adapter_present() -> bool {
        adapters()
            .iter()
            .any(|a| !matches!(a.get_info().device_type, wgpu::DeviceType::Cpu))
    }

    pub fn open(adapter: wgpu::Adapter) -> Result<Gpu> {
        let info = adapter.get_info();
        // Ask for everything the adapter offers: the defaults (128 MiB bindings) are far too small for models.
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("volt"),
            required_features: adapter.features() & crate::kernels::KernelFeatures::WANTED,
            required_limits: limits.clone(),
            ..Default::default()
        }))
        .map_err(|e| Error::msg(format!("cannot open {}: {e}", adapter_name(&info))))?;
        let errors = Arc::new(Mutex::new(None));
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            let mut slot = sink.lock().unwrap_or_else(|p| p.into_inner());
            if slot.is_none() {
                let what = match &e {
                    wgpu::Error::OutOfMemory { .. } => "out of GPU memory".to_string(),
                    other => format!("{other:?}"),
                };
                *slot = Some(what.split_whitespace().collect::<Vec<_>>().join(" "));
            }
        }));
        let sink = errors.clone();
        device.set_device_lost_callback(move |reason, message| {
            let mut slot = sink.lock().unwrap_or_else(|p| p.into_inner());
            slot.get_or_insert_with(|| format!("GPU device lost ({reason:?}): {message}"));
        });
        Ok(Gpu {
            device,
            queue,
            info,
            limits,
            errors,
        })
    }

    pub fn name(&self) -> String {
        adapter_name(&self.info)
    }

    /// Most bytes one storage buffer binding may hold on this device.
    pub fn max_binding(&self) -> u64 {
        self.limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size)
    }

    /// Err with the first error wgpu reported since the last check.
    pub fn check(&self) -> Result<()> {
        match self.errors.lock().unwrap_or_else(|p| p.into_inner()).take() {
            Some(e) => bail!("{} on {}", e, self.name()),
            None => Ok(()),
        }
    }
}
