//! Name-checked loading of parameters from a checkpoint: every expected tensor is looked up with
//! its expected shape, and one error lists everything missing, mis-shaped and unexpected.

use super::safetensors_io::OwnedTensor;
use super::safetensors_io::SafetensorsReader;
use anyhow::{Result, bail};
use burn::module::Param;
use burn::tensor::{Device, Tensor, TensorData};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// What a load found wrong, collected so that one error lists everything.
#[derive(Default)]
struct Problems {
    used: BTreeSet<String>,
    missing: Vec<String>,
    misshaped: Vec<String>,
    /// Names that may be present without being used (e.g. `lm_head.weight` of a tied model).
    ignorable: BTreeSet<String>,
}

/// Takes tensors out of a checkpoint, remembering what went wrong. Modules load themselves
/// from a scoped view of it ([`WeightLoader::root`], [`Weights::pp`]), as candle's
/// `VarBuilder`.
pub struct WeightLoader<'a> {
    reader: &'a SafetensorsReader,
    device: Device,
    problems: RefCell<Problems>,
}

/// The tensors under one name prefix (`model.layers.3.self_attn`).
#[derive(Clone)]
pub struct Weights<'w> {
    loader: &'w WeightLoader<'w>,
    prefix: String,
}

impl<'a> WeightLoader<'a> {
    pub fn new(reader: &'a SafetensorsReader, device: &Device) -> Self {
        Self {
            reader,
            device: device.clone(),
            problems: RefCell::new(Problems::default()),
        }
    }

    /// The whole checkpoint.
    pub fn root(&self) -> Weights<'_> {
        Weights {
            loader: self,
            prefix: String::new(),
        }
    }

    /// Fails with the full list of problems, if there are any.
    pub fn finish(self, dir: &Path) -> Result<()> {
        let p = self.problems.into_inner();
        let unexpected: Vec<&str> = self
            .reader
            .names()
            .filter(|n| !p.used.contains(*n) && !p.ignorable.contains(*n))
            .collect();
        if p.missing.is_empty() && p.misshaped.is_empty() && unexpected.is_empty() {
            return Ok(());
        }
        let mut msg = format!(
            "the checkpoint in {} does not match its config.json:",
            dir.display()
        );
        let mut section = |title: &str, items: &[String]| {
            if !items.is_empty() {
                msg.push_str(&format!("\n  {title} ({}):", items.len()));
                for item in items.iter().take(20) {
                    msg.push_str(&format!("\n    {item}"));
                }
                if items.len() > 20 {
                    msg.push_str(&format!("\n    ... and {} more", items.len() - 20));
                }
            }
        };
        section("missing tensors", &p.missing);
        section("tensors with the wrong shape", &p.misshaped);
        let unexpected: Vec<String> = unexpected.into_iter().map(String::from).collect();
        section("unexpected tensors", &unexpected);
        msg.push_str("\n  check that config.json belongs to these weights");
        bail!(msg)
    }
}

impl<'w> Weights<'w> {
    /// The view under `prefix.name` (names joined with `.`).
    pub fn pp(&self, name: impl std::fmt::Display) -> Weights<'w> {
        Weights {
            loader: self.loader,
            prefix: join(&self.prefix, name),
        }
    }

    fn name(&self, name: &str) -> String {
        join(&self.prefix, name)
    }

    pub fn device(&self) -> &Device {
        &self.loader.device
    }

    pub fn contains(&self, name: &str) -> bool {
        self.loader.reader.contains(&self.name(name))
    }

    /// Marks a tensor as allowed to be present and unused.
    pub fn ignore(&self, name: &str) {
        let full = self.name(name);
        self.loader.problems.borrow_mut().ignorable.insert(full);
    }

    /// The f32 data of `name` if it exists with `shape`; otherwise records the problem and
    /// returns nothing (no allocation of the expected size, which comes from a config that may
    /// be wrong), so loading can go on and report every problem at once.
    pub fn take(&self, name: &str, shape: &[usize]) -> Vec<f32> {
        let name = self.name(name);
        let reader = self.loader.reader;
        let mut p = self.loader.problems.borrow_mut();
        match reader.shape(&name) {
            None => p.missing.push(format!("{name} (expected shape {shape:?})")),
            Some(found) if found != shape => p
                .misshaped
                .push(format!("{name}: expected shape {shape:?}, found {found:?}")),
            Some(_) => match reader.read_f32(&name) {
                Ok(data) => {
                    p.used.insert(name);
                    return data;
                }
                Err(e) => p.misshaped.push(format!("{name}: {e:#}")),
            },
        }
        Vec::new()
    }

    /// A parameter with the checkpoint's shape (an empty placeholder when it is missing or
    /// mis-shaped; [`WeightLoader::finish`] then fails).
    pub fn param<const D: usize>(&self, name: &str, shape: [usize; D]) -> Param<Tensor<D>> {
        let data = self.take(name, &shape);
        let shape = if data.is_empty() { [0; D] } else { shape };
        Param::from_tensor(Tensor::from_data(
            TensorData::new(data, shape),
            self.device(),
        ))
    }

    /// A Hugging Face `[out, in]` matrix stored transposed as `[in, out]`.
    pub fn param_transposed(&self, name: &str, out: usize, inp: usize) -> Param<Tensor<2>> {
        let data = self.take(name, &[out, inp]);
        let (data, shape) = if data.is_empty() {
            (data, [0, 0])
        } else {
            (transpose(&data, out, inp), [inp, out])
        };
        Param::from_tensor(Tensor::from_data(
            TensorData::new(data, shape),
            self.device(),
        ))
    }
}

