// The routed experts' activation of gate and up, shared by the MoE gate/up kernels (their Params carry
// activation, alpha and limit): 0 SwiGLU, 1 GPT-OSS clamped SwiGLU.
fn expert_activation(g: f32, u: f32) -> f32 {
    if (p.activation == 1u) {
        let gc = min(g, p.limit);
        let uc = clamp(u, -p.limit, p.limit);
        return (uc + 1.0) * gc / (1.0 + exp(-p.alpha * gc));
    }
    return g / (1.0 + exp(-g)) * u;
}
