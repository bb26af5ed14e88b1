//! The CUDA C kernels (`native-cuda/kernels/*.cu`), compiled at run time by NVRTC for the device's
//! architecture and cached on disk as CUBINs keyed by source, options and NVRTC version.

use std::path::PathBuf;
use std::time::Instant;

use volt_runtime::{bail, Result};

use crate::nvrtc::Nvrtc;

/// One `.cu` file: its source (with `common.cuh` prepended) and the `extern "C"` kernels it defines.
pub struct KernelModule {
    pub name: &'static str,
    source: &'static str,
    pub entries: &'static [&'static str],
    /// Lowest compute capability the module compiles for (FP8 tensor-core instructions need 8.9).
    pub min_capability: (u32, u32),
}

const COMMON: &str = include_str!("../kernels/common.cuh");

pub const MODULES: &[KernelModule] = &[
    KernelModule {
        name: "elementwise",
        source: include_str!("../kernels/elementwise.cu"),
        entries: &[
            "embed_f32",
            "embed_bf16",
            "embed_f16",
            "swiglu",
            "clamp_values",
            "add_assign",
            "sigmoid_gate",
            "select_rows",
        ],
        min_capability: (8, 0),
    },
    KernelModule {
        name: "norm_rope",
        source: include_str!("../kernels/norm_rope.cu"),
        entries: &["rms_norm", "apply_rope"],
        min_capability: (8, 0),
    },
    KernelModule {
        name: "linear",
        source: include_str!("../kernels/linear.cu"),
        entries: &[
            "linear_f32",
            "linear_bf16",
            "linear_f16",
            "linear_fp8",
            "experts_f32",
            "experts_bf16",
            "experts_f16",
            "experts_fp8",
        ],
        min_capability: (8, 0),
    },
    KernelModule {
        name: "gemm_fp8",
        source: include_str!("../kernels/gemm_fp8.cu"),
        entries: &["quantize_rows_1x128", "gemm_fp8"],
        min_capability: (8, 9),
    },
    KernelModule {
        name: "moe",
        source: include_str!("../kernels/moe.cu"),
        entries: &["moe_route", "moe_align", "moe_activation", "moe_combine"],
        min_capability: (8, 0),
    },
    KernelModule {
        name: "attention",
        source: include_str!("../kernels/attention.cu"),
        entries: &["kv_write", "attention"],
        min_capability: (8, 0),
    },
    KernelModule {
        name: "sample",
        source: include_str!("../kernels/sample.cu"),
        entries: &["pick_greedy"],
        min_capability: (8, 0),
    },
];

/// The NVRTC target for a compute capability: the arch-specific `sm_90a` on Hopper (wgmma/setmaxnreg need
/// it), the plain `sm_XY` elsewhere.
pub fn arch_for(capability: (u32, u32)) -> String {
    match capability {
        (9, 0) => "sm_90a".into(),
        (major, minor) => format!("sm_{major}{minor}"),
    }
}

/// The architecture `volt check --compile-only` targets when there is no device: the H100/H200.
pub const HOPPER: (u32, u32) = (9, 0);

impl KernelModule {
    pub fn source(&self) -> String {
        format!("{COMMON}\n{}", self.source)
    }

    fn options(arch: &str) -> Vec<String> {
        vec![format!("--gpu-architecture={arch}"), "--std=c++17".into()]
    }

    /// Compiles for `arch` (no cache) and checks that every listed kernel is in the CUBIN.
    pub fn compile(&self, nvrtc: &Nvrtc, arch: &str) -> Result<Vec<u8>> {
        let compiled = nvrtc.compile(&format!("{}.cu", self.name), &self.source(), &Self::options(arch))?;
        for entry in self.entries {
            if !has_symbol(&compiled.cubin, entry) {
                bail!("{}.cu: kernel {entry} is missing from the CUBIN", self.name);
            }
        }
        Ok(compiled.cubin)
    }

