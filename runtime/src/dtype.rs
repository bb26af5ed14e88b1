//! The precisions Volt keeps numbers in: weights (`WeightDtype`, how precisely each kind of matrix is kept:
//! `Precision`) and cached K/V values (`KvDtype`). Loaders, the spec's memory accounting and every backend
//! read them from here.

use crate::error::Result;

/// Precision a backend keeps weights in. The CPU reference always computes in f32; lower dtypes round the
/// weights at upload so results show what that storage costs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightDtype {
    F32,
    F16,
    Bf16,
    /// E4M3 with one f32 scale per 128x128 block (`crate::fp8`).
    Fp8,
}

impl WeightDtype {
    pub const ALL: [WeightDtype; 4] = [WeightDtype::F32, WeightDtype::F16, WeightDtype::Bf16, WeightDtype::Fp8];

    pub fn parse(name: &str) -> Result<WeightDtype> {
        match name {
            "f32" => Ok(WeightDtype::F32),
            "f16" => Ok(WeightDtype::F16),
            "bf16" => Ok(WeightDtype::Bf16),
            "fp8" => Ok(WeightDtype::Fp8),
            other => crate::bail!("unknown dtype `{other}` (expected f32, f16, bf16 or fp8)"),
        }
    }

    /// The name `--dtype` takes.
    pub fn name(self) -> &'static str {
        match self {
            WeightDtype::F32 => "f32",
            WeightDtype::F16 => "f16",
            WeightDtype::Bf16 => "bf16",
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

    /// Bytes one stored weight takes (FP8 block scales add 4 bytes per 16384 weights).
    pub fn bytes(self) -> f64 {
        match self {
            WeightDtype::F32 => 4.0,
            WeightDtype::F16 | WeightDtype::Bf16 => 2.0,
            WeightDtype::Fp8 => 1.0 + 4.0 / (crate::fp8::BLOCK * crate::fp8::BLOCK) as f64,
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
