"""One request path: `batch`, `run` and the chat key the same request the same way.

With a per-model template override and a system prompt in the config, a prompt batched
and published is answered from the store by `run` and found by the chat's lookup; without
the override the same prompt is not precomputed (so the batch really rendered through it).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tui_infer.cli import main
from tui_infer.core import request_path as rp
from tui_infer.core.config import load_settings
from tui_infer.core.inference.engine import Engine
from tui_infer.core.inference.types import Message, SamplingParams
from tui_infer.core.paths import default_paths
from tui_infer.core.static.store import PredictionStore

# ChatML in capitals: not the model's template, and the model answers otherwise through
# it, so a batch that ignored it would be caught.
OVERRIDE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\\n{{ m['content'] | upper }}"
    "<|im_end|>\\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\\n{% endif %}"
)
PROMPT = "Name a primary colour."


def write_config(path: Path, model: Path, override: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = 'system = "Answer in one word."\n'
    if override:
        text += f'\n[templates]\n"{model.name}" = "{OVERRIDE}"\n'
    path.write_text(text, encoding="utf-8")


def test_batch_run_and_chat_share_one_key(
    tmp_path: Path, model_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = default_paths()
    write_config(paths.config_file, model_path, override=True)
    settings = load_settings(paths.config_file).with_overrides(
        model=str(model_path), temperature=0.0, max_tokens=8
    )
    target = rp.resolve_target(settings, paths)
    assert target.override is not None and target.template_source != target.header.chat_template

    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"id": "q", "prompt": PROMPT}) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    argv = ["batch", str(src), "-o", str(out), "-m", str(model_path), "--max-tokens", "8"]
    assert main([*argv, "--publish", "--force"]) == 0
    [row] = [json.loads(line) for line in out.read_text().splitlines()]
    capsys.readouterr()

    # `run`: the same prompt, parameters, system prompt and override: from the store
    ask = ["run", "-m", str(model_path), "--temperature", "0", "--max-tokens", "8", "--json"]
    assert main([*ask, "--serve", "store", PROMPT]) == 0
    served = json.loads(capsys.readouterr().out)
    assert served["source"] == "store" and served["reply"] == row["output"]
    # other parameters: not served, and the miss says why in one line
    hot = ["run", "-m", str(model_path), "--temperature", "0.7", "--max-tokens", "8"]
    assert main([*hot, "--serve", "store", PROMPT]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "temperature 0.0" in err and "this request asks" in err and "temperature 0.7" in err
    # ... and live, through the override, it gives the very text the batch stored
    assert main([*ask, "--serve", "live", PROMPT]) == 0
    assert json.loads(capsys.readouterr().out)["reply"] == row["output"]

    # the chat keys what its engine renders: the engine loaded with the override
    engine = Engine.load(model_path, target.load_options(settings))
    try:
        assert engine.template.source == target.template_source
        with PredictionStore.in_data_dir(paths.data_dir) as store:
            request = rp.prepare(
                store,
                rp.LoadedModel(model_path, engine.template.source),
                [Message("system", "Answer in one word."), Message("user", PROMPT)],
                SamplingParams.from_settings(settings),
            )
            assert request.key == row["key"]
            hit = rp.lookup(store, request, record_miss=False)
            assert hit is not None and hit.output == row["output"]
    finally:
        engine.close()

    # without the override, the same prompt was never precomputed, and the model
    # answers it otherwise
    write_config(paths.config_file, model_path, override=False)
    assert main([*ask, "--serve", "store", PROMPT]) == 3
    assert "not precomputed" in capsys.readouterr().err
    assert main([*ask, "--serve", "live", PROMPT]) == 0
    assert json.loads(capsys.readouterr().out)["reply"] != row["output"]


def test_prepare_applies_the_system_prompt_once_and_normalizes(
    model_path: Path, tmp_path: Path
) -> None:
    target = rp.LoadedModel(model_path, "{{ messages }}")
    greedy = SamplingParams(temperature=0, max_tokens=8)
    with PredictionStore(tmp_path / "s.sqlite3") as store:
        a = rp.prepare(store, target, [Message("user", "  Hi \r\n")], greedy, system="Be brief.")
        b = rp.prepare(
            store, target, [Message("system", "Be brief."), Message("User", "Hi")], greedy
        )
        assert a.messages == (Message("system", "Be brief."), Message("user", "Hi"))
        assert a.key == b.key
        # the messages' own system prompt wins over the configured one
        c = rp.prepare(
            store,
            target,
            [Message("system", "Other."), Message("user", "Hi")],
            greedy,
            system="Be brief.",
        )
        assert c.messages[0].content == "Other." and c.key != a.key
        # another max_tokens is another request
        d = rp.prepare(store, target, [Message("user", "Hi")], greedy, "Be brief.", max_tokens=9)
        assert d.sampling.max_tokens == 9 and d.key != a.key


def test_run_reads_the_config_and_the_header_once(
    model_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """One settings read, one template lookup, one header parse per command."""
    from tui_infer.core import config as config_mod
    from tui_infer.core.models import gguf

    headers: list[int] = []
    real_parse = gguf._parse

    def counted_parse(*a: object) -> object:
        headers.append(1)
        return real_parse(*a)  # type: ignore[arg-type]

    monkeypatch.setattr(gguf, "_parse", counted_parse)
    paths = default_paths()
    write_config(paths.config_file, model_path, override=True)
    parses: list[int] = []
    real = config_mod.tomllib.loads

    def counted(text: str) -> dict:
        parses.append(1)
        return real(text)

    monkeypatch.setattr(config_mod.tomllib, "loads", counted)
    argv = ["run", "-m", str(model_path), "--serve", "live", "--max-tokens", "2", PROMPT]
    assert main(argv) == 0
    capsys.readouterr()
    assert len(parses) == 1
    assert len(headers) == 1
