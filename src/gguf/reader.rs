//! A reader for llama.cpp's GGUF container (versions 2 and 3): metadata key/values, tensor
//! descriptors, and each tensor's data converted to f32 (see [`super::quant`]).

use super::quant::{GgmlType, dequantize};
use anyhow::{Context, Result, bail};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// Where a tensor lives and what it holds.
#[derive(Debug, Clone)]
pub struct TensorDesc {
    pub name: String,
    /// GGUF order: `dims[0]` is the innermost (contiguous) dimension.
    pub dims: Vec<u64>,
    pub ggml_type: u32,
    /// Offset of the data from the start of the data section.
    pub offset: u64,
}

impl TensorDesc {
    /// Row-major shape (outermost first), as PyTorch/Hugging Face write it.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    pub fn numel(&self) -> usize {
        self.dims.iter().product::<u64>() as usize
    }
}

/// An opened GGUF file.
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorDesc>,
    data_start: usize,
    map: memmap2::Mmap,
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            bail!(
                "the file ends at byte {} while reading {what} at byte {} (truncated or not GGUF)",
                self.bytes.len(),
                self.pos
            );
        };
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().unwrap()))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().unwrap()))
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.u64(what)? as usize;
        let bytes = self.take(len, what)?;
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }

    fn value(&mut self, ty: u32, what: &str) -> Result<Value> {
        let mut fixed = |n: usize| -> Result<&'a [u8]> { self.take(n, what) };
        Ok(match ty {
            0 => Value::U8(fixed(1)?[0]),
            1 => Value::I8(fixed(1)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(fixed(2)?.try_into().unwrap())),
            3 => Value::I16(i16::from_le_bytes(fixed(2)?.try_into().unwrap())),
            4 => Value::U32(u32::from_le_bytes(fixed(4)?.try_into().unwrap())),
            5 => Value::I32(i32::from_le_bytes(fixed(4)?.try_into().unwrap())),
            6 => Value::F32(f32::from_le_bytes(fixed(4)?.try_into().unwrap())),
            7 => Value::Bool(fixed(1)?[0] != 0),
            8 => Value::String(self.string(what)?),
            9 => {
                let item_ty = self.u32(what)?;
                let len = self.u64(what)? as usize;
                if len > self.bytes.len() {
                    bail!("array `{what}` claims {len} items, more than the file's size");
                }
                let mut items = Vec::with_capacity(len);
                for _ in 0..len {
                    items.push(self.value(item_ty, what)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(u64::from_le_bytes(fixed(8)?.try_into().unwrap())),
            11 => Value::I64(i64::from_le_bytes(fixed(8)?.try_into().unwrap())),
            12 => Value::F64(f64::from_le_bytes(fixed(8)?.try_into().unwrap())),
            other => bail!("metadata `{what}` has unknown value type {other}"),
        })
    }
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file =
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: read-only mapping of a file we do not modify.
        let map = unsafe { memmap2::Mmap::map(&file) }
            .with_context(|| format!("mapping {}", path.display()))?;
        Self::parse(path, map).with_context(|| format!("reading GGUF file {}", path.display()))
    }

    fn parse(path: &Path, map: memmap2::Mmap) -> Result<Self> {
        let mut c = Cursor {
            bytes: &map,
            pos: 0,
        };
        if c.take(4, "the magic number")? != b"GGUF" {
            bail!("not a GGUF file (it does not start with `GGUF`)");
        }
        let version = c.u32("the version")?;
        if !(2..=3).contains(&version) {
            bail!("GGUF version {version} is not supported (2 and 3 are)");
        }
        let n_tensors = c.u64("the tensor count")?;
        let n_kv = c.u64("the metadata count")?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = c.string("a metadata key")?;
            let ty = c.u32(&key)?;
            let value = c.value(ty, &key)?;
            metadata.insert(key, value);
        }
        let mut tensors = Vec::new();
        for _ in 0..n_tensors {
            let name = c.string("a tensor name")?;
            let n_dims = c.u32(&name)? as usize;
            if n_dims > 4 {
                bail!("tensor `{name}` has {n_dims} dimensions (at most 4 are allowed)");
            }
            let dims = (0..n_dims)
                .map(|_| c.u64(&name))
                .collect::<Result<Vec<_>>>()?;
            let ggml_type = c.u32(&name)?;
            let offset = c.u64(&name)?;
            tensors.push(TensorDesc {
                name,
                dims,
                ggml_type,
                offset,
            });
        }
        let alignment = metadata
            .get("general.alignment")
            .and_then(Value::as_u64)
            .unwrap_or(32) as usize;
        let data_start = c.pos.div_ceil(alignment) * alignment;
        let file = Self {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            data_start,
            map,
        };
        for t in &file.tensors {
            let end = file.data_start as u64 + t.offset + file.byte_len(t)? as u64;
            if end > file.map.len() as u64 {
                bail!(
                    "tensor `{}` ends at byte {end} but the file has {} bytes (truncated download?)",
                    t.name,
                    file.map.len()
                );
            }
        }
        Ok(file)
    }

    fn byte_len(&self, t: &TensorDesc) -> Result<usize> {
        let ty = GgmlType::from_id(t.ggml_type, &t.name)?;
        let numel = t.numel();
        if !numel.is_multiple_of(ty.block_size()) {
            bail!(
                "tensor `{}` has {numel} elements, not a multiple of its block size",
                t.name
            );
        }
        Ok(numel / ty.block_size() * ty.block_bytes())
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// A required metadata value.
    pub fn require(&self, key: &str) -> Result<&Value> {
        self.metadata
            .get(key)
            .with_context(|| format!("{} has no metadata key `{key}`", self.path.display()))
    }

    pub fn require_u64(&self, key: &str) -> Result<u64> {
        self.require(key)?
            .as_u64()
            .with_context(|| format!("metadata `{key}` is not an integer"))
    }

    pub fn require_f64(&self, key: &str) -> Result<f64> {
        self.require(key)?
            .as_f64()
            .with_context(|| format!("metadata `{key}` is not a number"))
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorDesc> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// A tensor's elements as f32 in row-major order.
    pub fn read_f32(&self, t: &TensorDesc) -> Result<Vec<f32>> {
        let ty = GgmlType::from_id(t.ggml_type, &t.name)?;
        let start = self.data_start + t.offset as usize;
        let bytes = &self.map[start..start + self.byte_len(t)?];
        dequantize(ty, bytes, t.numel())
    }
}
