//! The WGSL kernels (one file per op in `wgsl/`), their parameter structs and bind-group layouts, and
//! pipelines built once per (kernel, weight format) on first use.

use std::collections::HashMap;
use std::sync::Arc;

use volt_runtime::dtype::KvDtype;

use crate::params::*;

/// How a weight matrix is stored on the device; picks the `w_at` prelude a kernel is built with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightFormat {
    F32,
    F16,
    Bf16,
    Fp8,
}

impl WeightFormat {
    pub const ALL: [WeightFormat; 4] = [
        WeightFormat::F32,
        WeightFormat::F16,
        WeightFormat::Bf16,
        WeightFormat::Fp8,
    ];

    fn prelude(self, features: KernelFeatures) -> &'static str {
        match self {
            WeightFormat::F32 => include_str!("../wgsl/weights_f32.wgsl"),
            WeightFormat::F16 if features.shader_f16 => include_str!("../wgsl/weights_f16_native.wgsl"),
            WeightFormat::F16 => include_str!("../wgsl/weights_f16.wgsl"),
            WeightFormat::Bf16 => include_str!("../wgsl/weights_bf16.wgsl"),
            WeightFormat::Fp8 => include_str!("../wgsl/weights_fp8.wgsl"),
        }
    }
}

/// Optional adapter features the kernels use when present; without them every kernel has a portable form.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelFeatures {
    /// Subgroup operations for workgroup sums (`reduce_subgroup.wgsl` instead of `reduce_workgroup.wgsl`).
    pub subgroups: bool,
    /// WGSL `f16` for f16 weights (`weights_f16_native.wgsl` instead of unpacking u32 words).
    pub shader_f16: bool,
}

impl KernelFeatures {
    /// The wgpu features worth requesting from an adapter that has them.
    pub const WANTED: wgpu::Features = wgpu::Features::SUBGROUP.union(wgpu::Features::SHADER_F16);

    pub fn of(device: &wgpu::Device) -> KernelFeatures {
        let f = device.features();
        KernelFeatures {
            subgroups: f.contains(wgpu::Features::SUBGROUP),
            shader_f16: f.contains(wgpu::Features::SHADER_F16),
        }
    }

    /// "subgroups, shader-f16", or "portable" with neither.
    pub fn describe(self) -> String {
        let names: Vec<&str> = [(self.subgroups, "subgroups"), (self.shader_f16, "shader-f16")]
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, name)| *name)
            .collect();
        if names.is_empty() {
            "portable".into()
        } else {
            names.join(", ")
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Embed,
    RmsNorm,
    Matmul,
    MatmulTiled,
    Rope,
    KvWrite,
    Attention,
    AttentionSplit,
    AttentionMerge,
    AttentionTiled,
    Add,
    SwiGlu,
    Clamp,
    SigmoidGate,
    GatherRows,
    Router,
    MoeGateUp,
    MoeDown,
    Sample,
    MoeGroup,
    MoeExpertsTiled,
    MoeCombine,
}

impl Op {
    pub const ALL: [Op; 22] = [
        Op::Embed,
        Op::RmsNorm,
        Op::Matmul,
        Op::MatmulTiled,
        Op::Rope,
        Op::KvWrite,
        Op::Attention,
        Op::AttentionSplit,
        Op::AttentionMerge,
        Op::AttentionTiled,
        Op::Add,
        Op::SwiGlu,
        Op::Clamp,
        Op::SigmoidGate,
        Op::GatherRows,
        Op::Router,
        Op::MoeGateUp,
        Op::MoeDown,
        Op::Sample,
        Op::MoeGroup,
        Op::MoeExpertsTiled,
        Op::MoeCombine,
    ];

