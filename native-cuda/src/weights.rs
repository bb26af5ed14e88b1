//! Weights on the device and the matrix products over them.
//!
//! Storage: f32/f16/bf16 as is; FP8 as E4M3 codes with rows padded to a multiple of 128 columns (zero codes)
//! plus the 128x128 block scales of `volt_runtime::fp8`, so FP8 checkpoints keep their bytes.
//! Kernel choice: up to `GEMV_ROWS` rows (decode) go through the matrix-vector kernels with f32 activations;
//! more rows with FP8 weights quantize the activations per 1x128 and use the tensor-core FP8 GEMM (dense, or
//! grouped per expert for MoE, `moe.rs`).

use cudarc::driver::CudaSlice;
use volt_runtime::backend::kept_dtype;
use volt_runtime::dtype::{Precision, WeightDtype};
use volt_runtime::fp8::{self, BlockGrid};
use volt_runtime::tensor::StoredTensor;
use volt_runtime::{bail, Result};

use crate::backend::{CudaBackend, CudaTensor, CudaVector};
use crate::kernels::{
    EXPERTS_BF16, EXPERTS_F16, EXPERTS_F32, EXPERTS_FP8, GEMM_FP8, LINEAR_BF16, LINEAR_F16, LINEAR_F32, LINEAR_FP8,
    QUANTIZE_ROWS_1X128,
};
use crate::params::{ExpertsArgs, GemmFp8Args, Kernel, LinearArgs, QuantizeArgs};

/// Rows up to which linear layers and experts use the matrix-vector kernels.
pub(crate) const GEMV_ROWS: usize = 8;
/// Rows of one GEMM tile and of the per-expert alignment (TILE_M / ALIGN_M in the kernels).
pub(crate) const TILE: usize = 64;

/// A weight matrix or stacked experts in the backend's storage.
pub struct CudaMatrix {
    pub(crate) dtype: WeightDtype,
    /// Rows and columns of one expert.
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    /// Elements between rows (cols rounded up to 128 for FP8).
    stride: usize,
    pub(crate) data: CudaSlice<u8>,
    /// FP8 only: block scales, the grid restarting every `group_rows` rows.
    scales: Option<CudaSlice<f32>>,
    group_rows: usize,
}

impl CudaMatrix {
    fn expert_elems(&self) -> usize {
        self.rows * self.stride
    }
    fn expert_scales(&self) -> usize {
        expert_scales(self.rows, self.group_rows, self.stride)
    }
}

/// FP8 scales per expert of `rows` rows whose 128x128 grid restarts every `group_rows` rows.
fn expert_scales(rows: usize, group_rows: usize, stride: usize) -> usize {
    (rows / group_rows) * group_rows.div_ceil(fp8::BLOCK) * (stride / fp8::BLOCK)
}

/// E4M3 activation rows, [rows, cols padded to 128], and their 1x128 scales.
pub(crate) struct QuantizedRows {
    codes: CudaSlice<u8>,
    scales: CudaSlice<f32>,
}

/// The matrix-vector kernel for a weight dtype.
fn linear_kernel(dtype: WeightDtype) -> Result<Kernel<LinearArgs>> {
    Ok(match dtype {
        WeightDtype::F32 => LINEAR_F32,
        WeightDtype::F16 => LINEAR_F16,
        WeightDtype::Bf16 => LINEAR_BF16,
        WeightDtype::Fp8 => LINEAR_FP8,
        other => bail!("CUDA: no kernel reads {} weights", other.name()),
    })
}

/// The per-assignment expert kernel for a weight dtype.
fn experts_kernel(dtype: WeightDtype) -> Result<Kernel<ExpertsArgs>> {
    Ok(match dtype {
        WeightDtype::F32 => EXPERTS_F32,
        WeightDtype::F16 => EXPERTS_F16,
        WeightDtype::Bf16 => EXPERTS_BF16,
        WeightDtype::Fp8 => EXPERTS_FP8,
        other => bail!("CUDA: no kernel reads {} weights", other.name()),
    })
}

