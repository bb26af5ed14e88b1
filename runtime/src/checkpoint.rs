//! Safetensors checkpoints: one file or shards behind `model.safetensors.index.json`, memory-mapped, with
//! every tensor's header read once at open. Weight matrices come out as stored (`tensor`: f32, f16 and bf16
//! as views of the mapped file; FP8 E4M3 with its `_scale_inv` block scales; MXFP4 expert blocks repacked
//! into ggml's MXFP4 blocks by `mxfp4`), vectors (norms, biases) as f32 host tensors (`f32`), each after a
//! check of its shape.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata, SafeTensors, TensorInfo};

use crate::bail;
use crate::dtype::{dominant, PublishedDtypes, Shares, WeightDtype};
use crate::error::{Error, Result, ResultExt};
use crate::gguf_model::GgufModel;
use crate::quant::BlockFormat;
use crate::spec::MatrixClass;
use crate::tensor::StoredTensor;

/// A small tensor on the host, row-major, widened to f32: norm weights, biases, sinks.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        HostTensor { shape, data }
    }
}

struct Shard {
    path: PathBuf,
    mmap: Arc<Mmap>,
    /// Offset of the data section (after the 8-byte length and the JSON header).
    data_start: usize,
}

/// A model's weights: the safetensors of a Hugging Face folder, or a GGUF file (read through
/// `gguf_model.rs` under the same Hugging Face names).
pub struct Checkpoint(Source);

enum Source {
    Safetensors(Safetensors),
    Gguf(GgufModel),
}

