//! Weight matrices in the precision the checkpoint stores them (f32, bf16,
//! f16) and the products the CPU forward pass takes with them, accumulating
//! in f32 (pure compute: no I/O).
//!
//! A weight is read where it lies: a 16-bit weight is widened a row (or a
//! block of rows) at a time into a small buffer, never kept as f32, so the
//! worker's resident weights are the size of the files it loaded. A product
//! with few rows (decode steps) streams each weight row once, dotting it
//! with every input row, on all cores (rayon) — memory-bound, as a decode
//! step is. A product with many rows (a prefill chunk) widens a block of
//! weight rows and hands it to `matrixmultiply`, where the arithmetic
//! dominates. Each output is computed from its input row alone, whatever
//! else is in the batch.
use half::slice::HalfFloatSliceExt;
use ndarray::linalg::general_mat_mul;
use ndarray::{ArrayView2, ArrayViewMut2};
use rayon::prelude::*;

/// Products with at most this many input rows take the streaming path.
const STREAM_ROWS: usize = 16;
/// Weight rows per parallel task.
const BLOCK: usize = 32;

/// A row-major weight matrix as stored.
#[derive(Debug, Clone)]
pub enum Stored {
    F32(Vec<f32>),
    Bf16(Vec<half::bf16>),
    F16(Vec<half::f16>),
    /// Opt-in int8 weight-only quantization (`--weights int8`): each row
    /// (output channel) of `cols` values scaled to -127..127 by its own
    /// `scales[row]` (its largest magnitude / 127).
    I8 {
        q: Vec<i8>,
        scales: Vec<f32>,
        cols: usize,
    },
}

impl Stored {
    pub fn len(&self) -> usize {
        match self {
            Stored::F32(v) => v.len(),
            Stored::Bf16(v) => v.len(),
            Stored::F16(v) => v.len(),
            Stored::I8 { q, .. } => q.len(),
        }
    }

    /// This matrix (`cols` wide) quantized to int8 per row.
    pub fn quantize_i8(&self, cols: usize) -> Stored {
        let rows = self.len().checked_div(cols).unwrap_or(0);
        let mut q = Vec::with_capacity(self.len());
        let mut scales = Vec::with_capacity(rows);
        let mut row = vec![0.0f32; cols];
        for r in 0..rows {
            self.widen_into(r * cols, &mut row);
            let max = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
            scales.push(scale);
            q.extend(
                row.iter()
                    .map(|v| (v / scale).round().clamp(-127.0, 127.0) as i8),
            );
        }
        Stored::I8 { q, scales, cols }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held (what the checkpoint stored).
    pub fn bytes(&self) -> usize {
        match self {
            Stored::F32(v) => v.len() * 4,
            Stored::Bf16(v) => v.len() * 2,
            Stored::F16(v) => v.len() * 2,
            Stored::I8 { q, scales, .. } => q.len() + scales.len() * 4,
        }
    }

    /// The dtype's name, as safetensors spells it.
    pub fn dtype(&self) -> &'static str {
        match self {
            Stored::F32(_) => "F32",
            Stored::Bf16(_) => "BF16",
            Stored::F16(_) => "F16",
            Stored::I8 { .. } => "I8",
        }
    }

    /// Widens `out.len()` values starting at `start` into `out`.
    pub fn widen_into(&self, start: usize, out: &mut [f32]) {
        let end = start + out.len();
        match self {
            Stored::F32(v) => out.copy_from_slice(&v[start..end]),
            Stored::Bf16(v) => v[start..end].convert_to_f32_slice(out),
            Stored::F16(v) => v[start..end].convert_to_f32_slice(out),
            Stored::I8 { q, scales, cols } => {
                for (k, o) in out.iter_mut().enumerate() {
                    let i = start + k;
                    *o = f32::from(q[i]) * scales[i / cols];
                }
            }
        }
    }

    /// All of it as f32 (for a device that computes in f32).
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.len()];
        self.widen_into(0, &mut out);
        out
    }

    /// Row `row` of a matrix `cols` wide: borrowed when stored as f32,
    /// else widened into `buf`.
    fn row<'a>(&'a self, row: usize, cols: usize, buf: &'a mut Vec<f32>) -> &'a [f32] {
        match self {
            Stored::F32(v) => &v[row * cols..(row + 1) * cols],
            _ => {
                buf.resize(cols, 0.0);
                self.widen_into(row * cols, buf);
                buf
            }
        }
    }
}

