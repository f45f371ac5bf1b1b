#!/usr/bin/env bash
# The GPU check: on a machine with a GPU, prove (or refute) what the tests only check by
# construction. One verdict per check, PASS / FAIL / SKIP, and a report file; about 2-5
# minutes with the bundled model (well under ten).
#
#   scripts/gpu-check.sh [MODEL.gguf]
#
#   GPU_CHECK_WHEEL=/path/llama_cpp_python-*.whl   install this (prebuilt CUDA) wheel
#                                                  into .venv first (no build)
#   GPU_CHECK_REPORT=file                          where the report goes
#                                                  (default: $OUT/ or ./gpu-check-report.txt)
#   GPU_CHECK_FORCE=1                              run checks 2-6 even when llama.cpp sees
#                                                  no GPU (to try the script on a CPU build)
#
# Exit status: 0 every check passed, 1 a check failed, 2 no GPU here (llama.cpp's devices
# are the CPU only, or the build cannot offload): checks 2-6 are skipped and it says so.
#
# Checks: 1 detection (doctor lists a GPU device from llama.cpp's enumeration);
# 2 offload at -1, at the fit's suggested count and at 0 (the layers the backend reports
# against llama.cpp's own "offloaded N/M layers to GPU"); 3 the fit estimate against the
# real model/KV/compute buffer sizes on the GPU; 4 per-process GPU memory (NVML; without
# it, the device API's used figure before and after the load) against
# the buffers; 5 the GPU-relevant tests; 6 tokens/s on the GPU against the CPU.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
report=${GPU_CHECK_REPORT:-${OUT:-.}/gpu-check-report.txt}  # $OUT: the device tool brings it back
: >"$report"
say() { echo "$*" | tee -a "$report"; }
if [ ! -x "$PY" ]; then say "FAIL setup: no .venv (run make install first)"; exit 1; fi
if [ -n "${GPU_CHECK_WHEEL:-}" ]; then
  say "installing $GPU_CHECK_WHEEL"
  "$PY" -m pip install -q --force-reinstall --no-deps "$GPU_CHECK_WHEEL" 2>&1 | tail -3 | tee -a "$report"
fi
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=index,name,memory.total,memory.used,driver_version,compute_cap \
    --format=csv 2>&1 | tee -a "$report"
fi
say "CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-<unset>}"
fails=0
start=$(date +%s)

# 1 detection
out=$(timeout 120 .venv/bin/tui-infer doctor --no-network 2>&1)
echo "$out" >>"$report"
if echo "$out" | grep -Eq '^device (CUDA|MTL|Metal|Vulkan|ROCm)[0-9]*'; then
  say "PASS 1 detection: $(echo "$out" | grep -E '^device (CUDA|MTL|Metal|Vulkan|ROCm)' | head -3 | tr -s ' ' | paste -sd';')"
else
  seen=$(echo "$out" | grep -E '^device ' | sed -E 's/^device ([^ ]+).*/\1/' | paste -sd, -)
  offload=$(echo "$out" | grep -oE 'GPU offload: (yes|no)' | head -1)
  say "FAIL 1 detection: no GPU: llama.cpp sees ${seen:-no device} (${offload:-gpu offload: ?})"
  fails=$((fails + 1))
  if [ "${GPU_CHECK_FORCE:-}" != 1 ]; then
    say "SKIP 2-6: no GPU here (GPU_CHECK_FORCE=1 runs them anyway, on the CPU)"
    say "gpu-check: no GPU, $(($(date +%s) - start)) s; report in $report"
    exit 2
  fi
fi

# 2-4, 6: one Python run (loads the model 4 times; each verdict printed as it comes)
timeout 420 "$PY" - "${1:-}" <<'EOF' 2>&1 | tee -a "$report"
import glob
import random
import sys
import time

from tui_infer.core.bench.measure import run_tg
from tui_infer.core.inference import llama_log
from tui_infer.core.inference.engine import Engine
from tui_infer.core.inference.fit import current_machine, estimate_fit
from tui_infer.core.inference.memory import MemoryProbe
from tui_infer.core.inference.types import LoadOptions, ModelInfo
from tui_infer.core.models.gguf import read_header

MIB = 1024 * 1024
path = sys.argv[1] or sorted(glob.glob(".venv/lib/python3*/site-packages/**/*.gguf", recursive=True))[0]
header = read_header(path)
info = ModelInfo.from_header(header)
n_vocab = header.get("tokenizer.ggml.tokens").length
machine = current_machine()
before = {g.name: g.used_bytes for g in machine.gpus}  # the device API's, before any load
print(f"model {path}: n_layer {info.n_layer}, {info.file_size / MIB:.0f} MiB")
print(f"machine: {machine.ram_available / MIB:.0f} MiB RAM free, offload {machine.gpu_offload}, "
      + "; ".join(" ".join(g.describe()) for g in machine.gpus))
fails = 0