/// Whether `path` names a GGUF file (a model given as one file, not a folder).
pub fn is_gguf(path: &Path) -> bool {
    path.is_file() && path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

impl Checkpoint {
    /// The weights of a model folder (its safetensors) or of a GGUF file.
    pub fn open(path: &Path) -> Result<Checkpoint> {
        Ok(Checkpoint(if is_gguf(path) {
            Source::Gguf(GgufModel::open(path)?)
        } else {
            Source::Safetensors(Safetensors::open(path)?)
        }))
    }

    /// The safetensors, for what only they have (raw dtypes, FP8 and MXFP4 companions).
    fn safetensors(&self, what: &str) -> Result<&Safetensors> {
        match &self.0 {
            Source::Safetensors(s) => Ok(s),
            Source::Gguf(_) => bail!("{what} is read from safetensors only, and this model is a GGUF file"),
        }
    }

    pub fn has(&self, name: &str) -> bool {
        match &self.0 {
            Source::Safetensors(s) => s.tensors.contains_key(name),
            Source::Gguf(g) => g.has(name),
        }
    }

    /// A weight matrix as stored, after checking its shape.
    pub fn tensor(&self, name: &str, shape: &[usize]) -> Result<StoredTensor> {
        match &self.0 {
            Source::Safetensors(s) => s.tensor(name, shape),
            Source::Gguf(g) => g.tensor(name, shape),
        }
    }

    /// A vector (or another small float tensor) widened to f32, after checking its shape.
    pub fn f32(&self, name: &str, shape: &[usize]) -> Result<HostTensor> {
        match &self.0 {
            Source::Safetensors(s) => s.f32(name, shape),
            Source::Gguf(g) => g.vector(name, shape),
        }
    }

    /// An optional vector: None when absent, an error when present with the wrong shape.
    pub fn opt_f32(&self, name: &str, shape: &[usize]) -> Result<Option<HostTensor>> {
        if self.has(name) {
            self.f32(name, shape).map(Some)
        } else {
            Ok(None)
        }
    }

    /// The dtype that holds most of the weights' bytes: the precision they were published in. MXFP4 expert
    /// blocks of safetensors count as bf16, the dtype GPT-OSS ships the rest in.
    pub fn storage_dtype(&self) -> WeightDtype {
        let mxfp4_as_bf16 = |d| match (&self.0, d) {
            (Source::Safetensors(_), WeightDtype::Block(BlockFormat::Mxfp4)) => WeightDtype::Bf16,
            _ => d,
        };
        let stored = self.stored_matrices();
        dominant(stored.iter().map(|&(_, d, n)| (mxfp4_as_bf16(d), n))).unwrap_or(WeightDtype::F32)
    }

    /// The dtypes each class of matrices is stored in, told apart by name (the embedding and head, the
    /// routed experts, the routers, the rest); a class the file lacks takes the shares of the whole file
    /// but the routers, which backends keep in f32.
    pub fn published_dtypes(&self) -> PublishedDtypes {
        let stored = self.stored_matrices();
        let all = || {
            Shares::of_bytes(
                stored
                    .iter()
                    .filter(|m| m.0 != MatrixClass::Full)
                    .map(|&(_, d, n)| (d, n)),
            )
            .unwrap_or(Shares::one(WeightDtype::F32))
        };
        let of = |class: MatrixClass| {
            Shares::of_bytes(stored.iter().filter(|m| m.0 == class).map(|&(_, d, n)| (d, n))).unwrap_or_else(all)
        };
        PublishedDtypes {
            table: of(MatrixClass::Table),
            experts: of(MatrixClass::Experts),
            other: of(MatrixClass::Other),
        }
    }

    /// Every tensor of two or more dimensions: its class, stored dtype and bytes.
    fn stored_matrices(&self) -> Vec<(MatrixClass, WeightDtype, u64)> {
        match &self.0 {
            Source::Safetensors(s) => s.stored_matrices(),
            Source::Gguf(g) => g
                .file()
                .tensor_names()
                .filter_map(|name| {
                    let info = g.file().tensor(name)?;
                    let class = if name == "token_embd.weight" || name == "output.weight" {
                        MatrixClass::Table
                    } else if name.contains("ffn_gate_inp") {
                        MatrixClass::Full
                    } else if name.contains("_exps.") {
                        MatrixClass::Experts
                    } else {
                        MatrixClass::Other
                    };
                    (info.shape.len() >= 2).then_some((class, WeightDtype::Block(info.format), info.len as u64))
                })
                .collect(),
        }
    }

    /// Safetensors tensor names, sorted.
    pub fn names(&self) -> Vec<&str> {
        match &self.0 {
            Source::Safetensors(s) => s.names(),
            Source::Gguf(_) => Vec::new(),
        }
    }

    /// A safetensors tensor's shape.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.safetensors("a tensor's shape").ok()?.shape(name)
    }

    /// Raw bytes and dtype of a safetensors tensor after checking its shape.
    pub fn bytes(&self, name: &str, shape: &[usize]) -> Result<(Dtype, &[u8])> {
        self.safetensors("raw bytes")?.bytes(name, shape)
    }

    /// MXFP4 expert weights of safetensors (GPT-OSS), see `Safetensors::mxfp4`.
    pub fn mxfp4(&self, blocks: &str, scales: &str, experts: usize, rows: usize, cols: usize) -> Result<StoredTensor> {
        self.safetensors("MXFP4 expert blocks")?
            .mxfp4(blocks, scales, experts, rows, cols)
    }
}

struct Safetensors {
    shards: Vec<Shard>,
    tensors: HashMap<String, (usize, TensorInfo)>,
}

