//! Weight packing: each matrix in one of the weight formats the kernels decode (`wgsl/weights_*.wgsl`), in
//! one buffer or, when larger than one binding may hold, in parts of whole rows (whole experts for stacked
//! experts, 128-row blocks for FP8). Kernels that read weights dispatch once per part.

use std::sync::Arc;

use volt_runtime::checkpoint::HostTensor;
use volt_runtime::dtype::{Precision, WeightDtype};
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
    fn of(dtype: WeightDtype) -> WeightFormat {
        match dtype {
            WeightDtype::F32 => WeightFormat::F32,
            WeightDtype::F16 => WeightFormat::F16,
            WeightDtype::Bf16 => WeightFormat::Bf16,
            WeightDtype::Fp8 => WeightFormat::Fp8,
        }
    }
}

impl WgpuBackend {
    /// A matrix kept at `precision`: parts split at FP8's 128-row blocks and stay within the workgroups one
    /// dispatch may have (4 rows each).
    pub(crate) fn upload_matrix_at(&mut self, w: HostTensor, precision: Precision) -> Result<GpuMatrix> {
        let dtype = self.dtype.for_precision(precision);
        let rows = w.shape.first().copied().unwrap_or(1);
        let unit = if dtype == WeightDtype::Fp8 {
            fp8::BLOCK.min(rows).max(1)
        } else {
            1
        };
        let max_rows = 4 * self.gpu.limits.max_compute_workgroups_per_dimension as usize;
        self.upload_weight(w, dtype, unit, max_rows)
    }

    /// Stacked experts [experts, out, in], split only between experts.
    pub(crate) fn upload_stacked_experts(&mut self, w: HostTensor) -> Result<GpuMatrix> {
        let experts = w.shape.first().copied().unwrap_or(1).max(1);
        let unit = w.data.len() / w.shape.last().copied().unwrap_or(1).max(1) / experts;
        self.upload_weight(w, self.dtype, unit, usize::MAX)
    }

    /// Uploads `w` in `dtype`, split into parts of whole `unit`s of rows (at most `max_rows` each) when it is
    /// larger than one binding.
    fn upload_weight(&mut self, w: HostTensor, dtype: WeightDtype, unit: usize, max_rows: usize) -> Result<GpuMatrix> {
        let cols = *w.shape.last().unwrap_or(&1);
        let rows = w.data.len() / cols.max(1);
        // Bytes a row may take at most in any format (FP8 counts a scale per row, 128x what it needs).
        let row_bytes = (cols as f64 * dtype.bytes()).ceil() as u64 + 8;
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
            let data = &w.data[first_row * cols..(first_row + n) * cols];
            // A part keeps the tensor's shape with fewer leading rows, so FP8 blocks stay where they were.
            let mut shape = w.shape.clone();
            shape[0] = shape[0] * n / rows;
            let bytes = match dtype {
                WeightDtype::F32 => bytemuck::cast_slice(data).to_vec(),
                WeightDtype::F16 => packed_halves(data, |v| half::f16::from_f32(v).to_bits()),
                WeightDtype::Bf16 => packed_halves(data, |v| half::bf16::from_f32(v).to_bits()),
                WeightDtype::Fp8 => fp8_buffer(data, &shape),
            };
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
        Ok(GpuMatrix {
            parts,
            rows,
            cols,
            format: WeightFormat::of(dtype),
        })
    }
}

/// f16 or bf16 values two per u32 word, the low half first (`weights_f16.wgsl`, `weights_bf16.wgsl`).
fn packed_halves(values: &[f32], to_bits: impl Fn(f32) -> u16) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(values.len().div_ceil(2) * 4);
    for pair in values.chunks(2) {
        let lo = to_bits(pair[0]) as u32;
        let hi = pair.get(1).map_or(0, |&v| to_bits(v) as u32);
        bytes.extend((lo | (hi << 16)).to_le_bytes());
    }
    bytes
}

/// The buffer `weights_fp8.wgsl` reads: header, block scales, then the E4M3 codes.
fn fp8_buffer(data: &[f32], shape: &[usize]) -> Vec<u8> {
    let grid = fp8::BlockGrid::of(shape);
    let (codes, scales) = fp8::quantize(data, grid);
    let header = [
        grid.rows as u32,
        grid.col_blocks() as u32,
        grid.row_blocks() as u32,
        (4 + scales.len()) as u32,
    ];
    let mut bytes = Vec::with_capacity(16 + 4 * scales.len() + codes.len().next_multiple_of(4));
    bytes.extend(header.iter().flat_map(|v| v.to_le_bytes()));
    bytes.extend(scales.iter().flat_map(|v| v.to_le_bytes()));
    bytes.extend(&codes);
    bytes.resize(bytes.len().next_multiple_of(4), 0);
    bytes
}
