//! The CUDA C kernels (`native-cuda/kernels/*.cu`), compiled at run time by NVRTC for the device's
//! architecture and cached on disk as CUBINs keyed by source, options and NVRTC version. Each kernel is a
//! `Kernel<P>` constant here, P the parameter struct it takes (`params.rs`).

use std::path::PathBuf;
use std::time::Instant;

use volt_runtime::{bail, Result};

use crate::nvrtc::Nvrtc;
use crate::params::{
    AttentionArgs, ElementwiseArgs, ExpertsArgs, GatherArgs, GemmFp8Args, Kernel, KernelEntry, KvWriteArgs, LinearArgs,
    MoeActivationArgs, MoeAlignArgs, MoeCombineArgs, MoeRouteArgs, PickGreedyArgs, QuantizeArgs, RmsNormArgs, RopeArgs,
};

/// One `.cu` file: its source (with `common.cuh` prepended) and the `extern "C"` kernels it defines.
pub struct KernelModule {
    pub name: &'static str,
    source: &'static str,
    pub kernels: &'static [KernelEntry],
    /// Lowest compute capability the module compiles for (FP8 tensor-core instructions need 8.9).
    pub min_capability: (u32, u32),
}

const COMMON: &str = include_str!("../kernels/common.cuh");

pub const EMBED_F32: Kernel<GatherArgs> = Kernel::new("embed_f32");
pub const EMBED_BF16: Kernel<GatherArgs> = Kernel::new("embed_bf16");
pub const EMBED_F16: Kernel<GatherArgs> = Kernel::new("embed_f16");
pub const SELECT_ROWS: Kernel<GatherArgs> = Kernel::new("select_rows");
pub const SWIGLU: Kernel<ElementwiseArgs> = Kernel::new("swiglu");
pub const CLAMP_VALUES: Kernel<ElementwiseArgs> = Kernel::new("clamp_values");
pub const ADD_ASSIGN: Kernel<ElementwiseArgs> = Kernel::new("add_assign");
pub const SIGMOID_GATE: Kernel<ElementwiseArgs> = Kernel::new("sigmoid_gate");
pub const RMS_NORM: Kernel<RmsNormArgs> = Kernel::new("rms_norm");
pub const APPLY_ROPE: Kernel<RopeArgs> = Kernel::new("apply_rope");
pub const LINEAR_F32: Kernel<LinearArgs> = Kernel::new("linear_f32");
pub const LINEAR_BF16: Kernel<LinearArgs> = Kernel::new("linear_bf16");
pub const LINEAR_F16: Kernel<LinearArgs> = Kernel::new("linear_f16");
pub const LINEAR_FP8: Kernel<LinearArgs> = Kernel::new("linear_fp8");
pub const EXPERTS_F32: Kernel<ExpertsArgs> = Kernel::new("experts_f32");
pub const EXPERTS_BF16: Kernel<ExpertsArgs> = Kernel::new("experts_bf16");
pub const EXPERTS_F16: Kernel<ExpertsArgs> = Kernel::new("experts_f16");
pub const EXPERTS_FP8: Kernel<ExpertsArgs> = Kernel::new("experts_fp8");
pub const QUANTIZE_ROWS_1X128: Kernel<QuantizeArgs> = Kernel::new("quantize_rows_1x128");
pub const GEMM_FP8: Kernel<GemmFp8Args> = Kernel::new("gemm_fp8");
pub const MOE_ROUTE: Kernel<MoeRouteArgs> = Kernel::new("moe_route");
pub const MOE_ALIGN: Kernel<MoeAlignArgs> = Kernel::new("moe_align");
pub const MOE_ACTIVATION: Kernel<MoeActivationArgs> = Kernel::new("moe_activation");
pub const MOE_COMBINE: Kernel<MoeCombineArgs> = Kernel::new("moe_combine");
pub const KV_WRITE: Kernel<KvWriteArgs> = Kernel::new("kv_write");
pub const ATTENTION: Kernel<AttentionArgs> = Kernel::new("attention");
pub const PICK_GREEDY: Kernel<PickGreedyArgs> = Kernel::new("pick_greedy");

