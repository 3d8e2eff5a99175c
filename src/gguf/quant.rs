//! GGML tensor types and their dequantisation to f32: F32, F16, BF16 and the block formats
//! Q4_0, Q4_1 and Q8_0 (32 values per block, each block scaled by an f16 `d`, plus an f16
//! minimum `m` for Q4_1).

use anyhow::{Result, bail};
use half::{bf16, f16};
use rayon::prelude::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q8_0,
    Bf16,
}

/// Names of GGML type ids, for error messages about the ones we do not read.
const NAMES: &[(u32, &str)] = &[
    (0, "F32"),
    (1, "F16"),
    (2, "Q4_0"),
    (3, "Q4_1"),
    (6, "Q5_0"),
    (7, "Q5_1"),
    (8, "Q8_0"),
    (9, "Q8_1"),
    (10, "Q2_K"),
    (11, "Q3_K"),
    (12, "Q4_K"),
    (13, "Q5_K"),
    (14, "Q6_K"),
    (15, "Q8_K"),
    (16, "IQ2_XXS"),
    (17, "IQ2_XS"),
    (18, "IQ3_XXS"),
    (19, "IQ1_S"),
    (20, "IQ4_NL"),
    (21, "IQ3_S"),
    (22, "IQ2_S"),
    (23, "IQ4_XS"),
    (24, "I8"),
    (25, "I16"),
    (26, "I32"),
    (27, "I64"),
    (28, "F64"),
    (29, "IQ1_M"),
    (30, "BF16"),
];

impl GgmlType {
    pub fn from_id(id: u32, tensor: &str) -> Result<Self> {
        Ok(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            8 => Self::Q8_0,
            30 => Self::Bf16,
            other => {
                let name = NAMES
                    .iter()
                    .find(|(i, _)| *i == other)
                    .map_or("unknown", |(_, n)| n);
                bail!(
                    "tensor `{tensor}` has GGML type {name} ({other}), which this importer does not \
                     read; supported: F32, F16, BF16, Q4_0, Q4_1, Q8_0 (re-quantise the file with \
                     llama.cpp's llama-quantize, e.g. to Q8_0)"
                )
            }
        })
    }

    /// Values per block.
    pub fn block_size(self) -> usize {
        match self {
            Self::F32 | Self::F16 | Self::Bf16 => 1,
            Self::Q4_0 | Self::Q4_1 | Self::Q8_0 => 32,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::Bf16 => 2,
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q8_0 => 34,
        }
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Decodes one block of 32 values into `out`.
fn dequantize_block(ty: GgmlType, b: &[u8], out: &mut [f32]) {
    match ty {
        GgmlType::Q4_0 => {
            let d = f16_at(b, 0);
            for j in 0..16 {
                let q = b[2 + j];
                out[j] = ((q & 0x0F) as i32 - 8) as f32 * d;
                out[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
            }
        }
        GgmlType::Q4_1 => {
            let (d, m) = (f16_at(b, 0), f16_at(b, 2));
            for j in 0..16 {
                let q = b[4 + j];
                out[j] = (q & 0x0F) as f32 * d + m;
                out[j + 16] = (q >> 4) as f32 * d + m;
            }
        }
        GgmlType::Q8_0 => {
            let d = f16_at(b, 0);
            for j in 0..32 {
                out[j] = (b[2 + j] as i8) as f32 * d;
            }
        }
        GgmlType::F32 => out[0] = f32::from_le_bytes(b[..4].try_into().unwrap()),
        GgmlType::F16 => out[0] = f16_at(b, 0),
        GgmlType::Bf16 => out[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32(),
    }
}

/// Decodes `numel` values of type `ty` from `bytes`.
pub fn dequantize(ty: GgmlType, bytes: &[u8], numel: usize) -> Result<Vec<f32>> {
    let (bs, bb) = (ty.block_size(), ty.block_bytes());
    if !numel.is_multiple_of(bs) || bytes.len() != numel / bs * bb {
        bail!(
            "{} bytes cannot hold {numel} values of type {ty:?}",
            bytes.len()
        );
    }
    let mut out = vec![0f32; numel];
    // Blocks are independent: decode them in parallel, a few thousand values per task.
    let per_task = (4096 / bs).max(1);
    out.par_chunks_mut(bs * per_task)
        .zip(bytes.par_chunks(bb * per_task))
        .for_each(|(o, b)| {
            for (ob, bb_) in o.chunks_mut(bs).zip(b.chunks(bb)) {
                dequantize_block(ty, bb_, ob);
            }
        });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(v: f32) -> [u8; 2] {
        f16::from_f32(v).to_le_bytes()
    }

    #[test]
    fn q4_1_known_values() {
        // d = 0.5, m = -1: value = nibble * 0.5 - 1. Low nibbles give elements 0..16,
        // high nibbles elements 16..32.
        let mut block = Vec::new();
        block.extend(h(0.5));
        block.extend(h(-1.0));
        for j in 0..16u8 {
            block.push((15 - j) << 4 | j);
        }
        let v = dequantize(GgmlType::Q4_1, &block, 32).unwrap();
        assert_eq!(v[0], -1.0);
        assert_eq!(v[1], -0.5);
        assert_eq!(v[15], 6.5);
        assert_eq!(v[16], 6.5);
        assert_eq!(v[31], -1.0);
    }

    #[test]
    fn q8_0_and_q4_0_known_values() {
        let mut block = Vec::new();
        block.extend(h(0.25));
        block.extend((0..32).map(|j| (j as i8 - 16) as u8));
        let v = dequantize(GgmlType::Q8_0, &block, 32).unwrap();
        assert_eq!(v[0], -4.0);
        assert_eq!(v[16], 0.0);
        assert_eq!(v[31], 3.75);

        let mut block = Vec::new();
        block.extend(h(2.0));
        block.extend(std::iter::repeat_n(0x9F_u8, 16)); // low 15 -> +7, high 9 -> +1
        let v = dequantize(GgmlType::Q4_0, &block, 32).unwrap();
        assert_eq!(v[0], 14.0);
        assert_eq!(v[16], 2.0);
    }

    #[test]
    fn float_types_and_errors() {
        let bytes: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(
            dequantize(GgmlType::F32, &bytes, 2).unwrap(),
            vec![1.5, -2.0]
        );
        let bytes: Vec<u8> = h(0.125)
            .into_iter()
            .chain(bf16::from_f32(3.0).to_le_bytes())
            .collect();
        assert_eq!(
            dequantize(GgmlType::F16, &bytes[..2], 1).unwrap(),
            vec![0.125]
        );
        assert_eq!(
            dequantize(GgmlType::Bf16, &bytes[2..], 1).unwrap(),
            vec![3.0]
        );
        assert!(dequantize(GgmlType::Q8_0, &[0; 33], 32).is_err());
        let err = GgmlType::from_id(14, "blk.0.ffn_down.weight")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("Q6_K") && err.contains("blk.0.ffn_down.weight"),
            "{err}"
        );
    }
}
