//! Safetensors checkpoints: one file or shards behind `model.safetensors.index.json`, memory-mapped, with
//! every tensor's header read once at open. Tensors come out as f32 host tensors whatever the dtype on disk
//! (f32, f16, bf16; FP8 E4M3 with its `_scale_inv` block scales; MXFP4 expert blocks through `mxfp4_f32`),
//! after a check of their shape.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata, SafeTensors, TensorInfo};

use crate::bail;
use crate::dtype::WeightDtype;
use crate::error::{Error, Result, ResultExt};

/// A weight on the host, row-major, f32: the form every backend uploads from.
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

    /// Swap the last two axes of a tensor of shape (..., r, c).
    pub fn transpose_last2(&self) -> HostTensor {
        let n = self.shape.len();
        let (r, c) = (self.shape[n - 2], self.shape[n - 1]);
        let mut data = vec![0.0; self.data.len()];
        for (src, dst) in self.data.chunks_exact(r * c).zip(data.chunks_exact_mut(r * c)) {
            for i in 0..r {
                for j in 0..c {
                    dst[j * r + i] = src[i * c + j];
                }
            }
        }
        let mut shape = self.shape.clone();
        shape.swap(n - 2, n - 1);
        HostTensor { shape, data }
    }
}

struct Shard {
    path: PathBuf,
    mmap: Mmap,
    /// Offset of the data section (after the 8-byte length and the JSON header).
    data_start: usize,
}

pub struct Checkpoint {
    shards: Vec<Shard>,
    tensors: HashMap<String, (usize, TensorInfo)>,
}

impl Checkpoint {
    /// Opens the safetensors of a model folder: the files listed by `model.safetensors.index.json` when there
    /// is one, else every `*.safetensors` in the folder.
    pub fn open(dir: &Path) -> Result<Checkpoint> {
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
        Ok(Checkpoint { shards, tensors })
    }

    pub fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
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

    /// The float dtype that holds most of the checkpoint's bytes: the precision it was published in, and the
    /// default a backend keeps weights in. MXFP4 blocks count as bf16, the dtype GPT-OSS ships the rest in.
    pub fn storage_dtype(&self) -> WeightDtype {
        let mut bytes = [0u64; 4];
        for (_, info) in self.tensors.values() {
            let n = (info.data_offsets.1 - info.data_offsets.0) as u64;
            match info.dtype {
                Dtype::F32 => bytes[0] += n,
                Dtype::F16 => bytes[1] += n,
                Dtype::BF16 | Dtype::U8 => bytes[2] += n,
                Dtype::F8_E4M3 => bytes[3] += n,
                _ => {}
            }
        }
        let most = (0..4).max_by_key(|&i| (bytes[i], std::cmp::Reverse(i))).unwrap_or(0);
        [WeightDtype::F32, WeightDtype::F16, WeightDtype::Bf16, WeightDtype::Fp8][most]
    }

    /// Total bytes of the tensor data on disk.
    pub fn data_bytes(&self) -> u64 {
        self.tensors
            .values()
            .map(|(_, i)| (i.data_offsets.1 - i.data_offsets.0) as u64)
            .sum()
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

    /// A floating-point tensor as f32, after checking its shape.
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
            Dtype::F8_E4M3 => return self.fp8_f32(name, shape, bytes),
            other => bail!("tensor `{name}` has dtype {other:?}; expected F32, F16, BF16 or F8_E4M3"),
        };
        Ok(HostTensor::new(shape.to_vec(), data))
    }

    /// An F8_E4M3 matrix dequantized with its block scales `{name}_scale_inv` ([ceil(rows/128), ceil(cols/128)],
    /// any float dtype), the layout of Hugging Face FP8 checkpoints.
    fn fp8_f32(&self, name: &str, shape: &[usize], codes: &[u8]) -> Result<HostTensor> {
        if shape.len() != 2 {
            bail!("tensor `{name}` is F8_E4M3 with shape {shape:?}; block-scaled FP8 needs a matrix");
        }
        let grid = crate::fp8::BlockGrid::of(shape);
        let scale_name = format!("{name}_scale_inv");
        if !self.has(&scale_name) {
            bail!("tensor `{name}` is F8_E4M3 but its block scales `{scale_name}` are missing");
        }
        let scales = self.f32(&scale_name, &[grid.row_blocks(), grid.col_blocks()])?;
        Ok(HostTensor::new(
            shape.to_vec(),
            crate::fp8::dequantize(codes, &scales.data, grid),
        ))
    }

    /// An optional tensor: None when absent, an error when present with the wrong shape.
    pub fn opt_f32(&self, name: &str, shape: &[usize]) -> Result<Option<HostTensor>> {
        if self.has(name) {
            self.f32(name, shape).map(Some)
        } else {
            Ok(None)
        }
    }

    /// MXFP4 expert weights (GPT-OSS): `blocks` u8 (E, R, C/32, 16) holds two FP4 E2M1 values per byte, the
    /// low nibble first; `scales` u8 (E, R, C/32) holds one E8M0 exponent (bias 127) per 32 values.
    /// Returns (E, R, C) in f32.
    pub fn mxfp4_f32(
        &self,
        blocks: &str,
        scales: &str,
        experts: usize,
        rows: usize,
        cols: usize,
    ) -> Result<HostTensor> {
        if cols % 32 != 0 {
            bail!("tensor `{blocks}`: {cols} columns is not a multiple of the MXFP4 block of 32");
        }
        let n_blocks = cols / 32;
        let (bd, block_bytes) = self.bytes(blocks, &[experts, rows, n_blocks, 16])?;
        let (sd, scale_bytes) = self.bytes(scales, &[experts, rows, n_blocks])?;
        if bd != Dtype::U8 || sd != Dtype::U8 {
            bail!("MXFP4 tensors `{blocks}` and `{scales}` must be U8, found {bd:?} and {sd:?}");
        }
        Ok(HostTensor::new(
            vec![experts, rows, cols],
            crate::mxfp4::decode(block_bytes, scale_bytes),
        ))
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
    let mmap = unsafe { Mmap::map(&file) }.with_context(|| format!("mapping {}", path.display()))?;
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

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let files: Vec<_> = self.shards.iter().map(|s| s.path.display().to_string()).collect();
        f.debug_struct("Checkpoint")
            .field("files", &files)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}
