//! Reading and writing Hugging Face safetensors checkpoints: one `model.safetensors`, or shards
//! listed by `model.safetensors.index.json`. Tensors are memory-mapped and converted to f32 on
//! demand (f32, f16 and bf16 are accepted).

use anyhow::{Context, Result, bail};
use safetensors::{Dtype, SafeTensors, tensor::TensorInfo};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

struct Shard {
    path: PathBuf,
    map: memmap2::Mmap,
    /// Byte offset of the data section.
    data_start: usize,
}

/// The tensors of a checkpoint directory, by name.
pub struct SafetensorsReader {
    shards: Vec<Shard>,
    tensors: BTreeMap<String, (usize, TensorInfo)>,
}

impl SafetensorsReader {
    /// Opens `DIR/model.safetensors` or the shards named by `DIR/model.safetensors.index.json`.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let index = dir.join("model.safetensors.index.json");
        let files: Vec<PathBuf> = if index.is_file() {
            let text = std::fs::read_to_string(&index)
                .with_context(|| format!("reading {}", index.display()))?;
            let json: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not valid JSON", index.display()))?;
            let map = json
                .get("weight_map")
                .and_then(|m| m.as_object())
                .with_context(|| format!("{} has no `weight_map` object", index.display()))?;
            let mut names: Vec<&str> = map.values().filter_map(|v| v.as_str()).collect();
            names.sort_unstable();
            names.dedup();
            names.into_iter().map(|n| dir.join(n)).collect()
        } else if dir.join("model.safetensors").is_file() {
            vec![dir.join("model.safetensors")]
        } else {
            bail!(
                "{} has neither model.safetensors nor model.safetensors.index.json",
                dir.display()
            );
        };
        Self::open_files(&files)
    }

    /// Opens the given safetensors files as one checkpoint.
    pub fn open_files(files: &[PathBuf]) -> Result<Self> {
        let mut shards = Vec::new();
        let mut tensors = BTreeMap::new();
        for path in files {
            let file = std::fs::File::open(path)
                .with_context(|| format!("opening checkpoint shard {}", path.display()))?;
            // SAFETY: the file is opened read-only and not modified while mapped.
            let map = unsafe { memmap2::Mmap::map(&file) }
                .with_context(|| format!("mapping {}", path.display()))?;
            let (n, meta) = SafeTensors::read_metadata(&map).map_err(|e| {
                anyhow::anyhow!(
                    "{} is not a complete safetensors file ({e:?}); it may be truncated or \
                     corrupt — copy it again",
                    path.display()
                )
            })?;
            let shard = shards.len();
            for (name, info) in meta.tensors() {
                if tensors
                    .insert(name.clone(), (shard, info.clone()))
                    .is_some()
                {
                    bail!(
                        "tensor `{name}` appears in two shards (second: {})",
                        path.display()
                    );
                }
            }
            shards.push(Shard {
                path: path.clone(),
                map,
                data_start: 8 + n,
            });
        }
        Ok(Self { shards, tensors })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.tensors
            .get(name)
            .map(|(_, info)| info.shape.as_slice())
    }

    /// The tensor's elements as f32, row-major.
    pub fn read_f32(&self, name: &str) -> Result<Vec<f32>> {
        let (shard, info) = self
            .tensors
            .get(name)
            .with_context(|| format!("tensor `{name}` is not in the checkpoint"))?;
        let shard = &self.shards[*shard];
        let (start, end) = info.data_offsets;
        let bytes = &shard.map[shard.data_start + start..shard.data_start + end];
        Ok(match info.dtype {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            other => bail!(
                "tensor `{name}` in {} has dtype {other:?}; only F32, F16 and BF16 are supported",
                shard.path.display()
            ),
        })
    }
}

/// Element type written to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SaveDtype {
    F32,
    Bf16,
}

impl SaveDtype {
    /// The name `config.json` gives it (`torch_dtype`).
    pub fn torch_name(self) -> &'static str {
        match self {
            SaveDtype::F32 => "float32",
            SaveDtype::Bf16 => "bfloat16",
        }
    }
}

/// One tensor to write: f32 data in row-major order.
pub struct OwnedTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// A tensor view for the writer: f32 data is borrowed as little-endian bytes (no copy); bf16
/// is converted per tensor while writing.
struct EncodedView<'a> {
    dtype: SaveDtype,
    shape: &'a [usize],
    data: &'a [f32],
}