    /// The fields and size of the kernel's parameter struct (`params.rs`).
    pub fn params(self) -> (&'static [ParamField], usize) {
        fn of<P: KernelParams>() -> (&'static [ParamField], usize) {
            (P::FIELDS, std::mem::size_of::<P>())
        }
        match self {
            Op::Embed => of::<EmbedParams>(),
            Op::RmsNorm => of::<RmsNormParams>(),
            Op::Matmul | Op::MatmulTiled => of::<MatmulParams>(),
            Op::Rope => of::<RopeParams>(),
            Op::KvWrite => of::<KvWriteParams>(),
            Op::Attention | Op::AttentionSplit | Op::AttentionMerge | Op::AttentionTiled => of::<AttentionParams>(),
            Op::Add | Op::SwiGlu | Op::Clamp | Op::SigmoidGate => of::<ElementwiseParams>(),
            Op::GatherRows => of::<GatherRowsParams>(),
            Op::Router => of::<RouterParams>(),
            Op::MoeGateUp => of::<MoeGateUpParams>(),
            Op::MoeDown => of::<MoeDownParams>(),
            Op::Sample => of::<SampleParams>(),
            Op::MoeGroup => of::<MoeGroupParams>(),
            Op::MoeExpertsTiled => of::<MoeExpertsTiledParams>(),
            Op::MoeCombine => of::<MoeCombineParams>(),
        }
    }
}

#[derive(Clone, Copy)]
pub enum Access {
    Uniform,
    Read,
    ReadWrite,
}

use Access::{Read, ReadWrite as Rw, Uniform};

/// An attention kernel's source: `attention_common.wgsl` (parameters, bindings 0-5, the online softmax),
/// the KV addressing, then the kernel's own file.
macro_rules! attention_kernel {
    ($file:literal) => {
        concat!(
            include_str!("../wgsl/attention_common.wgsl"),
            include_str!("../wgsl/kv_pages.wgsl"),
            include_str!(concat!("../wgsl/", $file))
        )
    };
}

impl Op {
    /// (the kernel's own source, entry point, bindings in order 0..n). Ops that read a weight matrix take it
    /// at binding 1 from the weight prelude.
    fn body(self) -> (&'static str, &'static str, &'static [Access]) {
        match self {
            Op::Embed => (include_str!("../wgsl/embed.wgsl"), "main", &[Uniform, Read, Read, Rw]),
            Op::RmsNorm => (
                include_str!("../wgsl/rms_norm.wgsl"),
                "main",
                &[Uniform, Read, Read, Rw],
            ),
            Op::Matmul => (
                include_str!("../wgsl/matmul.wgsl"),
                "main",
                &[Uniform, Read, Read, Read, Rw],
            ),
            Op::MatmulTiled => (
                include_str!("../wgsl/matmul_tiled.wgsl"),
                "main",
                &[Uniform, Read, Read, Read, Rw],
            ),
            Op::Rope => (include_str!("../wgsl/rope.wgsl"), "main", &[Uniform, Rw, Read, Read]),
            Op::KvWrite => (
                concat!(
                    include_str!("../wgsl/kv_write.wgsl"),
                    include_str!("../wgsl/kv_pages.wgsl")
                ),
                "main",
                &[Uniform, Read, Read, Read, Read, Rw, Rw],
            ),
            Op::Attention => (
                attention_kernel!("attention.wgsl"),
                "main",
                &[Uniform, Read, Read, Read, Read, Read, Read, Rw],
            ),
            Op::AttentionSplit => (ATTENTION_SPLIT, "partial_chunk", SPLIT_BINDINGS),
            Op::AttentionMerge => (ATTENTION_SPLIT, "merge_chunks", SPLIT_BINDINGS),
            Op::AttentionTiled => (
                attention_kernel!("attention_tiled.wgsl"),
                "main",
                &[Uniform, Read, Read, Read, Read, Read, Read, Rw, Read],
            ),
            Op::Add => (ELEMENTWISE, "add", &[Uniform, Rw, Read]),
            Op::SwiGlu => (ELEMENTWISE, "swiglu", &[Uniform, Rw, Read]),
            Op::Clamp => (ELEMENTWISE, "clamp_values", &[Uniform, Rw, Read]),
            Op::SigmoidGate => (ELEMENTWISE, "sigmoid_gate", &[Uniform, Rw, Read]),
            Op::GatherRows => (
                include_str!("../wgsl/gather_rows.wgsl"),
                "main",
                &[Uniform, Read, Read, Rw],
            ),
            Op::Router => (
                include_str!("../wgsl/router.wgsl"),
                "main",
                &[Uniform, Read, Rw, Rw, Rw, Rw],
            ),
            Op::MoeGateUp => (
                include_str!("../wgsl/moe_gate_up.wgsl"),
                "main",
                &[Uniform, Read, Read, Read, Read, Read, Rw],
            ),
            Op::MoeDown => (
                include_str!("../wgsl/moe_down.wgsl"),
                "main",
                &[Uniform, Read, Read, Read, Read, Read, Read, Rw],
            ),
            Op::Sample => (
                include_str!("../wgsl/sample.wgsl"),
                "main",
                &[Uniform, Read, Read, Rw, Rw],
            ),
            Op::MoeGroup => (
                include_str!("../wgsl/moe_group.wgsl"),
                "main",
                &[Uniform, Read, Read, Rw],
            ),
            Op::MoeExpertsTiled => (
                include_str!("../wgsl/moe_experts_tiled.wgsl"),
                "main",
                &[Uniform, Read, Read, Read, Read, Rw],
            ),
            Op::MoeCombine => (
                include_str!("../wgsl/moe_combine.wgsl"),
                "main",
                &[Uniform, Read, Read, Read, Rw],
            ),
        }
    }

