#!/usr/bin/env python3
"""Block-format fixtures for runtime/src/quant (pip install gguf==0.19.0 numpy).

For every format Volt reads, tests/fixtures/quant_blocks/<name>.blocks holds random blocks (random codes,
finite random scales) and <name>.f32 the values gguf.quants.dequantize decodes them to (f32, little-endian):
the decoders must match bit for bit. For the formats gguf-py can write, <name>.values holds random f32 values
and <name>.quantized the blocks gguf.quants.quantize writes for them: the quantizers must match byte for byte.
"""

from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGML_QUANT_SIZES
from gguf.quants import dequantize, quantize

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "quant_blocks"
FORMATS = {
    "f32": T.F32, "f16": T.F16, "bf16": T.BF16, "q4_0": T.Q4_0, "q4_1": T.Q4_1, "q5_0": T.Q5_0,
    "q5_1": T.Q5_1, "q8_0": T.Q8_0, "q4_k": T.Q4_K, "q5_k": T.Q5_K, "q6_k": T.Q6_K, "mxfp4": T.MXFP4,
}
QUANTIZABLE = ["f16", "bf16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "mxfp4"]
# Byte offsets of each format's f16 scales inside a block: random bytes there could be inf or NaN.
F16_FIELDS = {"q4_0": [0], "q4_1": [0, 2], "q5_0": [0], "q5_1": [0, 2], "q8_0": [0], "q4_k": [0, 2],
              "q5_k": [0, 2], "q6_k": [208]}


def random_blocks(rng, name, n_blocks):
    block_len, block_bytes = GGML_QUANT_SIZES[FORMATS[name]]
    if name == "f32":
        return rng.standard_normal(n_blocks, dtype=np.float32).view(np.uint8)
    if name in ("f16", "bf16"):
        x = (rng.standard_normal(n_blocks) * 4).astype(np.float32)
        return quantize(x, FORMATS[name]).reshape(-1)
    blocks = rng.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)
    for at in F16_FIELDS.get(name, []):
        scale = (rng.standard_normal(n_blocks) * 0.05).astype(np.float16)
        blocks[:, at:at + 2] = scale.view(np.uint8).reshape(n_blocks, 2)
    if name == "mxfp4":
        blocks[:, 0] = rng.integers(100, 140, size=n_blocks)  # exponents around 2^0
        blocks[0, 0], blocks[1, 0] = 0, 1  # the subnormal scales
    return blocks.reshape(-1)


def main():
    rng = np.random.default_rng(20261203)
    OUT.mkdir(parents=True, exist_ok=True)
    for name, qtype in FORMATS.items():
        block_len, _ = GGML_QUANT_SIZES[qtype]
        n_blocks = 8 if block_len == 256 else 24
        if block_len == 1:
            n_blocks = 96
        blocks = random_blocks(rng, name, n_blocks)
        values = dequantize(blocks, qtype).astype(np.float32).reshape(-1)
        (OUT / f"{name}.blocks").write_bytes(blocks.tobytes())
        (OUT / f"{name}.f32").write_bytes(values.astype("<f4").tobytes())
        if name in QUANTIZABLE:
            x = (rng.standard_normal(24 * 32) * rng.choice([0.01, 1.0, 30.0], size=24 * 32)).astype(np.float32)
            x[:32] = 0.0  # an all-zero block
            q = quantize(x, qtype).reshape(-1)
            (OUT / f"{name}.values").write_bytes(x.astype("<f4").tobytes())
            (OUT / f"{name}.quantized").write_bytes(q.tobytes())
        print(f"{name}: {n_blocks} blocks, {len(values)} values")


if __name__ == "__main__":
    main()
