"""The quant and KV-type table for a model, made by the quantization lab itself.

Quantizes the model (default: the bundled SmolLM2-135M Q4_1) to each type with
`models quantize`'s code into a scratch data directory, then runs `bench quality`'s
evaluation with the model as the reference (the best file at hand: there is no F16 of it
here, so every other type is a requantization of the Q4_1 and the figures are the loss
relative to it), the quants at kv f16 and the reference with a q8_0 and a q4_0 KV cache.
Prints a Markdown table per text (the built-in sample, and --prompts files) and writes the
JSON documents to --out.

    .venv/bin/python benchmarks/quant_table.py [--types Q8_0,Q5_0,...] [--prompts README.md]
"""

from __future__ import annotations

import _scratch  # noqa: F401

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tui_infer.core.bench.quality import evaluate, read_text
from tui_infer.core.models.bundled import find_bundled_models
from tui_infer.core.models.quantize import quantize_into_library
from tui_infer.core.units import human_size

TYPES = "Q8_0,Q6_K,Q5_K_M,Q5_0,Q4_K_M,Q4_0,Q3_K_M,Q2_K"


def table(doc: dict, quant_s: dict[str, float]) -> str:
    head = (
        "| file | quant | kv | bits/w | size+KV | agree | KL mean | KL p99 | PPL | PPL/ref "
        "| pp t/s | tg t/s | quantize s |"
    )
    lines = [head, "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in doc["results"]:
        ref = r["reference"]
        kl = r["kl_divergence"]
        lines.append(
            "| "
            + " | ".join(
                [
                    Path(r["path"]).name + (" (ref)" if ref else ""),
                    r["quantization"],
                    r["kv_type"],
                    f"{r['bits_per_weight']:.2f}",
                    human_size(r["memory"]["total_bytes"]),
                    "-" if ref else f"{r['agreement']:.3f}",
                    "-" if ref else f"{kl['mean']:.4f}",
                    "-" if ref else f"{kl['p99']:.3f}",
                    f"{r['perplexity']:.2f}",
                    "-" if ref else f"{r['perplexity_ratio']:.3f}",
                    f"{r['speed']['pp_tokens_per_s']:.0f}",
                    f"{r['speed']['tg_tokens_per_s']:.1f}",
                    f"{quant_s[r['path']]:.1f}" if r["path"] in quant_s else "",
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path)
    ap.add_argument("--types", default=TYPES)
    ap.add_argument("--kv-types", default="f16,q8_0,q4_0")
    ap.add_argument("--prompts", type=Path, action="append", default=[])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=2048)
    ap.add_argument("--out", type=Path, default=Path("quant_table.json"))
    a = ap.parse_args()
    model = a.model or find_bundled_models()[0].path
    data = Path(os.environ["TUI_INFER_DATA_DIR"])
    quants: list[Path] = []
    quant_s: dict[str, float] = {}
    for t in [x.strip() for x in a.types.split(",") if x.strip()]:
        r = quantize_into_library(model, t, data, threads=a.threads, force=True)
        quants.append(r.path)
        quant_s[str(r.path)] = r.seconds
        print(f"quantized {t}: {human_size(r.size)} in {r.seconds:.1f} s", file=sys.stderr)
    docs = []
    for src in [None, *a.prompts]:
        text, source = read_text(src)
        t0 = time.perf_counter()
        report = evaluate(
            model,
            quants,
            [x.strip() for x in a.kv_types.split(",")],
            text=text,
            text_source=source,
            threads=a.threads,
            gpu_layers=0,
            max_tokens=a.max_tokens,
            speed_reps=a.reps,
            made_from_ref=[True] * len(quants),
            progress=lambda s: print(f"  {s}", file=sys.stderr),
        )
        doc = report.as_dict()
        docs.append(doc)
        print(
            f"\n### {source}: {report.text_tokens} tokens, {report.chunks} chunk(s), "
            f"{a.threads} threads ({time.perf_counter() - t0:.0f} s)\n"
        )
        print(table(doc, quant_s))
        for n in report.notes:
            print(f"\nnote: {n}")
    a.out.write_text(json.dumps(docs, indent=2), encoding="utf-8")
    print(f"\nJSON: {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
