#!/usr/bin/env bash
# One pass over the CUDA path on a machine with a GPU: the CUDA tests, then the GPU benchmarks, most
# important first, each under its own time limit so that a slow step cannot eat the ones after it.
#   bash bench/gpu_check.sh [LOG_DIR]        (LOG_DIR defaults to ./gpu-logs)
# Needs torch with CUDA, pytest, and this repo's requirements (wheels in ./.whl are installed first
# into /tmp/site when present, for machines without package access).
set -u
LOG=${1:-gpu-logs}
mkdir -p "$LOG"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
if compgen -G ".whl/*.whl" > /dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
START=$(date +%s)
BUDGET=${BUDGET:-420}   # seconds for the whole script; a step that would start past it is skipped
step() {  # step NAME LIMIT_S LOGFILE CMD...
  local name=$1 limit=$2 file=$3; shift 3
  if [ -n "${ONLY:-}" ] && ! [[ "$name" =~ $ONLY ]]; then return; fi   # ONLY: regex of step names to run
  local left=$((BUDGET - ($(date +%s) - START)))
  if [ "$left" -lt 15 ]; then echo "== $name: SKIPPED (budget spent)" | tee -a "$LOG/summary.txt"; return; fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name (limit ${limit}s)" | tee -a "$LOG/$file"
  local t0=$(date +%s)
  timeout "$limit" "$@" 2>&1 | tee -a "$LOG/$file"
  local rc=${PIPESTATUS[0]}
  echo "== $name: rc=$rc in $(( $(date +%s) - t0 ))s" | tee -a "$LOG/summary.txt"
}
{ nvidia-smi -L; $PY -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, \
  'cuda', torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else 'NO CUDA')"; } \
  2>&1 | tee "$LOG/summary.txt"
step "CUDA tests" 300 cuda_tests.log $PY -m pytest -q -p no:cacheprovider tests/test_cuda.py
step "Alg. 1 LeNet (fmnist preset networks), fp32, with CUDA graphs" 75 bench.log $PY bench/alg1_speed.py --device cuda \
  --steps 100 --repeats 3 --cuda-graphs
step "Alg. 1 VGG-16 (stl10 preset networks), fp32, with CUDA graphs" 60 bench.log $PY bench/alg1_speed.py --device cuda \
  --backbone vgg16 --steps 30 --repeats 3 --cuda-graphs
step "filter weights LeNet + VGG-16, fp32" 50 bench.log $PY bench/filter_weights_speed.py --device cuda --repeats 3
# the app's pages, Grad-CAM and embeddings on a run the CLI trained with device=auto (here: the GPU)
step "app and inspectors on a GPU-trained run" 150 app_tests.log $PY -m pytest -q -p no:cacheprovider \
  tests/test_app.py tests/test_gradcam.py tests/test_embeddings.py
step "Alg. 1 ResNet-50 (caltech256 preset networks), TF32, with CUDA graphs" 80 bench.log $PY bench/alg1_speed.py \
  --device cuda --backbone resnet50 --steps 5 --repeats 3 --tf32 --cuda-graphs
step "ResNet-50 DELTA four-stage weights and update, fp32" 40 bench.log $PY bench/resnet50_delta_cost.py --device cuda \
  --samples 8 --batch 16 --repeats 3
step "peak GPU memory, eager vs CUDA graphs" 180 bench.log $PY bench/cuda_graphs_memory.py
step "Alg. 1 LeNet, fp32, where the eager iteration goes" 60 bench.log $PY bench/alg1_speed.py --device cuda --steps 100 \
  --repeats 3 --breakdown
step "demo preset on CUDA with CUDA graphs (700 steps)" 80 demo.log $PY -m dfg train --preset demo --set device=cuda \
  --set cuda_graphs=true --runs-dir /tmp/gpu-runs --run-id demo-cuda --set data_root=/tmp/gpu-data
step "filter weights, TF32" 30 bench.log $PY bench/filter_weights_speed.py --device cuda --repeats 3 --tf32
step "filter weights, 50 per class, fp32" 40 bench.log $PY bench/filter_weights_speed.py --device cuda --repeats 3 --per-class 50
step "Alg. 1 VGG-16 (stl10 preset networks), TF32" 50 bench.log $PY bench/alg1_speed.py --device cuda --backbone vgg16 --steps 30 --repeats 3 --tf32
echo "== total $(( $(date +%s) - START ))s" | tee -a "$LOG/summary.txt"
grep -h "^\[cuda\|^CUDA graphs\|^resnet50_" "$LOG/bench.log" 2>/dev/null
tail -3 "$LOG/cuda_tests.log" "$LOG/app_tests.log" 2>/dev/null
cat "$LOG/summary.txt"
