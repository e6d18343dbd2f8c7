#!/usr/bin/env bash
# Issue 6's GPU figures in one device call, after bench/device_prepare.sh ran here:
#   run(command="bash bench/device_check.sh", carry=[".device"], timeout_s=570)
# Writes every benchmark's output to $OUT (each ends with its RESULT <json> line), in this order, the
# open questions first (a call cut short still returns what was written): the GPU tests (-m gpu) of
# the sampler, the log-prob kernel and the trainer's deferred metrics read; phf MLE and conditional
# against the minimal GPT compiled, with a kernel profile of each run (and the minimal loop on phf's
# model with its weights as built and in nn.Linear's memory order: whether GPT-2's (in, out) Conv1D
# matrices cost matmul time against the minimal GPT's (out, in) ones); GPT-2 small training for the
# six objectives against the HF Trainer and the minimal GPT eager (and the minimal loop on phf's
# model, which splits a gap between the two); the sampler against model.generate (left-padded
# mixed-length prompts, then EOS prompts); and the CPU time of a step's training blocks on the host.
# PYTHON, PRESET, STEPS, BENCHES, TRAIN_OBJECTIVES, COMPILE_OBJECTIVES, COMPILE_PROFILE and TRAIN_ARGS
# override the defaults below (a CPU smoke test: PYTHON=.venv/bin/python PRESET=tiny STEPS=2; 2 min
# 15 s here).
# On an H200 (2026-11-27): GPU tests 20 s, generate ~60 s, train 105 s, compile 94 s (~10 s of each
# is imports and corpus preparation), before the mixed-prompt sampling, the minimal loop on phf's
# model, compile's profiled steps and its Linear-layout run were added (expect ~60, ~15, ~35, ~30
# and ~30 s more: ~7.5 min in all); the machine's start took another 30 s. All of it should fit one
# call of timeout_s=570.
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
{ nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv
  "$PYTHON" -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
} 2>&1 | tee "$OUT/gpu.txt"
status=0
# Each benchmark has its own time limit (seconds, scaled by LIMIT_SCALE), so one that hangs or compiles
# for too long leaves the others their turn inside the device call's limit.
TRAIN_ARGS=${TRAIN_ARGS:-}  # e.g. --no-hf-trainer
limit() { timeout "$(( $1 * ${LIMIT_SCALE:-1} ))" "${@:2}"; }
BENCHES=" ${BENCHES:-gputests compile train generate_mixed generate stream} "  # a subset, to rerun some on a warm machine
# The objectives each training run times (each may carry its own overrides: mle:KEY=VALUE).
# (MLE with the logits recomputed, mle:training.logprob_keep_softmax_mb=0:training.logprob_chunk_tokens=2048,
# measured 0.862x MLE on an H200; with the preset's one chunk per micro-batch the softmax is always kept.)
TRAIN_OBJECTIVES=${TRAIN_OBJECTIVES:-mle,filtering,conditional,ul,rwr,awr}
COMPILE_OBJECTIVES=${COMPILE_OBJECTIVES:-mle,conditional}
[[ $BENCHES == *" gputests "* ]] && { limit 120 "$PYTHON" -m pytest -q -p no:cacheprovider -m gpu \
    tests/test_sampling.py tests/test_logprobs.py tests/test_training.py 2>&1 | tee "$OUT/gputests.txt" || status=1; }
# Compiled, each run also profiles COMPILE_PROFILE more steps: kernel time by kind and the GPU's busy
# share, to tell a host-side gap (the GPU waits) from a kernel-side one (bench/kernel_profile.py).
COMPILE_PROFILE=${COMPILE_PROFILE:-3}
[[ $BENCHES == *" compile "* ]] && { limit 240 "$PYTHON" bench/train.py --preset "$PRESET" --steps "$STEPS" --compile --no-hf-trainer \
    --objectives "$COMPILE_OBJECTIVES" --profile "$COMPILE_PROFILE" --linear-layout 2>&1 | tee "$OUT/train_compile.txt" || status=1; }
[[ $BENCHES == *" train "* ]] && { limit 240 "$PYTHON" bench/train.py --preset "$PRESET" --steps "$STEPS" \
    --objectives "$TRAIN_OBJECTIVES" $TRAIN_ARGS 2>&1 | tee "$OUT/train.txt" || status=1; }
[[ $BENCHES == *" generate_mixed "* ]] && { limit 150 "$PYTHON" bench/generate.py --preset "$PRESET" --scorers '' --prompts mixed 2>&1 | tee "$OUT/generate_mixed.txt" || status=1; }
[[ $BENCHES == *" generate "* ]] && { limit 150 "$PYTHON" bench/generate.py --preset "$PRESET" --scorers '' 2>&1 | tee "$OUT/generate.txt" || status=1; }
[[ $BENCHES == *" stream "* ]] && { limit 30 "$PYTHON" bench/stream.py 2>&1 | tee "$OUT/stream.txt" || status=1; }  # CPU time of a step's blocks on this host
exit $status