impl CudaBackend {
    /// A matrix (or stacked experts, split into `experts` by the leading axis) kept at `precision`: f32, f16
    /// and bf16 as stored, FP8 as codes with rows padded to 128 columns beside its block scales; the block
    /// formats the kernels do not decode yet are widened to f16.
    pub(crate) fn upload_weight(&mut self, w: StoredTensor, precision: Precision, experts: bool) -> Result<CudaMatrix> {
        let dtype = kept_dtype(self.dtype, precision, (w.dtype, w.cols()), Some(&WeightDtype::ALL));
        if dtype == WeightDtype::Fp8 && !self.fp8_capable {
            bail!("FP8 weights need FP8 tensor cores (sm_89 or newer); use --dtype bf16 on this GPU");
        }
        let w = w.convert(dtype)?;
        self.weights.add(precision, dtype, w.len(), w.stored_bytes());
        let grid = BlockGrid::of(&w.shape);
        let n_experts = if experts { w.shape[0] } else { 1 };
        let rows = grid.groups * grid.rows / n_experts;
        let cols = grid.cols;
        let mut stride = cols;
        let mut scales = None;
        let bytes: Vec<u8> = match dtype {
            WeightDtype::Fp8 => {
                stride = cols.div_ceil(fp8::BLOCK) * fp8::BLOCK;
                scales = Some(self.upload(w.scales())?);
                let mut padded = vec![0u8; grid.groups * grid.rows * stride];
                for (dst, src) in padded.chunks_mut(stride).zip(w.bytes().chunks(cols)) {
                    dst[..cols].copy_from_slice(src);
                }
                padded
            }
            // f32, f16 and bf16 little-endian, as the kernels read them.
            _ => w.bytes().to_vec(),
        };
        Ok(CudaMatrix {
            dtype,
            rows,
            cols,
            stride,
            data: self.upload(&bytes)?,
            scales,
            group_rows: grid.rows,
        })
    }

    /// `rows` activation rows (gathered through `src` when given: -1 gives a zero row) as E4M3 codes with one
    /// scale per 1x128 block, padded to a multiple of 128 columns.
    pub(crate) fn quantize(&self, x: &CudaTensor, src: Option<&CudaSlice<i32>>, rows: usize) -> Result<QuantizedRows> {
        let kp = x.cols.div_ceil(fp8::BLOCK) * fp8::BLOCK;
        let codes = self.alloc::<u8>(rows * kp)?;
        let scales = self.alloc::<f32>(rows * kp / fp8::BLOCK)?;
        let args = QuantizeArgs {
            x: self.ptr(&x.buf),
            src: self.opt_ptr(src),
            q: self.ptr(&codes),
            scales: self.ptr(&scales),
            rows: rows as i32,
            k: x.cols as i32,
            kp: kp as i32,
            _pad: 0,
        };
        // One warp per (row, 128-column block), 4 warps per block.
        self.launch(
            QUANTIZE_ROWS_1X128,
            ((rows * kp / fp8::BLOCK).div_ceil(4), 1),
            128,
            &args,
        )?;
        Ok(QuantizedRows { codes, scales })
    }

    /// The FP8 GEMM on quantized rows: dense (`tiles` None) or grouped per expert (tile_expert, used_tiles
    /// from `moe_align`), [rows, w.rows].
    pub(crate) fn gemm_fp8(
        &self,
        a: &QuantizedRows,
        rows: usize,
        w: &CudaMatrix,
        bias: Option<&CudaVector>,
        tiles: Option<(&CudaSlice<i32>, &CudaSlice<i32>)>,
    ) -> Result<CudaTensor> {
        let out = self.alloc::<f32>(rows * w.rows)?;
        let args = GemmFp8Args {
            a: self.ptr(&a.codes),
            a_scale: self.ptr(&a.scales),
            b: self.ptr(&w.data),
            b_scale: self.opt_ptr(w.scales.as_ref()),
            bias: self.opt_ptr(bias.map(|b| &b.data)),
            c: self.ptr(&out),
            tile_expert: self.opt_ptr(tiles.map(|t| t.0)),
            used_tiles: self.opt_ptr(tiles.map(|t| t.1)),
            b_expert_elems: w.expert_elems() as i64,
            b_expert_scales: w.expert_scales() as i64,
            m: rows as i32,
            n: w.rows as i32,
            kp: w.stride as i32,
            group_rows: w.group_rows as i32,
        };
        self.launch(GEMM_FP8, (w.rows.div_ceil(TILE), rows.div_ceil(TILE)), 128, &args)?;
        Ok(CudaTensor {
            rows,
            cols: w.rows,
            buf: out,
        })
    }

