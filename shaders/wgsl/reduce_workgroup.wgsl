// Workgroup sums through a shared-memory tree: works on every adapter.
struct Lanes {
    @builtin(local_invocation_id) lid: vec3<u32>,
}

var<workgroup> red: array<f32, 1024>;

// Sums 16 values per thread over a 64-thread workgroup: thread i < 16 returns the total of value i.
fn sum16_over_64(lanes: Lanes, acc: array<f32, 16>) -> f32 {
    let lid = lanes.lid.x;
    for (var i = 0u; i < 16u; i++) {
        red[lid * 16u + i] = acc[i];
    }
    workgroupBarrier();
    for (var stride = 32u; stride > 0u; stride >>= 1u) {
        if (lid < stride) {
            for (var i = 0u; i < 16u; i++) {
                red[lid * 16u + i] += red[(lid + stride) * 16u + i];
            }
        }
        workgroupBarrier();
    }
    return select(0.0, red[lid], lid < 16u);
}
