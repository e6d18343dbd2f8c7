#!/usr/bin/env bash
# Issue 6's GPU figures in one device call, after bench/device_prepare.sh ran here:
#   run(command="bash bench/device_check.sh", carry=[".device"], timeout_s=540)
# Writes every benchmark's output to $OUT (each ends with its RESULT <json> line): GPT-2 small
# training for the six objectives (and MLE with the logits recomputed) against the HF Trainer and the
# minimal GPT (eager), phf MLE and conditional against the minimal GPT compiled, the sampler
# against model.generate, and the CPU time of a step's training blocks on the host.
# PYTHON, PRESET and STEPS override the defaults (a CPU smoke test: PYTHON=.venv/bin/python PRESET=tiny
# STEPS=2; it took 1 min 45 s here). Not yet run on a GPU: expect a few minutes of corpus preparation
# and compilation there, so give the call most of its 10-minute limit.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
PRESET=${PRESET:-gpt2-small}
STEPS=${STEPS:-20}
OUT=${OUT:-/tmp/phf-device-out}
mkdir -p "$OUT"
if [ -d .device/wheels ] && ! "$PYTHON" -c "import omegaconf" 2>/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .device/wheels/*.whl || exit 1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH} PHF_CACHE=$PWD/.device/cache PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv 2>&1 | tee "$OUT/gpu.txt"
status=0
# The last run is MLE with the logits recomputed in backward instead of the bf16 softmax kept: the
# speed that keeping buys on this card.
"$PYTHON" bench/train.py --preset "$PRESET" --steps "$STEPS" \
    --objectives mle,filtering,conditional,ul,rwr,awr,mle:training.logprob_keep_softmax_mb=0 2>&1 | tee "$OUT/train.txt" || status=1
"$PYTHON" bench/train.py --preset "$PRESET" --steps "$STEPS" --compile --no-hf-trainer \
    --objectives mle,conditional 2>&1 | tee "$OUT/train_compile.txt" || status=1
"$PYTHON" bench/generate.py --preset "$PRESET" --scorers '' 2>&1 | tee "$OUT/generate.txt" || status=1
"$PYTHON" bench/stream.py 2>&1 | tee "$OUT/stream.txt" || status=1  # CPU time of a step's blocks on this host
exit $status
