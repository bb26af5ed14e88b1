//! volt-wgpu: the wgpu backend. Every op of `volt_runtime::backend::Backend` is a WGSL kernel (`wgsl/`, one
//! file per op with its weight-format and KV-format variants as preludes), a whole step is recorded as one
//! list of dispatches and submitted in one compute pass, and only the chosen token ids (or a requested
//! tensor) are read back. It runs on any adapter wgpu opens: Vulkan, Metal, DX12, GL, and Mesa's lavapipe.
//!
//! By concern: `device` (adapter, limits, errors), `buffers` (allocation and the activation pool),
//! `recorder` (dispatches, the parameter ring, bind groups, submission, read-back), `kernels` and `params`
//! (the WGSL modules and their typed parameter structs), `weights` (packing and splitting), `cache` (KV on
//! the device), `step_inputs`, `attention`, `moe`, `pick` (token choice), `backend` (the trait).

mod attention;
mod backend;
mod buffers;
mod cache;
pub mod conformance;
pub mod device;
pub mod kernels;
mod moe;
pub mod params;
mod pick;
mod recorder;
mod step_inputs;
mod weights;

pub use backend::{GpuRope, WgpuBackend};
pub use buffers::{GpuTensor, GpuVector};
pub use cache::WgpuCache;
pub use device::{adapter_name, adapters, Gpu};
pub use weights::GpuMatrix;

#[cfg(test)]
mod tests {
    use volt_runtime::backend::{MAX_EXPERTS, MAX_HEAD_DIM};
    use volt_runtime::kv::KV_PAGE;
    use volt_runtime::step::MAX_STEP_TOKENS;

    /// The kernels' constants are the host's: page size, where the page tables start, the largest head and
    /// the most experts.
    #[test]
    fn the_kernels_share_the_hosts_limits() {
        let pages = include_str!("../wgsl/kv_pages.wgsl");
        assert!(pages.contains(&format!("const KV_PAGE: u32 = {KV_PAGE}u;")));
        assert!(pages.contains(&format!("const PAGE_TABLES: u32 = {MAX_STEP_TOKENS}u;")));
        let attention = include_str!("../wgsl/attention_common.wgsl");
        assert!(attention.contains(&format!("const MAX_HEAD_DIM: u32 = {MAX_HEAD_DIM}u;")));
        for router in [
            include_str!("../wgsl/router.wgsl"),
            include_str!("../wgsl/moe_group.wgsl"),
        ] {
            assert!(router.contains(&format!("const MAX_EXPERTS: u32 = {MAX_EXPERTS}u;")));
        }
    }
}
