//! Name-checked loading of parameters from a checkpoint: every expected tensor is looked up with
//! its expected shape, and one error lists everything missing, mis-shaped and unexpected.

use super::safetensors_io::SafetensorsReader;
use anyhow::{Result, bail};
use burn::module::Param;
use burn::tensor::{Device, Tensor, TensorData};
use std::collections::BTreeSet;
use std::path::Path;

/// Takes tensors out of a checkpoint, remembering what went wrong.
pub struct WeightLoader<'a> {
    reader: &'a SafetensorsReader,
    device: Device,
    used: BTreeSet<String>,
    missing: Vec<String>,
    misshaped: Vec<String>,
    /// Names that may be present without being used (e.g. `lm_head.weight` of a tied model).
    ignorable: BTreeSet<String>,
}

impl<'a> WeightLoader<'a> {
    pub fn new(reader: &'a SafetensorsReader, device: &Device) -> Self {
        Self {
            reader,
            device: device.clone(),
            used: BTreeSet::new(),
            missing: Vec::new(),
            misshaped: Vec::new(),
            ignorable: BTreeSet::new(),
        }
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn contains(&self, name: &str) -> bool {
        self.reader.contains(name)
    }

    /// Marks a tensor as allowed to be present and unused.
    pub fn ignore(&mut self, name: &str) {
        self.ignorable.insert(name.to_string());
    }

    /// The f32 data of `name` if it exists with `shape`; otherwise records the problem and
    /// returns nothing (no allocation of the expected size, which comes from a config that may
    /// be wrong), so loading can go on and report every problem at once.
    pub fn take(&mut self, name: &str, shape: &[usize]) -> Vec<f32> {
        match self.reader.shape(name) {
            None => self
                .missing
                .push(format!("{name} (expected shape {shape:?})")),
            Some(found) if found != shape => self
                .misshaped
                .push(format!("{name}: expected shape {shape:?}, found {found:?}")),
            Some(_) => match self.reader.read_f32(name) {
                Ok(data) => {
                    self.used.insert(name.to_string());
                    return data;
                }
                Err(e) => self.misshaped.push(format!("{name}: {e:#}")),
            },
        }
        Vec::new()
    }

    /// A parameter with the checkpoint's shape (an empty placeholder when it is missing or
    /// mis-shaped; [`WeightLoader::finish`] then fails).
    pub fn param<const D: usize>(&mut self, name: &str, shape: [usize; D]) -> Param<Tensor<D>> {
        let data = self.take(name, &shape);
        let shape = if data.is_empty() { [0; D] } else { shape };
        Param::from_tensor(Tensor::from_data(
            TensorData::new(data, shape),
            &self.device,
        ))
    }

    /// A Hugging Face `[out, in]` matrix stored transposed as `[in, out]`.
    pub fn param_transposed(&mut self, name: &str, out: usize, inp: usize) -> Param<Tensor<2>> {
        let data = self.take(name, &[out, inp]);
        let (data, shape) = if data.is_empty() {
            (data, [0, 0])
        } else {
            (transpose(&data, out, inp), [inp, out])
        };
        Param::from_tensor(Tensor::from_data(
            TensorData::new(data, shape),
            &self.device,
        ))
    }

    /// Fails with the full list of problems, if there are any.
    pub fn finish(self, dir: &Path) -> Result<()> {
        let unexpected: Vec<&str> = self
            .reader
            .names()
            .filter(|n| !self.used.contains(*n) && !self.ignorable.contains(*n))
            .collect();
        if self.missing.is_empty() && self.misshaped.is_empty() && unexpected.is_empty() {
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
        section("missing tensors", &self.missing);
        section("tensors with the wrong shape", &self.misshaped);
        let unexpected: Vec<String> = unexpected.into_iter().map(String::from).collect();
        section("unexpected tensors", &unexpected);
        msg.push_str("\n  check that config.json belongs to these weights");
        bail!(msg)
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