    /// x · Wᵀ + bias.
    pub(crate) fn matmul(&self, x: &CudaTensor, w: &CudaMatrix, bias: Option<&CudaVector>) -> Result<CudaTensor> {
        if w.dtype == WeightDtype::Fp8 && x.rows > GEMV_ROWS {
            let q = self.quantize(x, None, x.rows)?;
            return self.gemm_fp8(&q, x.rows, w, bias, None);
        }
        let out = self.alloc::<f32>(x.rows * w.rows)?;
        let args = LinearArgs {
            x: self.ptr(&x.buf),
            w: self.ptr(&w.data),
            scales: self.opt_ptr(w.scales.as_ref()),
            bias: self.opt_ptr(bias.map(|b| &b.data)),
            y: self.ptr(&out),
            rows: x.rows as i32,
            k: w.cols as i32,
            out: w.rows as i32,
            stride: w.stride as i32,
            group_rows: w.group_rows as i32,
            _pad: 0,
        };
        // 4 warps per block, one output row each, GEMV_ROWS rows of x per warp.
        let grid = (w.rows.div_ceil(4), x.rows.div_ceil(GEMV_ROWS));
        self.launch(linear_kernel(w.dtype)?, grid, 128, &args)?;
        Ok(CudaTensor {
            rows: x.rows,
            cols: w.rows,
            buf: out,
        })
    }

    /// Each assignment's expert (`ids`, -1: none) on x row assignment / x_div, in the masked fixed-capacity
    /// layout: [assignments, w.rows].
    pub(crate) fn experts_gemv(
        &self,
        x: &CudaTensor,
        x_div: usize,
        ids: &CudaSlice<i32>,
        assignments: usize,
        w: &CudaMatrix,
    ) -> Result<CudaTensor> {
        let out = self.alloc::<f32>(assignments * w.rows)?;
        let args = ExpertsArgs {
            x: self.ptr(&x.buf),
            experts: self.ptr(ids),
            w: self.ptr(&w.data),
            scales: self.opt_ptr(w.scales.as_ref()),
            y: self.ptr(&out),
            expert_elems: w.expert_elems() as i64,
            expert_scales: w.expert_scales() as i64,
            x_div: x_div as i32,
            k: w.cols as i32,
            out: w.rows as i32,
            stride: w.stride as i32,
            group_rows: w.group_rows as i32,
            _pad: 0,
        };
        self.launch(experts_kernel(w.dtype)?, (w.rows.div_ceil(4), assignments), 128, &args)?;
        Ok(CudaTensor {
            rows: assignments,
            cols: w.rows,
            buf: out,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `scale_row` of kernels/common.cuh.
    fn scale_row(row: usize, group_rows: usize) -> usize {
        (row / group_rows) * group_rows.div_ceil(128) + (row % group_rows) / 128
    }

    #[test]
    fn kernel_scale_indexing_matches_the_checkpoint_grid() {
        // Stacked gate/up [experts, 2, inter, hidden] with inter and hidden off the 128 grid.
        let shape = [3, 2, 130, 200];
        let grid = BlockGrid::of(&shape);
        let (rows, group_rows, stride) = (2 * 130, 130, 256);
        let per_expert = expert_scales(rows, group_rows, stride);
        assert_eq!(per_expert * 3, grid.n_scales());
        for e in 0..3 {
            for row in 0..rows {
                for col in (0..200).step_by(7) {
                    let kernel = e * per_expert + scale_row(row, group_rows) * (stride / 128) + col / 128;
                    assert_eq!(
                        kernel,
                        grid.scale_index(e * rows + row, col),
                        "expert {e} row {row} col {col}"
                    );
                }
            }
        }
    }
}
