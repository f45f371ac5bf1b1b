"""The static-inference loop end to end, as a user runs it, with the commands it runs shown.

A few hundred prompts in OpenAI's batch input format go through `tui-infer batch --ray`
(a local Ray instance), come back as a staged run, are verified (the answers cut off at
max_tokens are flagged, and rejected), published and served by `tui-infer serve` (asked
with the official openai client); then a week of synthetic traffic (the store's clock
moved day by day, requests looked up through the one request path as the server does)
shows its drift in `store drift`, and `store misses` writes the next batch, which runs.

Everything lives in a scratch folder (data, config, state); nothing touches yours.

    .venv/bin/python scripts/static_flow.py [--prompts 300] [--actors 2] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).with_name("tui-infer")
SUBJECTS = ["a river", "the moon", "bread", "a violin", "winter", "a library", "copper", "tea"]
ASKS = ["Describe {} in one sentence.", "Name one fact about {}.", "Write a title about {}."]
MAX_TOKENS = 24
DAY = 86400.0


def prompt_text(i: int) -> str:
    ask = ASKS[i % len(ASKS)].format(SUBJECTS[(i // len(ASKS)) % len(SUBJECTS)])
    return f"{ask} ({i})"


def openai_lines(n: int) -> list[dict[str, object]]:
    lines: list[dict[str, object]] = []
    for i in range(n):
        body: dict[str, object] = {
            "model": "gpt-4o-mini",  # ignored: the run's model is -m (said once)
            "messages": [{"role": "user", "content": prompt_text(i)}],
            "max_tokens": MAX_TOKENS,
            "temperature": 0,
        }
        lines.append(
            {"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}
        )
    return lines


def sh(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    print("$ tui-infer " + " ".join(args), flush=True)
    t0 = time.perf_counter()
    done = subprocess.run([str(BIN), *args], env=env, capture_output=True, text=True)
    took = time.perf_counter() - t0
    tail = (done.stdout + done.stderr).strip().splitlines()[-6:]
    for line in tail:
        print("  " + line)
    print(f"  (exit {done.returncode}, {took:.1f} s)", flush=True)
    if check and done.returncode != 0:
        raise SystemExit(f"step failed: tui-infer {' '.join(args)}")
    return done


def serve_and_ask(env: dict[str, str], asked: list[str]) -> list[str]:
    """`tui-infer serve` in its own process, asked with the openai client; the sources."""
    import openai

    port_file = Path(env["TUI_INFER_STATE_DIR"]) / "port"
    proc = subprocess.Popen(
        [str(BIN), "serve", "--port", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = None
        assert proc.stdout is not None
        for line in proc.stdout:
            print("  serve: " + line.rstrip())
            if "http://" in line and url is None:
                url = line[line.index("http://") :].split()[0].rstrip("/.,")
            if line.startswith("ready") or "exit" in line.lower():
                break
        if url is None:
            raise SystemExit("serve did not say where it listens")
        base = url if url.endswith("/v1") else url + "/v1"
        client = openai.OpenAI(base_url=base, api_key="none")
        sources = []
        for text in asked:
            raw = client.chat.completions.with_raw_response.create(
                model="default",
                messages=[{"role": "user", "content": text}],
                max_tokens=MAX_TOKENS,
                temperature=0,
            )
            sources.append(raw.headers.get("x-tui-infer-source", "?"))
        return sources
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        port_file.unlink(missing_ok=True)


def synthetic_week(data_dir: Path, n_stored: int, seed: int = 7) -> tuple[int, int]:
    """Seven days of traffic: each day 200 requests, a share of them new (unlike anything
    in the batch) growing from 5 % to 60 %, a few of the new ones asked again and again."""
    from tui_infer.core.inference.types import Message, SamplingParams
    from tui_infer.core.models.bundled import find_bundled_models
    from tui_infer.core.models.digest import sha256_file
    from tui_infer.core.request_path import lookup, prepare, target_for
    from tui_infer.core.static.store import PredictionStore

    model = find_bundled_models()[0].path
    target = target_for(model, None)  # the template `serve` keys with
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS)
    rng = random.Random(seed)
    new_asks = [f"How do I {v} a {o}?" for v in ("fix", "clean", "paint") for o in ("bike", "door")]
    now = time.time()
    clock_t = [now - 7 * DAY]
    hits = misses = 0
    with PredictionStore(data_dir / "store.sqlite3", clock=lambda: clock_t[0]) as store:
        sha = sha256_file(model)
        for day in range(7):
            share_new = 0.05 + day * (0.55 / 6)
            for k in range(200):
                clock_t[0] = now - (7 - day) * DAY + k * 60
                if rng.random() < share_new:
                    text = rng.choice(new_asks) if rng.random() < 0.7 else f"Tell me {rng.random()}"
                else:
                    text = prompt_text(rng.randrange(n_stored))
                req = prepare(store, target, [Message("user", text)], params, model_sha256=sha)
                if lookup(store, req) is not None:
                    hits += 1
                else:
                    misses += 1
    return hits, misses


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=300)
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--keep", type=Path, help="work in this folder and keep it")
    a = ap.parse_args()
    work = a.keep or Path(tempfile.mkdtemp(prefix="tui-infer-flow-"))
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(
        TUI_INFER_DATA_DIR=str(work / "data"),
        TUI_INFER_CONFIG=str(work / "config.toml"),
        TUI_INFER_STATE_DIR=str(work / "state"),
    )
    env.pop("RAY_ADDRESS", None)
    try:
        inp = work / "requests.jsonl"
        inp.write_text("".join(json.dumps(x) + "\n" for x in openai_lines(a.prompts)))
        print(f"{a.prompts} requests in OpenAI's batch format: {inp}")
        t0 = time.perf_counter()
        sh(
            env,
            "batch",
            str(inp),
            "-o",
            str(work / "out.jsonl"),
            "--ray",
            "--ray-actors",
            str(a.actors),
            "--threads",
            str(max(1, (os.cpu_count() or 2) // a.actors)),
        )
        print(f"batch on Ray: {time.perf_counter() - t0:.1f} s wall, Ray's start-up included")
        out = [json.loads(x) for x in (work / "out.jsonl").read_text().splitlines()]
        assert len(out) == a.prompts and all(o["response"]["status_code"] == 200 for o in out)
        [run] = json.loads(sh(env, "store", "runs", "--json").stdout)
        run_id = str(run["run"])
        print(f"run {run_id}: {run['status']}")
        sh(env, "store", "verify", run_id, "--resample", "2%", check=False)
        flagged = [
            p
            for p in map(json.loads, sh(env, "store", "show", run_id, "--json").stdout.splitlines())
            if p.get("flags")
        ]
        print(
            f"{len(flagged)} flagged, e.g. {flagged[0]['id']}: {flagged[0]['flags']}"
            if flagged
            else "nothing flagged"
        )
        assert flagged, "the flow needs at least one flagged prediction"
        refused = sh(env, "store", "publish", run_id, check=False)
        assert refused.returncode != 0, "publish must refuse unreviewed flags"
        sh(env, "store", "reject", run_id, *[p["id"] for p in flagged])
        sh(env, "store", "publish", run_id)
        kept = [o["custom_id"] for o in out]
        flagged_ids = {p["id"] for p in flagged}
        served_ids = [i for i in kept if i not in flagged_ids][:5]
        asked = [prompt_text(int(i.split("-")[1])) for i in served_ids]
        sources = serve_and_ask(env, asked)
        print(f"served from: {sources}")
        assert sources == ["store"] * len(asked)
        hits, misses = synthetic_week(work / "data", a.prompts)
        print(f"a week of synthetic traffic: {hits} hits, {misses} misses")
        sh(env, "store", "drift", "--by", "day")
        sh(
            env,
            "store",
            "misses",
            "--top",
            "10",
            "--min-count",
            "2",
            "-o",
            str(work / "next.jsonl"),
        )
        sh(env, "batch", str(work / "next.jsonl"), "-o", str(work / "next.out.jsonl"))
        print(f"done; the folder: {work}")
        return 0
    finally:
        if a.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