def verdict(ok, name, detail):
    global fails
    fails += 0 if ok else 1
    print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)


def load(layers):
    mark = llama_log.mark()
    eng = Engine.load(path, LoadOptions(ctx=2048, threads=4, gpu_layers=layers))
    return eng, llama_log.lines_since(mark)


est = estimate_fit(info, n_vocab=n_vocab, ctx=2048, ram_available=machine.ram_available,
                   gpu_free=machine.gpu_free, gpu_build=machine.gpu_offload,
                   gpu_devices=max(1, len(machine.gpus)), unified=machine.unified)
print("fit:", est.summary())
suggested = est.gpu_layers if est.gpu_layers is not None else -1
partial = max(1, info.n_layer // 2)  # a partial offload, whatever the fit suggests
tps = {}
for layers in dict.fromkeys((-1, suggested, partial, 0)):
    eng, lines = load(layers)
    try:
        logged = llama_log.offloaded_layers(lines)
        b = eng.backend
        want = min(info.n_layer + 1, info.n_layer + 1 if layers < 0 else layers)
        got = (b.offloaded_layers, b.total_layers)
        ok = logged == got == (want, info.n_layer + 1) if logged else (layers == 0 and got[0] == 0)
        verdict(ok, f"2 offload at {layers}", f"backend {got}, llama.cpp logged {logged}, "
                f"expected {(want, info.n_layer + 1)}; {b.summary}")
        if layers == -1:
            model = llama_log.model_buffers(lines)
            kv = llama_log.buffers(lines, "KV")
            comp = llama_log.buffers(lines, "compute")
            on_gpu = {k: v for k, v in model.items() if not k.startswith("CPU")}
            real = sum(model.values()) + sum(kv.values())  # a tied output matrix counts twice
            ratio = (est.weights_bytes + est.kv_bytes) / max(1, real)
            verdict(0.85 <= ratio <= 1.25, "3 fit vs buffers",
                    f"estimate weights+KV {(est.weights_bytes + est.kv_bytes) / MIB:.0f} MiB, llama.cpp "
                    f"model {model}, KV {kv}, compute {comp} (ratio {ratio:.2f}); "
                    f"compute estimate {est.compute_bytes / MIB:.0f} MiB")
            fa = b.flash_attn
            print(f"INFO flash attention: {fa} {b.flash_attn_note}")
            gpus, note = MemoryProbe().gpus()
            # what llama.cpp put on the GPUs (pinned host buffers, CUDA_Host, aside)
            bufs = sum(v for d in (model, kv, comp) for k, v in d.items()
                       if not k.startswith("CPU") and not k.endswith("_Host"))
            proc = [g.process_bytes for g in gpus if g.process_bytes]
            if proc:  # NVML: this process on each card
                ok, how = sum(proc) >= bufs, f"NVML: this process {sum(proc) / MIB:.0f} MiB"
            else:  # without NVML: the device API's used figure, before the first load and now
                delta = sum(g.used_bytes - before.get(g.name, 0) for g in gpus)
                ok = delta >= 0.9 * bufs
                how = (f"device API: used +{delta / MIB:.0f} MiB since before the load "
                       f"(whole GPU; no NVML figure{': ' + note if note else ''})")
            verdict(ok and bufs > 0, "4 per-process memory",
                    f"{how} vs llama.cpp's GPU buffers {bufs / MIB:.0f} MiB; "
                    + "; ".join(" ".join(g.describe()) for g in gpus))
        tps[layers] = run_tg(eng, 64, 0, random.Random(1))
        print(f"INFO tokens/s at gpu_layers {layers}: {tps[layers]:.1f}", flush=True)
    finally:
        eng.close()
verdict(tps[-1] > 1.5 * tps[0], "6 tokens/s GPU vs CPU (GPU at least 1.5x)",
        f"{tps[-1]:.1f} vs {tps[0]:.1f} tokens/s (x{tps[-1] / max(tps[0], 1e-9):.1f}), 64 tokens")
sys.exit(1 if fails else 0)
EOF
rc=${PIPESTATUS[0]}
if [ "$rc" != 0 ] && ! grep -qE '^FAIL [2-6]' "$report"; then
  say "FAIL 2-6: the Python part stopped (status $rc) before a verdict; see $report"
fi

# 5 the GPU-relevant tests (on a GPU build the CPU-only ones skip)
if timeout 240 "$PY" -m pytest -q tests/test_gpu_logs.py tests/test_gpu_devices.py \
  tests/test_gpu_install.py tests/test_backend.py tests/test_fit.py >>"$report" 2>&1; then
  say "PASS 5 tests: $(tail -1 "$report")"
else
  say "FAIL 5 tests: $(tail -1 "$report")"
fi
fails=$(grep -cE '^FAIL [0-9]' "$report")  # every verdict line, the Python part's included
say "gpu-check: $fails failed check(s) in $(($(date +%s) - start)) s; report in $report"
exit $((fails > 0))
