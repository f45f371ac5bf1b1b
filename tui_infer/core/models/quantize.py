"""Quantize a GGUF with llama.cpp's own quantizer (llama_model_quantize, through the bindings).

The quantizer runs in a child process (this module run with ``python -m``): a C call that
takes minutes cannot be interrupted inside this process, and a child can be killed at once
(Ctrl+C, or the cancel Event) without leaving a thread behind. The child routes llama.cpp's
log to its stdout; the quantizer logs one line per tensor (``[  12/ 272] blk.1.attn_k.weight
...``), which is the progress we show. It writes ``<dest>.part`` and the parent renames it
when llama.cpp says it succeeded: an interrupted or failed run leaves no file behind.

The result goes to the library's models folder as ``<stem>.<TYPE>.gguf`` (the source's own
quantization tag taken off the stem) and enters the library as a file it owns, with the
source's path, sha256 and type recorded in its metadata (``quantized_from``). A source that
is already quantized is requantized (llama.cpp's allow_requantize): allowed, and said, as
the result then carries both losses.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tui_infer.core.errors import ModelFileError, RunTimeFailure, TuiInferError
from tui_infer.core.models.gguf import FILE_TYPES, read_header

# llama_ftype ids by name: what `models quantize` accepts. IQ1/IQ2 types and Q2_K_S need an
# importance matrix (llama.cpp refuses them without one; tui-infer does not make one), and
# MXFP4_MOE is for mixture-of-experts weights only.
NEEDS_IMATRIX = ("IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "Q2_K_S")
QUANT_TYPES: dict[str, int] = {
    name: ftype
    for ftype, name in sorted(FILE_TYPES.items())
    if name not in NEEDS_IMATRIX and name not in ("MXFP4_MOE",)
}
UNQUANTIZED = ("F32", "F16", "BF16")

_PROGRESS_RE = re.compile(r"^\[\s*(\d+)\s*/\s*(\d+)\]\s*(\S+)")
_TAG_RE = re.compile(
    r"[-._](?:F32|F16|BF16|Q\d(?:_[0-9A-Z]+)*|IQ\d(?:_[0-9A-Z]+)*|TQ\d_\d)$", re.IGNORECASE
)
DONE_MARK = "\x00tui-infer-quantize-rc="

ProgressFn = Callable[[int, int, str], None]  # tensors done, tensors in all, tensor name


class QuantizeError(TuiInferError):
    pass


@dataclass(frozen=True)
class QuantizeResult:
    path: Path
    type: str
    source: Path
    source_type: str
    source_sha256: str
    sha256: str
    requantized: bool
    size: int
    source_size: int
    seconds: float
    library_name: str


def parse_type(text: str) -> str:
    """The quant type's canonical name, or a one-line error listing the valid ones."""
    name = text.strip().upper()
    if name in QUANT_TYPES:
        return name
    if name in NEEDS_IMATRIX:
        raise QuantizeError(
            f"{name} needs an importance matrix, which tui-infer does not make; pick one of "
            f"{', '.join(QUANT_TYPES)}"
        )
    raise QuantizeError(f"unknown quant type {text!r}; valid types: {', '.join(QUANT_TYPES)}")


def output_name(source: Path, qtype: str) -> str:
    """``<stem>.<TYPE>.gguf``: model.Q4_1.gguf -> model.Q8_0.gguf (the tag taken off)."""
    from tui_infer.core.models.library import model_stem

    stem = model_stem(source)
    bare = _TAG_RE.sub("", stem) or stem
    return f"{bare}.{qtype}.gguf"


def run_quantizer(
    source: Path,
    dest: Path,
    qtype: str,
    *,
    threads: int = 0,
    allow_requantize: bool = False,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
) -> None:
    """llama_model_quantize(source -> dest) in a child process; dest appears only on success.

    Raises QuantizeError with llama.cpp's reason on failure, KeyboardInterrupt (re-raised)
    or QuantizeError("cancelled") when stopped; no partial file is left in either case.
    """
    part = dest.with_name(dest.name + ".part")
    cmd = [
        sys.executable,
        "-m",
        "tui_infer.core.models.quantize",
        str(source),
        str(part),
        str(QUANT_TYPES[qtype]),
        str(threads),
        "1" if allow_requantize else "0",
    ]
    lines: list[str] = []
    rc: int | None = None
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        encoding="utf-8",
        errors="replace",
        bufsize=1,
    )
    stopped = threading.Event()

    def watch() -> None:
        while proc.poll() is None:
            if cancel is not None and cancel.wait(0.1):
                stopped.set()
                proc.kill()
                return
            if cancel is None:
                time.sleep(0.1)

    watcher = threading.Thread(target=watch, name="quantize-watch", daemon=True)
    watcher.start()
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.rstrip("\n")
            if line.startswith(DONE_MARK):
                rc = int(line[len(DONE_MARK) :])
                continue
            lines.append(line)
            if len(lines) > 400:
                del lines[:200]
            m = _PROGRESS_RE.match(line.strip())
            if m and progress is not None:
                progress(int(m.group(1)), int(m.group(2)), m.group(3))
        proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        part.unlink(missing_ok=True)
        raise
    if stopped.is_set():
        part.unlink(missing_ok=True)
        raise QuantizeError("quantization cancelled; nothing was written")
    if proc.returncode != 0 or rc != 0:
        part.unlink(missing_ok=True)
        if proc.returncode is not None and proc.returncode < 0:
            why = f"the quantizer was killed by signal {-proc.returncode}"
        else:
            why = _last_error(lines) or (lines[-1] if lines else "no reason given")
        raise RunTimeFailure(f"{source.name}: llama.cpp could not quantize it to {qtype}: {why}")
    os.replace(part, dest)


