"""Every listing or report takes --json after its subcommand: one JSON document, its
fields those the README's "JSON output" table names, its values those the table output
shows; --quiet prints only the identifiers."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.support.hub_server import HubServer
from tests.test_hub import REAL, REAL_FILE, served, server  # noqa: F401  (fixtures)
from tui_infer.cli import main
from tui_infer.core.units import human_size

README = Path(__file__).resolve().parent.parent / "README.md"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def as_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)  # one document: the whole of stdout


def table(out: str) -> list[dict[str, str]]:
    """A table printed by the headless commands (tables.py) as rows of its columns."""
    lines = [line for line in out.splitlines() if line.strip()]
    header = re.split(r"\s{2,}", lines[0].strip())
    return [
        dict(zip(header, re.split(r"\s{2,}", line.strip()), strict=False)) for line in lines[1:]
    ]


def pairs(out: str) -> dict[str, str]:
    """A name/value listing (doctor, models info): the first column is the name."""
    rows: dict[str, str] = {}
    for line in out.splitlines():
        parts = re.split(r"\s{2,}", line.strip(), maxsplit=1)
        if len(parts) == 2 and not line.startswith(" "):
            rows.setdefault(parts[0], parts[1])
    return rows


def readme_fields() -> dict[str, set[str]]:
    """The README's table: `command` | the document | its fields, each in backquotes."""
    text = README.read_text(encoding="utf-8")
    section = text.split("### JSON output", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    out: dict[str, set[str]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`"):
            fields = re.sub(r"\([^)]*\)", "", cells[2])  # what is in brackets explains
            out[cells[0].strip("`")] = set(re.findall(r"`([a-z_0-9]+)`", fields))
            like = re.match(r"those of `([a-z ]+)`", fields)
            if like:
                out[cells[0].strip("`")] |= out[like.group(1)]
    return out


def documented(command: str, doc: dict[str, Any]) -> None:
    fields = readme_fields()
    assert command in fields, f"the README's JSON table has no row for '{command}'"
    assert set(doc) == fields[command], f"{command}: fields differ from the README's table"


# ----- models --------------------------------------------------------------------------------


def test_models_list_and_info(capsys: pytest.CaptureFixture[str], model_path: Path) -> None:
    listed = as_json(capsys, "models", "list")
    shown = table(run(capsys, "models", "list")[1])
    assert [m["name"] for m in listed] == [r["name"] for r in shown]
    (entry,) = [m for m in listed if m["path"] == str(model_path)]
    row = next(r for r in shown if r["name"] == entry["name"])
    assert row["quant"] == entry["quantization"]
    assert row["size"] == human_size(entry["size_bytes"]) and entry["size_bytes"] > 0
    assert row["context"] == str(entry["n_ctx_train"])
    assert row["source"].startswith(entry["source"]) and row["status"] == entry["status"]
    assert entry["ref"] is None  # a bundled model is no hub model
    documented("models list", entry)
    code, out, _ = run(capsys, "models", "list", "--quiet")
    assert code == 0 and out.splitlines() == [m["name"] for m in listed]

    info = as_json(capsys, "models", "info", entry["name"])
    text = pairs(run(capsys, "models", "info", entry["name"])[1])
    assert info["sha256"] == hashlib.sha256(model_path.read_bytes()).hexdigest() == text["sha256"]
    assert text["name"] == info["name"] == entry["name"]
    # the GGUF's own name is a detail of models info, and only there
    assert text["general.name"] == info["general_name"] and info["general_name"]
    assert info["general_name"] != info["name"]
    fit_row = next(v for k, v in text.items() if k.startswith("fit ("))
    # the same estimate (what RAM is available moves between two calls: not compared)
    assert fit_row.split(" (")[0] == info["fit"]["summary"].split(" (")[0]
    assert fit_row.startswith(info["fit"]["verdict"] + ": needs")
    assert info["chat_template"] and info["n_layer"] == 30
    documented("models info", info)


def test_models_search_and_files(
    capsys: pytest.CaptureFixture[str],
    server: HubServer,  # noqa: F811
) -> None:
    found = as_json(capsys, "models", "search", "gguf")
    shown = table(run(capsys, "models", "search", "gguf")[1])
    assert [r["repo"] for r in found] == [r["repository"].removesuffix(" (gated)") for r in shown]
    assert found[0]["repo"] == REAL and shown[0]["downloads"] == f"{found[0]['downloads']:,}"
    assert any(r["gated"] for r in found)
    documented("models search", found[0])
    code, out, _ = run(capsys, "models", "search", "gguf", "-q")
    assert code == 0 and out.splitlines() == [r["repo"] for r in found]

    files = as_json(capsys, "models", "files", "acme/Tiny-GGUF")
    shown = table(run(capsys, "models", "files", "acme/Tiny-GGUF")[1])
    assert [(f["file"], f["quant"]) for f in files] == [(r["file"], r["quant"]) for r in shown]
    assert [f["ref"] for f in files] == ["acme/Tiny-GGUF:F16", "acme/Tiny-GGUF:Q8_0"]
    documented("models files", files[0])
    (real,) = as_json(capsys, "models", "files", REAL)
    assert real["file"] == REAL_FILE and real["parts"][0]["sha256"]


# ----- store ---------------------------------------------------------------------------------


def _store_with_a_run_and_misses(data_dir: Path, model_path: Path) -> None:
    from tui_infer.core.inference.types import Message, SamplingParams
    from tui_infer.core.request_path import LoadedModel, lookup, prepare
    from tui_infer.core.static.keys import normalize_params
    from tui_infer.core.static.store import PredictionStore

    greedy = SamplingParams(temperature=0, max_tokens=32)
    with PredictionStore.in_data_dir(data_dir) as store:
        sha = store.model_sha256(model_path)
        run_id = store.create_run(
            signature="s",
            model_sha256=sha,
            model_path=str(model_path),
            template_sha256="t",
            params=normalize_params(greedy),
            n_items=2,
        )
        for pos, prompt in enumerate(("one?", "two?")):
            store.add_prediction(
                run_id,
                item_id=prompt,
                position=pos,
                key=f"k{pos}",
                model_sha256=sha,
                messages=[Message("user", prompt)],
                output="yes",
                finish_reason="stop",
                prompt_tokens=5,
                generated_tokens=3,
                ttft_s=0.1,
                total_s=0.2,
                seed=None,
            )
        store.set_run_status(run_id, "done")
        loaded = LoadedModel(model_path, "{{ messages }}")
        for text in ("Why?", "Why?", "How?"):
            assert lookup(store, prepare(store, loaded, [Message("user", text)], greedy)) is None
        store.flush_counters()


def test_store_runs_stats_misses_drift(
    capsys: pytest.CaptureFixture[str], isolated_env: Path, model_path: Path
) -> None:
    # before any store: empty documents, and no file is created
    assert as_json(capsys, "store", "runs") == []
    empty = as_json(capsys, "store", "stats")
    assert empty["store"] is None and empty["models"] == []
    assert not (isolated_env / "data").exists()

    _store_with_a_run_and_misses(isolated_env / "data", model_path)
    runs = as_json(capsys, "store", "runs")
    (row,) = table(run(capsys, "store", "runs")[1])
    (r,) = runs
    assert row["run"] == str(r["run"]) and row["status"] == r["status"] == "done"
    assert row["done"] == f"{r['done']}/{r['items']}" == "2/2"
    assert row["tokens"] == str(r["generated_tokens"]) == "6"
    assert row["model"] == f"{r['model']} ({r['model_sha256'][:12]})"
    documented("store runs", r)
    assert run(capsys, "store", "runs", "--quiet")[1].split() == [str(r["run"])]

    stats = as_json(capsys, "store", "stats")
    text = run(capsys, "store", "stats")[1]
    (m,) = stats["models"]
    assert f"model {m['model_sha256'][:12]}: {m['published']} published" in text
    assert f"{m['hits']} hits, {m['misses']} misses" in text and m["misses"] == 3
    documented("store stats", stats)
    documented("store stats models", m)

    misses = as_json(capsys, "store", "misses")
    out_file = isolated_env / "next.jsonl"
    assert run(capsys, "store", "misses", "-o", str(out_file))[0] == 0
    assert misses == [json.loads(line) for line in out_file.read_text().splitlines()]
    assert [(x["messages"][0]["content"], x["misses"]) for x in misses] == [
        ("Why?", 2),
        ("How?", 1),
    ]

    drift = as_json(capsys, "store", "drift")
    text = run(capsys, "store", "drift")[1]
    assert f"{drift['hits']} hits, {drift['misses']} misses" in text
    documented("store drift", drift)


def test_store_misses_needs_a_file_or_json(
    capsys: pytest.CaptureFixture[str], isolated_env: Path
) -> None:
    code, out, err = run(capsys, "store", "misses")
    assert code == 2 and out == ""
    assert "needs -o FILE" in err and "--json" in err and len(err.splitlines()) == 1


def test_json_and_quiet_together_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["store", "runs", "--json", "--quiet"])
    assert exc.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


# ----- chats, bench, doctor, ps, presets -----------------------------------------------------


def test_chats_list(capsys: pytest.CaptureFixture[str], isolated_env: Path) -> None:
    assert as_json(capsys, "chats", "list") == []
    from tui_infer.core.chat.history import History

    with History.in_data_dir(isolated_env / "data") as h:
        a = h.create("Rivers", model_name="SmolLM2-135M", created_at=1.0)
        h.add_message(a, "user", "Which river?", created_at=2.0)
        h.create("Bread", model_name="other", created_at=5.0)
    chats = as_json(capsys, "chats", "list")
    shown = table(run(capsys, "chats", "list")[1])
    assert [c["id"] for c in chats] == [int(r["id"]) for r in shown]
    assert [(c["title"], c["model"], str(c["messages"])) for c in chats] == [
        (r["title"], r["model"], r["messages"]) for r in shown
    ]
    documented("chats list", chats[0])
    assert run(capsys, "chats", "list", "-q")[1].split() == [str(c["id"]) for c in chats]


def test_bench_history_and_compare(capsys: pytest.CaptureFixture[str], isolated_env: Path) -> None:
    from tui_infer.core.bench.history import BenchHistory
    from tui_infer.core.bench.measure import BenchConfig, BenchResult

    cfg = BenchConfig(2, -1, 512, 512, "f16", True)
    (isolated_env / "data").mkdir()
    history = BenchHistory(isolated_env / "data" / "bench.sqlite3")
    env = {"backend": "CPU AVX2 · 2 threads", "cpu": "x"}
    ids = []
    for samples in ((100.0, 101.0, 99.0), (150.0, 151.0, 149.0)):
        run_id = history.start_run(Path("/m/model.gguf"), "f" * 64, "Q8_0", env)
        history.add_result(run_id, BenchResult("tg128", "tg", 128, 0, cfg, samples, 400.0))
        history.add_result(run_id, BenchResult("pp512", "pp", 512, 0, cfg, (900.0,)))
        ids.append(run_id)
    history.close()

    runs = as_json(capsys, "bench", "history")
    shown = table(run(capsys, "bench", "history")[1])
    assert [str(r["run"]) for r in runs] == [r["run"] for r in shown] == [str(i) for i in ids]
    assert shown[0]["model"] == f"{runs[0]['model']} {runs[0]['quantization']}"
    assert runs[0]["results"][0]["mean_tps"] == 100.0
    documented("bench history", runs[0])
    assert run(capsys, "bench", "history", "--quiet")[1].split() == [str(i) for i in ids]
    assert as_json(capsys, "bench", "history") == json.loads(
        run(capsys, "bench", "--json", "history")[1]
    )

    cmp = as_json(capsys, "bench", "compare", str(ids[0]), str(ids[1]))
    text = run(capsys, "bench", "compare", str(ids[0]), str(ids[1]))[1]
    rows = table(text.split("\n", 1)[1])  # under its title
    assert [t["verdict"] for t in cmp["tests"]] == [r["verdict"] for r in rows]
    tg = cmp["tests"][0]
    assert tg["verdict"] == "faster" and rows[0]["ratio"] == f"{tg['ratio']:.3f}"
    assert cmp["tests"][1]["noise_tps"] is None  # one sample: no noise estimate, and no Infinity
    documented("bench compare", cmp)
    documented("bench compare tests", tg)


def test_doctor(capsys: pytest.CaptureFixture[str], model_path: Path) -> None:
    doc = as_json(capsys, "doctor", "--no-network")
    text = pairs(run(capsys, "doctor", "--no-network")[1])
    assert text["data dir"] == doc["data_dir"] and text["model"] == doc["model"] == str(model_path)
    assert text["tui-infer"] == doc["tui_infer"] and text["hub"] == doc["hub"]
    assert text["threads"].startswith(f"{doc['threads']} ")
    assert doc["packages"]["llama-cpp-python"] and doc["model_problem"] is None
    documented("doctor", doc)


def test_ps_and_presets(capsys: pytest.CaptureFixture[str], isolated_env: Path) -> None:
    assert as_json(capsys, "ps") == []
    assert run(capsys, "ps", "--quiet")[1] == ""
    assert as_json(capsys, "presets") == []
    config = isolated_env / "config" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text(
        '[presets.precise]\ntemperature = 0.2\nsystem = "Be brief."\n\n'
        "[presets.wild]\ntemperature = 1.3\ntop_k = 100\n"
    )
    presets = as_json(capsys, "presets")
    shown = table(run(capsys, "presets")[1])
    assert [p["name"] for p in presets] == [r["name"] for r in shown] == ["precise", "wild"]
    assert presets[0]["values"] == {"temperature": 0.2, "system": "Be brief."}
    assert shown[0]["values"] == 'temperature = 0.2, system = "Be brief."'
    documented("presets", presets[0])
    assert run(capsys, "presets", "-q")[1].split() == ["precise", "wild"]


def test_run_json_names_the_model_as_the_library_does(
    capsys: pytest.CaptureFixture[str], model_path: Path
) -> None:
    doc = as_json(capsys, "run", "--temperature", "0", "--max-tokens", "2", "Hi")
    assert doc["model"] == model_path.stem  # the library's name, not general.name
    assert doc["model_path"] == str(model_path)
    assert "Smollm2" not in json.dumps(doc)  # the GGUF's general.name is nowhere in it
