//! AdamW with the weight-decay groups of the specification (decay on parameters with ≥ 2
//! dimensions, none on vectors), global-norm gradient clipping, and moments kept by parameter
//! path so they can be checkpointed and restored in another process.

use crate::model::safetensors_io::OwnedTensor;
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::{Gradients, Tensor, TensorData};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
        }
    }
}

/// First and second moments of one parameter (flattened, f32).
#[derive(Debug, Clone)]
pub struct Moments {
    pub shape: Vec<usize>,
    pub m: Vec<f32>,
    pub v: Vec<f32>,
}

#[derive(Debug, Clone)]
pub struct AdamW {
    pub config: AdamWConfig,
    /// Optimizer steps taken (for bias correction).
    pub step: u64,
    pub moments: BTreeMap<String, Moments>,
    /// Learning-rate multipliers: a parameter whose path contains the fragment learns at that
    /// multiple of the step's rate (the first match counts; others learn at the rate itself).
    pub lr_scales: Vec<(String, f64)>,
}

use crate::model::weights::to_vec as flat;

/// Gradients of the trainable parameters by path (f32, flattened).
pub struct NamedGrads {
    pub grads: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
}

impl NamedGrads {
    /// The L2 norm of all gradients together, summed in f64 over fixed blocks on every core
    /// (the same result whatever the number of threads).
    pub fn global_norm(&self) -> f64 {
        use rayon::prelude::*;
        const BLOCK: usize = 1 << 15;
        self.grads
            .values()
            .map(|(_, g)| {
                let parts: Vec<f64> = g
                    .par_chunks(BLOCK)
                    .map(|c| {
                        // Eight running sums: no single serial chain of f64 additions.
                        let mut acc = [0.0f64; 8];
                        let mut rows = c.chunks_exact(8);
                        for r in &mut rows {
                            for (a, &x) in acc.iter_mut().zip(r) {
                                *a += (x as f64) * (x as f64);
                            }
                        }
                        let tail: f64 = rows.remainder().iter().map(|&x| (x as f64).powi(2)).sum();
                        acc.iter().sum::<f64>() + tail
                    })
                    .collect();
                parts.iter().sum::<f64>()
            })
            .sum::<f64>()
            .sqrt()
    }

    /// Adds `other` into `self` (gradient accumulation).
    pub fn accumulate(&mut self, other: NamedGrads) {
        for (k, (shape, g)) in other.grads {
            match self.grads.get_mut(&k) {
                Some((_, acc)) => acc.iter_mut().zip(&g).for_each(|(a, b)| *a += b),
                None => {
                    self.grads.insert(k, (shape, g));
                }
            }
        }
    }

    /// Sums the gradients over the ranks of `dist` (in place, on every rank). Every rank must
    /// hold gradients of the same parameters with the same sizes (checked).
    pub fn sum_over(&mut self, dist: &crate::dist::Dist) -> anyhow::Result<()> {
        // A fingerprint of the layout (names and sizes), below 2^52 so it survives the f64 sum.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for (k, (_, g)) in &self.grads {
            for b in k.bytes().chain((g.len() as u64).to_le_bytes()) {
                h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
            }
        }
        let fingerprint = h >> 12;
        let all = dist.gather_u64(fingerprint);
        anyhow::ensure!(
            all.iter().all(|&f| f == fingerprint),
            "the ranks computed gradients of different parameters"
        );
        let total: usize = self.grads.values().map(|(_, g)| g.len()).sum();
        let mut flat = Vec::with_capacity(total);
        for (_, g) in self.grads.values() {
            flat.extend_from_slice(g);
        }
        dist.sum_f32(&mut flat);
        let mut at = 0;
        for (_, g) in self.grads.values_mut() {
            let n = g.len();
            g.copy_from_slice(&flat[at..at + n]);
            at += n;
        }
        Ok(())
    }

    pub fn all_finite(&self) -> bool {
        self.grads
            .values()
            .all(|(_, g)| g.iter().all(|x| x.is_finite()))
    }

    /// The parameters whose gradients hold a NaN or an infinity, each with how many of its
    /// values do, in parameter order.
    pub fn non_finite(&self) -> Vec<(String, usize)> {
        self.grads
            .iter()
            .filter_map(|(name, (_, g))| {
                let bad = g.iter().filter(|x| !x.is_finite()).count();
                (bad > 0).then(|| (name.clone(), bad))
            })
            .collect()
    }
}

