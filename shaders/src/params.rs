//! Kernel parameters: one `#[repr(C)]` Pod struct per kernel, the Rust twin of the `struct Params` its WGSL
//! declares at binding 0. Each is written as is into the uniform ring; the test below reflects every kernel
//! with naga and holds each struct's fields (names, offsets, types) and size to the shader's.

use bytemuck::{Pod, Zeroable};

/// A field of a parameter struct as the shader sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParamField {
    pub name: &'static str,
    pub offset: usize,
    pub scalar: Scalar,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scalar {
    U32,
    F32,
}

/// A scalar type a parameter field may have.
pub trait ParamScalar {
    const SCALAR: Scalar;
}

impl ParamScalar for u32 {
    const SCALAR: Scalar = Scalar::U32;
}

impl ParamScalar for f32 {
    const SCALAR: Scalar = Scalar::F32;
}

/// A kernel's parameter block.
pub trait KernelParams: Pod {
    /// Every field in order: what the shader's `struct Params` must declare.
    const FIELDS: &'static [ParamField];
}

macro_rules! kernel_params {
    ($($(#[$doc:meta])* $name:ident { $($field:ident: $ty:ident),* $(,)? })*) => {$(
        $(#[$doc])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
        pub struct $name {
            $(pub $field: $ty),*
        }

        impl KernelParams for $name {
            const FIELDS: &'static [ParamField] = &[$(ParamField {
                name: stringify!($field),
                offset: std::mem::offset_of!($name, $field),
                scalar: <$ty as ParamScalar>::SCALAR,
            }),*];
        }
    )*};
}

kernel_params! {
    /// `embed.wgsl`: rows of one part of the table (`first_row..first_row + part_rows`) for the step's tokens.
    EmbedParams { rows: u32, cols: u32, first_row: u32, part_rows: u32 }

    /// `rms_norm.wgsl`: groups of `group` columns; the weight covers `wlen` columns (a group or the row).
    RmsNormParams { cols: u32, group: u32, wlen: u32, eps: f32 }

    /// `matmul.wgsl` and `matmul_tiled.wgsl`: one weight part's `outputs` rows into columns
    /// `out_base..` of y, whose rows are `out_stride` wide.
    MatmulParams {
        tokens: u32,
        k: u32,
        outputs: u32,
        has_bias: u32,
        out_stride: u32,
        out_base: u32,
        _pad0: u32,
        _pad1: u32,
    }

    /// `rope.wgsl`.
    RopeParams { rows: u32, cols: u32, head_dim: u32, attention_scale: f32 }

    /// `kv_write.wgsl`: `capacity` ring rows per sequence, or 0 for a paged layer.
    KvWriteParams { rows: u32, kv_dim: u32, capacity: u32, pages_per_seq: u32 }

    /// `attention_common.wgsl`, for every attention kernel; `chunk_len` and `n_chunks` only on the split path.
    AttentionParams {
        n_heads: u32,
        heads_per_kv: u32,
        head_dim: u32,
        kv_dim: u32,
        capacity: u32,
        pages_per_seq: u32,
        window: u32,
        has_sinks: u32,
        scale: f32,
        chunk_len: u32,
        n_chunks: u32,
    }

    /// `elementwise.wgsl`, for add, swiglu, clamp and the sigmoid gate.
    ElementwiseParams { n: u32, cols: u32, limit: f32, _pad: u32 }

    /// `gather_rows.wgsl`.
    GatherRowsParams { rows: u32, cols: u32, _pad0: u32, _pad1: u32 }

    /// `router.wgsl`: `scoring` 0 softmax, 1 sigmoid; `order` 0 score then select, 1 select then score;
    /// `top_p` 0 top-k (max_experts), 1 top-p over `p_threshold`.
    RouterParams {
        rows: u32,
        n_experts: u32,
        max_experts: u32,
        min_experts: u32,
        scoring: u32,
        order: u32,
        top_p: u32,
        renormalize: u32,
        p_threshold: f32,
        _pad0: u32,
        _pad1: u32,
        _pad2: u32,
    }

    /// `moe_gate_up.wgsl`: experts `first_expert..first_expert + part_experts` of one weight part;
    /// `activation` 0 SwiGLU, 1 GPT-OSS clamped SwiGLU.
    MoeGateUpParams {
        hidden: u32,
        inter: u32,
        max_experts: u32,
        activation: u32,
        alpha: f32,
        limit: f32,
        has_bias: u32,
        first_expert: u32,
        part_experts: u32,
        _pad0: u32,
        _pad1: u32,
        _pad2: u32,
    }

    /// `moe_down.wgsl`: `accumulate` adds to what an earlier part wrote.
    MoeDownParams {
        hidden: u32,
        inter: u32,
        max_experts: u32,
        has_bias: u32,
        first_expert: u32,
        part_experts: u32,
        accumulate: u32,
        _pad: u32,
    }

    /// `sample.wgsl`: one row's choice; `draw` is the uniform draw in [0, 1).
    SampleParams {
        vocab: u32,
        row: u32,
        top_k: u32,
        n_penalized: u32,
        penalized_offset: u32,
        temperature: f32,
        top_p: f32,
        min_p: f32,
        penalty: f32,
        draw: f32,
        _pad0: u32,
        _pad1: u32,
    }

    /// `moe_group.wgsl`.
    MoeGroupParams { tokens: u32, max_experts: u32, n_experts: u32, max_tiles: u32 }

    /// `moe_experts_tiled.wgsl`: `k` input columns, `outputs` weight rows per expert; `gated` runs gate/up
    /// with the activation, else down.
    MoeExpertsTiledParams {
        tokens: u32,
        max_experts: u32,
        n_experts: u32,
        k: u32,
        outputs: u32,
        gated: u32,
        activation: u32,
        alpha: f32,
        limit: f32,
        has_bias: u32,
        first_expert: u32,
        part_experts: u32,
    }

    /// `moe_combine.wgsl`.
    MoeCombineParams { tokens: u32, hidden: u32, max_experts: u32, _pad: u32 }
}