    /// The CUBIN for `arch`, from the disk cache when source, options and NVRTC version match.
    pub fn cubin(&self, nvrtc: &Nvrtc, arch: &str) -> Result<Vec<u8>> {
        let options = Self::options(arch);
        let key = fnv1a(&[
            self.source().as_bytes(),
            options.join(" ").as_bytes(),
            format!("{:?}", nvrtc.version).as_bytes(),
        ]);
        let dir = cache_dir();
        let path = dir
            .as_ref()
            .map(|d| d.join(format!("{}-{arch}-{key:016x}.cubin", self.name)));
        if let Some(bytes) = path.as_ref().and_then(|p| std::fs::read(p).ok()) {
            return Ok(bytes);
        }
        let cubin = self.compile(nvrtc, arch)?;
        // A cache that cannot be written only costs a recompile next time.
        if let (Some(dir), Some(path)) = (dir, path) {
            let tmp = dir.join(format!(".{}.{}.tmp", self.name, std::process::id()));
            if std::fs::create_dir_all(&dir).is_ok() && std::fs::write(&tmp, &cubin).is_ok() {
                let _ = std::fs::rename(&tmp, &path);
            }
        }
        Ok(cubin)
    }
}

/// One line of `volt check --backend cuda --compile-only`.
pub struct CompileReport {
    pub module: &'static str,
    pub kernel: &'static str,
    pub arch: String,
    /// CUBIN bytes of the module and seconds NVRTC took, or the error.
    pub outcome: std::result::Result<(usize, f64), String>,
}

/// Compiles every module for `capability` without the cache.
pub fn compile_all(nvrtc: &Nvrtc, capability: (u32, u32)) -> Vec<CompileReport> {
    let arch = arch_for(capability);
    let mut reports = Vec::new();
    for module in MODULES.iter().filter(|m| capability >= m.min_capability) {
        let started = Instant::now();
        let outcome = module
            .compile(nvrtc, &arch)
            .map(|cubin| (cubin.len(), started.elapsed().as_secs_f64()))
            .map_err(|e| e.to_string());
        for kernel in module.entries {
            reports.push(CompileReport {
                module: module.name,
                kernel,
                arch: arch.clone(),
                outcome: outcome.clone(),
            });
        }
    }
    reports
}

/// `$VOLT_CUDA_CACHE`, else `$XDG_CACHE_HOME/volt/cuda`, else `~/.cache/volt/cuda`.
fn cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("VOLT_CUDA_CACHE") {
        return Some(dir.into());
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("volt").join("cuda"))
}

/// Whether the ELF string table names `symbol` (a NUL-delimited match).
fn has_symbol(cubin: &[u8], symbol: &str) -> bool {
    let needle: Vec<u8> = [&[0u8][..], symbol.as_bytes(), &[0u8][..]].concat();
    cubin.windows(needle.len()).any(|w| w == needle.as_slice())
}

/// 64-bit FNV-1a over the parts (a stable key across builds, unlike `DefaultHasher`).
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for part in parts {
        for &b in part.iter().chain(&[0xffu8]) {
            hash ^= b as u64;
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_kernel_is_defined_in_its_source() {
        for module in MODULES {
            for entry in module.entries {
                let defined =
                    module.source.contains(&format!("void {entry}(")) || module.source.contains(&format!("({entry}, "));
                assert!(defined, "{}.cu does not define {entry}", module.name);
            }
        }
    }

    #[test]
    fn hopper_gets_the_arch_specific_target() {
        assert_eq!(arch_for((9, 0)), "sm_90a");
        assert_eq!(arch_for((8, 9)), "sm_89");
    }

    #[test]
    fn cache_key_changes_with_any_part() {
        let base = fnv1a(&[b"src", b"opts"]);
        assert_ne!(base, fnv1a(&[b"src", b"opts2"]));
        assert_ne!(base, fnv1a(&[b"srco", b"pts"]));
        assert_eq!(base, fnv1a(&[b"src", b"opts"]));
    }
}