/// The eight partial sums of the dot products, added in a fixed
/// order.
fn sum8(acc: [f32; 8]) -> f32 {
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

/// `w · x` with each weight widened to f32 by `widen` as it is read, in
/// eight independent sums (vectorizes, and the order of additions is fixed
/// by the length alone).
#[inline(always)]
fn dot_by<T: Copy>(w: &[T], x: &[f32], widen: impl Fn(T) -> f32) -> f32 {
    let mut acc = [0.0f32; 8];
    let (cw, cx) = (w.chunks_exact(8), x.chunks_exact(8));
    let tail: f32 = cw
        .remainder()
        .iter()
        .zip(cx.remainder())
        .map(|(a, b)| widen(*a) * b)
        .sum();
    for (a, b) in cw.zip(cx) {
        for i in 0..8 {
            acc[i] += widen(a[i]) * b[i];
        }
    }
    sum8(acc) + tail
}

/// `a · b` in f32.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    dot_by(a, b, |v| v)
}

/// `w · x` with `w` in bf16 (the top half of an f32, so widening is a
/// shift).
pub fn dot_bf16(w: &[half::bf16], x: &[f32]) -> f32 {
    dot_by(w, x, |b| f32::from_bits(u32::from(b.to_bits()) << 16))
}

/// `scale × (q · x)` with `q` int8.
pub fn dot_i8(q: &[i8], scale: f32, x: &[f32]) -> f32 {
    scale * dot_by(q, x, f32::from)
}

