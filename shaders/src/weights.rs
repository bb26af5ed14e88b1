//! Weight packing: each matrix in one of the weight formats the kernels decode (`wgsl/weights_*.wgsl`), in
//! one buffer or, when larger than one binding may hold, in parts of whole rows (whole experts for stacked
//! experts, 128-row blocks for FP8). Kernels that read weights dispatch once per part.

use std::sync::Arc;

use volt_runtime::backend::kept_dtype;
use volt_runtime::dtype::{Precision, WeightDtype};
use volt_runtime::fp8::BlockGrid;
use volt_runtime::tensor::StoredTensor;
use volt_runtime::{bail, fp8, Result};

use crate::backend::WgpuBackend;
use crate::buffers::GpuBuffer;
use crate::kernels::WeightFormat;

/// A weight matrix (or stacked experts, rows = experts x out) in one of the weight formats.
pub struct GpuMatrix {
    pub(crate) parts: Vec<WeightPart>,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    pub(crate) format: WeightFormat,
}

/// Rows first_row.. of a matrix (experts first_row / rows_per_expert.. of stacked experts).
pub(crate) struct WeightPart {
    pub buf: Arc<GpuBuffer>,
    pub first_row: usize,
    pub rows: usize,
}

impl WeightFormat {
    /// The kernels' format for a dtype they decode.
    fn of(dtype: WeightDtype) -> Option<WeightFormat> {
        match dtype {
            WeightDtype::F32 => Some(WeightFormat::F32),
            WeightDtype::F16 => Some(WeightFormat::F16),
            WeightDtype::Bf16 => Some(WeightFormat::Bf16),
            WeightDtype::Fp8 => Some(WeightFormat::Fp8),
            WeightDtype::Block(_) => None,
        }
    }
}

impl WgpuBackend {
    /// The dtype `w` is kept in at `precision`: the kernels decode f32, f16, bf16 and FP8; the block formats
    /// are widened to f16 (until their decoders land).
    fn gpu_dtype(&self, precision: Precision, w: &StoredTensor) -> WeightDtype {
        kept_dtype(self.dtype, precision, (w.dtype, w.cols()), Some(&WeightDtype::ALL))
    }

    /// A matrix kept at `precision`: parts split at FP8's 128-row blocks and stay within the workgroups one
    /// dispatch may have (4 rows each).
    pub(crate) fn upload_matrix_at(&mut self, w: StoredTensor, precision: Precision) -> Result<GpuMatrix> {
        let dtype = self.gpu_dtype(precision, &w);
        let w = w.convert(dtype)?;
        let rows = w.shape.first().copied().unwrap_or(1);
        let unit = if w.dtype == WeightDtype::Fp8 {
            fp8::BLOCK.min(rows).max(1)
        } else {
            1
        };
        let max_rows = 4 * self.gpu.limits.max_compute_workgroups_per_dimension as usize;
        self.upload_weight(w, precision, unit, max_rows)
    }

    /// Stacked experts [experts, out, in], split only between experts.
    pub(crate) fn upload_stacked_experts(&mut self, w: StoredTensor) -> Result<GpuMatrix> {
        let dtype = self.gpu_dtype(Precision::Storage, &w);
        let w = w.convert(dtype)?;
        let experts = w.shape.first().copied().unwrap_or(1).max(1);
        let unit = w.rows() / experts;
        self.upload_weight(w, Precision::Storage, unit, usize::MAX)
    }

    /// Uploads `w` (in a format the kernels decode), split into parts of whole `unit`s of rows (at most
    /// `max_rows` each) when it is larger than one binding.
    fn upload_weight(
        &mut self,
        w: StoredTensor,
        precision: Precision,
        unit: usize,
        max_rows: usize,
    ) -> Result<GpuMatrix> {
        let Some(format) = WeightFormat::of(w.dtype) else {
            bail!("the wgpu kernels do not decode {} weights", w.dtype.name());
        };
        let (rows, cols) = (w.rows(), w.cols());
        // Bytes a row may take at most in any format (FP8 counts a scale per row, 128x what it needs).
        let row_bytes = w.row_bytes() as u64 + 8;
        let max = self.max_binding.saturating_sub(64);
        let units_per_part = ((max / (row_bytes * unit as u64).max(1)) as usize).min(max_rows / unit);
        if units_per_part == 0 {
            bail!(
                "{unit} rows of {cols} columns (the smallest part a {rows}x{cols} weight splits into) take more than one buffer binding holds on {} ({} bytes)",
                self.gpu.name(),
                self.max_binding
            );
        }
        let part_rows = units_per_part * unit;
        let mut parts = Vec::with_capacity(rows.div_ceil(part_rows));
        for first_row in (0..rows).step_by(part_rows) {
            let n = part_rows.min(rows - first_row);
            let data = &w.bytes()[first_row * w.row_bytes()..(first_row + n) * w.row_bytes()];
            let mut bytes = match w.dtype {
                WeightDtype::Fp8 => fp8_buffer(&w, first_row, n, data),
                // f32, and f16/bf16 pairs little-endian in u32 words, as stored.
                _ => data.to_vec(),
            };
            bytes.resize(bytes.len().next_multiple_of(4), 0);
            let buf = self
                .buffers
                .upload(&self.gpu, &bytes, &format!("a {n}x{cols} weight"))?;
            parts.push(WeightPart {
                buf,
                first_row,
                rows: n,
            });
        }
        self.split_weights += (parts.len() > 1) as usize;
        self.weights.add(precision, w.dtype, w.len(), w.stored_bytes());
        Ok(GpuMatrix {
            parts,
            rows,
            cols,
            format,
        })
    }
}

/// The buffer `weights_fp8.wgsl` reads for rows `first_row..first_row + n` of an FP8 tensor (a part: whole
/// 128-row blocks or whole groups of its grid): header, the part's block scales, then its E4M3 codes.
fn fp8_buffer(w: &StoredTensor, first_row: usize, n: usize, codes: &[u8]) -> Vec<u8> {
    let grid = BlockGrid::of(&w.shape);
    // The part keeps the tensor's shape with fewer leading rows, so its blocks stay where they were.
    let mut shape = w.shape.clone();
    shape[0] = shape[0] * n / w.rows();
    let part = BlockGrid::of(&shape);
    let first = grid.scale_index(first_row, 0);
    let scales = &w.scales()[first..first + part.n_scales()];
    let header = [
        part.rows as u32,
        part.col_blocks() as u32,
        part.row_blocks() as u32,
        (4 + scales.len()) as u32,
    ];
    let mut bytes = Vec::with_capacity(16 + 4 * scales.len() + codes.len().next_multiple_of(4));
    bytes.extend(header.iter().flat_map(|v| v.to_le_bytes()));
    bytes.extend(scales.iter().flat_map(|v| v.to_le_bytes()));
    bytes.extend(codes);
    bytes
}
