//! Weight matrices as they are stored: a dtype, a shape and bytes, either a range of the memory-mapped
//! checkpoint or bytes made at load (stacked experts, reordered rows, a `--dtype` conversion). Nothing here
//! widens a matrix to f32 as a whole: computations decode the rows they need (`decode_row`), conversions go
//! through bands of rows.
//!
//! Rows are the last axis (the reduction axis of a linear layer, along which ggml blocks run), so every row
//! is a whole number of blocks and row operations (stacking, reordering) move bytes, not values.

use std::sync::Arc;

use memmap2::Mmap;

use crate::bail;
use crate::dtype::WeightDtype;
use crate::error::Result;
use crate::fp8::{self, BlockGrid};
use crate::quant::{self, BlockFormat};

#[derive(Clone)]
enum Bytes {
    Mapped { map: Arc<Mmap>, start: usize, len: usize },
    Owned(Vec<u8>),
}

#[derive(Clone)]
pub struct StoredTensor {
    pub shape: Vec<usize>,
    pub dtype: WeightDtype,
    bytes: Bytes,
    /// FP8 only: one scale per 128x128 block of `BlockGrid::of(shape)`.
    scales: Vec<f32>,
}

impl std::fmt::Debug for StoredTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StoredTensor({} {:?})", self.dtype.name(), self.shape)
    }
}

/// Bytes a tensor of `shape` takes in `format`, or an error when its rows are not whole blocks.
fn byte_len(shape: &[usize], format: BlockFormat) -> Result<usize> {
    let cols = shape.last().copied().unwrap_or(1);
    let rows: usize = shape[..shape.len().saturating_sub(1)].iter().product();
    Ok(rows * format.bytes_of(cols)?)
}

impl StoredTensor {
    /// A tensor of a block format over `len` bytes at `start` of a mapped file.
    pub fn mapped(shape: Vec<usize>, format: BlockFormat, map: Arc<Mmap>, start: usize, len: usize) -> Result<Self> {
        if len != byte_len(&shape, format)? || start + len > map.len() {
            bail!(
                "{len} bytes at {start} do not hold a {} tensor of shape {shape:?}",
                format.name()
            );
        }
        Ok(StoredTensor {
            shape,
            dtype: WeightDtype::Block(format),
            bytes: Bytes::Mapped { map, start, len },
            scales: Vec::new(),
        })
    }

    /// A tensor of a block format over bytes made at load.
    pub fn owned(shape: Vec<usize>, format: BlockFormat, bytes: Vec<u8>) -> Result<Self> {
        if bytes.len() != byte_len(&shape, format)? {
            bail!(
                "{} bytes do not hold a {} tensor of shape {shape:?}",
                bytes.len(),
                format.name()
            );
        }
        Ok(StoredTensor {
            shape,
            dtype: WeightDtype::Block(format),
            bytes: Bytes::Owned(bytes),
            scales: Vec::new(),
        })
    }

    /// FP8 E4M3 codes with their 128x128 block scales (over `BlockGrid::of(shape)`).
    pub fn fp8(shape: Vec<usize>, codes: Vec<u8>, scales: Vec<f32>) -> Result<Self> {
        let grid = BlockGrid::of(&shape);
        if codes.len() != shape.iter().product::<usize>() || scales.len() != grid.n_scales() {
            bail!(
                "{} FP8 codes and {} scales do not make a tensor of shape {shape:?}",
                codes.len(),
                scales.len()
            );
        }
        Ok(StoredTensor {
            shape,
            dtype: WeightDtype::Fp8,
            bytes: Bytes::Owned(codes),
            scales,
        })
    }

