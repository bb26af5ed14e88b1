//! The backend registry: what `--backend` names, how each backend is opened, which KV dtype and context it
//! keeps unless told, and how much memory a model takes on it. The CLI, `volt info`, the server and the app
//! all go through `BackendKind`.

use std::path::Path;

use volt_runtime::backend::cpu::CpuBackend;
use volt_runtime::backend::{kept_dtype, Backend};
use volt_runtime::checkpoint::Checkpoint;
use volt_runtime::dtype::{KvDtype, Precision, WeightDtype};
use volt_runtime::hf_config::HfConfig;
use volt_runtime::models;
use volt_runtime::session::{BackendSession, Session};
use volt_runtime::spec::ModelSpec;
use volt_runtime::{bail, Result, ResultExt};
use volt_wgpu::{Gpu, WgpuBackend};

use crate::cli::Flags;

/// Tokens a GPU KV cache holds per sequence unless the model's context is shorter.
pub const GPU_CONTEXT: usize = 8192;

/// A backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    /// The f32 CPU reference.
    Cpu,
    /// WGSL kernels on any GPU adapter (`volt-wgpu`).
    Wgpu,
    /// CUDA kernels with FP8 on Hopper (`volt-cuda`).
    Cuda,
}

/// What `--backend` names: a backend, or `auto`, the best one this machine runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendChoice {
    Auto,
    Kind(BackendKind),
}

impl BackendChoice {
    /// Every choice, in the order menus list them.
    pub const ALL: [BackendChoice; 4] = [
        BackendChoice::Auto,
        BackendChoice::Kind(BackendKind::Cpu),
        BackendChoice::Kind(BackendKind::Wgpu),
        BackendChoice::Kind(BackendKind::Cuda),
    ];

    /// The name `--backend` takes.
    pub fn name(self) -> &'static str {
        match self {
            BackendChoice::Auto => "auto",
            BackendChoice::Kind(kind) => kind.name(),
        }
    }

    pub fn parse(name: &str) -> Result<BackendChoice> {
        match BackendChoice::ALL.into_iter().find(|c| c.name() == name) {
            Some(choice) => Ok(choice),
            None => {
                let names: Vec<&str> = BackendChoice::ALL.iter().map(|c| c.name()).collect();
                bail!("unknown backend `{name}` (expected one of: {})", names.join(", "))
            }
        }
    }

    /// `--backend` of a command's flags (default `auto`).
    pub fn from_flags(flags: &Flags) -> Result<BackendChoice> {
        BackendChoice::parse(flags.str("backend").unwrap_or("auto"))
    }

    /// The backend chosen: for `auto`, CUDA on a Hopper GPU, else wgpu on a hardware GPU adapter, else the
    /// CPU (a software adapter such as lavapipe is slower than the CPU backend).
    pub fn resolve(self) -> BackendKind {
        match self {
            BackendChoice::Kind(kind) => kind,
            BackendChoice::Auto if volt_cuda::hopper_ready() => BackendKind::Cuda,
            BackendChoice::Auto if Gpu::hardware_adapter_present() => BackendKind::Wgpu,
            BackendChoice::Auto => BackendKind::Cpu,
        }
    }
}

/// Saved by the app's settings as its name.
impl serde::Serialize for BackendChoice {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for BackendChoice {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        BackendChoice::parse(&name).map_err(serde::de::Error::custom)
    }
}