impl Safetensors {
    /// Opens the safetensors of a model folder: the files listed by `model.safetensors.index.json` when there
    /// is one, else every `*.safetensors` in the folder.
    fn open(dir: &Path) -> Result<Safetensors> {
        let index = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if index.exists() {
            shard_files_from_index(&index)?
                .into_iter()
                .map(|f| dir.join(f))
                .collect()
        } else {
            let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
                .with_context(|| format!("reading {}", dir.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
                .collect();
            files.sort();
            files
        };
        if files.is_empty() {
            bail!("no .safetensors weights in {}", dir.display());
        }
        let mut shards = Vec::new();
        let mut tensors = HashMap::new();
        for path in files {
            let (shard, metadata) = open_shard(&path)?;
            for (name, info) in metadata.tensors() {
                if tensors.insert(name.clone(), (shards.len(), info.clone())).is_some() {
                    bail!(
                        "tensor `{name}` appears in more than one safetensors file ({})",
                        path.display()
                    );
                }
            }
            shards.push(shard);
        }
        Ok(Safetensors { shards, tensors })
    }

    /// Every tensor name, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.tensors.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.tensors.get(name).map(|(_, info)| info.shape.as_slice())
    }

    /// See `Checkpoint::stored_matrices`; U8 tensors are MXFP4 blocks and their scales (gpt-oss), and FP8
    /// block scales (`weight_scale_inv`) belong to their FP8 matrix; biases are vectors, even stacked.
    fn stored_matrices(&self) -> Vec<(MatrixClass, WeightDtype, u64)> {
        let mut names: Vec<&String> = self.tensors.keys().collect();
        names.sort_unstable();
        names
            .into_iter()
            .filter_map(|name| {
                let info = &self.tensors[name].1;
                if name.ends_with("_scale_inv") || name.ends_with("bias") {
                    return None;
                }
                let dtype = match info.dtype {
                    Dtype::F32 => WeightDtype::F32,
                    Dtype::F16 => WeightDtype::F16,
                    Dtype::BF16 => WeightDtype::Bf16,
                    Dtype::F8_E4M3 => WeightDtype::Fp8,
                    Dtype::U8 => WeightDtype::Block(BlockFormat::Mxfp4),
                    _ => return None,
                };
                let router = [".gate.weight", "router.weight", "shared_expert_gate.weight"];
                let class = if name.contains("embed_tokens") || name.starts_with("lm_head") {
                    MatrixClass::Table
                } else if router.iter().any(|r| name.ends_with(r)) {
                    MatrixClass::Full
                } else if name.contains(".experts.") {
                    MatrixClass::Experts
                } else {
                    MatrixClass::Other
                };
                let bytes = (info.data_offsets.1 - info.data_offsets.0) as u64;
                (info.shape.len() >= 2).then_some((class, dtype, bytes))
            })
            .collect()
    }

    fn info(&self, name: &str) -> Result<(&Shard, &TensorInfo)> {
        match self.tensors.get(name) {
            Some((shard, info)) => Ok((&self.shards[*shard], info)),
            None => bail!("tensor `{name}` is missing from the checkpoint"),
        }
    }

    /// Raw bytes and dtype of a tensor after checking its shape.
    pub fn bytes(&self, name: &str, shape: &[usize]) -> Result<(Dtype, &[u8])> {
        let (shard, info) = self.info(name)?;
        if info.shape != shape {
            bail!("tensor `{name}` has shape {:?}, expected {:?}", info.shape, shape);
        }
        let (start, end) = info.data_offsets;
        Ok((
            info.dtype,
            &shard.mmap[shard.data_start + start..shard.data_start + end],
        ))
    }

    /// A vector (or another small float tensor) widened to f32, after checking its shape.
    pub fn f32(&self, name: &str, shape: &[usize]) -> Result<HostTensor> {
        let (dtype, bytes) = self.bytes(name, shape)?;
        let data = match dtype {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => bail!("tensor `{name}` has dtype {other:?}; expected F32, F16 or BF16"),
        };
        Ok(HostTensor::new(shape.to_vec(), data))
    }

    /// A weight matrix as stored, after checking its shape: f32, f16 and bf16 as views of the mapped file,
    /// F8_E4M3 with its block scales `{name}_scale_inv`.
    pub fn tensor(&self, name: &str, shape: &[usize]) -> Result<StoredTensor> {
        let (dtype, bytes) = self.bytes(name, shape)?;
        let format = match dtype {
            Dtype::F32 => BlockFormat::F32,
            Dtype::F16 => BlockFormat::F16,
            Dtype::BF16 => BlockFormat::Bf16,
            Dtype::F8_E4M3 => {
                let scales = self.fp8_scales(name, shape)?;
                return StoredTensor::fp8(shape.to_vec(), bytes.to_vec(), scales);
            }
            other => bail!("tensor `{name}` has dtype {other:?}; expected F32, F16, BF16 or F8_E4M3"),
        };
        let (shard, info) = self.info(name)?;
        let start = shard.data_start + info.data_offsets.0;
        StoredTensor::mapped(shape.to_vec(), format, shard.mmap.clone(), start, bytes.len())
    }

    /// The block scales of the F8_E4M3 matrix `name`: `{name}_scale_inv` ([ceil(rows/128), ceil(cols/128)],
    /// any float dtype), the layout of Hugging Face FP8 checkpoints.
    fn fp8_scales(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        if shape.len() != 2 {
            bail!("tensor `{name}` is F8_E4M3 with shape {shape:?}; block-scaled FP8 needs a matrix");
        }
        let grid = crate::fp8::BlockGrid::of(shape);
        let scale_name = format!("{name}_scale_inv");
        if !self.tensors.contains_key(&scale_name) {
            bail!("tensor `{name}` is F8_E4M3 but its block scales `{scale_name}` are missing");
        }
        Ok(self.f32(&scale_name, &[grid.row_blocks(), grid.col_blocks()])?.data)
    }

    /// MXFP4 expert weights (GPT-OSS): `blocks` u8 (E, R, C/32, 16) holds two FP4 E2M1 values per byte, the
    /// low nibble first; `scales` u8 (E, R, C/32) holds one E8M0 exponent (bias 127) per 32 values. Returns
    /// (E, R, C) as ggml's MXFP4 blocks (the exponent byte, then values j and j + 16 in the low and high
    /// nibbles of byte j): the same values, moved, not decoded.
    pub fn mxfp4(&self, blocks: &str, scales: &str, experts: usize, rows: usize, cols: usize) -> Result<StoredTensor> {
        if cols % 32 != 0 {
            bail!("tensor `{blocks}`: {cols} columns is not a multiple of the MXFP4 block of 32");
        }
        let n_blocks = cols / 32;
        let (bd, block_bytes) = self.bytes(blocks, &[experts, rows, n_blocks, 16])?;
        let (sd, scale_bytes) = self.bytes(scales, &[experts, rows, n_blocks])?;
        if bd != Dtype::U8 || sd != Dtype::U8 {
            bail!("MXFP4 tensors `{blocks}` and `{scales}` must be U8, found {bd:?} and {sd:?}");
        }
        let mut out = Vec::with_capacity(scale_bytes.len() * 17);
        for (paired, &e) in block_bytes.chunks_exact(16).zip(scale_bytes) {
            let value = |i: usize| (paired[i / 2] >> (4 * (i % 2))) & 0x0f;
            out.push(e);
            out.extend((0..16).map(|j| value(j) | (value(j + 16) << 4)));
        }
        StoredTensor::owned(vec![experts, rows, cols], BlockFormat::Mxfp4, out)
    }
}

fn shard_files_from_index(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index).with_context(|| format!("reading {}", index.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is malformed", index.display()))?;
    let Some(map) = value.get("weight_map").and_then(|m| m.as_object()) else {
        bail!("{} has no `weight_map` object", index.display());
    };
    // Sorted and deduplicated so shard order is stable.
    let mut files = BTreeMap::new();
    for (tensor, file) in map {
        let Some(file) = file.as_str() else {
            bail!("{}: `{tensor}` maps to a non-string", index.display())
        };
        if file.contains('/') || file.contains('\\') {
            bail!("{}: shard name `{file}` must be a plain file name", index.display());
        }
        files.insert(file.to_string(), ());
    }
    Ok(files.into_keys().collect())
}

fn open_shard(path: &Path) -> Result<(Shard, Metadata)> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: the file is only read; a checkpoint modified while mapped is outside what we can defend against.
    let mmap = Arc::new(unsafe { Mmap::map(&file) }.with_context(|| format!("mapping {}", path.display()))?);
    let (header_len, metadata) = SafeTensors::read_metadata(&mmap).map_err(|e| {
        Error::msg(format!(
            "{} is not a valid safetensors file (truncated or corrupt): {e}",
            path.display()
        ))
    })?;
    Ok((
        Shard {
            path: path.to_path_buf(),
            mmap,
            data_start: 8 + header_len,
        },
        metadata,
    ))
}

impl std::fmt::Debug for Safetensors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let files: Vec<_> = self.shards.iter().map(|s| s.path.display().to_string()).collect();
        f.debug_struct("Safetensors")
            .field("files", &files)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}
