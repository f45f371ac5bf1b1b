"""Verify before publish: each flag from a crafted prediction in a real store, the user's
checks, the publish gate (store publish, batch --publish, the batch screen) and the
resample check on the real model."""

from __future__ import annotations

import json
import shlex
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import DataTable, Label

from tests.support.pilot import make_app, wait_for
from tui_infer.cli import main
from tui_infer.core.inference.types import Message
from tui_infer.core.static import verify
from tui_infer.core.static.store import PredictionStore

SHA = "a" * 64
GREEDY = {"temperature": 0.0, "repeat_penalty": 1.1, "max_tokens": 32}

# ten ordinary answers, mean logprobs spread around -0.5
ORDINARY = [
    {"id": f"ok{k}", "output": f"An ordinary answer number {k}.", "lp": -0.5 + 0.02 * (k - 5)}
    for k in range(10)
]
CRAFTED = [
    {"id": "cut", "output": "The answer begins and then", "finish": "length", "lp": -0.5},
    {"id": "blank", "output": "  \n ", "tokens": 0, "lp": None},
    {"id": "loop", "output": "Sure. " + "I am a robot. " * 8, "lp": -0.45},
    {"id": "ctrl", "output": "Hello\x07 world\x1b[0m", "lp": -0.5},
    {"id": "utf8", "output": "caf\ufffd au lait", "lp": -0.52},
    {"id": "unsure", "output": "Perhaps purple, or seven.", "lp": -3.0},
    {"id": "toolong", "output": "", "finish": "overflow", "tokens": 0, "lp": None},
]
EXPECTED = {
    "cut": ["length"],
    "blank": ["empty"],
    "loop": ["repetition"],
    "ctrl": ["control"],
    "utf8": ["bad_utf8"],
    "unsure": ["low_logprob"],
}


def store_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "store.sqlite3"  # the data dir conftest points at


def crafted_run(store: PredictionStore, rows: list[dict[str, Any]], tag: str = "") -> int:
    """A finished run holding exactly these predictions (greedy, no real model)."""
    run = store.create_run(
        signature=f"crafted{tag}{len(store.runs())}",
        model_sha256=SHA,
        model_path="/nowhere/model.gguf",
        template_sha256="t" * 64,
        params={**GREEDY, "run_seed": 0, "system": None},
        n_items=len(rows),
    )
    for i, r in enumerate(rows):
        add_row(store, run, i, r)
    store.set_run_status(run, "done")
    return run


def add_row(store: PredictionStore, run: int, position: int, r: dict[str, Any]) -> None:
    lp = r.get("lp", -0.5)
    store.add_prediction(
        run,
        item_id=r["id"],
        position=position,
        key=f"key-{run}-{r['id']}",
        model_sha256=SHA,
        messages=[Message("user", r.get("prompt", f"question {r['id']}"))],
        output=r["output"],
        finish_reason=r.get("finish", "stop"),
        prompt_tokens=7,
        generated_tokens=r.get("tokens", 12),
        ttft_s=0.01,
        total_s=0.1,
        seed=None,
        params=GREEDY,
        mean_logprob=lp,
        min_logprob=None if lp is None else lp - 1.0,
    )


def flagged(outcome_flags: dict[str, list[tuple[str, str]]]) -> dict[str, list[str]]:
    return {item: sorted(c for c, _ in fl) for item, fl in outcome_flags.items()}


# ----- the built-in checks ---------------------------------------------------------------


def test_each_builtin_flag_from_a_crafted_prediction(tmp_path: Path) -> None:
    with PredictionStore(store_path(tmp_path)) as store:
        run = crafted_run(store, ORDINARY + CRAFTED)
        outcome = verify.verify_run(store, run, verify.Checks())
        assert outcome.checked == 16  # the overflow row is never served, never checked
        got = {i: sorted(f.check for f in fl) for i, fl in outcome.by_item().items()}
        assert got == EXPECTED
        details = {f.item_id: f.detail for f in outcome.flags}
        assert "cut off at 12 tokens" in details["cut"]
        assert "'I am a robot. '" in details["loop"] or "robot" in details["loop"]
        assert "U+0007" in details["ctrl"] and "U+001B" in details["ctrl"]
        assert "-3.000" in details["unsure"] and "median" in details["unsure"]
        # the report is kept with the run, in the store's tables
        report = store.verification(run)
        assert report is not None and flagged(report.flags) == EXPECTED
        assert report.checks["length"] is True and "resample" not in report.checks
    with sqlite3.connect(store_path(tmp_path)) as conn:
        n = conn.execute("SELECT COUNT(*) FROM verify_flags WHERE run_id = ?", (run,)).fetchone()
    assert n[0] == 6