#[cfg(test)]
mod tests {
    use naga::{Scalar as NagaScalar, ScalarKind, TypeInner};

    use super::*;
    use crate::kernels::{KernelFeatures, Op, WeightFormat, PARAMS_STRIDE};
    use volt_runtime::dtype::KvDtype;

    /// The members of the `struct Params` bound at binding 0 of a kernel's source, and its size.
    fn shader_params(source: &str) -> Result<(Vec<ParamField>, usize), String> {
        let module = naga::front::wgsl::parse_str(source).map_err(|e| e.emit_to_string(source))?;
        let uniform = module
            .global_variables
            .iter()
            .map(|(_, var)| var)
            .find(|var| var.binding.as_ref().is_some_and(|b| b.group == 0 && b.binding == 0))
            .ok_or("no variable at @group(0) @binding(0)")?;
        let TypeInner::Struct { members, span } = &module.types[uniform.ty].inner else {
            return Err("binding 0 is not a struct".into());
        };
        let mut fields = Vec::new();
        for m in members {
            let scalar = match module.types[m.ty].inner {
                TypeInner::Scalar(NagaScalar {
                    kind: ScalarKind::Uint,
                    width: 4,
                }) => Scalar::U32,
                TypeInner::Scalar(NagaScalar {
                    kind: ScalarKind::Float,
                    width: 4,
                }) => Scalar::F32,
                ref other => return Err(format!("field {:?} has type {other:?}", m.name)),
            };
            let name = m.name.clone().unwrap_or_default();
            fields.push(ParamField {
                name: Box::leak(name.into_boxed_str()),
                offset: m.offset as usize,
                scalar,
            });
        }
        Ok((fields, *span as usize))
    }

    /// Differences between a kernel's Rust parameter struct and its shader's, one line each.
    fn mismatches(op: Op, source: &str) -> Vec<String> {
        let (shader, span) = match shader_params(source) {
            Ok(p) => p,
            Err(e) => return vec![format!("{op:?}: {e}")],
        };
        let (rust, size) = op.params();
        let mut out = Vec::new();
        if shader.len() != rust.len() {
            out.push(format!(
                "{op:?}: the shader's Params has {} fields, the Rust struct {}",
                shader.len(),
                rust.len()
            ));
        }
        for (s, r) in shader.iter().zip(rust) {
            if s != r {
                out.push(format!("{op:?}: shader field {s:?}, Rust field {r:?}"));
            }
        }
        if span != size {
            out.push(format!(
                "{op:?}: the shader's Params takes {span} bytes, the Rust struct {size}"
            ));
        }
        if size as u64 > PARAMS_STRIDE {
            out.push(format!(
                "{op:?}: {size} bytes of parameters, more than a ring slot ({PARAMS_STRIDE})"
            ));
        }
        out
    }

    #[test]
    fn every_kernel_params_struct_matches_its_shader() {
        let mut problems = Vec::new();
        let mut checked = 0;
        for op in Op::ALL {
            // The parameters do not depend on the weight format, the optional features or the KV dtype, but
            // every variant's source is reflected so none can drift.
            let formats: Vec<Option<WeightFormat>> = if op.reads_weights() {
                WeightFormat::ALL.map(Some).to_vec()
            } else {
                vec![None]
            };
            for format in formats {
                for features in [
                    KernelFeatures::default(),
                    KernelFeatures {
                        subgroups: true,
                        shader_f16: true,
                    },
                ] {
                    for kv in KvDtype::ALL {
                        problems.extend(mismatches(op, &op.source(format, features, kv)));
                        checked += 1;
                    }
                }
            }
        }
        // Variants of one kernel share its Params: each difference once.
        problems.sort();
        problems.dedup();
        assert!(problems.is_empty(), "{}", problems.join("\n"));
        println!("{checked} kernel sources reflected, every Params struct matches");
    }

    #[test]
    fn a_field_the_rust_struct_lacks_is_caught() {
        let source = Op::Embed.source(Some(WeightFormat::F32), KernelFeatures::default(), KvDtype::F16);
        let added = source.replacen("    part_rows: u32,\n", "    part_rows: u32,\n    stride: u32,\n", 1);
        assert_ne!(added, source, "embed.wgsl's Params changed shape; update this test");
        let problems = mismatches(Op::Embed, &added);
        assert!(
            problems.iter().any(|p| p.contains("5 fields, the Rust struct 4")),
            "{problems:?}"
        );
        assert!(mismatches(Op::Embed, &source).is_empty());
    }
}
