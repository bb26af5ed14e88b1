// Embedding gather: out[r, c] = table[tokens[r], c]. The table is read through the weight prelude; a table
// too large for one binding comes in row parts, and each part's dispatch writes the rows of its tokens.
struct Params {
    rows: u32,
    cols: u32,
    // table rows this part holds: first_row..first_row + part_rows
    first_row: u32,
    part_rows: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(2) var<storage, read> tokens: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let n = p.rows * p.cols;
    for (var i = gid.x; i < n; i += nwg.x * 64u) {
        let row = tokens[i / p.cols] - p.first_row;
        // Tokens below first_row wrap to a large row and fail this test too.
        if (row < p.part_rows) {
            out[i] = w_at(row, i % p.cols, p.cols);
        }
    }
}
