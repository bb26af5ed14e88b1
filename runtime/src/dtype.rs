//! The precisions Volt keeps numbers in: weights (`WeightDtype`, how precisely each kind of matrix is kept:
//! `Precision`) and cached K/V values (`KvDtype`). Loaders, the spec's memory accounting and every backend
//! read them from here.

use crate::error::Result;
use crate::quant::BlockFormat;

/// How a weight matrix is stored: one of ggml's block formats (f32, f16 and bf16 among them), or E4M3 codes
/// with one f32 scale per 128x128 block (Hugging Face FP8 checkpoints). Checkpoints publish it per tensor;
/// `--dtype` asks a backend to keep the bulk of the matrices in one of them. The CPU reference computes from
/// the stored format; a GPU backend keeps the formats its kernels decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightDtype {
    Block(BlockFormat),
    /// E4M3 with one f32 scale per 128x128 block (`crate::fp8`).
    Fp8,
}

// Named like the variants they stand for, so the float dtypes read as before.
#[allow(non_upper_case_globals)]
impl WeightDtype {
    pub const F32: WeightDtype = WeightDtype::Block(BlockFormat::F32);
    pub const F16: WeightDtype = WeightDtype::Block(BlockFormat::F16);
    pub const Bf16: WeightDtype = WeightDtype::Block(BlockFormat::Bf16);

    /// The dtypes every backend's kernels compute from (the conformance suite's rows).
    pub const ALL: [WeightDtype; 4] = [WeightDtype::F32, WeightDtype::F16, WeightDtype::Bf16, WeightDtype::Fp8];

    pub fn parse(name: &str) -> Result<WeightDtype> {
        if name == "fp8" {
            return Ok(WeightDtype::Fp8);
        }
        match BlockFormat::ALL.into_iter().find(|f| f.name() == name) {
            Some(f) => Ok(WeightDtype::Block(f)),
            None => {
                let names: Vec<&str> = BlockFormat::ALL.iter().map(|f| f.name()).collect();
                crate::bail!("unknown dtype `{name}` (expected {} or fp8)", names.join(", "))
            }
        }
    }

    /// The name `--dtype` takes.
    pub fn name(self) -> &'static str {
        match self {
            WeightDtype::Block(f) => f.name(),
            WeightDtype::Fp8 => "fp8",
        }
    }

    /// The dtype a matrix of `precision` is kept in when the bulk is kept in `self`.
    pub fn for_precision(self, precision: Precision) -> WeightDtype {
        match (precision, self) {
            (Precision::Full, _) => WeightDtype::F32,
            (Precision::Table, WeightDtype::Fp8) => WeightDtype::Bf16,
            _ => self,
        }
    }

    /// Bytes one stored weight takes, scales included (FP8 block scales add 4 bytes per 16384 weights).
    pub fn bytes(self) -> f64 {
        match self {
            WeightDtype::Block(f) => f.bits_per_value() / 8.0,
            WeightDtype::Fp8 => 1.0 + 4.0 / (crate::fp8::BLOCK * crate::fp8::BLOCK) as f64,
        }
    }

    /// Bytes a [rows, cols] matrix takes, scales included (FP8: one per started 128x128 block), or None
    /// when its rows are not whole blocks.
    pub fn matrix_bytes(self, rows: u64, cols: u64) -> Option<u64> {
        match self {
            WeightDtype::Block(f) => Some(rows * f.bytes_of(cols as usize).ok()? as u64),
            WeightDtype::Fp8 => {
                let block = crate::fp8::BLOCK as u64;
                Some(rows * cols + 4 * rows.div_ceil(block) * cols.div_ceil(block))
            }
        }
    }

    /// The dtype a matrix with rows of `cols` values is kept in when asked for `self`: `self` when its rows
    /// are whole blocks, else llama.cpp's fallback for the K-quants (q4_k to q5_0, q5_k to q5_1, q6_k to
    /// q8_0, blocks of 32), else None (the matrix stays as published).
    pub fn fitting(self, cols: usize) -> Option<WeightDtype> {
        let fits = |d: WeightDtype| d.matrix_bytes(1, cols as u64).is_some();
        let fallback = match self {
            WeightDtype::Block(BlockFormat::Q4K) => WeightDtype::Block(BlockFormat::Q5_0),
            WeightDtype::Block(BlockFormat::Q5K) => WeightDtype::Block(BlockFormat::Q5_1),
            WeightDtype::Block(BlockFormat::Q6K) => WeightDtype::Block(BlockFormat::Q8_0),
            _ => self,
        };
        [self, fallback].into_iter().find(|&d| fits(d))
    }
}

