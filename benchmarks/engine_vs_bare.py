"""Engine vs a bare llama.cpp loop: generation and prompt processing, side by side.

Both run in this process on the same model file, threads, context, batch and KV
type. The bare loop is the least a Python program can do over the low-level
bindings: llama_decode on a llama_batch_get_one, a greedy sampler chain, no
detokenisation. Repetitions alternate engine / bare so that the machine's
drift hits both alike. Budget: engine >= 0.97 of bare (product.md).

    .venv/bin/python benchmarks/engine_vs_bare.py [--reps 5] [--tg 128] [--pp 512]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tui_infer.core.inference.engine import Engine  # noqa: E402
from tui_infer.core.inference.types import KV_TYPE_IDS, LoadOptions, SamplingParams  # noqa: E402
from tui_infer.core.inference.llama_thread import on_llama_thread  # noqa: E402
from tui_infer.core.models.bundled import find_bundled_models  # noqa: E402


class BareLoop:
    def __init__(self, path: Path, opts: LoadOptions) -> None:
        import llama_cpp as L

        self.L = L
        mp = L.llama_model_default_params()
        mp.n_gpu_layers = opts.gpu_layers
        self.model = L.llama_model_load_from_file(str(path).encode(), mp)
        cp = L.llama_context_default_params()
        cp.n_ctx = opts.ctx
        cp.n_batch = cp.n_ubatch = opts.batch
        cp.n_threads = cp.n_threads_batch = opts.threads
        cp.flash_attn_type = (
            L.LLAMA_FLASH_ATTN_TYPE_ENABLED if opts.flash_attn else L.LLAMA_FLASH_ATTN_TYPE_DISABLED
        )
        cp.type_k = cp.type_v = KV_TYPE_IDS[opts.kv_type]
        self.ctx = L.llama_init_from_model(self.model, cp)
        self.mem = L.llama_get_memory(self.ctx)
        self.batch = opts.batch
        chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_greedy())
        self.sampler = chain

    def _decode(self, toks: list[int]) -> None:
        arr = (self.L.llama_token * len(toks))(*toks)
        if self.L.llama_decode(self.ctx, self.L.llama_batch_get_one(arr, len(toks))) != 0:
            raise RuntimeError("decode failed")

    def prompt(self, toks: list[int]) -> float:
        self.L.llama_memory_clear(self.mem, True)
        t0 = time.perf_counter()
        for i in range(0, len(toks), self.batch):
            self._decode(toks[i : i + self.batch])
        return time.perf_counter() - t0

    def generate(self, first: list[int], n: int) -> tuple[float, int]:
        """Decode n tokens one at a time; returns (seconds from first sample to last, n)."""
        self.prompt(first)
        L = self.L
        t_first = 0.0
        for i in range(n):
            tok = L.llama_sampler_sample(self.sampler, self.ctx, -1)
            if i == 0:
                t_first = time.perf_counter()
            if i == n - 1:
                break
            arr = (L.llama_token * 1)(tok)
            L.llama_decode(self.ctx, L.llama_batch_get_one(arr, 1))
        return time.perf_counter() - t_first, n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("-m", "--model", type=Path)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--tg", type=int, default=128)
    ap.add_argument("--pp", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, help="also write the results here")
    a = ap.parse_args()
    path = a.model or find_bundled_models()[0].path
    opts = LoadOptions(ctx=2048, threads=a.threads, batch=512, flash_attn=True, kv_type="f16")
    engine = Engine.load(path, opts)
    # The bare loop runs on the thread tui-infer decodes on (the engine hands each decode
    # to it; see core/llama_thread.py): decoding from two threads would give llama.cpp two
    # OpenMP teams on 2 cores, and slow both contenders to a third.
    bare = on_llama_thread(lambda: BareLoop(path, opts))

    # A prompt of exactly --pp tokens, and a short prompt that starts generation.
    seed_text = "The history of the city begins with a small settlement by the river. " * 80
    pp_tokens = engine.tokenize(seed_text)[: a.pp]
    tg_prompt = engine.tokenize("Once upon a time, in a land far away,")
    greedy = SamplingParams(temperature=0, repeat_penalty=1.0, max_tokens=a.tg)

    res: dict[str, dict[str, list[float]]] = {
        "pp": {"engine": [], "bare": []},
        "tg": {"engine": [], "bare": []},
    }
    # warm-up both
    engine.reset()
    engine.complete_tokens(pp_tokens, SamplingParams(temperature=0, max_tokens=1)).text()
    on_llama_thread(lambda: bare.prompt(pp_tokens))
    for _ in range(a.reps):
        for who in ("engine", "bare"):
            if who == "engine":
                engine.reset()
                s = engine.complete_tokens(pp_tokens, SamplingParams(temperature=0, max_tokens=1))
                s.text()
                assert s.stats is not None
                res["pp"]["engine"].append(len(pp_tokens) / s.stats.prompt_s)
                engine.reset()
                s = engine.complete_tokens(tg_prompt, greedy)
                s.text()
                assert s.stats is not None
                n_gen = s.stats.generated_tokens
                res["tg"]["engine"].append(s.stats.generation_tps)
            else:
                res["pp"]["bare"].append(
                    len(pp_tokens) / on_llama_thread(lambda: bare.prompt(pp_tokens))
                )
                secs, n = on_llama_thread(lambda n_gen=n_gen: bare.generate(tg_prompt, n_gen))
                res["tg"]["bare"].append((n - 1) / secs)

    print(f"model: {path.name}  threads: {a.threads}  ctx: {opts.ctx}  reps: {a.reps}")
    print(f"{'test':<8}{'engine tok/s':>18}{'bare tok/s':>18}{'ratio':>8}")
    out = {}
    for test, label in (("pp", f"pp{len(pp_tokens)}"), ("tg", f"tg{n_gen}")):
        e, b = res[test]["engine"], res[test]["bare"]
        ratio = statistics.mean(e) / statistics.mean(b)
        print(
            f"{label:<8}{statistics.mean(e):>11.1f} ± {statistics.stdev(e):<5.1f}"
            f"{statistics.mean(b):>11.1f} ± {statistics.stdev(b):<5.1f}{ratio:>8.3f}"
        )
        out[label] = {"engine": e, "bare": b, "ratio": ratio}
    if a.json:
        a.json.write_text(json.dumps(out, indent=2))
    engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
