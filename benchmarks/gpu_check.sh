#!/bin/bash
# The CUDA path and its timings on a GPU machine, in one bounded run (docs/benchmarks.md, "GPU").
#
#     bash benchmarks/gpu_check.sh OUT_DIR [SECONDS]
#
# Runs from the repository root with `python3` (PYTHONPATH=src, no install), every step under one
# deadline (default 540 s) so that what finished is written to OUT_DIR/summary.txt even when a later
# step is cut: the bundled T1 model evaluated on the GPU and on the CPU (Dice must agree), `bigl
# segment` of a 1 mm volume on both (labels compared), `bigl train` with the defaults on 12 cases
# (the 10-minute bar's run) and `bigl adapt` with the defaults (the 15-minute bar's run), both on
# the GPU, then as much of a one-seed T1ce -> T2 `bigl benchmark` as the time left allows.
set -u
OUT=$(realpath -m "${1:?usage: gpu_check.sh OUT_DIR [SECONDS]}")
END=$((SECONDS + ${2:-540}))
PY=${PYTHON:-python3}
GPU=${DEVICE:-cuda}   # DEVICE=cpu: a dry run of the script itself on a machine without a GPU
W=${WORK:-/tmp/gpu_check}
mkdir -p "$OUT" "$W"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
LOG=$OUT/steps.log
say() { echo "$*" | tee -a "$OUT/summary.txt"; }

step() {   # step NAME CAP_SECONDS COMMAND...: run under min(cap, time left), log it, time it
    local name=$1 cap=$2 left=$((END - SECONDS)); shift 2
    ((left < cap)) && cap=$left
    if ((cap < 5)); then say "$name: skipped (deadline)"; return 1; fi
    echo "===== $name: $*" >> "$LOG"
    local t0=$EPOCHREALTIME
    timeout "$cap" "$@" >> "$LOG" 2>&1
    local rc=$?
    say "$name: rc $rc, $(awk "BEGIN{printf \"%.1f\", $EPOCHREALTIME - $t0}") s$( ((rc == 124)) && echo " (cut at ${cap} s)")"
    return $rc
}
BIGL="$PY -m bigl"
summary() { $PY -c "import json,sys; s=json.load(open(sys.argv[1]))['summary']; print('Dice WT / TC / ET', ' / '.join(f\"{100 * s[r]['dice_mean']:.2f}\" for r in ('WT', 'TC', 'ET')))" "$1"; }

say "== $(date -u +%FT%TZ) $(nvidia-smi -L 2>/dev/null | head -1)"
say "$($PY -c 'import torch,sys; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")')"
say "cpu cores $(nproc)"

# data: the documented test sets (docs/training.md), made in parallel
export BIGL W
step data 120 bash -c '$BIGL phantom --out $W/test2026 --n-cases 10 --seed 2026 & $BIGL phantom --out $W/d12_21 \
    --n-cases 12 --seed 21 & $BIGL phantom --out $W/d12_22 --n-cases 12 --seed 22 & $BIGL phantom --out $W/brats1mm \
    --n-cases 1 --seed 2027 --preset brats & $BIGL phantom --out $W/bench3031 --n-cases 30 --seed 3031 --preset small & wait'


T1=src/bigl/bundles/t1.safetensors
for dev in $GPU cpu; do
    step "evaluate t1 bundle on test2026, $dev" 90 $BIGL evaluate --model $T1 --data $W/test2026 --device $dev \
        --json $W/eval_$dev.json --overwrite && say "  $(summary $W/eval_$dev.json)"
done

CASE=$(ls -d $W/brats1mm/*/ | head -1)
T1FILE=$(ls $CASE*t1.nii.gz)
for dev in $GPU cpu; do
    step "segment 1 mm T1 volume, $dev (process start to file written)" 60 $BIGL segment --input $T1FILE \
        --modality t1 --out $W/seg_$dev.nii.gz --device $dev --overwrite
done
say "  $($PY - $W/seg_$GPU.nii.gz $W/seg_cpu.nii.gz <<'EOF'
import sys, nibabel as nib, numpy as np
a, b = (np.asarray(nib.load(p).dataobj) for p in sys.argv[1:])
wt = lambda x: x > 0
d = 2 * (wt(a) & wt(b)).sum() / max(wt(a).sum() + wt(b).sum(), 1)
print(f"labels cuda vs cpu: {int((a != b).sum())} voxels differ of {a.size}; WT Dice between them {100 * d:.2f} %")
EOF
)"

step "train T2, defaults, 12 cases (d12_21), $GPU" 180 $BIGL train --data $W/d12_21 --modality t2 --seed 0 \
    --out $W/t2_21.safetensors --device $GPU --overwrite &&
step "evaluate it on test2026 T2, $GPU" 60 $BIGL evaluate --model $W/t2_21.safetensors --data $W/test2026 \
    --modality t2 --device $GPU --json $W/eval_t2.json --overwrite && say "  $(summary $W/eval_t2.json)"

step "adapt T1 -> T2, defaults, 12 + 12 cases, $GPU" 240 $BIGL adapt --model $T1 --source-data $W/d12_21 \
    --source-modality t1 --target-data $W/d12_22 --target-modality t2 --out $W/adapted.safetensors \
    --device $GPU --overwrite &&
step "evaluate it on test2026 T2, $GPU" 60 $BIGL evaluate --model $W/adapted.safetensors --data $W/test2026 \
    --modality t2 --device $GPU --json $W/eval_adapted.json --overwrite && say "  $(summary $W/eval_adapted.json)"

step "benchmark T1ce -> T2, seed 0, $GPU" 100000 $BIGL -v benchmark --data $W/bench3031 --source t1ce --target t2 \
    --out $W/t1ce_t2 --seeds 0 --methods source-only translate bigl sifa target-only --device $GPU
cp $W/t1ce_t2/results.md "$OUT/t1ce_t2_results.md" 2>/dev/null
cp $W/t1ce_t2/results.json "$OUT/t1ce_t2_results.json" 2>/dev/null
cp $W/t1ce_t2/figure.png "$OUT/t1ce_t2_figure.png" 2>/dev/null
say "== done $(date -u +%FT%TZ)"