    /// `values` kept in f32.
    pub fn from_f32(shape: Vec<usize>, values: &[f32]) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), values.len());
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        StoredTensor {
            shape,
            dtype: WeightDtype::F32,
            bytes: Bytes::Owned(bytes),
            scales: Vec::new(),
        }
    }

    /// `values` stored as `dtype` (quantized with ggml's, or the FP8 block, rounding).
    pub fn encode(shape: Vec<usize>, values: &[f32], dtype: WeightDtype) -> Result<Self> {
        match dtype {
            WeightDtype::Block(format) => Self::owned(shape, format, quant::quantize(format, values)?),
            WeightDtype::Fp8 => {
                let (codes, scales) = fp8::quantize(values, BlockGrid::of(&shape));
                Self::fp8(shape, codes, scales)
            }
        }
    }

    /// The stored bytes (FP8: the codes).
    pub fn bytes(&self) -> &[u8] {
        match &self.bytes {
            Bytes::Mapped { map, start, len } => &map[*start..start + len],
            Bytes::Owned(b) => b,
        }
    }

    /// FP8 block scales (empty for the other dtypes).
    pub fn scales(&self) -> &[f32] {
        &self.scales
    }

    /// Values per row: the last axis.
    pub fn cols(&self) -> usize {
        self.shape.last().copied().unwrap_or(1)
    }

    /// Rows over every leading axis.
    pub fn rows(&self) -> usize {
        self.shape[..self.shape.len().saturating_sub(1)].iter().product()
    }

    pub fn len(&self) -> usize {
        self.rows() * self.cols()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of one stored row.
    pub fn row_bytes(&self) -> usize {
        self.bytes().len() / self.rows().max(1)
    }

    /// Bytes the tensor takes, scales included.
    pub fn stored_bytes(&self) -> usize {
        self.bytes().len() + 4 * self.scales.len()
    }

    /// Row `r` (counted over every leading axis) into `out` (`cols` values).
    pub fn decode_row(&self, r: usize, out: &mut [f32]) {
        let n = self.row_bytes();
        let row = &self.bytes()[r * n..(r + 1) * n];
        match self.dtype {
            WeightDtype::Block(format) => quant::dequantize(format, row, out).expect("whole rows of whole blocks"),
            WeightDtype::Fp8 => {
                let grid = BlockGrid::of(&self.shape);
                for (c, (v, &q)) in out.iter_mut().zip(row).enumerate() {
                    *v = fp8::to_f32(q) * self.scales[grid.scale_index(r, c)];
                }
            }
        }
    }

    /// Every value, row-major: for small tensors and for backends that widen what they cannot decode.
    pub fn to_f32(&self) -> Vec<f32> {
        let cols = self.cols();
        let mut out = vec![0.0; self.len()];
        for (r, row) in out.chunks_exact_mut(cols.max(1)).enumerate() {
            self.decode_row(r, row);
        }
        out
    }

    /// The same values stored as `dtype`: unchanged when already so, else converted band by band (128 rows
    /// at a time, whole FP8 blocks).
    pub fn convert(self, dtype: WeightDtype) -> Result<StoredTensor> {
        if self.dtype == dtype {
            return Ok(self);
        }
        let (rows, cols) = (self.rows(), self.cols());
        let grid = BlockGrid::of(&self.shape);
        let mut bytes = Vec::with_capacity((self.len() as f64 * dtype.bytes()) as usize);
        let mut scales = Vec::new();
        let mut band = Vec::new();
        let mut first = 0;
        while first < rows {
            // FP8 bands are whole 128-row blocks of one group; the other formats take any rows.
            let in_group = grid.rows - first % grid.rows;
            let n = fp8::BLOCK.min(in_group).min(rows - first);
            band.resize(n * cols, 0.0);
            for (i, row) in band.chunks_exact_mut(cols.max(1)).enumerate() {
                self.decode_row(first + i, row);
            }
            match dtype {
                WeightDtype::Block(format) => bytes.extend(quant::quantize(format, &band)?),
                WeightDtype::Fp8 => {
                    let (codes, s) = fp8::quantize(&band, BlockGrid::of(&[n, cols]));
                    bytes.extend(codes);
                    scales.extend(s);
                }
            }
            first += n;
        }
        match dtype {
            WeightDtype::Block(format) => Self::owned(self.shape, format, bytes),
            WeightDtype::Fp8 => Self::fp8(self.shape, bytes, scales),
        }
    }

    /// Tensors of one dtype stacked along a new leading axis (`shape`: the result's), as one tensor. FP8
    /// parts keep their own block grids: each must be one whole group of the result's grid.
    pub fn stack(parts: Vec<StoredTensor>, shape: Vec<usize>) -> Result<StoredTensor> {
        let Some(dtype) = parts.first().map(|p| p.dtype) else {
            bail!("stacking no tensors");
        };
        if let Some(p) = parts.iter().find(|p| p.dtype != dtype) {
            bail!("stacking {} with {} tensors", p.dtype.name(), dtype.name());
        }
        let bytes: Vec<u8> = parts.iter().flat_map(|p| p.bytes().iter().copied()).collect();
        match dtype {
            WeightDtype::Block(format) => Self::owned(shape, format, bytes),
            WeightDtype::Fp8 => {
                let grid = BlockGrid::of(&shape);
                if parts.iter().any(|p| p.rows() != grid.rows) {
                    bail!("FP8 tensors stacked into {shape:?} must each be one group of its block grid");
                }
                let scales = parts.iter().flat_map(|p| p.scales.iter().copied()).collect();
                Self::fp8(shape, bytes, scales)
            }
        }
    }

    /// The same rows under another shape with the same last axis (an FP8 tensor only where its block grid
    /// stays the same: its scales are laid out by it).
    pub fn reshape(mut self, shape: Vec<usize>) -> Result<StoredTensor> {
        let same_rows = shape.iter().product::<usize>() == self.len() && shape.last() == self.shape.last();
        let same_grid = self.dtype != WeightDtype::Fp8 || BlockGrid::of(&shape) == BlockGrid::of(&self.shape);
        if !same_rows || !same_grid {
            bail!(
                "a {} tensor of shape {:?} cannot take shape {shape:?}",
                self.dtype.name(),
                self.shape
            );
        }
        self.shape = shape;
        Ok(self)
    }

    /// Rows in a new order: row `i` of the result is row `order[i]` of `self` (within the same shape).
    pub fn select_rows(&self, order: &[usize]) -> Result<StoredTensor> {
        if self.dtype == WeightDtype::Fp8 || order.len() != self.rows() {
            bail!(
                "rows of a {} tensor of shape {:?} cannot be reordered",
                self.dtype.name(),
                self.shape
            );
        }
        let n = self.row_bytes();
        let bytes = order
            .iter()
            .flat_map(|&r| self.bytes()[r * n..(r + 1) * n].iter().copied())
            .collect();
        let WeightDtype::Block(format) = self.dtype else {
            unreachable!("FP8 refused above")
        };
        Self::owned(self.shape.clone(), format, bytes)
    }

    /// The last two axes swapped, for the element formats (f32, f16, bf16) only: blocks cannot be split.
    pub fn transpose_last2(&self) -> Result<StoredTensor> {
        let width = match self.dtype {
            WeightDtype::Block(BlockFormat::F32) => 4,
            WeightDtype::Block(BlockFormat::F16 | BlockFormat::Bf16) => 2,
            other => bail!(
                "a {} tensor cannot be transposed (its values are in blocks)",
                other.name()
            ),
        };
        let n = self.shape.len();
        if n < 2 {
            bail!("transposing a tensor of shape {:?}", self.shape);
        }
        let (r, c) = (self.shape[n - 2], self.shape[n - 1]);
        let src = self.bytes();
        let mut bytes = vec![0u8; src.len()];
        for (s, d) in src
            .chunks_exact(r * c * width)
            .zip(bytes.chunks_exact_mut(r * c * width))
        {
            for i in 0..r {
                for j in 0..c {
                    d[(j * r + i) * width..][..width].copy_from_slice(&s[(i * c + j) * width..][..width]);
                }
            }
        }
        let mut shape = self.shape.clone();
        shape.swap(n - 2, n - 1);
        let WeightDtype::Block(format) = self.dtype else {
            unreachable!("element formats only")
        };
        Self::owned(shape, format, bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize) -> Vec<f32> {
        (0..n).map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 1e-3).collect()
    }

    #[test]
    fn rows_decode_as_the_whole_tensor_and_convert_in_bands() {
        let x = values(3 * 130 * 64);
        let t = StoredTensor::encode(vec![3, 130, 64], &x, WeightDtype::Bf16).unwrap();
        assert_eq!((t.rows(), t.cols(), t.row_bytes()), (390, 64, 128));
        let widened = t.to_f32();
        for (a, b) in x.iter().zip(&widened) {
            assert_eq!(half::bf16::from_f32(*a).to_f32(), *b);
        }
        // To FP8 band by band: the same codes and scales as quantizing the whole tensor at once.
        let fp8 = t.clone().convert(WeightDtype::Fp8).unwrap();
        let (codes, scales) = fp8::quantize(&widened, BlockGrid::of(&[3, 130, 64]));
        assert_eq!((fp8.bytes(), fp8.scales()), (&codes[..], &scales[..]));
        assert_eq!(
            fp8.to_f32(),
            fp8::dequantize(&codes, &scales, BlockGrid::of(&[3, 130, 64]))
        );
        let q8 = t.convert(WeightDtype::Block(BlockFormat::Q8_0)).unwrap();
        assert_eq!(q8.bytes(), quant::quantize(BlockFormat::Q8_0, &widened).unwrap());
    }

    #[test]
    fn row_operations_move_bytes() {
        let x = values(4 * 3 * 32);
        let t = StoredTensor::encode(vec![4, 3, 32], &x, WeightDtype::Block(BlockFormat::Q8_0)).unwrap();
        let all = t.to_f32();
        let order = [5, 0, 11, 3, 1, 2, 4, 6, 7, 8, 9, 10];
        let picked = t.select_rows(&order).unwrap().to_f32();
        for (i, &r) in order.iter().enumerate() {
            assert_eq!(picked[i * 32..(i + 1) * 32], all[r * 32..(r + 1) * 32]);
        }
        let stacked = StoredTensor::stack(vec![t.clone(), t.clone()], vec![2, 4, 3, 32]).unwrap();
        assert_eq!(stacked.to_f32(), [all.clone(), all.clone()].concat());
        let f = StoredTensor::from_f32(vec![2, 3, 32], &x[..192]);
        let tr = f.transpose_last2().unwrap();
        assert_eq!(tr.shape, [2, 32, 3]);
        assert_eq!(tr.to_f32()[32 * 3 + 5 * 3 + 2], x[96 + 2 * 32 + 5]);
        assert!(t.transpose_last2().is_err());
        assert!(t.reshape(vec![12, 32]).is_ok());
    }
}
