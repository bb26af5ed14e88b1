#![allow(dead_code)] // each test file uses its own subset
//! What the golden tests share: the fixture folders and their expected.json (made by tools/make_fixtures.py
//! and tools/make_volt_fixtures.py).

use std::path::{Path, PathBuf};

pub struct Expected {
    pub ids: Vec<u32>,
    /// [positions][vocab]
    pub logits: Vec<Vec<f32>>,
    pub greedy: Vec<u32>,
    pub atol: f32,
}

pub fn fixtures_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

/// Every fixture checkpoint (a folder with config.json and expected.json), sorted.
pub fn fixtures() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(fixtures_root())
        .expect("tests/fixtures exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("expected.json").exists() && p.join("config.json").exists())
        .collect();
    dirs.sort();
    dirs
}

pub fn expected(dir: &Path) -> Expected {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let ids = |key: &str| {
        v[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect::<Vec<u32>>()
    };
    Expected {
        ids: ids("ids"),
        logits: v["logits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| {
                row.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap() as f32)
                    .collect()
            })
            .collect(),
        greedy: ids("greedy"),
        atol: v["atol"].as_f64().unwrap_or(2e-3) as f32,
    }
}
