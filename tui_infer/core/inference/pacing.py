"""How often the TUI redraws while a reply streams.

llama.cpp's threads meet at a barrier after every step of the graph, so when they take
every core, CPU the UI uses stalls all of them: on a 2-core machine each millisecond the
screen takes is about a millisecond of generation lost (measured: BENCHMARKS.md). With a
core to spare, or the whole model on a GPU, the screen can redraw often at no such cost.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Pacing:
    text_s: float  # streamed text reaches the screen at most this often
    figures_s: float  # the live figures are redrawn at most this often
    shares_cores: bool  # the UI competes with llama.cpp for the CPU

    def describe(self) -> str:
        why = "llama.cpp uses every core" if self.shares_cores else "a core to spare"
        return f"text {1 / self.text_s:.0f}/s, figures {1 / self.figures_s:.0f}/s ({why})"


SPARE = Pacing(text_s=0.1, figures_s=0.25, shares_cores=False)
# Measured on 2 cores (benchmarks/tui_stream.py, 8 runs each): text 4 times a second gave
# 0.93 of headless generation, twice a second 0.97.
SHARED = Pacing(text_s=0.5, figures_s=1.0, shares_cores=True)


def stream_pacing(
    threads: int,
    logical_cpus: int | None,
    offloaded_layers: int = 0,
    total_layers: int = 0,
    redraws: float = 0,
) -> Pacing:
    """SHARED when llama.cpp's threads take every logical CPU and the model is not wholly
    on a GPU; SPARE otherwise. `redraws` (text updates a second, the `redraws` setting)
    overrides the text's pace when it is above 0."""
    on_gpu = total_layers > 0 and offloaded_layers >= total_layers
    spare = (logical_cpus or 1) - threads
    chosen = SPARE if on_gpu or spare >= 1 else SHARED
    if redraws > 0:
        return replace(chosen, text_s=1 / redraws)
    return chosen


def planned_offload(gpu_layers: int, n_layer: int, gpu: bool) -> tuple[int, int]:
    """(layers a load would offload, offloadable layers) before any model is loaded (doctor):
    llama.cpp counts n_layer + 1 offloadable layers (the output layer too), -1 means all of
    them, and a CPU-only build or no GPU device offloads none. n_layer 0 (no model to read
    it from): a positive count cannot be judged whole, so it counts as partial."""
    total = n_layer + 1 if n_layer > 0 else 0
    if not gpu or gpu_layers == 0:
        return 0, max(total, 1)
    if gpu_layers < 0:
        return (total, total) if total else (1, 1)
    if not total:
        return 0, 1
    return min(gpu_layers, total), total
