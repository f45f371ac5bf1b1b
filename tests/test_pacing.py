"""How often the screen redraws while a reply streams: slower when llama.cpp's threads take
every core (each millisecond the UI draws is then taken from generation)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.pilot import make_app, ready, send, wait_for
from tui_infer.core.inference.pacing import SHARED, SPARE, planned_offload, stream_pacing
from tui_infer.core.models.gguf import read_header


def test_every_core_busy_on_the_cpu_is_shared() -> None:
    assert stream_pacing(threads=2, logical_cpus=2) is SHARED
    assert stream_pacing(threads=8, logical_cpus=4) is SHARED
    assert stream_pacing(threads=2, logical_cpus=None) is SHARED  # unknown: assume busy
    # part of the model on a GPU: the CPU threads still compute the rest
    assert stream_pacing(2, 2, offloaded_layers=10, total_layers=30) is SHARED


def test_a_spare_core_or_a_whole_gpu_offload_is_spare() -> None:
    assert stream_pacing(threads=4, logical_cpus=8) is SPARE
    assert stream_pacing(2, 2, offloaded_layers=30, total_layers=30) is SPARE
    assert SHARED.text_s > SPARE.text_s and SHARED.figures_s > SPARE.figures_s
    assert "every core" in SHARED.describe() and "text 2/s" in SHARED.describe()


def test_doctor_judges_gpu_layers_against_the_models_layers(model_path: Path) -> None:
    # doctor has no model loaded: it reads n_layer from the default model's header, and
    # llama.cpp offloads n_layer + 1 layers (the output layer too) for "all"
    n = read_header(model_path).n_layer
    assert n > 0
    assert planned_offload(-1, n, gpu=True) == (n + 1, n + 1)
    assert stream_pacing(2, 2, *planned_offload(-1, n, True)) is SPARE
    assert stream_pacing(2, 2, *planned_offload(n + 1, n, True)) is SPARE
    assert stream_pacing(2, 2, *planned_offload(99, n, True)) is SPARE
    # n layers leave the output layer on the CPU: its threads still take every core
    assert planned_offload(n, n, True) == (n, n + 1)
    assert stream_pacing(2, 2, *planned_offload(n, n, True)) is SHARED
    assert stream_pacing(2, 2, *planned_offload(5, n, True)) is SHARED
    # a CPU-only build (or no GPU device) offloads nothing, whatever the setting
    assert planned_offload(-1, n, gpu=False) == (0, n + 1)
    assert planned_offload(0, n, gpu=True) == (0, n + 1)
    # no model to read n_layer from: -1 is whole, a count cannot be judged whole
    assert stream_pacing(2, 2, *planned_offload(-1, 0, True)) is SPARE
    assert stream_pacing(2, 2, *planned_offload(40, 0, True)) is SHARED


def test_the_redraws_setting_sets_the_text_pace(tmp_path: Path) -> None:
    assert stream_pacing(2, 2, redraws=10).text_s == pytest.approx(0.1)
    assert stream_pacing(2, 2, redraws=10).figures_s == SHARED.figures_s  # figures as chosen
    assert stream_pacing(2, 2, redraws=0) is SHARED
    config = tmp_path / "config.toml"
    config.write_text("redraws = 5\n")
    env = {"TUI_INFER_CONFIG": str(config)}
    r = subprocess.run(
        [sys.executable, "-m", "tui_infer", "doctor"],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
    )
    assert r.returncode == 0 and "text 5/s" in " ".join(r.stdout.split())
    bad = subprocess.run(
        [sys.executable, "-m", "tui_infer", "doctor"],
        capture_output=True,
        text=True,
        env={**os.environ, **env, "TUI_INFER_REDRAWS": "500"},
        timeout=120,
    )
    assert bad.returncode == 2
    assert "'redraws' must be 0 (chosen) or up to 60 a second, got 500" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


@pytest.mark.anyio
async def test_the_chat_paces_by_the_loaded_model(tmp_path: Path, model_path: Path) -> None:
    """The real CPU build on this machine: the backend's threads against its CPUs."""
    app = make_app(tmp_path, model_path, max_tokens=40)
    async with app.run_test(size=(100, 30)) as pilot:
        await ready(pilot)
        backend = app.chat.engine.backend
        expected = stream_pacing(
            backend.threads, os.cpu_count(), backend.offloaded_layers, backend.total_layers
        )
        assert app.chat.pacing is expected
        assert app.chat.stats_panel.figures_s == expected.figures_s
        # the reply still streams and ends whole, in the Markdown
        await send(pilot, "Count to twenty.")
        await wait_for(pilot, lambda: not app.chat.generating)
        reply = app.chat.conversation.replies[-1]
        await wait_for(pilot, lambda: reply.text.strip() != "" and reply.body.source == reply.text)
