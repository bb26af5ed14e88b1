#!/usr/bin/env python3
"""GGUF container fixtures for runtime/src/gguf.rs (pip install gguf==0.19.0 numpy).

Writes, with gguf-py's GGUFWriter (the format's reference writer), into tests/fixtures/gguf_format/:
- types.gguf: every metadata value type, arrays, a 64-byte alignment, and tensors of several formats and ranks;
- split-0000{1,2,3}-of-00003.gguf: one model in three shards (metadata in the first only);
and, for each, <name>.json: what gguf-py's GGUFReader reads back (metadata, tensor shapes in PyTorch order,
ggml types, byte counts and byte sums), which the Rust reader must agree with.
"""

import json
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader, GGUFWriter
from gguf.quants import quantize

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "gguf_format"


def tensors(rng):
    return [
        ("a.f32", rng.standard_normal((3, 5)).astype(np.float32), None),
        ("b.f16", rng.standard_normal((2, 32)).astype(np.float16), None),
        ("c.q8_0", quantize(rng.standard_normal((2, 64)).astype(np.float32), T.Q8_0), T.Q8_0),
        ("d.q4_k", rng.integers(0, 256, size=(2, 2 * 144), dtype=np.uint8), T.Q4_K),
        ("e.mxfp4", quantize(rng.standard_normal((4, 64)).astype(np.float32), T.MXFP4), T.MXFP4),
        ("f.3d", rng.standard_normal((2, 3, 32)).astype(np.float32), None),
    ]


def add_tensors(w, items):
    for name, data, raw in items:
        if raw is None:
            w.add_tensor(name, data)
        else:
            w.add_tensor(name, data, raw_dtype=raw)


def describe(paths):
    """What GGUFReader reads from the files: the first one's metadata, every file's tensors."""
    metadata, out_tensors = {}, {}
    for i, path in enumerate(paths):
        reader = GGUFReader(path)
        for field in reader.fields.values():
            if i > 0 or field.name.startswith("GGUF."):
                continue
            value = field.contents()
            metadata[field.name] = value
        for t in reader.tensors:
            raw = np.asarray(reader.data[t.data_offset: t.data_offset + t.n_bytes]).view(np.uint8)
            out_tensors[t.name] = {
                "shape": [int(d) for d in reversed(t.shape)],
                "type": int(t.tensor_type),
                "bytes": int(t.n_bytes),
                "byte_sum": int(raw.astype(np.uint64).sum()),
            }
    return {"metadata": metadata, "tensors": out_tensors}


def main():
    rng = np.random.default_rng(7)
    OUT.mkdir(parents=True, exist_ok=True)

    w = GGUFWriter(OUT / "types.gguf", "llama")
    w.add_custom_alignment(64)
    w.add_uint8("t.u8", 200)
    w.add_int8("t.i8", -100)
    w.add_uint16("t.u16", 60000)
    w.add_int16("t.i16", -30000)
    w.add_uint32("t.u32", 4000000000)
    w.add_int32("t.i32", -2000000000)
    w.add_uint64("t.u64", 2 ** 40 + 3)
    w.add_int64("t.i64", -(2 ** 40))
    w.add_float32("t.f32", 0.25)
    w.add_float64("t.f64", -1.5)
    w.add_bool("t.bool", True)
    w.add_string("t.string", "naïve ✓")
    w.add_array("t.u32s", [1, 2, 3])
    w.add_array("t.strings", ["a", "b c", ""])
    w.add_array("t.f32s", [0.5, -2.0])
    add_tensors(w, tensors(rng))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    (OUT / "types.json").write_text(json.dumps(describe([OUT / "types.gguf"]), indent=1, ensure_ascii=False) + "\n")

    w = GGUFWriter(OUT / "split.gguf", "qwen2", split_max_tensors=2)
    w.add_uint32("qwen2.block_count", 1)
    add_tensors(w, tensors(rng)[:5])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    shards = sorted(OUT.glob("split-*-of-*.gguf"))
    (OUT / "split.json").write_text(json.dumps(describe(shards), indent=1) + "\n")
    for p in [OUT / "types.gguf", *shards]:
        print(p.name, p.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
