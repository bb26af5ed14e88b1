//! The backend registry: what `--backend` names, how each backend is opened, which KV dtype and context it
//! keeps unless told, and how much memory a model takes on it. The CLI, `volt info`, the server and the app
//! all go through `BackendKind`.

use std::path::Path;

use volt_runtime::backend::cpu::CpuBackend;
use volt_runtime::backend::{kept_dtype, Backend};
use volt_runtime::checkpoint::Checkpoint;
use volt_runtime::dtype::{KvDtype, Precision, PublishedDtypes, Shares, WeightDtype};
use volt_runtime::hf_config::HfConfig;
use volt_runtime::models;
use volt_runtime::session::{BackendSession, Session};
use volt_runtime::spec::{MatrixClass, ModelSpec};
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

    /// The dtypes the backend's kernels compute from (None: every dtype): the CPU reference decodes every
    /// format, the GPU kernels f32, f16, bf16 and FP8 and the rest is widened to f16 (`backend::kept_dtype`).
    pub fn decodes(self) -> Option<&'static [WeightDtype]> {
        match self {
            BackendKind::Cpu => None,
            BackendKind::Wgpu | BackendKind::Cuda => Some(&WeightDtype::ALL[..]),
        }
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
    /// from its config and the weights' header alone.
    pub fn memory_estimate(self, dir: &Path, dtypes: &Dtypes, slots: usize) -> Result<MemoryEstimate> {
        let config = HfConfig::load(dir)?;
        let spec = models::family_of(&config)?.spec(&config).context("config.json")?;
        let kv_dtype = dtypes.kv.unwrap_or(self.default_kv_dtype());
        let context = self.context(&spec);
        let published = published_dtypes(dir, &config)?;
        Ok(MemoryEstimate {
            weight_bytes: weight_bytes(&spec, &published, dtypes.weights, self.decodes()),
            kv_bytes: slots as u64 * spec.kv_bytes(context, kv_dtype),
            dtype: kept_dtype(
                dtypes.weights,
                Precision::Storage,
                (published.other.dominant(), spec.hidden_size),
                self.decodes(),
            ),
            kv_dtype,
            context,
        })
    }
}

/// What the weights of `spec` take when published in `published`, kept at `--dtype` `dtype` (None: as
/// published) by a backend whose kernels compute from `decodes` (None: every dtype). The same rules
/// (`backend::kept_dtype`) decide what each backend keeps at load, so this is what it allocates.
pub fn weight_bytes(
    spec: &ModelSpec,
    published: &PublishedDtypes,
    dtype: Option<WeightDtype>,
    decodes: Option<&[WeightDtype]>,
) -> u64 {
    let weights = spec.weights();
    let full = Shares::one(WeightDtype::F32);
    let matrices: u64 = weights
        .matrices
        .iter()
        .map(|m| {
            let (precision, published) = match m.class {
                MatrixClass::Table => (Precision::Table, &published.table),
                MatrixClass::Full => (Precision::Full, &full),
                MatrixClass::Experts => (Precision::Storage, &published.experts),
                MatrixClass::Other => (Precision::Storage, &published.other),
            };
            let bytes = |stored| {
                let kept = kept_dtype(dtype, precision, (stored, m.cols as usize), decodes);
                // A published dtype whose blocks do not fit these rows (a config names one for all).
                let estimate = || (m.rows * m.cols) as f64 * kept.bytes();
                kept.matrix_bytes(m.rows, m.cols).map_or_else(estimate, |b| b as f64)
            };
            let per_matrix: f64 = published.iter().map(|(stored, share)| share * bytes(stored)).sum();
            (m.count as f64 * per_matrix).round() as u64
        })
        .sum();
    matrices + 4 * weights.vectors
}

/// The dtypes the model at `path` is published in: from its weights' headers when it has them (a folder
/// or a GGUF file), else from its config.json.
pub fn published_dtypes(path: &Path, config: &HfConfig) -> Result<PublishedDtypes> {
    if path.is_dir() || volt_runtime::checkpoint::is_gguf(path) {
        Ok(Checkpoint::open(path)?.published_dtypes())
    } else {
        config.published_dtypes()
    }
}

/// What a model takes on a backend (`BackendKind::memory_estimate`).
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryEstimate {
    pub weight_bytes: u64,
    pub kv_bytes: u64,
    /// What the matrices other than the experts and tables are kept in.
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use volt_runtime::quant::BlockFormat;

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
    }

    /// The estimate is what the CPU backend allocates for the weights, for every fixture (folders in each
    /// published dtype, GGUF files in each block format) as published and quantized at load.
    #[test]
    fn the_estimate_is_what_the_cpu_backend_allocates() {
        let mut models: Vec<PathBuf> = ["volt", "qwen3_moe", "qwen3_fp8", "gpt_oss", "mixtral", "llama"]
            .iter()
            .map(|name| fixtures().join(name))
            .collect();
        for gguf in ["llama", "qwen2_moe", "qwen3_moe"] {
            models.push(fixtures().join("gguf").join(format!("{gguf}.gguf")));
        }
        let dtypes = [
            None,
            Some(WeightDtype::Bf16),
            Some(WeightDtype::Fp8),
            Some(WeightDtype::Block(BlockFormat::Q8_0)),
            Some(WeightDtype::Block(BlockFormat::Q4_1)),
            Some(WeightDtype::Block(BlockFormat::Mxfp4)),
        ];
        for model in &models {
            for weights in dtypes {
                let dtypes = Dtypes { weights, kv: None };
                let estimate = BackendKind::Cpu.memory_estimate(model, &dtypes, 1).unwrap();
                let session = BackendKind::Cpu.open(model, &dtypes, 1, Some(16)).unwrap();
                let (estimated, allocated) = (estimate.weight_bytes, session.allocated_bytes());
                assert_eq!(estimated, allocated, "{} at --dtype {weights:?}", model.display());
            }
        }
    }

    /// From config.json alone: gpt-oss-20b as published (MXFP4 experts) fits 14 GB, Qwen3-30B-A3B at q4_k
    /// 19.5 GB (llama.cpp's Q4_K_M file is 18.6 GB); on a GPU that widens block formats to f16 they do not.
    #[test]
    fn published_configs_count_their_block_formats() {
        let bytes = |name: &str, dtype: Option<WeightDtype>, decodes: Option<&[WeightDtype]>| {
            let path = fixtures().join("configs").join(name);
            let config = HfConfig::load(&path).unwrap();
            let spec = models::family_of(&config).unwrap().spec(&config).unwrap();
            weight_bytes(&spec, &published_dtypes(&path, &config).unwrap(), dtype, decodes)
        };
        let gpt_oss = bytes("gpt-oss-20b.json", None, None);
        assert!(
            (13_000_000_000..=14_000_000_000).contains(&gpt_oss),
            "gpt-oss-20b: {gpt_oss}"
        );
        let qwen3 = bytes("qwen3-30b-a3b.json", None, None);
        assert!(
            (60_000_000_000..=62_000_000_000).contains(&qwen3),
            "Qwen3-30B-A3B bf16: {qwen3}"
        );
        let qwen3_q4k = bytes("qwen3-30b-a3b.json", Some(WeightDtype::Block(BlockFormat::Q4K)), None);
        assert!(
            (16_000_000_000..=19_500_000_000).contains(&qwen3_q4k),
            "Qwen3-30B-A3B q4_k: {qwen3_q4k}"
        );
        let widened = bytes("gpt-oss-20b.json", None, BackendKind::Wgpu.decodes());
        assert!(widened > 40_000_000_000, "gpt-oss-20b widened to f16: {widened}");
    }
}
