#!/usr/bin/env bash
# The GPU benchmarks of issue 16 in one prepared run: bash tools/bench_gpu.sh OUTDIR [SCALE] [NAME ...]
# Each benchmark runs under its own time cap (SCALE multiplies them: 2 on a slower card), writes its log to
# OUTDIR/<name>.log and its JSON line to OUTDIR/bench_gpu.jsonl; one that fails or runs out of time is noted there
# and the next one runs. NAMEs pick some of the runs below (default: all, about 11 minutes on one H100).
# Needs torch with CUDA and, for the race, eai-sparsify.
set -u
OUT=${1:?usage: bash tools/bench_gpu.sh OUTDIR [SCALE] [NAME ...]}; SCALE=${2:-1}; shift $(( $# < 2 ? $# : 2 )); ONLY=" $* "
mkdir -p "$OUT"; export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false MPLBACKEND=Agg
PY=${PYTHON:-python3}
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1
  $PY -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name()); print('transformers', transformers.__version__)"
  $PY -c "import sparsify; print('sparsify', sparsify.__version__)" 2>&1 | tail -1; nproc; free -g | head -2; } > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

bench() {  # bench NAME SECONDS ARGS...: one benchmark under a time cap; its last JSON line goes to bench_gpu.jsonl
  local name=$1 cap; cap=$(awk "BEGIN{print int($2 * $SCALE)}"); shift 2
  [ "$ONLY" = "  " ] || [[ "$ONLY" == *" $name "* ]] || return 0
  echo "=== $name (cap ${cap} s): python -m musicsae.bench $*"
  local t0=$SECONDS
  timeout --signal=INT --kill-after=10 "$cap" $PY -m musicsae.bench "$@" > "$OUT/$name.log" 2>&1; local rc=$?
  grep -v '^{' "$OUT/$name.log" | tail -n 40
  local js; js=$(grep '^{' "$OUT/$name.log" | tail -n 1)
  if [ -n "$js" ]; then echo "{\"run\": \"$name\", \"rc\": $rc, \"wall_s\": $((SECONDS - t0)), \"result\": $js}" >> "$OUT/bench_gpu.jsonl"
  else echo "{\"run\": \"$name\", \"rc\": $rc, \"wall_s\": $((SECONDS - t0)), \"result\": null}" >> "$OUT/bench_gpu.jsonl"; fi
  echo "=== $name: exit $rc after $((SECONDS - t0)) s"
}

# 1. SAE training against sparsify at the paper's widths (d 1024, 2048; 4×, 32×; k 32, 100), batch 4096, same tokens.
#    The paper runs use the default decoder (sparse at k 32, dense bf16 at k 100); the two 32× runs beside each give
#    the other kernel for each k, so both kernels are measured at every 32× size without timing a cell twice
bench sae_d1024 100 sae --paper --d 1024 --steps 200 --warmup 10 --repeats 3
bench sae_d1024_32_k100_sparse 35 sae --d 1024 --expansions 32 --ks 100 --batch 4096 --steps 200 --warmup 10 --repeats 3 --decode sparse
bench sae_d1024_32_k32_dense 35 sae --d 1024 --expansions 32 --ks 32 --batch 4096 --steps 200 --warmup 10 --repeats 3 --decode dense_bf16
bench sae_d2048 160 sae --paper --d 2048 --steps 200 --warmup 10 --repeats 3
bench sae_d2048_32_k100_sparse 40 sae --d 2048 --expansions 32 --ks 100 --batch 4096 --steps 200 --warmup 10 --repeats 2 --decode sparse
bench sae_d2048_32_k32_dense 40 sae --d 2048 --expansions 32 --ks 32 --batch 4096 --steps 200 --warmup 10 --repeats 2 --decode dense_bf16
# 2. extraction overhead over a bare forward (random weights of the real configs; the demo model), each at a size
#    where the bare forward takes seconds (at 32 clips the end-of-run writes dominate a 0.3 s forward)
bench extract_small 40 extract --device cuda --model musicgen-small --writers async --clips 256 --seconds 10 --batch-size 32 --repeats 3
bench extract_large 45 extract --device cuda --model musicgen-large --writers async --clips 48 --seconds 10 --batch-size 16 --repeats 3
bench extract_demo 30 extract --device cuda --model demo --writers async --clips 1024 --seconds 10 --batch-size 128 --repeats 3
#    the machine's disk: StoreWriter with pipelined commits against inline fsyncs (what bounds extract_demo)
bench store 40 store --tracks 1024 --repeats 3 --dir .
# 3. the paper dry runs: 03/04/05/08 timed on the real architectures, extrapolated to MusicSet
bench paper_mgs 60 paper --config params/paper_mgs.yaml --dry-run
bench paper_mgl 90 paper --config params/paper_mgl.yaml --dry-run
# 4. the bf16 encoder matmul against fp32 at one size (does amp cost FVU?), with a profile of our step
bench sae_amp 40 sae --d 1024 --latents 32768 --ks 100 --batch 4096 --steps 200 --warmup 10 --repeats 2 --amp none --profile
echo "done; results in $OUT/bench_gpu.jsonl"