def test_repetition_and_logprob_outliers_are_judged_with_care() -> None:
    assert verify.repetition("The cat sat on the mat. It was a sunny day.") is None
    assert verify.repetition("ha" * 10) is None  # 20 characters: too short to call a loop
    assert verify.repetition("Intro. " + "ab" * 30) is not None
    assert "repeats of" in (verify.repetition("Answer: " + "1, 2, 3, " * 10 + "1, 2") or "")
    # a run of fewer than 8 predictions with logprobs has no distribution to stand out of
    with PredictionStore(Path(":memory:")) as store:
        run = crafted_run(store, [ORDINARY[0], ORDINARY[1], {"id": "u", "output": "x", "lp": -9}])
        flags, note = verify.logprob_outliers(store.predictions(run))
        assert flags == [] and note is not None and "not judged" in note
        # all alike (MAD 0): a real outlier still stands out, the alike ones do not
        same = [{"id": f"s{k}", "output": "same", "lp": -0.4} for k in range(9)]
        run = crafted_run(store, [*same, {"id": "odd", "output": "odd", "lp": -2.0}])
        flags, _ = verify.logprob_outliers(store.predictions(run))
        assert [f.item_id for f in flags] == ["odd"]


# ----- the user's checks -----------------------------------------------------------------

ANSWERS = [
    {"id": "good", "output": '{"answer": 4}'},
    {"id": "word", "output": '{"answer": "four"}'},
    {"id": "prose", "output": "It is four."},
    {"id": "label", "output": "ANSWER: 4"},
]
SCHEMA = {
    "type": "object",
    "required": ["answer"],
    "properties": {"answer": {"type": "integer"}},
}
CHECKER = """
import json, sys
for line in sys.stdin:
    row = json.loads(line)
    if row["id"] == "label":
        continue  # no answer for it
    if row["id"] == "word":
        print(json.dumps({"id": "word", "pass": False, "reason": "spelled out"}))
    elif "4" in row["output"]:
        print(row["id"], "pass")
    else:
        print(row["id"], "fail", "no digit four")
"""


def test_user_checks_regex_json_schema_and_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with PredictionStore(store_path(tmp_path)) as store:
        run = crafted_run(store, ANSWERS)
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SCHEMA))
    script = tmp_path / "check.py"
    script.write_text(CHECKER)
    cmd = f"{shlex.quote(sys.executable)} {shlex.quote(str(script))}"
    argv = ["store", "verify", str(run), "--check-regex", r"\d"]
    argv += ["--check-json-schema", str(schema), "--check-cmd", cmd]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "4 predictions checked, 3 flagged" in out
    with PredictionStore(store_path(tmp_path)) as store:
        report = store.verification(run)
    assert report is not None
    assert flagged(report.flags) == {
        "word": ["check_cmd", "json_schema", "regex"],
        "prose": ["check_cmd", "json_schema", "regex"],
        "label": ["check_cmd", "json_schema"],
    }
    detail = {(i, c): d for i, fl in report.flags.items() for c, d in fl}
    assert "spelled out" in detail[("word", "check_cmd")]
    assert "no digit four" in detail[("prose", "check_cmd")]
    assert "no answer" in detail[("label", "check_cmd")]
    assert "not JSON" in detail[("prose", "json_schema")]
    assert "is not of type 'integer'" in detail[("word", "json_schema")]
    assert report.checks["regex"] == r"\d" and report.checks["check_cmd"] == cmd


@pytest.mark.parametrize(
    ("extra", "said"),
    [
        (["--check-regex", "("], "not a valid regular expression"),
        (["--check-json-schema", "missing.json"], "cannot read it"),
        (["--check-json-schema", "{bad}"], "not a valid JSON schema"),
        (["--check-json-schema", "notjson"], "not JSON"),
        (["--check-cmd", "exit 3"], "exited 3"),
        (["--check-cmd", "echo whatever"], "answered line 1"),
        (["--resample", "0%"], "--resample '0%'"),
        (["--resample", "lots"], "give a share of the run"),
    ],
)
def test_a_check_that_cannot_run_is_a_usage_error_and_keeps_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], said: str
) -> None:
    with PredictionStore(store_path(tmp_path)) as store:
        run = crafted_run(store, ANSWERS)
    assert main(["store", "verify", str(run), "--check-regex", "four"]) == 0
    capsys.readouterr()
    files = {"{bad}": '{"type": 5}', "notjson": "{not json"}
    for i, arg in enumerate(extra):
        if arg in files:
            (tmp_path / arg).write_text(files[arg])
        if arg in (*files, "missing.json"):
            extra[i] = str(tmp_path / arg)
    assert main(["store", "verify", str(run), *extra]) == 2
    err = capsys.readouterr().err
    assert said in err and err.count("\n") == 1
    with PredictionStore(store_path(tmp_path)) as store:
        report = store.verification(run)
    assert report is not None and report.checks.get("regex") == "four"  # the last one stands


