//! volt-cuda: the CUDA FP8 backend for Hopper. Not implemented yet: `--backend cuda` reports why.

/// Why `--backend cuda` cannot start in this build.
pub fn unavailable_reason() -> &'static str {
    "the CUDA FP8 backend is not implemented in this build yet"
}