impl safetensors::View for &EncodedView<'_> {
    fn dtype(&self) -> Dtype {
        match self.dtype {
            SaveDtype::F32 => Dtype::F32,
            SaveDtype::Bf16 => Dtype::BF16,
        }
    }
    fn shape(&self) -> &[usize] {
        self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        match self.dtype {
            SaveDtype::F32 if cfg!(target_endian = "little") => {
                Cow::Borrowed(bytemuck::cast_slice(self.data))
            }
            SaveDtype::F32 => Cow::Owned(self.data.iter().flat_map(|v| v.to_le_bytes()).collect()),
            SaveDtype::Bf16 => Cow::Owned(
                self.data
                    .iter()
                    .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                    .collect(),
            ),
        }
    }
    fn data_len(&self) -> usize {
        self.data.len() * if self.dtype == SaveDtype::F32 { 4 } else { 2 }
    }
}

/// Writes tensors to one safetensors file atomically (temp file, fsync, rename), streaming
/// them to disk rather than building the file in memory.
pub fn write_safetensors(
    path: &Path,
    tensors: &BTreeMap<String, OwnedTensor>,
    dtype: SaveDtype,
) -> Result<()> {
    write_tensors(
        path,
        tensors
            .iter()
            .map(|(n, t)| (n.as_str(), t.shape.as_slice(), t.data.as_slice())),
        dtype,
    )
}

/// Like [`write_safetensors`] for borrowed `(name, shape, data)` triples.
pub fn write_tensors<'a>(
    path: &Path,
    tensors: impl IntoIterator<Item = (&'a str, &'a [usize], &'a [f32])>,
    dtype: SaveDtype,
) -> Result<()> {
    let views: Vec<(&str, EncodedView)> = tensors
        .into_iter()
        .map(|(name, shape, data)| {
            assert_eq!(shape.iter().product::<usize>(), data.len(), "tensor {name}");
            (name, EncodedView { dtype, shape, data })
        })
        .collect();
    let metadata = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    let tmp = crate::util::fsx::temp_sibling(path);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    safetensors::serialize_to_file(views.iter().map(|(n, v)| (*n, v)), Some(metadata), &tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = BTreeMap::new();
        t.insert(
            "a.weight".into(),
            OwnedTensor {
                shape: vec![2, 3],
                data: vec![1., -2., 3.5, 0., 1e-3, 7.],
            },
        );
        t.insert(
            "b".into(),
            OwnedTensor {
                shape: vec![1],
                data: vec![0.25],
            },
        );
        write_safetensors(&dir.path().join("model.safetensors"), &t, SaveDtype::F32).unwrap();
        let r = SafetensorsReader::open_dir(dir.path()).unwrap();
        assert_eq!(r.names().collect::<Vec<_>>(), ["a.weight", "b"]);
        assert_eq!(r.shape("a.weight").unwrap(), &[2, 3]);
        assert_eq!(r.read_f32("a.weight").unwrap(), t["a.weight"].data);

        write_safetensors(&dir.path().join("model.safetensors"), &t, SaveDtype::Bf16).unwrap();
        let r = SafetensorsReader::open_dir(dir.path()).unwrap();
        assert_eq!(r.read_f32("b").unwrap(), vec![0.25]);
        let close = r.read_f32("a.weight").unwrap();
        assert!((close[4] - 1e-3).abs() < 1e-5);

        let path = dir.path().join("model.safetensors");
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        let err = SafetensorsReader::open_dir(dir.path())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("truncated"), "{err}");
    }

    #[test]
    fn sharded_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        for (file, name) in [("s1.safetensors", "x"), ("s2.safetensors", "y")] {
            let t = BTreeMap::from([(
                name.to_string(),
                OwnedTensor {
                    shape: vec![1],
                    data: vec![1.0],
                },
            )]);
            write_safetensors(&dir.path().join(file), &t, SaveDtype::F32).unwrap();
        }
        std::fs::write(
            dir.path().join("model.safetensors.index.json"),
            r#"{"metadata":{},"weight_map":{"x":"s1.safetensors","y":"s2.safetensors"}}"#,
        )
        .unwrap();
        let r = SafetensorsReader::open_dir(dir.path()).unwrap();
        assert_eq!(r.names().count(), 2);
        assert!(SafetensorsReader::open_dir(&dir.path().join("nope")).is_err());
    }
}
