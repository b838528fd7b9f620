//! Reads safetensors weights (one file or shards listed in
//! `model.safetensors.index.json`) in their stored precision (f32, bf16,
//! f16; see `crate::matmul::Stored`).
use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use crate::LoadError;
use crate::matmul::Stored;

/// A dense tensor with its shape, as stored.
#[derive(Debug, Clone)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Stored,
}

/// All tensors of a model, by name.
#[derive(Debug, Default)]
pub struct Weights {
    tensors: HashMap<String, Tensor>,
}

impl Weights {
    /// Loads `model.safetensors`, or the shards named by
    /// `model.safetensors.index.json`.
    pub fn load(dir: &Path) -> Result<Self, LoadError> {
        let index = dir.join("model.safetensors.index.json");
        let files: Vec<String> = if index.exists() {
            let text =
                std::fs::read_to_string(&index).map_err(|e| LoadError::Io(index.clone(), e))?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| LoadError::Json(index.clone(), e))?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| {
                    LoadError::Config(format!("{} has no weight_map", index.display()))
                })?;
            let set: BTreeSet<String> = map
                .values()
                .filter_map(|f| f.as_str().map(str::to_string))
                .collect();
            set.into_iter().collect()
        } else {
            vec!["model.safetensors".to_string()]
        };
        let mut w = Weights::default();
        for f in files {
            if f.contains('/') || f.contains("..") {
                return Err(LoadError::Config(format!("bad shard file name {f:?}")));
            }
            w.load_file(&dir.join(f))?;
        }
        Ok(w)
    }

    fn load_file(&mut self, path: &Path) -> Result<(), LoadError> {
        let bytes = std::fs::read(path).map_err(|e| LoadError::Io(path.to_path_buf(), e))?;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| LoadError::Safetensors(path.to_path_buf(), e.to_string()))?;
        for (name, view) in st.tensors() {
            let raw = view.data();
            let data = match view.dtype() {
                Dtype::F32 => Stored::F32(
                    raw.chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect(),
                ),
                Dtype::F16 => Stored::F16(
                    raw.chunks_exact(2)
                        .map(|c| half::f16::from_le_bytes([c[0], c[1]]))
                        .collect(),
                ),
                Dtype::BF16 => Stored::Bf16(
                    raw.chunks_exact(2)
                        .map(|c| half::bf16::from_le_bytes([c[0], c[1]]))
                        .collect(),
                ),
                other => {
                    return Err(LoadError::Tensor {
                        name,
                        msg: format!("unsupported dtype {other:?} (f32, f16, bf16 are supported)"),
                    });
                }
            };
            self.tensors.insert(
                name,
                Tensor {
                    shape: view.shape().to_vec(),
                    data,
                },
            );
        }
        Ok(())
    }

    pub fn insert(&mut self, name: &str, t: Tensor) {
        self.tensors.insert(name.to_string(), t);
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Removes and returns a tensor widened to f32 (norms, biases: small),
    /// checking its shape.
    pub fn take(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>, LoadError> {
        self.take_stored(name, shape).map(|s| s.to_f32())
    }

    /// Removes and returns a tensor as stored, checking its shape.
    pub fn take_stored(&mut self, name: &str, shape: &[usize]) -> Result<Stored, LoadError> {
        let t = self
            .tensors
            .remove(name)
            .ok_or_else(|| LoadError::MissingTensor(name.to_string()))?;
        if t.shape != shape {
            return Err(LoadError::Tensor {
                name: name.to_string(),
                msg: format!("shape {:?}, expected {:?}", t.shape, shape),
            });
        }
        Ok(t.data)
    }

    /// Names of the tensors nobody took, sorted.
    pub fn remaining(&self) -> Vec<String> {
        let mut v: Vec<String> = self.tensors.keys().cloned().collect();
        v.sort();
        v
    }

    /// Like [`Self::take`] but `None` when absent.
    pub fn take_opt(&mut self, name: &str, shape: &[usize]) -> Result<Option<Vec<f32>>, LoadError> {
        if self.contains(name) {
            self.take(name, shape).map(Some)
        } else {
            Ok(None)
        }
    }
}