    pub fn reads_weights(self) -> bool {
        matches!(
            self,
            Op::Embed | Op::Matmul | Op::MatmulTiled | Op::MoeGateUp | Op::MoeDown | Op::MoeExpertsTiled
        )
    }

    /// Code shared between kernels, built in ahead of the kernel's own (after the weight prelude).
    fn shared(self) -> &'static [&'static str] {
        match self {
            Op::Matmul => &[MATMUL_COMMON],
            Op::MatmulTiled => &[MATMUL_COMMON, GEMM_TILES],
            Op::MoeGateUp => &[MOE_ACTIVATION],
            Op::MoeExpertsTiled => &[GEMM_TILES, MOE_ACTIVATION],
            _ => &[],
        }
    }

    /// Ops built with the KV format prelude.
    fn uses_kv_cache(self) -> bool {
        matches!(
            self,
            Op::KvWrite | Op::Attention | Op::AttentionSplit | Op::AttentionMerge | Op::AttentionTiled
        )
    }

    /// Ops built with a `sum16_over_64` prelude.
    fn sums_over_workgroup(self) -> bool {
        matches!(self, Op::Matmul)
    }

    /// The module's full source: the weight prelude first (`enable f16;` must open the module), the
    /// workgroup reduction, the KV format and the E4M3 codec where the kernel uses them, code shared between
    /// kernels, then the kernel's own file.
    pub fn source(self, format: Option<WeightFormat>, features: KernelFeatures, kv: KvDtype) -> String {
        let mut parts: Vec<&str> = format.map(|f| f.prelude(features)).into_iter().collect();
        if self.sums_over_workgroup() {
            parts.push(if features.subgroups {
                include_str!("../wgsl/reduce_subgroup.wgsl")
            } else {
                include_str!("../wgsl/reduce_workgroup.wgsl")
            });
        }
        if self.uses_kv_cache() {
            parts.push(match kv {
                KvDtype::F16 => include_str!("../wgsl/kv_f16.wgsl"),
                KvDtype::F32 => include_str!("../wgsl/kv_f32.wgsl"),
                KvDtype::Fp8 => include_str!("../wgsl/kv_fp8.wgsl"),
            });
        }
        if format == Some(WeightFormat::Fp8) || (self.uses_kv_cache() && kv == KvDtype::Fp8) {
            parts.push(include_str!("../wgsl/e4m3.wgsl"));
        }
        parts.extend(self.shared());
        parts.push(self.body().0);
        parts.join("\n")
    }
}

const ELEMENTWISE: &str = include_str!("../wgsl/elementwise.wgsl");
const ATTENTION_SPLIT: &str = attention_kernel!("attention_split.wgsl");
/// Both split-attention entry points bind the same buffers: the query and KV inputs, sinks, the chunk
/// partials and the output.
const SPLIT_BINDINGS: &[Access] = &[Uniform, Read, Read, Read, Read, Read, Read, Rw, Rw];
const GEMM_TILES: &str = include_str!("../wgsl/gemm_tiles.wgsl");
const MATMUL_COMMON: &str = include_str!("../wgsl/matmul_common.wgsl");
const MOE_ACTIVATION: &str = include_str!("../wgsl/moe_activation.wgsl");

