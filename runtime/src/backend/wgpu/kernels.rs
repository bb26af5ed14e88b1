//! The WGSL kernels (one file per op in `shaders/`), their bind-group layouts, and pipelines built once per
//! (kernel, weight format) on first use.

use std::collections::HashMap;
use std::sync::Arc;

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

    fn prelude(self) -> &'static str {
        match self {
            WeightFormat::F32 => include_str!("../../../../shaders/weights_f32.wgsl"),
            WeightFormat::F16 => include_str!("../../../../shaders/weights_f16.wgsl"),
            WeightFormat::Bf16 => include_str!("../../../../shaders/weights_bf16.wgsl"),
            WeightFormat::Fp8 => include_str!("../../../../shaders/weights_fp8.wgsl"),
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
    Add,
    SwiGlu,
    Clamp,
    SigmoidGate,
    GatherRows,
    Router,
    MoeGateUp,
    MoeDown,
    MoeGroup,
    MoeExpertsTiled,
    MoeCombine,
}

#[derive(Clone, Copy)]
pub enum Access {
    Uniform,
    Read,
    ReadWrite,
}

use Access::{Read, ReadWrite as Rw, Uniform};

impl Op {
    /// (source, entry point, bindings in order 0..n). Ops that read a weight matrix take it at binding 1
    /// from the weight prelude.
    fn source(self) -> (&'static str, &'static str, &'static [Access]) {
        match self {
            Op::Embed => (
                include_str!("../../../../shaders/embed.wgsl"),
                "main",
                &[Uniform, Read, Read, Rw],
            ),
            Op::RmsNorm => (
                include_str!("../../../../shaders/rms_norm.wgsl"),
                "main",
                &[Uniform, Read, Read, Rw],
            ),
            Op::Matmul => (
                include_str!("../../../../shaders/matmul.wgsl"),
                "main",
                &[Uniform, Read, Read, Read, Rw],
            ),
            Op::MatmulTiled => (
                include_str!("../../../../shaders/matmul_tiled.wgsl"),
                "main",
                &[Uniform, Read, Read, Read, Rw],
            ),
            Op::Rope => (
                include_str!("../../../../shaders/rope.wgsl"),
                "main",
                &[Uniform, Rw, Read, Read],
            ),
            Op::KvWrite => (
                include_str!("../../../../shaders/kv_write.wgsl"),
                "main",
                &[Uniform, Read, Read, Read, Read, Rw, Rw],
            ),
            Op::Attention => (
                include_str!("../../../../shaders/attention.wgsl"),
                "main",
                &[Uniform, Read, Read, Read, Read, Read, Read, Rw],
            ),
            Op::Add => (ELEMENTWISE, "add", &[Uniform, Rw, Read]),
            Op::SwiGlu => (ELEMENTWISE, "swiglu", &[Uniform, Rw, Read]),
            Op::Clamp => (ELEMENTWISE, "clamp_values", &[Uniform, Rw, Read]),
            Op::SigmoidGate => (ELEMENTWISE, "sigmoid_gate", &[Uniform, Rw, Read]),
            Op::GatherRows => (
                include_str!("../../../../shaders/gather_rows.wgsl"),
                "main",
                &[Uniform, Read, Read, Rw],
            ),
            Op::Router => (
                include_str!("../../../../shaders/router.wgsl"),
                "main",
                &[Uniform, Read, Rw, Rw, Rw, Rw],
            ),
            Op::MoeGateUp => (
                include_str!("../../../../shaders/moe_gate_up.wgsl"),
                "main",
                &[Uniform, Read, Read, Read, Read, Read, Rw],
            ),
            Op::MoeDown => (
                include_str!("../../../../shaders/moe_down.wgsl"),
                "main",
                &[Uniform, Read, Read, Read, Read, Read, Read, Rw],
            ),
            Op::MoeGroup => (
                include_str!("../../../../shaders/moe_group.wgsl"),
                "main",
                &[Uniform, Read, Read, Rw],
            ),
            Op::MoeExpertsTiled => (
                include_str!("../../../../shaders/moe_experts_tiled.wgsl"),
                "main",
                &[Uniform, Read, Read, Read, Read, Rw],
            ),
            Op::MoeCombine => (
                include_str!("../../../../shaders/moe_combine.wgsl"),
                "main",
                &[Uniform, Read, Read, Read, Rw],
            ),
        }
    }

    fn reads_weights(self) -> bool {
        matches!(
            self,
            Op::Embed | Op::Matmul | Op::MatmulTiled | Op::MoeGateUp | Op::MoeDown | Op::MoeExpertsTiled
        )
    }

    /// Code shared between kernels, built in ahead of the kernel's own (after the weight prelude).
    fn shared(self) -> &'static [&'static str] {
        match self {
            Op::MatmulTiled => &[GEMM_TILES],
            Op::MoeGateUp => &[MOE_ACTIVATION],
            Op::MoeExpertsTiled => &[GEMM_TILES, MOE_ACTIVATION],
            _ => &[],
        }
    }
}

const ELEMENTWISE: &str = include_str!("../../../../shaders/elementwise.wgsl");
const GEMM_TILES: &str = include_str!("../../../../shaders/gemm_tiles.wgsl");
const MOE_ACTIVATION: &str = include_str!("../../../../shaders/moe_activation.wgsl");

/// Bytes reserved per dispatch in the params ring (the largest params struct is 48 bytes; 256 is the
/// dynamic-offset alignment every adapter accepts).
pub const PARAMS_STRIDE: u64 = 256;

pub struct Kernel {
    pub id: u32,
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
    pub bindings: usize,
}

#[derive(Default)]
pub struct Kernels {
    built: HashMap<(Op, Option<WeightFormat>), Arc<Kernel>>,
}

impl Kernels {
    pub fn get(&mut self, device: &wgpu::Device, op: Op, format: Option<WeightFormat>) -> Arc<Kernel> {
        let format = if op.reads_weights() {
            Some(format.unwrap_or(WeightFormat::F32))
        } else {
            None
        };
        let next_id = self.built.len() as u32;
        self.built
            .entry((op, format))
            .or_insert_with(|| Arc::new(build(device, op, format, next_id)))
            .clone()
    }

    /// Builds every kernel for every weight format: the compile check of `volt check --compile-only`.
    pub fn build_all(&mut self, device: &wgpu::Device) -> Vec<(Op, Option<WeightFormat>)> {
        let ops = [
            Op::Embed,
            Op::RmsNorm,
            Op::Matmul,
            Op::MatmulTiled,
            Op::Rope,
            Op::KvWrite,
            Op::Attention,
            Op::Add,
            Op::SwiGlu,
            Op::Clamp,
            Op::SigmoidGate,
            Op::GatherRows,
            Op::Router,
            Op::MoeGateUp,
            Op::MoeDown,
            Op::MoeGroup,
            Op::MoeExpertsTiled,
            Op::MoeCombine,
        ];
        let mut done = Vec::new();
        for op in ops {
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

fn build(device: &wgpu::Device, op: Op, format: Option<WeightFormat>, id: u32) -> Kernel {
    let (body, entry, access) = op.source();
    let source = format
        .map(WeightFormat::prelude)
        .into_iter()
        .chain(op.shared().iter().copied())
        .chain([body])
        .collect::<Vec<_>>()
        .join("\n");
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
        pipeline,
        layout,
        bindings: access.len(),
    }
}