/// `prefix.name`, or `name` at the root.
fn join(prefix: &str, name: impl std::fmt::Display) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

/// Tensors being written under Hugging Face names and layouts, scoped like [`Weights`].
pub struct TensorsOut<'o> {
    out: &'o mut BTreeMap<String, OwnedTensor>,
    prefix: String,
}

impl<'o> TensorsOut<'o> {
    pub fn new(out: &'o mut BTreeMap<String, OwnedTensor>) -> Self {
        Self {
            out,
            prefix: String::new(),
        }
    }

    /// The view under `prefix.name`.
    pub fn pp(&mut self, name: impl std::fmt::Display) -> TensorsOut<'_> {
        let prefix = join(&self.prefix, name);
        TensorsOut {
            out: self.out,
            prefix,
        }
    }

    fn name(&self, name: &str) -> String {
        join(&self.prefix, name)
    }

    /// Adds a tensor under `name` as is.
    pub fn put<const D: usize>(&mut self, name: &str, t: Tensor<D>) {
        let shape = t.dims().to_vec();
        self.out.insert(
            self.name(name),
            OwnedTensor {
                shape,
                data: to_vec(t),
            },
        );
    }

    /// Adds an `[in, out]` weight in Hugging Face's `[out, in]` layout.
    pub fn put_transposed(&mut self, name: &str, w: Tensor<2>) {
        let [inp, o] = w.dims();
        self.out.insert(
            self.name(name),
            OwnedTensor {
                shape: vec![o, inp],
                data: transpose(&to_vec(w), inp, o),
            },
        );
    }
}

/// Transposes a row-major `[rows, cols]` matrix.
pub fn transpose(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; data.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = data[r * cols + c];
        }
    }
    out
}

/// The f32 contents of a tensor.
pub fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32 tensor data")
}

/// Writes tensors to a checkpoint file and reads them back (the layers' round-trip tests).
#[cfg(test)]
pub mod testing {
    use super::super::safetensors_io::{SafetensorsReader, SaveDtype, write_safetensors};
    use super::*;

    /// `put` a module into a fresh map, write it (f32), and open it for loading.
    pub fn written(
        put: impl FnOnce(&mut TensorsOut),
    ) -> (
        tempfile::TempDir,
        SafetensorsReader,
        BTreeMap<String, OwnedTensor>,
    ) {
        let mut out = BTreeMap::new();
        put(&mut TensorsOut::new(&mut out).pp("m"));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("model.safetensors");
        write_safetensors(&file, &out, SaveDtype::F32).unwrap();
        let reader = SafetensorsReader::open_files(&[file]).unwrap();
        (dir, reader, out)
    }

    /// Loads with `load` from what [`written`] wrote, checks that every tensor was used, and
    /// `put`s the result again: the two maps must be equal.
    pub fn assert_round_trip<T>(
        put: impl Fn(&T, &mut TensorsOut),
        original: &T,
        load: impl FnOnce(&Weights) -> T,
    ) {
        let (dir, reader, first) = written(|t| put(original, t));
        let loader = WeightLoader::new(&reader, &crate::testing::device());
        let loaded = load(&loader.root().pp("m"));
        loader.finish(dir.path()).unwrap();
        let mut again = BTreeMap::new();
        put(&loaded, &mut TensorsOut::new(&mut again).pp("m"));
        assert_eq!(
            first.keys().collect::<Vec<_>>(),
            again.keys().collect::<Vec<_>>()
        );
        for (k, a) in &first {
            assert_eq!(a.shape, again[k].shape, "{k}");
            assert_eq!(a.data, again[k].data, "{k}");
        }
    }
}
