#!/usr/bin/env bash
# GPU calibration preset (issue 5): real Llama 2 7B steps on ONE GPU, records appended to
# data/measurements/gpu/<gpu>.jsonl, in well under 8 minutes on an H100/H200-class GPU.
#
#   bash harness/gpu_calibration.sh            # on a machine with a CUDA GPU
#   DRY_RUN=1 bash harness/gpu_calibration.sh  # the same sequence on the CPU with a tiny model (tested in CI)
#
# Then it fits the records (`harness calibrate RECORDS.jsonl`) into data/calibration/<gpu>.json.
#
# Each run is `harness run` (random weights built on the GPU, peft LoRA, DeepSpeed); a run
# that fails (out of memory, say) is recorded with its error and the script goes on. Then
# commit the records and refit the GPU calibration. Environment: OUT (records file), MODEL,
# SEQ (sequence length), RUN_TIMEOUT (seconds per run).
set -uo pipefail
cd "$(dirname "$0")/.."
if [ "${DRY_RUN:-0}" = "1" ]; then
  MODEL=${MODEL:-7b-tiny}; SEQ=${SEQ:-64}; B_SMALL=2; B_MID=4; B_BIG=8; STEPS=1; WARMUP=0
  OUT=${OUT:-$(mktemp -d)/dry-run.jsonl}
  export CUDA_VISIBLE_DEVICES=""
else
  MODEL=${MODEL:-7b}; SEQ=${SEQ:-512}; B_SMALL=4; B_MID=8; B_BIG=16; STEPS=3; WARMUP=1
  GPU=$(python3 -c "import torch; print(torch.cuda.get_device_name().lower().replace(' ', '-'))" 2>/dev/null || echo unknown-gpu)
  # one file per GPU type: every session appends to it (records carry their date), and the fit
  # below uses all of them, so data/calibration/<gpu>.json always comes from the same file
  OUT=${OUT:-data/measurements/gpu/${GPU}.jsonl}
fi
mkdir -p "$(dirname "$OUT")"
RUN_TIMEOUT=${RUN_TIMEOUT:-240}
failures=0
run() {
  echo "== harness run --model $MODEL $*" >&2
  harness run --model "$MODEL" --seq-len "$SEQ" --steps "$STEPS" --warmup "$WARMUP" --timeout "$RUN_TIMEOUT" --out "$OUT" "$@" >/dev/null \
    || { echo "   (failed or timed out: recorded)" >&2; failures=$((failures + 1)); }
}
# LoRA (the seed's all-linear r=8) at several micro batches, with and without checkpointing;
# ZeRO-2 on one GPU is DeepSpeed's plain bf16 path with the optimizer sharded over one rank.
run --method lora --zero 2 --batch-size "$B_MID" --grad-ckpt --save
run --method lora --zero 2 --batch-size "$B_BIG" --grad-ckpt --no-save
run --method lora --zero 2 --batch-size "$B_SMALL" --no-grad-ckpt --no-save
run --method lora --zero 2 --batch-size "$B_MID" --no-grad-ckpt --no-save
# full fine-tuning at micro batches that fit next to 16 B/parameter of model state
run --method full --zero 2 --batch-size "$B_SMALL" --grad-ckpt --no-save
run --method full --zero 2 --batch-size "$B_MID" --grad-ckpt --no-save
# ZeRO-3 on a single GPU (gather/release hooks, partitioned states), LoRA and full
run --method lora --zero 3 --batch-size "$B_MID" --grad-ckpt --no-save
run --method full --zero 3 --batch-size "$B_SMALL" --grad-ckpt --no-save
# the optimizer offloaded to the host (the seed's 70B config)
run --method full --zero 2 --offload optimizer --batch-size "$B_SMALL" --grad-ckpt --no-save
echo "records: $OUT ($failures run(s) failed or timed out)" >&2
# Fit: data/calibration/<gpu>.json (the planner's `--calibration auto` picks it for that GPU);
# a dry run writes its calibration beside its records instead.
if [ "${DRY_RUN:-0}" = "1" ]; then
  harness calibrate "$OUT" --calibration-out "$(dirname "$OUT")/calibration.json" >/dev/null || { echo "fit failed" >&2; exit 1; }
else
  harness calibrate "$OUT" || { echo "fit failed (records kept in $OUT)" >&2; exit 1; }
fi
