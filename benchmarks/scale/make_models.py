"""Random Llama-architecture checkpoints of real shapes, written shard by shard in bf16 safetensors
(tensor by tensor: never a whole model in memory), with SmolLM2's tokenizer beside them.

    python benchmarks/scale/make_models.py 1b 8b      # sizes: 0.36b 1b 3b 8b 8b-2l (default: all)

Shapes (benchmarks/common.py, SHAPES): 0.36b SmolLM2-360M; 1b Llama-3.2-1B with SmolLM2's 49,152-token
vocabulary (hidden 2048, 16 layers, FFN 8192, 32 heads, 8 kv heads, tied: 1.07B); 3b Llama-3.2-3B;
8b Llama-3.1-8B; 8b-2l the 8B's shapes with 2 layers (a streamed run's peak memory depends on one
layer, not on the depth). Written to .cache/bench/scale/llama-SIZE (skipped when present).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import SCALE_CACHE, SHAPES, llama_params, write_llama  # noqa: E402

if __name__ == "__main__":
    for s in sys.argv[1:] or list(SHAPES):
        f = write_llama(s, SCALE_CACHE / f"llama-{s}")
        print(f"{s}: {llama_params(s) / 1e9:.2f}B params, "
              f"{sum(p.stat().st_size for p in f.glob('*.safetensors')) / 1e9:.2f} GB in {f}")
