"""4-bit block-quantized token embeddings for the ONNX export (`embedding_bits=4`).

The word-embedding table of a small encoder is half of its int8 file (all-MiniLM-L6-v2: 30522 x
384, 11.7 MB as uint8 of 23.0 MB). Each row is cut into blocks of `block_size` values; a block
gets its own float32 scale and 4-bit zero point (asymmetric: embedding blocks are rarely centred
on 0), its values 4-bit codes, two per byte. ONNX Runtime's contrib op
`com.microsoft.GatherBlockQuantized` (uint8 data, bits=4, gather_axis=0, quantize_axis=1) gathers
the rows and dequantizes only them: `y = (q - zero) * scale`.

    q, scale, zero = quantize_blocks(w, block_size=32)          # w (V, H) -> codes (V, H), (V, nb), (V, nb)
    info = replace_token_gather(proto, "/m/embeddings/word_embeddings/Gather", block_size=32)

Bytes per row: H/2 (codes) + 4 * nb (scales) + nb/2 (zero points), nb = ceil(H / block_size);
at H=384: 0.58 (block 16), 0.54 (32), 0.52 (64) bytes per value against 1 for uint8.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

EMBEDDING_BITS = (8, 4)
EMBEDDING_BLOCK_SIZES = (16, 32, 64, 128)  # GatherBlockQuantized: a power of 2, at least 16
GATHER_OP = "GatherBlockQuantized"
MS_DOMAIN = "com.microsoft"


from ..quantize.blocks import dequantize_blocks, pack_nibbles, quantize_blocks  # noqa: E402,F401  (the math)


# ---------------------------------------------------------------------------------------------
# graph


def find_token_gather(proto, table: np.ndarray):
    """The Gather node that reads `table` (the model's token embeddings, float32 (V, H)) from an
    initializer, matched by value (exporters and optimizers rename tensors). -> (node, why_not)."""
    from onnx import numpy_helper

    inits = {i.name: i for i in proto.graph.initializer}
    for n in proto.graph.node:
        if n.op_type != "Gather" or n.domain not in ("", "ai.onnx") or n.input[0] not in inits:
            continue
        t = inits[n.input[0]]
        if tuple(t.dims) != table.shape:
            continue
        if np.array_equal(numpy_helper.to_array(t), table):
            return n, None
    readers = [n.op_type for n in proto.graph.node if any(
        i in inits and tuple(inits[i].dims) == table.shape for i in n.input)]
    return None, ("no plain Gather reads the token-embedding table"
                  + (f" (read by {', '.join(sorted(set(readers)))})" if readers else ""))


def replace_token_gather(proto, node_name: str, block_size: int) -> dict:
    """In place: the float Gather `node_name` becomes GatherBlockQuantized over 4-bit codes.
    The float table is dropped when nothing else reads it. Returns what was done (for the metadata)."""
    from onnx import helper, numpy_helper

    node = next((n for n in proto.graph.node if n.name == node_name), None)
    if node is None or node.op_type != "Gather":
        raise ValueError(f"replace_token_gather: no Gather node named {node_name!r}")
    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
    if axis != 0:
        raise ValueError(f"replace_token_gather: {node_name} gathers along axis {axis}, not rows")
    inits = {i.name: i for i in proto.graph.initializer}
    table_name = node.input[0]
    w = torch.from_numpy(numpy_helper.to_array(inits[table_name]).astype(np.float32))
    q, scale, zero = quantize_blocks(w, block_size)
    err = dequantize_blocks(q, scale, zero, block_size) - w
    sqnr = float(20 * torch.log10(w.norm() / err.norm().clamp_min(1e-30)))
    base = table_name.removesuffix(".weight")
    codes, zeros_packed = pack_nibbles(q).numpy(), pack_nibbles(zero).numpy()  # (V, ceil(H/2)), (V, ceil(nb/2))
    data = numpy_helper.from_array(codes, f"{base}.q4")
    scales = numpy_helper.from_array(scale.numpy().astype(np.float32), f"{base}.q4_scale")
    zeros = numpy_helper.from_array(zeros_packed, f"{base}.q4_zero_point")
    proto.graph.initializer.extend([data, scales, zeros])
    new = helper.make_node(GATHER_OP, [data.name, node.input[1], scales.name, zeros.name], list(node.output),
                           name=f"{node.name}_q4", domain=MS_DOMAIN, gather_axis=0, quantize_axis=1,
                           block_size=int(block_size), bits=4)
    idx = next(i for i, n in enumerate(proto.graph.node) if n is node)
    proto.graph.node.remove(node)
    proto.graph.node.insert(idx, new)
    if not any(table_name in n.input for n in proto.graph.node):
        proto.graph.initializer.remove(inits[table_name])
    if not any(o.domain == MS_DOMAIN for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    nbytes = codes.nbytes + 4 * scale.numel() + zeros_packed.nbytes
    return {"node": new.name, "output": new.output[0], "table": table_name, "shape": list(w.shape), "bits": 4,
            "block_size": int(block_size), "zero_points": True, "op": f"{MS_DOMAIN}.{GATHER_OP}", "bytes": int(nbytes),
            "uint8_bytes": int(w.numel()), "sqnr_db": round(sqnr, 2)}