struct PathTracker {
    path: Vec<String>,
}

impl PathTracker {
    fn name(&self) -> String {
        self.path.join(".")
    }
}

struct GradCollector<'a> {
    at: PathTracker,
    grads: &'a Gradients,
    out: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
}

impl ModuleVisitor for GradCollector<'_> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.at.path.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.at.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = param.val().grad(self.grads) {
            let shape = g.dims().to_vec();
            self.out.insert(self.at.name(), (shape, flat(g)));
        }
    }
}

/// The gradients of `module`'s parameters after `loss.backward()`.
pub fn collect_grads<M: Module>(module: &M, grads: &Gradients) -> NamedGrads {
    let mut c = GradCollector {
        at: PathTracker { path: Vec::new() },
        grads,
        out: BTreeMap::new(),
    };
    module.visit(&mut c);
    NamedGrads { grads: c.out }
}

struct Updater<'a> {
    at: PathTracker,
    opt: &'a mut AdamW,
    grads: &'a NamedGrads,
    lr: f64,
    /// Multiplies every gradient (clipping).
    scale: f64,
}

impl ModuleMapper for Updater<'_> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.at.path.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.at.path.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let name = self.at.name();
        let Some((shape, g)) = self.grads.grads.get(&name) else {
            return param;
        };
        let c = self.opt.config;
        let lr_scale = self
            .opt
            .lr_scales
            .iter()
            .find(|(fragment, _)| name.contains(fragment.as_str()))
            .map_or(1.0, |&(_, s)| s);
        let t = self.opt.step as i32;
        let (bc1, bc2) = (1.0 - c.beta1.powi(t), 1.0 - c.beta2.powi(t));
        let decay = if shape.len() >= 2 {
            c.weight_decay
        } else {
            0.0
        };
        let mom = self.opt.moments.entry(name).or_insert_with(|| Moments {
            shape: shape.clone(),
            m: vec![0.0; g.len()],
            v: vec![0.0; g.len()],
        });
        let (id, value, mapper) = param.consume();
        let device = value.device();
        let require_grad = value.is_require_grad();
        let dims: [usize; D] = value.dims();
        // The parameter's buffer is taken (not copied) when nothing else holds it.
        let mut p = flat(value.detach());
        // Element by element in f32, as PyTorch's AdamW does for f32 parameters (so the result
        // does not depend on the split), on every core; the per-step constants in f64 first.
        let (b1, b2, eps) = (c.beta1 as f32, c.beta2 as f32, c.eps as f32);
        let (ibc1, ibc2) = ((1.0 / bc1) as f32, (1.0 / bc2) as f32);
        let (scale, lr, decay) = (self.scale as f32, (self.lr * lr_scale) as f32, decay as f32);
        p.par_iter_mut()
            .zip(mom.m.par_iter_mut())
            .zip(mom.v.par_iter_mut())
            .zip(g.par_iter())
            .with_min_len(1 << 14)
            .for_each(|(((p, m_i), v_i), &g)| {
                let gi = g * scale;
                let m = b1 * *m_i + (1.0 - b1) * gi;
                let v = b2 * *v_i + (1.0 - b2) * (gi * gi);
                *m_i = m;
                *v_i = v;
                let update = (m * ibc1) / ((v * ibc2).sqrt() + eps) + decay * *p;
                *p -= lr * update;
            });
        let new = Tensor::<D>::from_data(TensorData::new(p, dims), &device)
            .set_require_grad(require_grad);
        Param::from_mapped_value(id, new, mapper)
    }
}

