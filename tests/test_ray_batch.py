"""`tui-infer batch --ray`: the batch on a real local Ray cluster gives a local batch's rows.

One `ray start --head` (2 CPUs, no dashboard) in its own process serves the module; this
process joins it by address, as do the CLI subprocesses; `ray stop` ends it. One test
starts a local Ray of its own (`--ray` without an address) in a subprocess.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tui_infer.cli import main

ray = pytest.importorskip("ray", reason="the [ray] extra is not installed")

RAY_BIN = Path(sys.executable).with_name("ray")
PROMPTS = [
    "What is the capital of France?",
    "Name a fruit.",
    "Say hi.",
    "Count to three.",
    "What colour is the sky?",
    "Name a planet.",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_AUTH_MODE", None)  # batch --ray ADDRESS sends the saved token itself
    return env


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    """A 2-CPU Ray head in its own process; this process is connected to it."""
    port = _free_port()
    address = f"127.0.0.1:{port}"
    subprocess.run(
        [
            str(RAY_BIN),
            "start",
            "--head",
            f"--port={port}",
            "--node-ip-address=127.0.0.1",
            "--num-cpus=2",
            "--num-gpus=0",
            "--include-dashboard=false",
            "--disable-usage-stats",
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(),
    )
    try:
        from tui_infer.core.static.ray_batch import send_saved_token

        send_saved_token()  # `ray start` made a token (~/.ray/auth_token)
        ray.init(address=address, log_to_driver=False, logging_level="ERROR")
        yield address
    finally:
        ray.shutdown()
        subprocess.run([str(RAY_BIN), "stop"], capture_output=True, timeout=120, env=_env())


def _write_prompts(path: Path, prompts: list[str] = PROMPTS) -> Path:
    path.write_text("".join(p + "\n" for p in prompts))
    return path


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _local_batch(tmp_path: Path, src: Path, *flags: str) -> list[dict]:
    """The same batch decoded here, in a data dir of its own."""
    out = tmp_path / "local.jsonl"
    env = {**_env(), "TUI_INFER_DATA_DIR": str(tmp_path / "local-data")}
    done = subprocess.run(
        [sys.executable, "-m", "tui_infer", "batch", str(src), "-o", str(out), *flags],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    return _rows(out)


def _same_rows(ray_rows: list[dict], local_rows: list[dict]) -> None:
    keep = ("id", "line", "output", "finish_reason", "prompt_tokens", "generated_tokens")
    keep += ("model_sha256", "params_hash", "key", "status")
    assert [{k: r[k] for k in keep} for r in ray_rows] == [
        {k: r[k] for k in keep} for r in local_rows
    ]


def test_ray_batch_matches_local_and_publishes(
    ray_address: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], model_path: Path
) -> None:
    src = tmp_path / "in.jsonl"  # a line's own max_tokens travels with it to the actor
    lines = [{"id": f"q{i}", "prompt": p} for i, p in enumerate(PROMPTS)]
    lines[0]["max_tokens"] = 3
    src.write_text("".join(json.dumps(x) + "\n" for x in lines))
    flags = ("--max-tokens", "10", "--parallel", "2", "--threads", "1")
    local = _local_batch(tmp_path, src, *flags)
    assert local[0]["generated_tokens"] <= 3 < max(r["generated_tokens"] for r in local)
    out = tmp_path / "ray.jsonl"
    argv = ["batch", str(src), "-o", str(out), *flags, "--ray", ray_address, "--ray-actors", "2"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "2 actor(s) x 1 thread(s)" in captured.err
    got = _rows(out)
    _same_rows(got, local)
    assert {r["status"] for r in got} == {"staged"}

    # the run in the store is a local run's: same provenance, and it publishes as one
    from tui_infer.core.static.store import PredictionStore

    store = PredictionStore.in_data_dir(tmp_path / "data")
    try:
        run = store.run(got[0]["run"])
        assert run is not None and run.n_done == len(PROMPTS)
        assert run.model_path == str(model_path)
        assert run.status == "done"
    finally:
        store.close()
    # review and publish decide as for the local run (a gate holding cut-off answers, say)
    run_id = str(got[0]["run"])
    local_env = {**_env(), "TUI_INFER_DATA_DIR": str(tmp_path / "local-data")}
    there = subprocess.run(
        [sys.executable, "-m", "tui_infer", "store", "publish", run_id],
        capture_output=True,
        text=True,
        timeout=120,
        env=local_env,
    )
    here = main(["store", "publish", run_id])
    captured = capsys.readouterr()
    assert (here, captured.out, captured.err) == (there.returncode, there.stdout, there.stderr)
    if here != 0:
        assert main(["store", "publish", run_id, "--force"]) == 0
        captured = capsys.readouterr()
    assert f"published {len(PROMPTS)}" in captured.out
    assert main(["store", "rollback"]) == 0
    capsys.readouterr()

    # a rerun decodes nothing: every row is in the store
    assert main(argv) == 0
    assert f"0 decoded now, {len(PROMPTS)} from the store" in capsys.readouterr().out


def test_model_sent_once_per_node_and_checked(
    ray_address: str, tmp_path: Path, model_path: Path
) -> None:
    """Two actors that see the model as absent: the node receives it once, by sha256."""
    from tui_infer.core.inference.batched import BatchItem, BatchRunner
    from tui_infer.core.inference.types import LoadOptions, Message, SamplingParams
    from tui_infer.core.static.ray_batch import RayRunner, sha256_of

    sha = sha256_of(model_path)
    opts = LoadOptions(ctx=1024, threads=1)
    sampling = SamplingParams(temperature=0.0, max_tokens=8)
    items = [BatchItem(f"p{i}", (Message("user", p),)) for i, p in enumerate(PROMPTS[:4])]
    cache = tmp_path / "node-cache"
    runner = RayRunner.start(
        None, model_path, sha, opts, 2, actors=2, send_model=True, cache_dir=cache
    )
    try:
        remote = {r.id: r.text for r in runner.run(items, sampling)}
        assert runner.stats.model_sends == 1
    finally:
        runner.close()
    received = cache / f"{sha}.gguf"
    assert received.is_file() and sha256_of(received) == sha
    assert not list(cache.glob("*.part"))
    with BatchRunner.load(model_path, opts, parallel=2) as local:
        assert remote == {r.id: r.text for r in local.run(items, sampling)}


def test_a_received_model_with_another_sha256_is_refused(
    ray_address: str, tmp_path: Path, model_path: Path
) -> None:
    from tui_infer.core.static.ray_batch import ModelSource, ModelTransferError, receive_model

    source = ray.remote(ModelSource).options(num_cpus=0).remote(str(model_path))
    try:
        with pytest.raises(ModelTransferError, match="rerun the batch"):
            receive_model(source, "0" * 64, model_path.stat().st_size, tmp_path)
    finally:
        ray.kill(source)
    assert not list(tmp_path.glob("*.gguf*[!k]"))  # neither the file nor a part of it


def test_killed_ray_batch_resumes(ray_address: str, tmp_path: Path) -> None:
    """kill -9 of the driver keeps the rows that arrived; the rerun decodes only the rest."""
    prompts = [f"Write one sentence about the number {i}." for i in range(14)]
    src = _write_prompts(tmp_path / "in.txt", prompts)
    out = tmp_path / "out.jsonl"
    flags = ("--max-tokens", "32", "--parallel", "1", "--threads", "1")
    cmd = [sys.executable, "-m", "tui_infer", "batch", str(src), "-o", str(out), *flags]
    proc = subprocess.Popen(
        [*cmd, "--ray", ray_address],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=_env(),
    )
    from tui_infer.core.static.store import STORE_FILE

    db = tmp_path / "data" / STORE_FILE
    try:
        deadline = time.monotonic() + 240
        done = 0
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
            if not db.exists():
                continue
            try:
                with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as c:
                    done = c.execute("SELECT count(*) FROM predictions").fetchone()[0]
            except sqlite3.Error:
                continue
            if done >= 2:
                break
        assert proc.poll() is None, "the run finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert 2 <= done < len(prompts)
    assert not out.exists()
    rerun = subprocess.run(
        [*cmd, "--ray", ray_address], capture_output=True, text=True, timeout=300, env=_env()
    )
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming run 1" in rerun.stderr
    decoded_now = int(rerun.stdout.split(" decoded now")[0].rsplit("(", 1)[1])
    assert 0 < decoded_now <= len(prompts) - done  # rows kept after the count was read
    got = _rows(out)
    assert [r["id"] for r in got] == [f"line-{i}" for i in range(1, len(prompts) + 1)]
    _same_rows(got, _local_batch(tmp_path, src, *flags))


def test_ray_without_address_starts_a_local_instance(tmp_path: Path) -> None:
    """No ADDRESS, no --ray-actors, no --threads: a local Ray with one actor per core, each
    with 1 thread (the layout measured fastest)."""
    src = _write_prompts(tmp_path / "in.txt", PROMPTS[:3])
    flags = ("--max-tokens", "6", "--parallel", "2")
    out = tmp_path / "ray.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "tui_infer", "batch", str(src), "-o", str(out), *flags, "--ray"],
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(),
    )
    assert done.returncode == 0, done.stderr
    assert "decoding on a local Ray instance" in done.stderr
    assert f": {os.cpu_count()} actor(s) x 1 thread(s)," in done.stderr
    _same_rows(_rows(out), _local_batch(tmp_path, src, *flags))


def test_more_actors_than_the_cluster_holds_is_a_usage_error(
    ray_address: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _write_prompts(tmp_path / "in.txt", PROMPTS[:2])
    out = tmp_path / "out.jsonl"
    argv = ["batch", str(src), "-o", str(out), "--threads", "1", "--ray", ray_address]
    assert main([*argv, "--ray-actors", "3"]) == 2
    err = capsys.readouterr().err
    assert "3 Ray actor(s) of 1 threads need 3 CPUs; the cluster has 2" in err
    assert "lower --ray-actors or --threads" in err
    assert main([*argv, "--ray-actors", "0"]) == 2
    assert "--ray-actors must be at least 1, got 0" in capsys.readouterr().err
    assert main([*argv[:-2], "--ray-actors", "2"]) == 2  # without --ray: not run locally
    assert "--ray-actors and --ray-send-model go with --ray [ADDRESS]" in capsys.readouterr().err
    assert not out.exists()


def test_ray_not_installed_is_one_line_saying_how(tmp_path: Path) -> None:
    """A Python where `import ray` fails (sys.modules['ray'] = None): exit 2, one line."""
    src = _write_prompts(tmp_path / "in.txt", PROMPTS[:1])
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "from tui_infer.cli import main\n"
        f"sys.exit(main(['batch', {str(src)!r}, '-o', {str(tmp_path / 'o.jsonl')!r}, '--ray']))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=_env()
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines[-1] == (
        "tui-infer: error: --ray needs Ray, which is not installed: pip install 'tui-infer[ray]'"
    )
    assert "Traceback" not in done.stderr


def test_doctor_says_ray_is_installed() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tui_infer", "doctor", "--no-network"],
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(),
    )
    assert done.returncode == 0, done.stderr
    line = next(x for x in done.stdout.splitlines() if x.split()[:1] == ["ray"])
    assert line.split()[1] == ray.__version__


def test_an_actor_s_error_reaches_the_user_as_one_line(
    ray_address: str, tmp_path: Path, model_path: Path
) -> None:
    """A node that receives a model with another sha256 fails the run with that reason."""
    from tui_infer.core.inference.batched import BatchItem
    from tui_infer.core.inference.types import LoadOptions, Message, SamplingParams
    from tui_infer.core.static.ray_batch import ModelTransferError, RayRunner

    opts = LoadOptions(ctx=512, threads=1)
    items = [BatchItem("a", (Message("user", "Say hi."),))]
    runner = RayRunner.start(
        None, model_path, "f" * 64, opts, 1, send_model=True, cache_dir=tmp_path / "cache"
    )
    try:
        with pytest.raises(ModelTransferError, match="rerun the batch"):
            list(runner.run(items, SamplingParams(temperature=0.0, max_tokens=4)))
    finally:
        runner.close()
    assert not list((tmp_path / "cache").glob("*.gguf"))