def _last_error(lines: list[str]) -> str | None:
    """llama.cpp's reason, without its function prefix (as llama_log.last_error reads it;
    the models room sits below the inference room and does not import it)."""
    for line in reversed(lines):
        low = line.lower()
        if "error" in low or "failed" in low or "invalid" in low:
            return re.sub(r"^\w+:\s*", "", line.strip())
    return None


@dataclass(frozen=True)
class QuantizePlan:
    source: Path
    source_type: str
    type: str
    dest: Path
    requantize: bool


def plan(source: Path, qtype: str, models_dir: Path, force: bool = False) -> QuantizePlan:
    """Check everything before any work: the source's header, the type, the destination."""
    header = read_header(source)  # a clear ModelFileError for a missing or broken file
    from tui_infer.core.models.library import SPLIT_RE

    if SPLIT_RE.match(source.name):
        raise ModelFileError(
            f"{source}: a split GGUF; quantize a single-file model (merge it with llama.cpp's "
            "gguf-split --merge first)"
        )
    name = parse_type(qtype)
    source_type = header.quantization
    if source_type.upper() == name:
        raise QuantizeError(
            f"{source.name} is already {name}; pick another type (valid: {', '.join(QUANT_TYPES)})"
        )
    dest = models_dir / output_name(source, name)
    if dest.exists() and not force:
        raise QuantizeError(
            f"{dest} already exists; remove it with 'tui-infer models rm {dest}' or pass --force"
        )
    if dest.resolve() == source.resolve():
        raise QuantizeError(f"{dest} is the source itself; nothing was written")
    return QuantizePlan(source, source_type, name, dest, source_type.upper() not in UNQUANTIZED)


def quantize_into_library(
    source: Path,
    qtype: str,
    data_dir: Path,
    *,
    threads: int = 0,
    force: bool = False,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    hash_progress: Callable[[int, int], None] | None = None,
) -> QuantizeResult:
    """Quantize `source` to `qtype` into data_dir/models and add the result to the library."""
    from tui_infer.core.models.library import ModelLibrary, read_model

    source = Path(source).expanduser().absolute()
    lib = ModelLibrary(data_dir)
    try:
        p = plan(source, qtype, lib.models_dir, force)
        source_sha = lib.digests.sha256(source, hash_progress)
        lib.models_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        run_quantizer(
            source,
            p.dest,
            p.type,
            threads=threads,
            allow_requantize=p.requantize,
            progress=progress,
            cancel=cancel,
        )
        seconds = time.perf_counter() - t0
        parts, metadata = read_model(p.dest)
        sha = lib.digests.sha256(p.dest)
        metadata["quantized_from"] = {
            "path": str(source),
            "sha256": source_sha,
            "type": p.source_type,
            "requantized": p.requantize,
        }
        # A file the library wrote, as a copy is: `models rm` deletes it (after asking).
        # The existing entry of an overwritten file (--force) is replaced.
        from tui_infer.core.db import transaction

        with transaction(lib.conn):
            lib.conn.execute("DELETE FROM models WHERE real_path = ?", (os.path.realpath(p.dest),))
        entry = lib._upsert(parts, metadata, "copied", hashes={str(p.dest): sha})
        return QuantizeResult(
            path=p.dest,
            type=p.type,
            source=source,
            source_type=p.source_type,
            source_sha256=source_sha,
            sha256=sha,
            requantized=p.requantize,
            size=p.dest.stat().st_size,
            source_size=source.stat().st_size,
            seconds=seconds,
            library_name=entry.name,
        )
    finally:
        lib.close()


# ----- the child process -------------------------------------------------------------------


def _child(argv: list[str]) -> int:
    """python -m tui_infer.core.models.quantize SOURCE PART FTYPE THREADS ALLOW_REQUANTIZE"""
    import ctypes
    import signal

    # Ctrl+C reaches the whole foreground group: die at once (the parent removes the part)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    source, part, ftype, threads, allow = argv
    import llama_cpp

    out = sys.stdout

    @llama_cpp.llama_log_callback
    def _log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        out.write(text.decode("utf-8", errors="replace"))
        if text.endswith(b"\n"):
            out.flush()

    llama_cpp.llama_log_set(_log, ctypes.c_void_p(0))
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(ftype)
    params.nthread = int(threads)
    params.allow_requantize = allow == "1"
    rc = llama_cpp.llama_model_quantize(source.encode(), part.encode(), ctypes.byref(params))
    out.write(f"\n{DONE_MARK}{int(rc)}\n")
    out.flush()
    return 0 if rc == 0 else 1


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
