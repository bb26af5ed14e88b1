//! Kernel parameters: every `extern "C"` kernel takes one struct by value, declared in its `.cu` file and
//! mirrored here by a `#[repr(C)]` Pod struct of the same name (device pointers as `u64`), and a `Kernel<P>`
//! names a kernel together with the struct it takes, so a launch cannot pass another. The test below compiles
//! each module with static_asserts generated from these structs' fields, offsets, types and sizes.

use std::marker::PhantomData;

use bytemuck::{Pod, Zeroable};
use cudarc::driver::DeviceRepr;

/// What a parameter field holds, as C sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArgType {
    /// A device pointer (`u64` in Rust, any `T*` in C).
    Ptr,
    I32,
    I64,
    F32,
}

/// The Rust types a parameter field may have.
pub trait FieldType {
    const TYPE: ArgType;
}

impl FieldType for u64 {
    const TYPE: ArgType = ArgType::Ptr;
}

impl FieldType for i32 {
    const TYPE: ArgType = ArgType::I32;
}

impl FieldType for i64 {
    const TYPE: ArgType = ArgType::I64;
}

impl FieldType for f32 {
    const TYPE: ArgType = ArgType::F32;
}

/// One field of a parameter struct.
#[derive(Clone, Copy, Debug)]
pub struct Field {
    pub name: &'static str,
    pub offset: usize,
    pub ty: ArgType,
}

/// A parameter struct's layout: what its C twin must match.
#[derive(Clone, Copy, Debug)]
pub struct ArgsLayout {
    /// The struct's name, in Rust and in C.
    pub name: &'static str,
    pub size: usize,
    pub align: usize,
    pub fields: &'static [Field],
}

/// A kernel's parameter struct.
pub trait KernelArgs: Pod + DeviceRepr {
    const LAYOUT: ArgsLayout;
}

/// An `extern "C"` kernel that takes `P`.
pub struct Kernel<P> {
    pub name: &'static str,
    args: PhantomData<fn(&P)>,
}

impl<P> Clone for Kernel<P> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<P> Copy for Kernel<P> {}

/// A kernel as a module lists it: its name and its parameter struct's layout.
#[derive(Clone, Copy, Debug)]
pub struct KernelEntry {
    pub name: &'static str,
    pub args: ArgsLayout,
}

impl<P: KernelArgs> Kernel<P> {
    pub const fn new(name: &'static str) -> Kernel<P> {
        Kernel {
            name,
            args: PhantomData,
        }
    }

    pub const fn entry(self) -> KernelEntry {
        KernelEntry {
            name: self.name,
            args: P::LAYOUT,
        }
    }
}

