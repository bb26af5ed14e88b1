// Where the KV of position `j` of sequence `seq` lives in a layer's cache, counted in rows of kv_dim values.
// Sliding layers (capacity > 0) keep a ring of `capacity` rows per sequence. Full layers (capacity 0) are
// paged: row j % KV_PAGE of the sequence's page j / KV_PAGE, from the page tables that follow the step's
// sequence slots in `seqs` (runtime/src/kv/pages.rs). Needs the including kernel's `seqs` binding.
const KV_PAGE: u32 = 32u;
// Where the page tables start in `seqs`: after the slots of the largest step.
const PAGE_TABLES: u32 = 512u;

fn kv_row(seq: u32, j: u32, capacity: u32, pages_per_seq: u32) -> u32 {
    if (capacity > 0u) {
        return seq * capacity + j % capacity;
    }
    return seqs[PAGE_TABLES + seq * pages_per_seq + j / KV_PAGE] * KV_PAGE + j % KV_PAGE;
}
