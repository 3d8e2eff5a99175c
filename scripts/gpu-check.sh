#!/usr/bin/env bash
# The GPU check: what this machine's driver offers, the WKV-7 kernels' parity on the GPU
# against the CPU op, their speed at B=8 T=4096 C=4096 (H=64, N=64), and one stage-2 step of a
# Qwen2.5-0.5B-shaped hybrid (its configuration with random weights, so no download) with
# tokens/s, model FLOP utilisation and peak GPU memory. Prints one JSON summary at the end.
#
#   scripts/gpu-check.sh [--runner PATH] [--device wgpu] [--out DIR] [--dry-run]
#
# --runner   a runner built with `cargo build --release --features wgpu` (default
#            target/release/runner); the GPU machine needs no Rust toolchain.
# --dry-run  small shapes (B=1 T=256 H=4 for WKV-7, a 2-layer toy model for stage 2), for a
#            software Vulkan driver such as Mesa's lavapipe: checks that the script works.
# --peak-tflops  the GPU's peak for the MFU figure (default 67: an H100/H200's FP32 rate
#            without tensor cores, which is what f32 WGSL kernels can use).
#
# Needs python3 with numpy for the random Qwen2.5-0.5B-shaped checkpoint (skipped, and said
# so in the summary, when numpy is missing).
set -uo pipefail
cd "$(dirname "$0")/.."

RUNNER=target/release/runner
DEVICE=wgpu
OUT=""
DRY=0
PEAK_TFLOPS=67
while [ $# -gt 0 ]; do
  case "$1" in
    --runner) RUNNER="$2"; shift 2 ;;
    --device) DEVICE="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    --peak-tflops) PEAK_TFLOPS="$2"; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "gpu-check: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ ! -x "$RUNNER" ]; then
  echo "gpu-check: no runner at $RUNNER: build it with 'cargo build --release --features wgpu'" >&2
  exit 2
fi
OUT="${OUT:-$(mktemp -d -t gpu-check.XXXXXX)}"
mkdir -p "$OUT"
PY="${RUNNER_PYTHON:-python3}"
echo "gpu-check: results in $OUT" >&2

if [ "$DRY" = 1 ]; then
  WKV_SHAPE="1,256,4,64"
  MODEL_ARGS=(--layers 2 --hidden 64 --heads 4 --kv-heads 2 --intermediate 160)
  BATCH=1; SEQ=64; LAYERS="all"
else
  WKV_SHAPE="8,4096,64,64"
  # Qwen2.5-0.5B: 24 layers, hidden 896, 14 heads (2 KV heads), MLP 4864, vocabulary 151936.
  MODEL_ARGS=(--layers 24 --hidden 896 --heads 14 --kv-heads 2 --intermediate 4864 --vocab 151936)
  BATCH=4; SEQ=2048; LAYERS="all"
fi

# 1. The driver: NVIDIA's tools, Vulkan ICDs, and what wgpu will pick.
{
  echo "== nvidia-smi"; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1
  echo "== Vulkan ICDs"; ls /usr/share/vulkan/icd.d /etc/vulkan/icd.d 2>&1
  echo "== vulkaninfo --summary"; vulkaninfo --summary 2>&1 | head -40
} > "$OUT/driver.txt" 2>&1
GPU_NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)
ICDS=$(ls /usr/share/vulkan/icd.d /etc/vulkan/icd.d 2>/dev/null | grep -c json)

# Peak GPU memory while a command runs (nvidia-smi sampled every 100 ms; empty without it).
PEAK_FILE="$OUT/gpu_mem_samples.txt"
sample_gpu_mem() {
  : > "$PEAK_FILE"
  if command -v nvidia-smi >/dev/null; then
    while true; do
      nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits 2>/dev/null | head -n 1 >> "$PEAK_FILE"
      sleep 0.1
    done
  fi
}
peak_gpu_mem() { sort -n "$PEAK_FILE" 2>/dev/null | tail -n 1; }
timed() { # NAME CMD...: runs CMD, logs to $OUT/NAME.log, records its status and peak memory.
  local name="$1"; shift
  sample_gpu_mem & local sampler=$!
  "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null
  echo "$rc" > "$OUT/$name.rc"
  peak_gpu_mem > "$OUT/$name.gpu_mib"
  tail -n 30 "$OUT/$name.log" >&2
  return "$rc"
}

# 2. Kernel parity on the GPU, then 3. the WKV-7 benchmark.
timed wkv "$RUNNER" bench wkv --device "$DEVICE" --check --no-reference --shape "$WKV_SHAPE" \
  --reps 3 --json "$OUT/wkv.json"

# 4. One stage-2 step of the Qwen2.5-0.5B-shaped hybrid (every layer converted).
MODEL="$OUT/qwen-shaped"
if "$PY" -c "import numpy" 2>/dev/null; then
  if "$PY" scripts/make_tiny_qwen2.py "$MODEL" "${MODEL_ARGS[@]}" > "$OUT/model.log" 2>&1; then
    timed stage2 "$RUNNER" bench stage2 --device "$DEVICE" --model "$MODEL" --layers "$LAYERS" \
      --batch "$BATCH" --seq "$SEQ" --steps 2 --json "$OUT/stage2.json"
  else
    echo "1" > "$OUT/stage2.rc"; echo "writing the random model failed: see $OUT/model.log" > "$OUT/stage2.log"
  fi
else
  echo "skipped" > "$OUT/stage2.rc"; echo "no numpy for $PY" > "$OUT/stage2.log"
fi

# 5. The summary.
GPU_NAME="$GPU_NAME" ICDS="$ICDS" OUT="$OUT" PEAK_TFLOPS="$PEAK_TFLOPS" DRY="$DRY" "$PY" - <<'EOF'
import json, os
out = os.environ["OUT"]
def read(name, default=None):
    try:
        with open(os.path.join(out, name)) as f:
            return f.read().strip()
    except OSError:
        return default
def load(name):
    try:
        with open(os.path.join(out, name)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
def mib(name):
    v = read(name)
    return float(v) if v else None
summary = {
    "dry_run": os.environ["DRY"] == "1",
    "gpu": os.environ["GPU_NAME"] or None,
    "vulkan_icds": int(os.environ["ICDS"] or 0),
    "wkv": {"status": read("wkv.rc"), "peak_gpu_mib": mib("wkv.gpu_mib")},
    "stage2": {"status": read("stage2.rc"), "peak_gpu_mib": mib("stage2.gpu_mib")},
}
log = read("wkv.log", "")
summary["wkv"]["parity_ok"] = "ok (tolerance" in log
w = load("wkv.json")
if w:
    r = w[0]
    s = r["shape"]
    summary["wkv"].update({
        "shape": s,
        "fwd_ms": r["fused"]["fwd_ms"],
        "fwdbwd_ms": r["fused"]["fwdbwd_ms"],
    })
st = load("stage2.json")
if st:
    peak = float(os.environ["PEAK_TFLOPS"]) * 1e12
    summary["stage2"].update({
        "batch": st["batch"], "seq": st["seq"], "converted_layers": len(st["layers"]),
        "step_s": st["ours"]["step_s"], "tokens_per_s": st["ours"]["tokens_per_s"],
        "tflops": st["gflops"] / 1e3,
        "mfu_vs_peak": st["gflops"] * 1e9 / peak, "peak_tflops": peak / 1e12,
    })
print(json.dumps(summary, indent=2))
with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
EOF