impl BackendKind {
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Cpu => "cpu",
            BackendKind::Wgpu => "wgpu",
            BackendKind::Cuda => "cuda",
        }
    }

    /// How the backend keeps K and V unless `--kv-dtype` says otherwise: f32 on the CPU reference, f16 on
    /// the GPUs.
    pub fn default_kv_dtype(self) -> KvDtype {
        match self {
            BackendKind::Cpu => KvDtype::F32,
            BackendKind::Wgpu | BackendKind::Cuda => KvDtype::F16,
        }
    }

    /// The positions a sequence's cache holds: the model's context, at most `GPU_CONTEXT` on a GPU.
    pub fn context(self, spec: &ModelSpec) -> usize {
        match self {
            BackendKind::Cpu => spec.max_position_embeddings,
            BackendKind::Wgpu | BackendKind::Cuda => spec.max_position_embeddings.min(GPU_CONTEXT),
        }
    }

    /// Bytes one weight of a matrix kept at `precision` takes when the bulk is stored in `dtype`: the CPU
    /// computes from every dtype, the GPU kernels from f32, f16, bf16 and FP8 (`backend::kept_dtype`).
    pub fn bytes_per_weight(self, dtype: WeightDtype, precision: Precision) -> f64 {
        let decodes = match self {
            BackendKind::Cpu => None,
            BackendKind::Wgpu | BackendKind::Cuda => Some(&WeightDtype::ALL[..]),
        };
        kept_dtype(Some(dtype), precision, dtype, decodes).bytes()
    }

    /// Loads the model in `dir` with `slots` sequence slots; the full-attention layers' KV page pool holds
    /// `pool_tokens` positions (default: every slot's whole context, or what the device holds), and a
    /// smaller pool also bounds the context.
    pub fn open(
        self,
        dir: &Path,
        dtypes: &Dtypes,
        slots: usize,
        pool_tokens: Option<usize>,
    ) -> Result<Box<dyn Session + Send>> {
        let (dtype, kv) = (dtypes.weights, dtypes.kv.unwrap_or(self.default_kv_dtype()));
        match self {
            BackendKind::Cpu => load(CpuBackend::new(dtype).with_kv_dtype(kv), dir, slots, pool_tokens),
            BackendKind::Wgpu => {
                let gpu = Gpu::open_default().map_err(|e| e.context("backend wgpu cannot start"))?;
                let mut backend = WgpuBackend::with_gpu(gpu, dtype, GPU_CONTEXT)?;
                backend.set_kv_dtype(kv);
                load(backend, dir, slots, pool_tokens)
            }
            BackendKind::Cuda => {
                if kv != KvDtype::F16 {
                    bail!(
                        "the cuda backend keeps its KV cache in f16; --kv-dtype {} runs on cpu and wgpu",
                        kv.name()
                    );
                }
                let start = || volt_cuda::CudaBackend::new(volt_cuda::Device::open()?, dtype, GPU_CONTEXT);
                let backend = start().map_err(|e| e.context("backend cuda cannot start"))?;
                load(backend, dir, slots, pool_tokens)
            }
        }
    }

    /// The memory the model in `dir` takes on this backend with `slots` sequences of its whole context,
    /// from config.json and the weights' header alone.
    pub fn memory_estimate(self, dir: &Path, dtypes: &Dtypes, slots: usize) -> Result<MemoryEstimate> {
        let config = HfConfig::load(dir)?;
        let spec = models::family_of(&config)?.spec(&config).context("config.json")?;
        let dtype = dtypes.weights(dir)?;
        let kv_dtype = dtypes.kv.unwrap_or(self.default_kv_dtype());
        let context = self.context(&spec);
        Ok(MemoryEstimate {
            weight_bytes: spec.weight_bytes(|p| self.bytes_per_weight(dtype, p)),
            kv_bytes: slots as u64 * spec.kv_bytes(context, kv_dtype),
            dtype,
            kv_dtype,
            context,
        })
    }
}

/// What a model takes on a backend (`BackendKind::memory_estimate`).
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryEstimate {
    pub weight_bytes: u64,
    pub kv_bytes: u64,
    pub dtype: WeightDtype,
    pub kv_dtype: KvDtype,
    /// Positions each sequence's cache holds.
    pub context: usize,
}

/// `--dtype` and `--kv-dtype`: the weights' and the KV cache's precision. Unset, weights stay as published
/// (each tensor in its own dtype, where the backend decodes it) and the KV cache in the backend's
/// (`BackendKind::default_kv_dtype`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Dtypes {
    pub weights: Option<WeightDtype>,
    pub kv: Option<KvDtype>,
}

impl Dtypes {
    pub fn from_flags(flags: &Flags) -> Result<Dtypes> {
        Ok(Dtypes {
            weights: flags.str("dtype").map(WeightDtype::parse).transpose()?,
            kv: flags.str("kv-dtype").map(KvDtype::parse).transpose()?,
        })
    }

    /// The weight dtype for the model in `dir`: `--dtype`, else the one most of the checkpoint is stored in.
    pub fn weights(&self, dir: &Path) -> Result<WeightDtype> {
        match self.weights {
            Some(d) => Ok(d),
            None => Ok(Checkpoint::open(dir)?.storage_dtype()),
        }
    }
}

/// Opens the model in `dir` as a command's `--backend`, `--dtype` and `--kv-dtype` say.
pub fn open(flags: &Flags, dir: &Path, slots: usize, pool_tokens: Option<usize>) -> Result<Box<dyn Session + Send>> {
    let kind = BackendChoice::from_flags(flags)?.resolve();
    kind.open(dir, &Dtypes::from_flags(flags)?, slots, pool_tokens)
}

/// The model in `dir` on `backend`, as the session every command drives.
fn load<B: Backend + Send + 'static>(
    backend: B,
    dir: &Path,
    slots: usize,
    pool_tokens: Option<usize>,
) -> Result<Box<dyn Session + Send>>
where
    BackendSession<B>: Send,
{
    Ok(Box::new(BackendSession::load_with_pool(
        backend,
        dir,
        slots,
        pool_tokens,
    )?))
}