/// `y[rows × out] = x[rows × in] · Wᵀ` with `w` an `out × in` matrix.
pub fn matmul_t(x: &[f32], rows: usize, w: &Stored, out_dim: usize, in_dim: usize) -> Vec<f32> {
    assert_eq!(x.len(), rows * in_dim, "input shape");
    assert_eq!(w.len(), out_dim * in_dim, "weight shape");
    let mut y = vec![0.0f32; rows * out_dim];
    if rows == 0 || out_dim == 0 {
        return y;
    }
    if rows <= STREAM_ROWS {
        // Outputs by weight row (`out × rows`), then transposed.
        let mut yt = vec![0.0f32; out_dim * rows];
        yt.par_chunks_mut(BLOCK * rows)
            .enumerate()
            .for_each(|(b, chunk)| {
                let mut buf = Vec::new();
                for (j, outs) in chunk.chunks_exact_mut(rows).enumerate() {
                    let o = b * BLOCK + j;
                    let xs = |r: usize| &x[r * in_dim..(r + 1) * in_dim];
                    if let Stored::Bf16(v) = w {
                        let wr = &v[o * in_dim..(o + 1) * in_dim];
                        for (r, y) in outs.iter_mut().enumerate() {
                            *y = dot_bf16(wr, xs(r));
                        }
                        continue;
                    }
                    if let Stored::I8 { q, scales, .. } = w {
                        let wr = &q[o * in_dim..(o + 1) * in_dim];
                        for (r, y) in outs.iter_mut().enumerate() {
                            *y = dot_i8(wr, scales[o], xs(r));
                        }
                        continue;
                    }
                    let wr = w.row(o, in_dim, &mut buf);
                    for (r, y) in outs.iter_mut().enumerate() {
                        *y = dot(wr, xs(r));
                    }
                }
            });
        for (o, outs) in yt.chunks_exact(rows).enumerate() {
            for (r, v) in outs.iter().enumerate() {
                y[r * out_dim + o] = *v;
            }
        }
        return y;
    }
    let xa = ArrayView2::from_shape((rows, in_dim), x).expect("input shape");
    if let Stored::F32(wv) = w {
        let wa = ArrayView2::from_shape((out_dim, in_dim), wv).expect("weight shape");
        let mut ya = ArrayViewMut2::from_shape((rows, out_dim), &mut y).expect("output shape");
        general_mat_mul(1.0, &xa, &wa.t(), 0.0, &mut ya);
        return y;
    }
    // 16-bit weights: widen blocks of weight rows, multiply each.
    const WIDE_BLOCK: usize = 256;
    let blocks: Vec<(usize, Vec<f32>)> = (0..out_dim.div_ceil(WIDE_BLOCK))
        .into_par_iter()
        .map(|b| {
            let lo = b * WIDE_BLOCK;
            let n = WIDE_BLOCK.min(out_dim - lo);
            let mut wide = vec![0.0f32; n * in_dim];
            w.widen_into(lo * in_dim, &mut wide);
            let wa = ArrayView2::from_shape((n, in_dim), &wide).expect("block shape");
            let mut part = vec![0.0f32; rows * n];
            let mut pa = ArrayViewMut2::from_shape((rows, n), &mut part).expect("part shape");
            general_mat_mul(1.0, &xa, &wa.t(), 0.0, &mut pa);
            (lo, part)
        })
        .collect();
    for (lo, part) in blocks {
        let n = part.len() / rows;
        for r in 0..rows {
            y[r * out_dim + lo..r * out_dim + lo + n].copy_from_slice(&part[r * n..(r + 1) * n]);
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The textbook product in f64.
    fn naive(x: &[f32], rows: usize, w: &[f32], out: usize, inp: usize) -> Vec<f64> {
        let mut y = vec![0.0; rows * out];
        for r in 0..rows {
            for o in 0..out {
                y[r * out + o] = (0..inp)
                    .map(|i| f64::from(x[r * inp + i]) * f64::from(w[o * inp + i]))
                    .sum();
            }
        }
        y
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let v = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8;
                (v % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn every_path_and_precision_computes_the_product() {
        let (out, inp) = (70, 45);
        let w = values(out * inp, 1);
        let stores = [
            Stored::F32(w.clone()),
            Stored::Bf16(w.iter().map(|v| half::bf16::from_f32(*v)).collect()),
            Stored::F16(w.iter().map(|v| half::f16::from_f32(*v)).collect()),
            Stored::F32(w.clone()).quantize_i8(inp),
        ];
        for rows in [1, 3, STREAM_ROWS, STREAM_ROWS + 1, 40] {
            let x = values(rows * inp, 7);
            for s in &stores {
                // Against the product of the stored (rounded) weights.
                let want = naive(&x, rows, &s.to_f32(), out, inp);
                let got = matmul_t(&x, rows, s, out, inp);
                let err = got
                    .iter()
                    .zip(&want)
                    .map(|(g, w)| (f64::from(*g) - w).abs())
                    .fold(0.0, f64::max);
                assert!(err < 1e-4, "{} rows {rows}: {err}", s.dtype());
            }
        }
    }

    #[test]
    fn a_row_is_computed_the_same_in_any_small_batch() {
        let (out, inp) = (33, 64);
        let w = Stored::Bf16(
            values(out * inp, 3)
                .iter()
                .map(|v| half::bf16::from_f32(*v))
                .collect(),
        );
        let x = values(5 * inp, 9);
        let all = matmul_t(&x, 5, &w, out, inp);
        let one = matmul_t(&x[2 * inp..3 * inp], 1, &w, out, inp);
        assert_eq!(&all[2 * out..3 * out], &one[..]);
    }

    #[test]
    fn int8_rows_keep_their_own_scale() {
        // Two rows of very different magnitude: each keeps its precision.
        let w = vec![1.0, -0.5, 0.25, 100.0, -50.0, 25.0];
        let s = Stored::F32(w.clone()).quantize_i8(3);
        let back = s.to_f32();
        for (a, b) in back.iter().zip(&w) {
            assert!((a - b).abs() <= b.abs() / 127.0 + 1e-6, "{back:?}");
        }
        assert_eq!((s.bytes(), s.dtype()), (6 + 2 * 4, "I8"));
        let zero = Stored::F32(vec![0.0; 3]).quantize_i8(3);
        assert_eq!(zero.to_f32(), vec![0.0; 3]);
    }

    #[test]
    fn stored_sizes_are_the_files() {
        let s = Stored::Bf16(vec![half::bf16::ZERO; 10]);
        assert_eq!((s.len(), s.bytes(), s.dtype()), (10, 20, "BF16"));
        assert_eq!(Stored::F32(vec![0.0; 10]).bytes(), 40);
        assert!(Stored::F16(vec![]).is_empty());
    }
}
