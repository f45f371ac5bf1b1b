"""`tui-infer batch`, `tui-infer store` and `run --serve`, as a user runs them."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tui_infer.cli import main


def tui_infer(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tui_infer", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ),
    )


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_jsonl_batch_with_malformed_lines_publish_and_serve(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text(
        '{"id": "a", "prompt": "What is the capital of France?"}\n'
        "{not json\n"
        '{"id": "b", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4}\n'
        '{"prompt": ""}\n'
        '{"id": "a", "prompt": "dup"}\n'
        '{"prompt": "Name a fruit."}\n'
    )
    out = tmp_path / "out.jsonl"
    argv = ["batch", str(src), "-o", str(out), "--max-tokens", "12", "--parallel", "2"]
    assert main(argv) == 5  # finished, with some lines rejected
    captured = capsys.readouterr()
    assert "line 2 skipped: not valid JSON" in captured.err
    got = rows(out)
    assert [r["id"] for r in got] == ["a", "b", "line-6"]
    assert got[1]["generated_tokens"] <= 4
    assert all(r["output"] and len(r["model_sha256"]) == 64 for r in got)
    rejects = rows(tmp_path / "out.jsonl.rejects.jsonl")
    assert [r["line"] for r in rejects] == [2, 4, 5]
    assert "already used on line 1" in rejects[2]["error"]
    run_id = got[0]["run"]

    # staged: not served yet
    ask = ["run", "--temperature", "0", "--max-tokens", "12", "--serve", "store", "--json"]
    assert main([*ask, "What is the capital of France?"]) == 3
    assert "not precomputed" in capsys.readouterr().err

    # "b" is cut off at its 4 tokens: flagged, so publishing waits for a review or --force
    assert main(["store", "publish", str(run_id)]) == 1
    assert f"run {run_id} not published" in capsys.readouterr().err
    assert main(["store", "publish", str(run_id), "--force"]) == 0
    assert "published 3" in capsys.readouterr().out
    assert main([*ask, "What is the capital of France?"]) == 0
    served = json.loads(capsys.readouterr().out)
    assert served["source"] == "store" and served["run"] == run_id
    assert served["reply"] == got[0]["output"]

    # another parameter misses; store-then-live answers it live and records the miss
    live = ["run", "--temperature", "0", "--max-tokens", "5", "--json"]
    assert main([*live, "What is the capital of France?"]) == 0
    assert json.loads(capsys.readouterr().out)["source"] == "live"
    assert main([*live, "--serve", "live", "Name a fruit."]) == 0
    capsys.readouterr()
    misses = tmp_path / "misses.jsonl"
    assert main(["store", "misses", "-o", str(misses)]) == 0
    capsys.readouterr()
    missed = rows(misses)
    assert len(missed) == 1  # --serve live neither looks up nor records
    assert missed[0]["max_tokens"] == 5

    # the misses file is the next batch's input
    out2 = tmp_path / "out2.jsonl"
    next_batch = ["batch", str(misses), "-o", str(out2), "--max-tokens", "5"]
    assert main([*next_batch, "--publish", "--force"]) == 0  # 5 tokens: cut off, flagged
    assert "published 1" in capsys.readouterr().out
    assert main([*live, "--serve", "store", "What is the capital of France?"]) == 0
    assert json.loads(capsys.readouterr().out)["source"] == "store"

    # review: reject, stats, export, rollback
    assert main(["store", "reject", str(run_id), "b"]) == 0
    assert main(["store", "stats"]) == 0
    stats = capsys.readouterr().out
    assert "hits" in stats and "hit rate" in stats
    exported = tmp_path / "export.jsonl"
    assert main(["store", "export", str(run_id), "-o", str(exported)]) == 0
    assert [(r["id"], r["status"]) for r in rows(exported)] == [
        ("a", "published"),
        ("b", "rejected"),
        ("line-6", "published"),
    ]
    assert main(["store", "rollback"]) == 0
    assert main(["store", "runs"]) == 0
    listing = capsys.readouterr().out
    assert "rolled-back" in listing and "published" in listing
    assert main(["store", "show", "999"]) == 4  # no such run


def test_text_and_csv_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    txt = tmp_path / "p.txt"
    txt.write_text("Say yes.\n\nSay no.\n")
    out = tmp_path / "o.jsonl"
    assert main(["batch", str(txt), "-o", str(out), "--max-tokens", "4"]) == 0
    assert [r["id"] for r in rows(out)] == ["line-1", "line-3"]
    csv = tmp_path / "p.csv"
    csv.write_text('id,question\nq1,"Say yes, please."\nq2,\nq3,Say no.,extra\n')
    assert (
        main(["batch", str(csv), "-o", str(out), "--column", "question", "--max-tokens", "4"]) == 5
    )
    assert [r["id"] for r in rows(out)] == ["q1"]
    assert main(["batch", str(csv), "-o", str(out)]) == 2
    assert "no 'prompt' column" in capsys.readouterr().err


def test_a_prompt_longer_than_the_context_is_rejected_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "in.txt"
    src.write_text("Say yes.\n" + "word " * 400 + "\nSay no.\n")
    out = tmp_path / "o.jsonl"
    argv = ["batch", str(src), "-o", str(out), "--max-tokens", "4", "--ctx", "256"]
    assert main([*argv, "--parallel", "1"]) == 5
    err = capsys.readouterr().err
    assert "line 2 rejected: the prompt takes" in err and "raise --ctx" in err
    assert [r["id"] for r in rows(out)] == ["line-1", "line-3"]
    [rejected] = rows(tmp_path / "o.jsonl.rejects.jsonl")
    assert rejected["line"] == 2 and "more than a sequence's context holds" in rejected["error"]
    # a rerun decodes nothing and says the same
    assert main([*argv, "--parallel", "1"]) == 5
    assert "(0 decoded now" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "the input is empty"),
        ("\n\n", "the input is empty"),
        ("{bad\n[1]\n", "none of its 2 lines is a usable prompt"),
    ],
)
def test_unusable_input_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text(content)
    assert main(["batch", str(src), "-o", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tui-infer: error:") and message in err
    assert not (tmp_path / "o.jsonl").exists()


def test_missing_input_and_bad_parallel(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["batch", str(tmp_path / "nope.txt"), "-o", str(tmp_path / "o")]) == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "p.txt").write_text("hi\n")
    assert main(["batch", str(tmp_path / "p.txt"), "-o", "x", "--parallel", "0"]) == 2
    assert "--parallel" in capsys.readouterr().err


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill-9", "ctrl-c"])
def test_killed_batch_resumes_exactly_once(tmp_path: Path, sig: signal.Signals) -> None:
    prompts = [f"Write one sentence about the number {i}." for i in range(14)]
    src = tmp_path / "in.txt"
    src.write_text("\n".join(prompts) + "\n")
    out = tmp_path / "out.jsonl"
    cmd = ["batch", str(src), "-o", str(out), "--max-tokens", "24", "--parallel", "2"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "tui_infer", *cmd],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(os.environ),
    )
    db = Path(os.environ["TUI_INFER_DATA_DIR"]) / "store.sqlite3"
    done = 0
    deadline = time.monotonic() + 300  # a loaded machine can be very slow
    while time.monotonic() < deadline and proc.poll() is None:
        if db.exists():
            try:
                conn = sqlite3.connect(db, timeout=5)
                done = conn.execute("SELECT COUNT(*) FROM predictions").fetchone()[0]
                conn.close()
            except sqlite3.OperationalError:
                done = 0  # the schema is being created
        if done >= 3:
            break
        time.sleep(0.02)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    else:  # Ctrl+C: the run keeps what finished, says so, exits 130
        assert proc.returncode == 130, err
        assert b"interrupted; run 1 keeps what finished" in err
        assert b"Traceback" not in err
    assert 3 <= done < len(prompts), done
    assert not out.exists()

    r = tui_infer(*cmd)
    assert r.returncode == 0, r.stderr
    assert "resuming run 1" in r.stderr
    got = rows(out)
    assert [g["id"] for g in got] == [f"line-{i + 1}" for i in range(len(prompts))]
    assert all(g["output"] and g["run"] == 1 for g in got)
    decoded_now = int(r.stdout.split("(")[1].split(" decoded now")[0])
    assert decoded_now <= len(prompts) - done
    # the store, not the CLI's count: one run, each id once, the output file's text its own
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 1
    stored = dict(conn.execute("SELECT item_id, output FROM predictions WHERE run_id = 1"))
    per_id = conn.execute("SELECT item_id, COUNT(*) FROM predictions GROUP BY item_id").fetchall()
    conn.close()
    assert sorted(per_id) == sorted((f"line-{i + 1}", 1) for i in range(len(prompts)))
    assert {g["id"]: g["output"] for g in got} == stored

    # a second rerun decodes nothing and writes the same file
    before = out.read_text()
    r = tui_infer(*cmd)
    assert r.returncode == 0 and "(0 decoded now" in r.stdout
    assert out.read_text() == before