/// The dtype most bytes of `tensors` (dtype, bytes) are in; ties go to the earlier dtype.
pub fn dominant(tensors: impl Iterator<Item = (WeightDtype, u64)>) -> Option<WeightDtype> {
    let mut bytes: Vec<(WeightDtype, u64)> = Vec::new();
    for (dtype, n) in tensors {
        match bytes.iter_mut().find(|(d, _)| *d == dtype) {
            Some((_, b)) => *b += n,
            None => bytes.push((dtype, n)),
        }
    }
    let most = bytes.iter().map(|&(_, b)| b).max()?;
    bytes.into_iter().find(|&(_, b)| b == most).map(|(d, _)| d)
}

/// The dtypes one class of matrices is published in, each with the share of the class's values it holds:
/// one dtype from a config.json, several in a GGUF file that mixes formats (a Q4_K_M file keeps some
/// `attn_v` and `ffn_down` matrices in q6_k).
#[derive(Clone, Debug, PartialEq)]
pub struct Shares(Vec<(WeightDtype, f64)>);

impl Shares {
    pub fn one(dtype: WeightDtype) -> Shares {
        Shares(vec![(dtype, 1.0)])
    }

    /// From stored tensors (dtype, bytes); None when there are none.
    pub fn of_bytes(tensors: impl Iterator<Item = (WeightDtype, u64)>) -> Option<Shares> {
        let mut values: Vec<(WeightDtype, f64)> = Vec::new();
        for (dtype, bytes) in tensors {
            let n = bytes as f64 / dtype.bytes();
            match values.iter_mut().find(|(d, _)| *d == dtype) {
                Some((_, v)) => *v += n,
                None => values.push((dtype, n)),
            }
        }
        let total: f64 = values.iter().map(|&(_, v)| v).sum();
        (total > 0.0).then(|| Shares(values.into_iter().map(|(d, v)| (d, v / total)).collect()))
    }

    pub fn iter(&self) -> impl Iterator<Item = (WeightDtype, f64)> + '_ {
        self.0.iter().copied()
    }

    /// The dtype holding most of the values.
    pub fn dominant(&self) -> WeightDtype {
        let most = self.0.iter().max_by(|a, b| a.1.total_cmp(&b.1));
        most.map_or(WeightDtype::F32, |&(d, _)| d)
    }
}

/// The dtypes a model's weight matrices are published in, per class (`spec::MatrixClass`; routers are kept
/// in f32 whatever they are published in).
#[derive(Clone, Debug, PartialEq)]
pub struct PublishedDtypes {
    /// The embedding and LM head.
    pub table: Shares,
    /// The routed experts' matrices.
    pub experts: Shares,
    /// Every other matrix (attention, dense and shared-expert FFNs).
    pub other: Shares,
}

impl PublishedDtypes {
    pub fn uniform(dtype: WeightDtype) -> PublishedDtypes {
        PublishedDtypes {
            table: Shares::one(dtype),
            experts: Shares::one(dtype),
            other: Shares::one(dtype),
        }
    }
}

/// How precisely a matrix is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// The backend's weight dtype (`--dtype`): the bulk of the parameters.
    Storage,
    /// Embedding and LM head: the weight dtype, but bf16 under fp8, as the FP8 releases keep them (one
    /// scale per 128x128 block loses too much on rows that are looked up or scored one by one).
    Table,
    /// f32: routers and gates, whose small errors flip discrete decisions, and biases.
    Full,
}

/// How a backend keeps cached K and V values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvDtype {
    /// The CPU reference's default.
    F32,
    /// The GPU backends' default: half the memory and bandwidth of f32.
    F16,
    /// E4M3 codes with scale 1 (vLLM's uncalibrated `fp8` cache): a quarter of f32. Magnitudes past 448
    /// saturate and below 2^-9 round to zero; K and V of the supported models stay well inside.
    Fp8,
}

impl KvDtype {
    pub const ALL: [KvDtype; 3] = [KvDtype::F32, KvDtype::F16, KvDtype::Fp8];

    pub fn parse(name: &str) -> Result<KvDtype> {
        match name {
            "f32" => Ok(KvDtype::F32),
            "f16" => Ok(KvDtype::F16),
            "fp8" => Ok(KvDtype::Fp8),
            other => crate::bail!("unknown KV dtype `{other}` (expected f16, f32 or fp8)"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            KvDtype::F32 => "f32",
            KvDtype::F16 => "f16",
            KvDtype::Fp8 => "fp8",
        }
    }

    pub fn bytes(self) -> usize {
        match self {
            KvDtype::F32 => 4,
            KvDtype::F16 => 2,
            KvDtype::Fp8 => 1,
        }
    }

    /// `x` as this dtype holds it.
    pub fn round(self, x: f32) -> f32 {
        match self {
            KvDtype::F32 => x,
            KvDtype::F16 => half::f16::from_f32(x).to_f32(),
            KvDtype::Fp8 => crate::fp8::to_f32(crate::fp8::from_f32(x)),
        }
    }
}
