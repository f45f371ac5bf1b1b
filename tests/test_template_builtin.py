"""Models without a chat template get llama.cpp's built-in template for their architecture,
said once; --template NAME|FILE chooses another; a model that looks like a base model is
offered raw completion (run --raw), keyed apart. Two architectures: SmolLM2 (llama, with
its own template) and Gemma 3 270M (gemma3, none in the file, a base model)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tui_infer.cli import main
from tui_infer.core.inference.engine import Engine
from tui_infer.core.inference.template import (
    CHATML_FALLBACK,
    ChatTemplate,
    TemplateError,
    fallback_name,
    fallback_source,
    header_note,
    looks_like_base,
    resolve_template_arg,
)
from tui_infer.core.inference.types import LoadOptions, Message, SamplingParams
from tui_infer.core.request_path import prepare, prepare_raw, target_for
from tui_infer.core.static.store import PredictionStore


def test_the_builtin_for_each_architecture() -> None:
    assert fallback_name("gemma3", 262144) == "gemma"
    assert fallback_name("llama", 128256) == "llama3"
    assert fallback_name("llama", 49152) == "chatml"
    assert fallback_name("phi3", 32064) == "phi3"
    assert fallback_name("qwen2", 151936) == "chatml"
    assert fallback_name("who-knows", None) == "chatml"
    # ChatML stays the Jinja text every key of such a model was made with
    assert fallback_source("qwen2", 151936) == CHATML_FALLBACK
    assert fallback_source("gemma3", 262144) == "gemma"


def test_what_looks_like_a_base_model() -> None:
    assert looks_like_base(["gemma-3-270m-q4_k_m", "Gemma 3 270m"], has_template=False)
    for name in ("gemma-3-270m-it-Q4_K_M", "Qwen2.5-0.5B-Instruct", "phi-chat", "x_sft"):
        assert not looks_like_base([name], has_template=False), name
    assert not looks_like_base(["llama-base"], has_template=True)
    assert looks_like_base(["Titan-7B"], has_template=False)  # 'it' only as a word


def test_builtin_templates_render_as_llama_cpp_does() -> None:
    t = ChatTemplate(None, "<bos>", "<eos>", architecture="gemma3", n_vocab=262144, add_bos=True)
    assert t.builtin and t.source == "gemma" and t.warning and "'gemma'" in t.warning
    text = t.render([Message("system", "Be brief."), Message("user", "Hi")])
    assert text == "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n"
    llama3 = ChatTemplate("llama3", "<|begin_of_text|>", "<|eot_id|>", add_bos=True)
    assert llama3.warning is None  # chosen, not a fallback
    assert llama3.render([Message("user", "Hi")]).startswith(
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
    )


def test_template_arg_is_a_name_or_a_file(tmp_path: Path) -> None:
    assert resolve_template_arg("phi3") == "phi3"
    f = tmp_path / "t.jinja"
    f.write_text("{{ messages[0]['content'] }}")
    assert resolve_template_arg(str(f)) == "{{ messages[0]['content'] }}"
    with pytest.raises(TemplateError, match="not one of llama.cpp's built-in templates"):
        resolve_template_arg("gemmma")
    (tmp_path / "empty.jinja").write_text(" \n")
    with pytest.raises(TemplateError, match="empty"):
        resolve_template_arg(str(tmp_path / "empty.jinja"))


def test_a_bad_template_flag_is_one_line_exit_2(
    model_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "-m", str(model_path), "--template", "nosuch", "hi"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--template nosuch" in err[0]
    assert main(["run", "-m", str(model_path), "--raw", "--template", "gemma", "hi"]) == 2
    assert "drop --template" in capsys.readouterr().err


def test_smollm_keeps_its_own_template_and_template_changes_the_key(
    model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = target_for(model_path, None)
    assert header_note(target.header) is None  # the file has its own template
    with PredictionStore(tmp_path / "s.sqlite3") as store:
        own = prepare(store, target, [Message("user", "hi")], SamplingParams())
        from dataclasses import replace

        phi3 = replace(target, override="phi3")
        other = prepare(store, phi3, [Message("user", "hi")], SamplingParams())
        raw = prepare_raw(store, target, "hi", SamplingParams())
    assert len({own.key, other.key, raw.key}) == 3 and raw.template_sha == "raw-prompt"
    argv = ["run", "-m", str(model_path), "--serve", "live", "--temperature", "0"]
    assert main([*argv, "--max-tokens", "6", "--template", "chatml", "--json", "Hi"]) == 0
    got = capsys.readouterr()
    assert json.loads(got.out)["stats"]["generated_tokens"] >= 1
    assert "no chat template" not in got.err


@pytest.fixture(scope="module")
def gemma(gemma_path: Path):  # type: ignore[no-untyped-def]
    eng = Engine.load(gemma_path, LoadOptions(ctx=512, threads=2))
    yield eng
    eng.close()


def test_gemma_without_a_template_gets_the_gemma_builtin(gemma: Engine, gemma_path: Path) -> None:
    assert gemma.info.chat_template is None
    assert gemma.template.source == "gemma"
    warning = gemma.template.warning or ""
    assert "built-in 'gemma'" in warning and "gemma3" in warning and "base model" in warning
    prompt = gemma.render([Message("user", "What is the capital of France?")])
    assert prompt.startswith("<bos><start_of_turn>user\nWhat is the capital of France?")
    tokens = gemma.tokenize(prompt)
    assert tokens[0] == 2  # BOS, once
    assert tokens.count(2) == 1
    # the key's template part is the same built-in the engine renders with
    assert target_for(gemma_path, None).template_source == "gemma"
    note = header_note(target_for(gemma_path, None).header) or ""
    assert note == warning


def test_gemma_chat_and_raw_through_run(
    gemma_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["run", "-m", str(gemma_path), "--ctx", "512", "--temperature", "0"]
    assert main([*argv, "--max-tokens", "12", "The capital of France is"]) == 0
    got = capsys.readouterr()
    notes = [x for x in got.err.splitlines() if "no chat template" in x]
    assert len(notes) == 1 and "built-in 'gemma'" in notes[0] and "--raw" in notes[0]
    # raw completion: the text continues the prompt, no template, no note about one
    assert main([*argv, "--max-tokens", "8", "--raw", "--json", "The capital of France is"]) == 0
    got = capsys.readouterr()
    doc = json.loads(got.out)
    assert doc["raw"] is True and doc["stats"]["generated_tokens"] >= 1
    # the prompt as written (BOS and 5 tokens), not a rendered chat turn
    assert doc["stats"]["prompt_tokens"] <= 8 and "<start_of_turn>" not in doc["reply"]
    assert "no chat template" not in got.err
    # --raw is keyed as a raw prompt: a store-only run misses and says so
    assert main([*argv, "--raw", "--serve", "store", "The capital of France is"]) == 3
    capsys.readouterr()
    # a structured reply works on the second architecture too
    schema = tmp_path / "s.json"
    city = {"city": {"enum": ["Paris", "Rome"]}}
    schema.write_text(json.dumps({"type": "object", "properties": city, "required": ["city"]}))
    assert main([*argv, "--max-tokens", "20", "--json-schema", str(schema), "Capital?"]) == 0
    assert json.loads(capsys.readouterr().out)["city"] in ("Paris", "Rome")