impl AdamW {
    pub fn new(config: AdamWConfig) -> Self {
        Self {
            config,
            step: 0,
            moments: BTreeMap::new(),
            lr_scales: Vec::new(),
        }
    }

    /// One update of every parameter that has a gradient, with gradients multiplied by `scale`.
    pub fn step<M: Module>(&mut self, module: M, grads: &NamedGrads, lr: f64, scale: f64) -> M {
        self.step += 1;
        let mut u = Updater {
            at: PathTracker { path: Vec::new() },
            opt: self,
            grads,
            lr,
            scale,
        };
        module.map(&mut u)
    }

    /// Writes the moments (`{name}.m`, `{name}.v`) to a safetensors file without copying them.
    pub fn save(&self, path: &std::path::Path) -> anyhow::Result<()> {
        let names: Vec<(String, String)> = self
            .moments
            .keys()
            .map(|k| (format!("{k}.m"), format!("{k}.v")))
            .collect();
        let tensors = self.moments.values().zip(&names).flat_map(|(m, (nm, nv))| {
            [
                (nm.as_str(), m.shape.as_slice(), m.m.as_slice()),
                (nv.as_str(), m.shape.as_slice(), m.v.as_slice()),
            ]
        });
        crate::model::safetensors_io::write_tensors(
            path,
            tensors,
            crate::model::safetensors_io::SaveDtype::F32,
        )
    }

    /// Restores moments written by [`Self::save`].
    pub fn load_tensors(
        &mut self,
        reader: &crate::model::safetensors_io::SafetensorsReader,
    ) -> anyhow::Result<()> {
        self.moments.clear();
        let names: Vec<String> = reader
            .names()
            .filter_map(|n| n.strip_suffix(".m"))
            .map(String::from)
            .collect();
        for k in names {
            let shape = reader.shape(&format!("{k}.m")).unwrap_or_default().to_vec();
            let m = reader.read_f32(&format!("{k}.m"))?;
            let v = reader.read_f32(&format!("{k}.v"))?;
            self.moments.insert(k, Moments { shape, m, v });
        }
        Ok(())
    }
}

struct ParamReader {
    at: PathTracker,
    names: Option<std::collections::BTreeSet<String>>,
    out: BTreeMap<String, OwnedTensor>,
}

impl ModuleVisitor for ParamReader {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.at.path.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.at.path.pop();
    }
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let name = self.at.name();
        if self.names.as_ref().is_none_or(|n| n.contains(&name)) {
            let t = param.val();
            self.out.insert(
                name,
                OwnedTensor {
                    shape: t.dims().to_vec(),
                    data: flat(t.detach()),
                },
            );
        }
    }
}

/// Parameters by module path (all, or only `names`).
pub fn named_params<M: Module>(
    module: &M,
    names: Option<std::collections::BTreeSet<String>>,
) -> BTreeMap<String, OwnedTensor> {
    let mut r = ParamReader {
        at: PathTracker { path: Vec::new() },
        names,
        out: BTreeMap::new(),
    };
    module.visit(&mut r);
    r.out
}

struct ParamWriter<'a> {
    at: PathTracker,
    values: &'a BTreeMap<String, OwnedTensor>,
    written: usize,
}

impl ModuleMapper for ParamWriter<'_> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.at.path.push(name.to_string());
    }
    fn exit_module(&mut self, _: &str, _: &str) {
        self.at.path.pop();
    }
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(v) = self.values.get(&self.at.name()) else {
            return param;
        };
        let (id, value, mapper) = param.consume();
        let dims: [usize; D] = value.dims();
        assert_eq!(
            v.shape,
            dims.to_vec(),
            "checkpoint shape of {}",
            self.at.name()
        );
        let new = Tensor::<D>::from_data(TensorData::new(v.data.clone(), dims), &value.device())
            .set_require_grad(value.is_require_grad());
        self.written += 1;
        Param::from_mapped_value(id, new, mapper)
    }
}

