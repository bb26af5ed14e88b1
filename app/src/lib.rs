//! The library half of `volt`: what both the command line and the desktop app use, and what the app's
//! tests drive.

pub mod backends;
pub mod chat;
pub mod chat_model;
pub mod cli;
pub mod gui;

use std::path::{Path, PathBuf};

use volt_runtime::{bail, Result};

/// The folder name of the model `volt` runs when none is given.
pub const DEFAULT_MODEL: &str = "volt-tiny";

/// `--model`, else `$VOLT_MODEL`, else the default model (`default_model_places`).
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
    let exe = std::env::current_exe().ok();
    let exe_dir = exe.as_deref().and_then(Path::parent);
    find_default_model(&default_model_places(exe_dir, gui::store::data_dir().as_deref()))
}

/// Where the default model is looked for, in order: next to the executable (`volt-tiny/` or
/// `assets/volt-tiny/` beside it, as an unpacked release holds it), in the data directory
/// (`<data>/models/volt-tiny`, `$VOLT_DATA_DIR` or the platform's), then in the source tree the binary was
/// built from (`cargo run`, the tests).
pub fn default_model_places(exe_dir: Option<&Path>, data_dir: Option<&Path>) -> Vec<PathBuf> {
    let mut places = Vec::new();
    if let Some(dir) = exe_dir {
        places.push(dir.join(DEFAULT_MODEL));
        places.push(dir.join("assets").join(DEFAULT_MODEL));
    }
    if let Some(dir) = data_dir {
        places.push(dir.join("models").join(DEFAULT_MODEL));
    }
    places.push(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("assets")
            .join(DEFAULT_MODEL),
    );
    places
}

/// The first of `places` that holds a model, or an error naming them all.
pub fn find_default_model(places: &[PathBuf]) -> Result<PathBuf> {
    match places.iter().find(|p| p.join("config.json").is_file()) {
        Some(p) => Ok(p.clone()),
        None => {
            let looked: Vec<String> = places.iter().map(|p| p.display().to_string()).collect();
            bail!(
                "no --model given and no default model found (looked in {}); pass --model DIR or set VOLT_MODEL",
                looked.join(", ")
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_model_is_found_next_to_the_executable_before_the_data_directory() {
        let root = std::env::temp_dir().join(format!("volt-default-model-{}", std::process::id()));
        let (exe_dir, data_dir) = (root.join("bin"), root.join("data"));
        let in_data = data_dir.join("models").join(DEFAULT_MODEL);
        std::fs::create_dir_all(&in_data).unwrap();
        std::fs::create_dir_all(&exe_dir).unwrap();
        std::fs::write(in_data.join("config.json"), "{}").unwrap();
        // Only the data directory (and the source tree) hold one.
        let places = default_model_places(Some(&exe_dir), Some(&data_dir));
        assert_eq!(find_default_model(&places).unwrap(), in_data);
        let beside = exe_dir.join("assets").join(DEFAULT_MODEL);
        std::fs::create_dir_all(&beside).unwrap();
        std::fs::write(beside.join("config.json"), "{}").unwrap();
        assert_eq!(find_default_model(&places).unwrap(), beside);
        // Where none holds one, the error names every place.
        let nowhere = [root.join("a"), root.join("b")];
        let e = find_default_model(&nowhere).unwrap_err().to_string();
        assert!(
            e.contains(&nowhere[0].display().to_string()) && e.contains(&nowhere[1].display().to_string()),
            "{e}"
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}