pub const MODULES: &[KernelModule] = &[
    KernelModule {
        name: "elementwise",
        source: include_str!("../kernels/elementwise.cu"),
        kernels: &[
            EMBED_F32.entry(),
            EMBED_BF16.entry(),
            EMBED_F16.entry(),
            SWIGLU.entry(),
            CLAMP_VALUES.entry(),
            ADD_ASSIGN.entry(),
            SIGMOID_GATE.entry(),
            SELECT_ROWS.entry(),
        ],
        min_capability: (8, 0),
    },
    KernelModule {
        name: "norm_rope",
        source: include_str!("../kernels/norm_rope.cu"),
        kernels: &[RMS_NORM.entry(), APPLY_ROPE.entry()],
        min_capability: (8, 0),
    },
    KernelModule {
        name: "linear",
        source: include_str!("../kernels/linear.cu"),
        kernels: &[
            LINEAR_F32.entry(),
            LINEAR_BF16.entry(),
            LINEAR_F16.entry(),
            LINEAR_FP8.entry(),
            EXPERTS_F32.entry(),
            EXPERTS_BF16.entry(),
            EXPERTS_F16.entry(),
            EXPERTS_FP8.entry(),
        ],
        min_capability: (8, 0),
    },
    KernelModule {
        name: "gemm_fp8",
        source: include_str!("../kernels/gemm_fp8.cu"),
        kernels: &[QUANTIZE_ROWS_1X128.entry(), GEMM_FP8.entry()],
        min_capability: (8, 9),
    },
    KernelModule {
        name: "moe",
        source: include_str!("../kernels/moe.cu"),
        kernels: &[
            MOE_ROUTE.entry(),
            MOE_ALIGN.entry(),
            MOE_ACTIVATION.entry(),
            MOE_COMBINE.entry(),
        ],
        min_capability: (8, 0),
    },
    KernelModule {
        name: "attention",
        source: include_str!("../kernels/attention.cu"),
        kernels: &[KV_WRITE.entry(), ATTENTION.entry()],
        min_capability: (8, 0),
    },
    KernelModule {
        name: "sample",
        source: include_str!("../kernels/sample.cu"),
        kernels: &[PICK_GREEDY.entry()],
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
        for kernel in self.kernels {
            if !has_symbol(&compiled.cubin, kernel.name) {
                bail!("{}.cu: kernel {} is missing from the CUBIN", self.name, kernel.name);
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
        for kernel in module.kernels {
            reports.push(CompileReport {
                module: module.name,
                kernel: kernel.name,
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
    use volt_runtime::backend::{MAX_EXPERTS, MAX_HEAD_DIM};
    use volt_runtime::kv::KV_PAGE;

    use super::*;

    #[test]
    fn every_listed_kernel_is_defined_in_its_source() {
        for module in MODULES {
            for kernel in module.kernels {
                let (name, args) = (kernel.name, kernel.args.name);
                let defined = module.source.contains(&format!("void {name}({args} p)"))
                    || module.source.contains(&format!("({name}, "));
                assert!(defined, "{}.cu does not define {name}", module.name);
            }
        }
    }

    /// The kernels' constants are the host's: the largest head, the most experts and the KV page size.
    #[test]
    fn the_kernels_share_the_hosts_limits() {
        let attention = include_str!("../kernels/attention.cu");
        assert!(attention.contains(&format!("#define MAX_HEAD_DIM {MAX_HEAD_DIM}\n")));
        assert!(attention.contains(&format!("#define KV_PAGE {KV_PAGE}\n")));
        let moe = include_str!("../kernels/moe.cu");
        assert!(moe.contains(&format!("#define MAX_EXPERTS {MAX_EXPERTS}\n")));
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