/// Overwrites parameters by path; returns the module and how many were written.
pub fn load_named_params<M: Module>(
    module: M,
    values: &BTreeMap<String, OwnedTensor>,
) -> (M, usize) {
    let mut w = ParamWriter {
        at: PathTracker { path: Vec::new() },
        values,
        written: 0,
    };
    let m = module.map(&mut w);
    let n = w.written;
    (m, n)
}

/// Makes every parameter trainable except, with `freeze_mlp`, the MLPs; returns the student and
/// the paths of its trainable parameters.
pub fn trainable(
    student: crate::model::hybrid::Hybrid,
    freeze_mlp: bool,
) -> (
    crate::model::hybrid::Hybrid,
    std::collections::BTreeSet<String>,
) {
    let mut student = student.set_require_grad(true);
    if freeze_mlp {
        for layer in &mut student.layers {
            layer.mlp = layer.mlp.clone().set_require_grad(false);
        }
    }
    let names = named_params(&student, None)
        .into_keys()
        .filter(|k| !(freeze_mlp && k.contains(".mlp.")))
        .collect();
    (student, names)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The blocked, parallel norm against the plain serial sum, on sizes that leave partial
    /// blocks and rows; and it does not depend on the number of threads.
    #[test]
    fn global_norm_matches_the_serial_sum() {
        let mut grads = BTreeMap::new();
        let mut seed = 1u64;
        for (name, n) in [("a", 3usize), ("b", 70_001), ("c", (1 << 15) * 3 + 5)] {
            let g: Vec<f32> = (0..n)
                .map(|_| {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 1e-2
                })
                .collect();
            grads.insert(name.to_string(), (vec![n], g));
        }
        let g = NamedGrads { grads };
        let serial = g
            .grads
            .values()
            .flat_map(|(_, v)| v.iter())
            .map(|&x| (x as f64) * (x as f64))
            .sum::<f64>()
            .sqrt();
        let fast = g.global_norm();
        assert!(
            (fast - serial).abs() <= 1e-12 * serial,
            "{fast} vs {serial}"
        );
        let one_thread = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap()
            .install(|| g.global_norm());
        assert_eq!(one_thread, fast);
    }

    #[derive(Module, Debug)]
    struct Leaf {
        w: Param<Tensor<1>>,
    }

    #[derive(Module, Debug)]
    struct Pair {
        mixer: Leaf,
        mlp: Leaf,
    }

    /// A matching path learns at the multiple, the others at the rate itself: AdamW's first
    /// step moves every element by lr·sign(g) (no decay on vectors), so the moves are exact.
    #[test]
    fn lr_scales_multiply_the_rate_of_matching_parameters_only() {
        let device = crate::testing::device();
        let leaf = || Leaf {
            w: Param::from_tensor(Tensor::<1>::zeros([3], &device)),
        };
        let g = vec![0.5f32, -2.0, 1e-3];
        let grads = NamedGrads {
            grads: [("mixer.w", &g), ("mlp.w", &g)]
                .into_iter()
                .map(|(k, g)| (k.to_string(), (vec![3], g.clone())))
                .collect(),
        };
        let moved = |scales: Vec<(String, f64)>| {
            let mut opt = AdamW::new(AdamWConfig {
                eps: 1e-12,
                ..Default::default()
            });
            opt.lr_scales = scales;
            let p = opt.step(
                Pair {
                    mixer: leaf(),
                    mlp: leaf(),
                },
                &grads,
                1e-3,
                1.0,
            );
            (flat(p.mixer.w.val()), flat(p.mlp.w.val()))
        };
        let sign = [-1.0f32, 1.0, -1.0];
        let close = |got: &[f32], step: f32| {
            for (x, s) in got.iter().zip(sign) {
                assert!(
                    (x - s * step).abs() < 1e-7 * step.max(1.0),
                    "{got:?} vs {step}"
                );
            }
        };
        let (mixer, mlp) = moved(vec![("mixer.".into(), 10.0)]);
        close(&mixer, 1e-2);
        close(&mlp, 1e-3);
        let (mixer, mlp) = moved(Vec::new());
        close(&mixer, 1e-3);
        close(&mlp, 1e-3);
    }
}