# ----- the publish gate ------------------------------------------------------------------


def test_publish_is_refused_until_the_flagged_rows_are_rejected(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with PredictionStore(store_path(tmp_path)) as store:
        run = crafted_run(store, ORDINARY + CRAFTED)
    # never verified: publishing verifies it first, and refuses
    assert main(["store", "publish", str(run)]) == 1
    err = capsys.readouterr().err
    assert f"run {run} not published: 6 flagged prediction(s) not reviewed" in err
    for check in ("length 1", "empty 1", "repetition 1", "control 1", "bad_utf8 1"):
        assert check in err
    assert f"'tui-infer store show {run} --flagged'" in err
    assert f"'tui-infer store reject {run} cut blank loop ctrl utf8 unsure'" in err
    assert f"'tui-infer store publish {run} --force'" in err
    with PredictionStore(store_path(tmp_path)) as store:
        assert {p.status for p in store.predictions(run)} == {"staged"}

    # the review command lists exactly the flagged ones, with why
    assert main(["store", "show", str(run), "--flagged"]) == 0
    out = capsys.readouterr().out
    assert "cut  [staged, length" in out and "length: cut off at 12 tokens" in out
    assert "ok3" not in out

    assert main(["store", "reject", str(run), "cut", "blank", "loop", "ctrl", "utf8"]) == 0
    assert main(["store", "publish", str(run)]) == 1
    err = capsys.readouterr().err
    assert "1 flagged prediction(s) not reviewed (low_logprob 1): unsure" in err
    assert main(["store", "reject", str(run), "unsure"]) == 0
    assert main(["store", "publish", str(run)]) == 0
    assert f"run {run}: published 10 predictions" in capsys.readouterr().out
    with PredictionStore(store_path(tmp_path)) as store:
        statuses = {p.item_id: p.status for p in store.predictions(run)}
    assert [i for i, s in statuses.items() if s == "published"] == [f"ok{k}" for k in range(10)]


def test_force_publishes_and_says_what_was_flagged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with PredictionStore(store_path(tmp_path)) as store:
        run = crafted_run(store, ORDINARY + CRAFTED[:2])
    assert main(["store", "publish", str(run), "--force"]) == 0
    out = capsys.readouterr().out
    assert "published 12 predictions (2 flagged and not reviewed, published with --force" in out


def test_predictions_added_after_a_verify_are_checked_before_publishing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with PredictionStore(store_path(tmp_path)) as store:
        run = crafted_run(store, ORDINARY)
        assert not verify.verify_run(store, run, verify.Checks(regex="answer")).flags
        add_row(store, run, 10, {"id": "late", "output": "x" * 60})  # a resumed run's row
    assert main(["store", "publish", str(run)]) == 1
    assert "(repetition 1): late" in capsys.readouterr().err
    with PredictionStore(store_path(tmp_path)) as store:
        report = store.verification(run)
    assert report is not None and report.checks["regex"] == "answer"  # the user's check kept


def test_show_and_export_carry_flags_and_logprobs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with PredictionStore(store_path(tmp_path)) as store:
        run = crafted_run(store, ORDINARY[:3] + CRAFTED[:1])
    assert main(["store", "show", str(run), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["flags"] for r in rows][-1] == [{"check": "length", "detail": "cut off at 12 tokens"}]
    assert rows[0]["flags"] == [] and rows[0]["mean_logprob"] == pytest.approx(-0.6)
    assert rows[0]["min_logprob"] == pytest.approx(-1.6)
    out = tmp_path / "export.jsonl"
    assert main(["store", "export", str(run), "-o", str(out)]) == 0
    exported = [json.loads(line) for line in out.read_text().splitlines()]
    assert exported[-1]["flags"][0]["check"] == "length"
    # reading commands do not write a report
    with PredictionStore(store_path(tmp_path)) as store:
        assert store.verification(run) is None


# ----- the batch screen ------------------------------------------------------------------


@pytest.mark.anyio
async def test_batch_screen_shows_flags_filters_and_asks_before_publishing(
    tmp_path: Path,
) -> None:
    with PredictionStore(store_path(tmp_path)) as store:
        run = crafted_run(store, ORDINARY[:9] + CRAFTED[:3])
    app = make_app(tmp_path, None)
    async with app.run_test(size=(140, 40)) as pilot:
        await pilot.press("f9")
        await wait_for(pilot, lambda: type(app.screen).__name__ == "BatchScreen")
        await pilot.pause(0.2)
        screen: Any = app.screen
        preds = screen.query_one("#predictions", DataTable)
        assert preds.row_count == 12
        flags_col = {str(preds.get_row_at(i)[1]): preds.get_row_at(i)[7] for i in range(12)}
        assert flags_col["cut"] == "length" and flags_col["loop"] == "repetition"
        assert flags_col["ok0"] == ""
        title = str(screen.query_one("#predictions-title", Label).render())
        assert "3 flagged" in title

        preds.focus()
        await pilot.press("f")  # the flagged rows
        await pilot.pause(0.1)
        assert sorted(str(preds.get_row_at(i)[1]) for i in range(preds.row_count)) == [
            "blank",
            "cut",
            "loop",
        ]
        await pilot.press("f")  # one check's rows: the first in verify's order
        await pilot.pause(0.1)
        assert [str(preds.get_row_at(i)[1]) for i in range(preds.row_count)] == ["cut"]

        await pilot.press("p")  # flagged, not rejected: it asks
        await pilot.pause(0.2)
        await pilot.click("#no")
        await pilot.pause(0.2)
        assert app.store.run(run).status == "done"

        await pilot.press("x")  # reject the highlighted row (cut)
        await pilot.pause(0.2)
        assert {p.item_id for p in app.store.predictions(run) if p.status == "rejected"} == {"cut"}
        await pilot.press("p")
        await pilot.pause(0.2)
        await pilot.click("#yes")  # publish anyway
        await pilot.pause(0.3)
        assert app.store.run(run).status == "published"
        statuses = {p.item_id: p.status for p in app.store.predictions(run)}
        assert statuses["cut"] == "rejected" and statuses["loop"] == "published"


# ----- on the real model -----------------------------------------------------------------

PROMPTS = ["What is the capital of France?", "Name a colour.", "Say hello."]


def batch(tmp_path: Path, name: str, *extra: str) -> int:
    src = tmp_path / f"{name}.txt"
    src.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / f"{name}.out.jsonl"
    argv = ["batch", str(src), "-o", str(out), "--max-tokens", "10", "--parallel", "3"]
    code = main([*argv, "--ctx", "1536", *extra])
    assert code in (0, 1)
    return int(json.loads(out.read_text().splitlines()[0])["run"])


@pytest.mark.slow
@pytest.mark.timeout(900)  # two batches and two verifications on a shared 2-core machine
def test_resample_on_the_real_model_flags_an_answer_that_differs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    greedy = batch(tmp_path, "greedy")
    capsys.readouterr()
    with PredictionStore(store_path(tmp_path)) as store:
        preds = store.predictions(greedy)
        assert all(p.mean_logprob is not None and p.mean_logprob < 0 for p in preds)
        assert all(p.min_logprob is not None and p.min_logprob <= p.mean_logprob for p in preds)
    with sqlite3.connect(store_path(tmp_path)) as conn:  # a stored answer tampered with
        conn.execute(
            "UPDATE predictions SET output = output || ' (edited)' "
            "WHERE run_id = ? AND item_id = 'line-2'",
            (greedy,),
        )
    assert main(["store", "verify", str(greedy), "--resample", "100%"]) == 0
    out = capsys.readouterr().out
    assert "3 recomputed alone, 1 differ" in out
    assert "line-2  resample: recomputed alone, the answer differs" in out
    with PredictionStore(store_path(tmp_path)) as store:
        report = store.verification(greedy)
    assert report is not None and report.checks["resample"] == 1.0
    assert [i for i, fl in report.flags.items() if any(c == "resample" for c, _ in fl)] == [
        "line-2"
    ]

    # a sampled run is recomputed with each item's own seed: the same answers
    sampled = batch(tmp_path, "sampled", "--temperature", "0.9", "--seed", "11")
    capsys.readouterr()
    assert main(["store", "verify", str(sampled), "--resample", "50%"]) == 0
    assert "2 recomputed alone, 0 differ" in capsys.readouterr().out


@pytest.mark.slow
def test_batch_publish_runs_the_same_gate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = batch(tmp_path, "cut", "--max-tokens", "4", "--publish")  # every answer cut off
    captured = capsys.readouterr()
    assert "staged, not published" in captured.out
    assert f"run {run} not published: 3 flagged prediction(s) not reviewed (length 3)" in (
        captured.err
    )
    with PredictionStore(store_path(tmp_path)) as store:
        assert store.run(run).status == "done"
    # the same command with --force publishes (nothing decoded again)
    again = batch(tmp_path, "cut", "--max-tokens", "4", "--publish", "--force")
    assert again == run
    assert "published 3 predictions" in capsys.readouterr().out
