"""Property tests (hypothesis) for the readers of untrusted input: the GGUF header reader,
the config loader and the store key's normalization."""

from __future__ import annotations

import json
import subprocess
import sys
import tracemalloc
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.support.gguf_craft import write_gguf
from tui_infer.core.config import load_settings
from tui_infer.core.errors import ConfigError, ModelFileError
from tui_infer.core.inference.types import Message, SamplingParams
from tui_infer.core.models.gguf import parse_header_bytes
from tui_infer.core.static.keys import normalize_messages, normalized_messages, request_key

MEMORY_BOUND = 64 << 20  # a header parse never allocates more, whatever the bytes claim
FIXTURE = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]


_HEADER: list[tuple[bytes, int]] = []


def real_header() -> tuple[bytes, int]:
    """The default model's first 4 MiB (its whole header and tensor table) and its size.
    (Not a fixture: hypothesis would print all of it with every failing example.)"""
    if not _HEADER:
        from tui_infer.core.models.bundled import find_bundled_models

        path = find_bundled_models()[0].path
        with path.open("rb") as f:
            _HEADER.append((f.read(4 << 20), path.stat().st_size))
    return _HEADER[0]


def parse_bounded(buf: bytes, size: int) -> None:
    tracemalloc.start()
    try:
        try:
            parse_header_bytes(buf, "m.gguf", size)
        except ModelFileError as exc:
            assert "\n" not in str(exc) and str(exc).startswith("m.gguf")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < MEMORY_BOUND


@settings(max_examples=120, deadline=None, suppress_health_check=FIXTURE)
@given(cut=st.integers(min_value=0, max_value=4 << 20))
def test_truncated_headers_fail_cleanly(cut: int) -> None:
    buf, _ = real_header()
    parse_bounded(buf[:cut], cut)


@settings(max_examples=200, deadline=None, suppress_health_check=FIXTURE)
@given(flips=st.lists(st.tuples(st.integers(0, 200_000), st.integers(0, 7)), max_size=6))
@example(flips=[(8, 7), (15, 7)])  # the tensor count's high bits: a count of ~2**63
@example(flips=[(16, 6), (23, 7)])  # the metadata count's high bits
@example(flips=[(93, 0)])  # a key's length: its name swallows binary bytes (a newline)
def test_bit_flips_never_crash_or_allocate_past_a_bound(flips: list[tuple[int, int]]) -> None:
    buf, size = real_header()
    data = bytearray(buf)
    for pos, bit in flips:
        data[pos] ^= 1 << bit
    parse_bounded(bytes(data), size)


@settings(max_examples=60, deadline=None, suppress_health_check=FIXTURE)
@given(
    n_layer=st.integers(0, 2**64 - 1),
    n_ctx=st.integers(0, 2**64 - 1),
    name_len=st.integers(0, 2**40),
)
def test_absurd_metadata_values_are_refused_or_read(
    tmp_path: Path, n_layer: int, n_ctx: int, name_len: int
) -> None:
    path = tmp_path / "absurd.gguf"
    write_gguf(
        path,
        {
            "general.architecture": "llama",
            "llama.block_count": n_layer,
            "llama.context_length": n_ctx,
            "general.name": "x" * min(name_len, 64),
        },
    )
    parse_bounded(path.read_bytes(), path.stat().st_size)


toml_values = st.one_of(
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.booleans(),
    st.text(max_size=20),
    st.lists(st.integers(), max_size=3),
)
KEYS = [
    "ctx",
    "threads",
    "temperature",
    "top_p",
    "top_k",
    "max_tokens",
    "kv_type",
    "serve",
    "model",
    "system",
    "gpu_layers",
    "overflow",
    "redraws",
    "nonsense",
]


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if value != value:
            return "nan"
        if abs(value) == float("inf"):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    return json.dumps(value)


@settings(max_examples=200, deadline=None, suppress_health_check=FIXTURE)
@given(entries=st.dictionaries(st.sampled_from(KEYS), toml_values, max_size=5))
def test_config_values_load_or_give_one_line(tmp_path: Path, entries: dict[str, object]) -> None:
    config = tmp_path / "config.toml"
    config.write_text("".join(f"{k} = {_toml(v)}\n" for k, v in entries.items()))
    try:
        load_settings(config, environ={})
    except ConfigError as exc:
        assert "\n" not in str(exc) and str(config) in str(exc)


@settings(max_examples=200, deadline=None, suppress_health_check=FIXTURE)
@given(text=st.binary(max_size=200))
def test_config_bytes_load_or_give_one_line(tmp_path: Path, text: bytes) -> None:
    config = tmp_path / "config.toml"
    config.write_bytes(text)
    try:
        load_settings(config, environ={})
    except ConfigError as exc:
        assert "\n" not in str(exc)


messages = st.lists(
    st.builds(Message, st.sampled_from(["system", "user", " User", "ASSISTANT"]), st.text()),
    min_size=1,
    max_size=4,
)


@settings(max_examples=300, deadline=None)
@given(msgs=messages)
def test_normalization_is_idempotent(msgs: list[Message]) -> None:
    once = normalized_messages(msgs)
    assert normalized_messages(once) == once
    assert normalize_messages(once) == normalize_messages(msgs)


def test_keys_are_the_same_in_another_process() -> None:
    """A key is a function of its inputs alone: no hash seed, no dict order, no locale."""
    cases = [
        [Message("user", "Hé ✓ \r\n two  spaces ")],
        [Message("system", "Be brief."), Message("user", "x" * 1000)],
        [Message("User", "\t"), Message("assistant", "\U0001f600"), Message("user", "q")],
    ]
    params = {"temperature": 0.7, "top_p": 0.95, "seed": None, "max_tokens": 8}
    here = [request_key("a" * 64, "{{ t }}", params, c) for c in cases]
    code = (
        "import json, sys\n"
        "from tui_infer.core.inference.types import Message\n"
        "from tui_infer.core.static.keys import request_key\n"
        "cases, params = json.load(sys.stdin)\n"
        "print(json.dumps([request_key('a' * 64, '{{ t }}', params,"
        " [Message(r, c) for r, c in case]) for case in cases]))\n"
    )
    payload = json.dumps([[[m.role, m.content] for m in c] for c in cases] + [], ensure_ascii=True)
    out = subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps([json.loads(payload), params]),
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345", "LC_ALL": "C", "PATH": "/usr/bin:/bin"},
    )
    assert json.loads(out.stdout) == here
    assert request_key("a" * 64, "{{ t }}", {"max_tokens": 8, "temperature": 0.0}, cases[0]) == (
        request_key("a" * 64, "{{ t }}", {"temperature": 0.0, "max_tokens": 8}, cases[0])
    )
    _ = SamplingParams
