// Workgroup sums with subgroup operations (adapters with the `subgroup` feature): one subgroupAdd per
// value, then one partial per subgroup through shared memory instead of a six-level tree.
struct Lanes {
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(subgroup_id) subgroup: u32,
    @builtin(num_subgroups) n_subgroups: u32,
    @builtin(subgroup_invocation_id) lane: u32,
}

var<workgroup> red: array<f32, 1024>;

// Sums 16 values per thread over a 64-thread workgroup: thread i < 16 returns the total of value i.
fn sum16_over_64(lanes: Lanes, acc: array<f32, 16>) -> f32 {
    for (var i = 0u; i < 16u; i++) {
        let s = subgroupAdd(acc[i]);
        if (lanes.lane == 0u) {
            red[lanes.subgroup * 16u + i] = s;
        }
    }
    workgroupBarrier();
    var total = 0.0;
    let lid = lanes.lid.x;
    if (lid < 16u) {
        for (var g = 0u; g < lanes.n_subgroups; g++) {
            total += red[g * 16u + lid];
        }
    }
    return total;
}
