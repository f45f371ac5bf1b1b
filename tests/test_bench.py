"""The bench: its arithmetic on known inputs, and the command end to end on the real model."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest

from tests.test_cli import tui_infer
from tui_infer.core.bench.measure import (
    BenchConfig,
    BenchResult,
    compare_results,
    expand_sweep,
    memory_bandwidth,
)

CFG = BenchConfig(2, -1, 512, 512, "f16", True)


def result(samples: list[float], test: str = "tg128") -> BenchResult:
    return BenchResult(test, "tg", 128, 0, CFG, tuple(samples), ceiling_tps=400.0)


def test_mean_and_sample_deviation() -> None:
    r = result([100.0, 110.0, 120.0])
    assert r.mean == 110.0
    assert r.stdev == pytest.approx(10.0)  # sample (n-1) deviation, as llama-bench
    assert r.ceiling_fraction == pytest.approx(110 / 400)
    assert result([5.0]).stdev == 0.0


def test_noise_rule() -> None:
    a = result([100.0, 102.0, 98.0, 101.0, 99.0])
    close = result([101.0, 103.0, 99.0, 102.0, 100.0])
    far = result([120.0, 122.0, 118.0, 121.0, 119.0])
    c1, c2 = compare_results(a, close), compare_results(a, far)
    se = math.sqrt(statistics.stdev(a.samples_tps) ** 2 / 5 * 2)
    assert c1.noise == pytest.approx(2 * se)
    assert not c1.significant and c1.ratio == pytest.approx(1.01)
    assert c2.significant and c2.ratio == pytest.approx(1.2)
    # one sample has no error estimate: never called a difference
    assert not compare_results(result([100.0]), result([200.0])).significant


def test_sweep_is_every_combination_in_order() -> None:
    cfgs = expand_sweep([1, 2], [0], [256], 512, ["f16", "q8_0"], [True])
    assert [(c.threads, c.kv_type) for c in cfgs] == [
        (1, "f16"),
        (1, "q8_0"),
        (2, "f16"),
        (2, "q8_0"),
    ]


def test_memory_bandwidth_is_measured() -> None:
    bw = memory_bandwidth(threads=1, size_bytes=64 << 20, repeats=1)
    assert 1e8 < bw < 1e13  # bytes/s: somewhere between a slow disk and a fantasy


def test_bench_end_to_end() -> None:
    r = tui_infer("bench", "-p", "16", "-n", "8", "-r", "2", "-t", "1,2", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    tests = [(x["test"], x["config"]["threads"]) for x in out["results"]]
    assert tests == [("pp16", 1), ("tg8", 1), ("pp16", 2), ("tg8", 2)]
    for x in out["results"]:
        s = x["samples_tps"]
        assert len(s) == 2 and all(v > 0 for v in s)
        assert min(s) <= x["mean_tps"] <= max(s)
        if x["kind"] == "tg":
            assert 0 < x["ceiling_fraction"] < 2
    env = out["environment"]
    assert env["llama_cpp_python"] and env["backend"].startswith("CPU") and env["cpu"]
    assert out["quantization"] == "Q4_1"

    h = tui_infer("bench", "history")
    assert h.returncode == 0 and f"{out['run']}" in h.stdout and "pp16" in h.stdout
    # a run against itself: the same samples, so every test is within noise (the rule's
    # faster/slower verdicts are pinned with known samples in test_noise_rule)
    cmp_ = tui_infer("bench", "compare", str(out["run"]), str(out["run"]))
    assert cmp_.returncode == 0, cmp_.stderr
    assert "pp16" in cmp_.stdout and cmp_.stdout.count("within noise") == 4
    assert "faster" not in cmp_.stdout and "slower" not in cmp_.stdout


def test_bench_markdown_and_depth() -> None:
    r = tui_infer("bench", "-p", "8", "-n", "4", "-r", "1", "-d", "32", "--md", "--no-ceiling")
    assert r.returncode == 0, r.stderr
    assert "| pp8@d32 |" in r.stdout.replace(" ", " ") or "pp8@d32" in r.stdout


def test_bench_parallel_throughput() -> None:
    r = tui_infer(
        "bench", "-p", "8", "-n", "8", "-r", "1", "--parallel", "1,2", "--json", "--no-ceiling"
    )
    assert r.returncode == 0, r.stderr
    batch = [x for x in json.loads(r.stdout)["results"] if x["kind"] == "batch"]
    assert [x["test"] for x in batch] == ["batch1x8", "batch2x8"]
    assert all(x["mean_tps"] > 0 for x in batch)


@pytest.mark.parametrize(
    "args, message, code",
    [
        (["-r", "0"], "-r must be at least 1", 2),
        (["--kv-type", "q9"], "--kv-type 'q9'", 2),
        (["--ctx", "64", "-p", "512"], "too small", 2),
        (["compare", "998", "999"], "no bench run 998", 4),
        (["-m", "/nonexistent/x.gguf"], "no such file", 2),
        (["--parallel", "0"], "--parallel", 2),
    ],
)
def test_bench_bad_input(args: list[str], message: str, code: int) -> None:
    r = tui_infer("bench", *args)
    assert r.returncode == code
    assert message in r.stderr and r.stderr.count("\n") == 1


def test_bench_does_not_rehash_the_model(
    model_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The model's sha256 comes from the one cache: once hashed (here by the library, as
    `models info` or the store would), a bench run never reads the 98 MB file again."""
    import os

    from tui_infer.cli import main
    from tui_infer.core.models import digest
    from tui_infer.core.models.library import ModelLibrary

    with ModelLibrary(Path(os.environ["TUI_INFER_DATA_DIR"])) as lib:
        known = lib.digests.sha256(model_path)

    def no_reading(*args: object) -> str:
        raise AssertionError("the bench read the model to hash it again")

    monkeypatch.setattr(digest, "sha256_file", no_reading)
    args = [
        "bench",
        "-m",
        str(model_path),
        "-p",
        "8",
        "-n",
        "2",
        "-r",
        "1",
        "-t",
        "1",
        "--no-ceiling",
        "--json",
    ]
    assert main(args) == 0
    run = json.loads(capsys.readouterr().out)["run"]
    from tui_infer.core.bench.history import BenchHistory

    history = BenchHistory(Path(os.environ["TUI_INFER_DATA_DIR"]) / "bench.sqlite3")
    try:
        assert history.get(run).model_sha256 == known
    finally:
        history.close()