/// Workgroups for a grid-stride loop over `n` elements (64 per workgroup).
pub(crate) fn groups_1d(n: usize) -> [u32; 3] {
    [n.div_ceil(64).clamp(1, 65535) as u32, 1, 1]
}

/// Bytes reserved per dispatch in the params ring (the largest params struct is 48 bytes; 256 is the
/// dynamic-offset alignment every adapter accepts).
pub const PARAMS_STRIDE: u64 = 256;

pub struct Kernel {
    pub id: u32,
    /// "Matmul/Fp8": the op and weight format, for messages.
    pub label: String,
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
    pub bindings: usize,
}

pub struct Kernels {
    features: KernelFeatures,
    /// How the KV cache kernels store values (`kv_f16.wgsl`, `kv_f32.wgsl` or `kv_fp8.wgsl`).
    kv: KvDtype,
    built: HashMap<(Op, Option<WeightFormat>), Arc<Kernel>>,
}

impl Kernels {
    pub fn new(features: KernelFeatures, kv: KvDtype) -> Kernels {
        Kernels {
            features,
            kv,
            built: HashMap::new(),
        }
    }

    pub fn kv_dtype(&self) -> KvDtype {
        self.kv
    }

    pub fn features(&self) -> KernelFeatures {
        self.features
    }

    pub fn get(&mut self, device: &wgpu::Device, op: Op, format: Option<WeightFormat>) -> Arc<Kernel> {
        let format = if op.reads_weights() {
            Some(format.unwrap_or(WeightFormat::F32))
        } else {
            None
        };
        let next_id = self.built.len() as u32;
        let (features, kv) = (self.features, self.kv);
        self.built
            .entry((op, format))
            .or_insert_with(|| Arc::new(build(device, op, format, features, kv, next_id)))
            .clone()
    }

    /// Builds every kernel for every weight format: the compile check of `volt check --compile-only`.
    pub fn build_all(&mut self, device: &wgpu::Device) -> Vec<(Op, Option<WeightFormat>)> {
        let mut done = Vec::new();
        for op in Op::ALL {
            let formats: Vec<Option<WeightFormat>> = if op.reads_weights() {
                WeightFormat::ALL.map(Some).to_vec()
            } else {
                vec![None]
            };
            for f in formats {
                self.get(device, op, f);
                done.push((op, f));
            }
        }
        done
    }
}

fn build(
    device: &wgpu::Device,
    op: Op,
    format: Option<WeightFormat>,
    features: KernelFeatures,
    kv: KvDtype,
    id: u32,
) -> Kernel {
    let (_, entry, access) = op.body();
    let source = op.source(format, features, kv);
    let label = format!("{op:?}{}", format.map(|f| format!("/{f:?}")).unwrap_or_default());
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some(&label),
        source: wgpu::ShaderSource::Wgsl(source.into()),
    });
    let entries: Vec<wgpu::BindGroupLayoutEntry> = access
        .iter()
        .enumerate()
        .map(|(i, a)| wgpu::BindGroupLayoutEntry {
            binding: i as u32,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: match a {
                Access::Uniform => wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Uniform,
                    has_dynamic_offset: true,
                    min_binding_size: None,
                },
                Access::Read => wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Storage { read_only: true },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
                Access::ReadWrite => wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Storage { read_only: false },
                    has_dynamic_offset: false,
                    min_binding_size: None,
                },
            },
            count: None,
        })
        .collect();
    let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some(&label),
        entries: &entries,
    });
    let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some(&label),
        bind_group_layouts: &[Some(&layout)],
        immediate_size: 0,
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(&label),
        layout: Some(&pipeline_layout),
        module: &module,
        entry_point: Some(entry),
        compilation_options: Default::default(),
        cache: None,
    });
    Kernel {
        id,
        label,
        pipeline,
        layout,
        bindings: access.len(),
    }
}
