//! The library half of `volt`: what both the command line and the desktop app use, and what the app's
//! tests drive.

pub mod backends;
pub mod chat;
pub mod chat_model;
pub mod cli;
pub mod gui;

use std::path::PathBuf;

use volt_runtime::{bail, Result};

/// `--model`, else `$VOLT_MODEL`, else the model shipped in assets/.
pub fn model_path(flag: Option<&str>) -> Result<PathBuf> {
    if let Some(p) = flag {
        let path = PathBuf::from(p);
        if !path.exists() {
            bail!("model path {} does not exist", path.display());
        }
        return Ok(path);
    }
    if let Ok(p) = std::env::var("VOLT_MODEL") {
        return model_path(Some(&p));
    }
    let shipped = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../assets/volt-tiny"));
    if !shipped.join("config.json").exists() {
        bail!("no --model given and the default model is not at {}", shipped.display());
    }
    Ok(shipped)
}
