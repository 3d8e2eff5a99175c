//! The Python code that makes a hybrid directory loadable by Hugging Face `transformers`
//! (`AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)`): the configuration and
//! modeling files from the repository's `python/` folder, compiled into the runner and written
//! beside every saved hybrid, and the `auto_map` entry of its `config.json` that points to them.

use serde_json::{Value, json};
use std::path::Path;

/// The configuration class (`model_type = "rwkv_hybrid"`).
pub const CONFIGURATION: (&str, &str) = (
    "configuration_rwkv_hybrid.py",
    include_str!("../../python/configuration_rwkv_hybrid.py"),
);

/// The model, its cache and the generation glue.
pub const MODELING: (&str, &str) = (
    "modeling_rwkv_hybrid.py",
    include_str!("../../python/modeling_rwkv_hybrid.py"),
);

/// `config.json`'s `auto_map`: which class of which file each Auto class loads.
pub fn auto_map() -> Value {
    json!({
        "AutoConfig": "configuration_rwkv_hybrid.RwkvHybridConfig",
        "AutoModel": "modeling_rwkv_hybrid.RwkvHybridModel",
        "AutoModelForCausalLM": "modeling_rwkv_hybrid.RwkvHybridForCausalLM",
    })
}

/// Writes both Python files into `dir` (atomically).
pub fn write(dir: &Path) -> std::io::Result<()> {
    for (name, text) in [CONFIGURATION, MODELING] {
        crate::util::fsx::atomic_write(&dir.join(name), text.as_bytes())?;
    }
    Ok(())
}