macro_rules! kernel_args {
    ($($(#[$doc:meta])* $name:ident { $($field:ident: $ty:ident),* $(,)? })*) => {$(
        $(#[$doc])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Pod, Zeroable)]
        pub struct $name {
            $(pub $field: $ty),*
        }

        // SAFETY: plain data without padding (Pod), laid out as the C struct of the same name (the test below).
        unsafe impl DeviceRepr for $name {}

        impl KernelArgs for $name {
            const LAYOUT: ArgsLayout = ArgsLayout {
                name: stringify!($name),
                size: std::mem::size_of::<$name>(),
                align: std::mem::align_of::<$name>(),
                fields: &[$(Field {
                    name: stringify!($field),
                    offset: std::mem::offset_of!($name, $field),
                    ty: <$ty as FieldType>::TYPE,
                }),*],
            };
        }
    )*};
}

kernel_args! {
    /// `embed_*` and `select_rows` (elementwise.cu): out[r, :] = src[index[r], :] for `rows` rows of `cols`.
    GatherArgs { src: u64, index: u64, out: u64, rows: i32, cols: i32 }

    /// `swiglu`, `clamp_values`, `add_assign`, `sigmoid_gate` (elementwise.cu) over `n` values of x.
    ElementwiseArgs { x: u64, y: u64, n: i64, cols: i32, limit: f32 }

    /// `rms_norm` (norm_rope.cu).
    RmsNormArgs { x: u64, weight: u64, out: u64, cols: i32, group: i32, weight_len: i32, eps: f32 }

    /// `apply_rope` (norm_rope.cu).
    RopeArgs { x: u64, inv_freq: u64, positions: u64, rows: i32, cols: i32, head_dim: i32, attention_scale: f32 }

    /// `linear_*` (linear.cu).
    LinearArgs {
        x: u64,
        w: u64,
        scales: u64,
        bias: u64,
        y: u64,
        rows: i32,
        k: i32,
        out: i32,
        stride: i32,
        group_rows: i32,
        _pad: i32,
    }

    /// `experts_*` (linear.cu).
    ExpertsArgs {
        x: u64,
        experts: u64,
        w: u64,
        scales: u64,
        y: u64,
        expert_elems: i64,
        expert_scales: i64,
        x_div: i32,
        k: i32,
        out: i32,
        stride: i32,
        group_rows: i32,
        _pad: i32,
    }

    /// `quantize_rows_1x128` (gemm_fp8.cu).
    QuantizeArgs { x: u64, src: u64, q: u64, scales: u64, rows: i32, k: i32, kp: i32, _pad: i32 }

    /// `gemm_fp8` (gemm_fp8.cu).
    GemmFp8Args {
        a: u64,
        a_scale: u64,
        b: u64,
        b_scale: u64,
        bias: u64,
        c: u64,
        tile_expert: u64,
        used_tiles: u64,
        b_expert_elems: i64,
        b_expert_scales: i64,
        m: i32,
        n: i32,
        kp: i32,
        group_rows: i32,
    }

    /// `moe_route` (moe.cu).
    MoeRouteArgs {
        logits: u64,
        probs: u64,
        ids: u64,
        weights: u64,
        rows: i32,
        n: i32,
        max_k: i32,
        scoring: i32,
        order: i32,
        top_p: f32,
        min_k: i32,
        renormalize: i32,
    }

    /// `moe_align` (moe.cu).
    MoeAlignArgs {
        ids: u64,
        sorted_src: u64,
        sorted_of: u64,
        tile_expert: u64,
        used_tiles: u64,
        assignments: i32,
        max_k: i32,
        n_experts: i32,
        max_rows: i32,
    }

    /// `moe_activation` (moe.cu).
    MoeActivationArgs {
        gate_up: u64,
        bias: u64,
        expert_of_row: u64,
        tile_expert: u64,
        act: u64,
        rows: i32,
        inter: i32,
        kind: i32,
        alpha: f32,
        limit: f32,
        _pad: i32,
    }

    /// `moe_combine` (moe.cu).
    MoeCombineArgs {
        y: u64,
        ids: u64,
        weights: u64,
        sorted_of: u64,
        down_bias: u64,
        out: u64,
        rows: i32,
        max_k: i32,
        hidden: i32,
        _pad: i32,
    }

    /// `kv_write` (attention.cu).
    KvWriteArgs {
        k: u64,
        v: u64,
        cache_k: u64,
        cache_v: u64,
        seqs: u64,
        positions: u64,
        tables: u64,
        rows: i32,
        kv_dim: i32,
        ring: i32,
        pages_per_seq: i32,
    }

    /// `attention` (attention.cu).
    AttentionArgs {
        q: u64,
        cache_k: u64,
        cache_v: u64,
        sinks: u64,
        out: u64,
        seqs: u64,
        positions: u64,
        tables: u64,
        rows: i32,
        n_heads: i32,
        n_kv_heads: i32,
        head_dim: i32,
        ring: i32,
        pages_per_seq: i32,
        window: i32,
        softmax_scale: f32,
    }

    /// `pick_greedy` (sample.cu).
    PickGreedyArgs { logits: u64, penalized: u64, starts: u64, penalties: u64, out: u64, vocab: i32, _pad: i32 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::{arch_for, KernelModule, HOPPER, MODULES};
    use crate::nvrtc::Nvrtc;

    /// Helpers of the generated checks. NVRTC's front end (EDG) has no `__builtin_offsetof`: `__INTADDR__` is
    /// the builtin its own `offsetof` expands to.
    const PRELUDE: &str = r#"
#ifdef __EDG__
#define VOLT_OFFSETOF(T, f) __INTADDR__(&(((T*)0)->f))
#else
#define VOLT_OFFSETOF(T, f) __builtin_offsetof(T, f)
#endif
template <typename A, typename B> struct VoltSame { static const bool value = false; };
template <typename A> struct VoltSame<A, A> { static const bool value = true; };
template <typename T> struct VoltArgType { static const int value = -1; };
template <typename T> struct VoltArgType<T*> { static const int value = 0; };
template <> struct VoltArgType<int> { static const int value = 1; };
template <> struct VoltArgType<long long> { static const int value = 2; };
template <> struct VoltArgType<float> { static const int value = 3; };
"#;

    /// C++ that fails to compile, naming the kernel or the struct and field, unless each kernel of `module`
    /// takes its Rust parameter struct and each such struct has the Rust one's fields (names, offsets, types),
    /// size and alignment.
    fn layout_asserts(module: &KernelModule) -> String {
        let mut out = String::from(PRELUDE);
        let mut structs: Vec<ArgsLayout> = Vec::new();
        for k in module.kernels {
            let s = k.args.name;
            out += &format!(
                "static_assert(VoltSame<decltype({0}), void({s})>::value, \"{0}: takes {s} in Rust\");\n",
                k.name
            );
            if !structs.iter().any(|l| l.name == s) {
                structs.push(k.args);
            }
        }
        for l in structs {
            let s = l.name;
            out += &format!(
                "static_assert(sizeof({s}) == {0}, \"{s}: {0} bytes in Rust\");\n",
                l.size
            );
            out += &format!(
                "static_assert(alignof({s}) == {0}, \"{s}: aligned to {0} in Rust\");\n",
                l.align
            );
            for f in l.fields {
                let (c_type, code) = match f.ty {
                    ArgType::Ptr => ("a pointer (u64)", 0),
                    ArgType::I32 => ("int (i32)", 1),
                    ArgType::I64 => ("long long (i64)", 2),
                    ArgType::F32 => ("float (f32)", 3),
                };
                out += &format!(
                    "static_assert(VOLT_OFFSETOF({s}, {0}) == {1}, \"{s}.{0}: at offset {1} in Rust\");\n\
                     static_assert(VoltArgType<decltype({s}::{0})>::value == {code}, \"{s}.{0}: {c_type} in Rust\");\n",
                    f.name, f.offset
                );
            }
        }
        out
    }

    /// Compiles `source` with the layout asserts of `module` for Hopper; the NVRTC error on a mismatch.
    fn check_layouts(nvrtc: &Nvrtc, module: &KernelModule, source: &str) -> Result<(), String> {
        let options = [format!("--gpu-architecture={}", arch_for(HOPPER)), "--std=c++17".into()];
        let name = format!("{}.cu", module.name);
        let source = format!("{source}{}", layout_asserts(module));
        nvrtc
            .compile(&name, &source, &options)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn nvrtc_or_skip(test: &str) -> Option<Nvrtc> {
        match Nvrtc::load() {
            Ok(n) => Some(n),
            Err(e) => {
                println!("SKIP {test}: {e}");
                None
            }
        }
    }

    #[test]
    fn every_args_struct_matches_its_c_struct() {
        let Some(nvrtc) = nvrtc_or_skip("kernel parameter layouts") else {
            return;
        };
        let failures: Vec<String> = MODULES
            .iter()
            .filter_map(|m| check_layouts(&nvrtc, m, &m.source()).err())
            .collect();
        assert!(failures.is_empty(), "{failures:#?}");
    }

    #[test]
    fn a_c_field_the_rust_struct_lacks_is_caught() {
        let Some(nvrtc) = nvrtc_or_skip("kernel parameter layout mismatch") else {
            return;
        };
        let module = MODULES.iter().find(|m| m.name == "linear").unwrap();
        let source = module.source();
        let added = source.replacen("    int group_rows;\n", "    int group_rows;\n    int extra;\n", 1);
        assert_ne!(added, source, "linear.cu's LinearArgs changed shape; update this test");
        let err = check_layouts(&nvrtc, module, &added).unwrap_err();
        assert!(err.contains("LinearArgs: 64 bytes in Rust"), "{err}");
    }
}
