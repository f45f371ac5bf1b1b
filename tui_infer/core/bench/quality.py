"""What a quantization costs, measured on the user's own text: `tui-infer bench quality`.

Every model (and every KV cache type, on the reference) reads the same tokens, in chunks of
`chunk` tokens, each chunk from an empty cache with BOS first as llama-perplexity does. At
every position the full row of logits is read (each batch token asks for its logits; the
rows are located through llama_get_logits_ith, as batched.py does) and turned into
log-probabilities. Against the reference's distribution P at the same position, a model's Q
gives:

- top-1 agreement: the share of positions where argmax Q is argmax P;
- KL divergence KL(P || Q) = sum_v P(v) (log P(v) - log Q(v)), in nats: mean, 99th
  percentile and max over positions;
- perplexity on the text itself: exp of the mean negative log-probability of the next token.

The reference's log-probabilities are kept in a temporary file (positions x vocabulary,
float32) so that models are loaded one at a time. Then, on the same context, speed the way
`tui-infer bench` defines it (pp: a prompt of text tokens evaluated at once; tg: tokens
decoded one at a time; the mean of a few repetitions), and memory: the file's size plus the
KV cache at `memory_ctx` tokens of the KV type.

All evaluations use flash attention (a quantized V cache needs it), so the reference and the
KV rows differ only by the cache type.
"""

from __future__ import annotations

import ctypes
import io
import math
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tui_infer.core.errors import ModelFileError, RunTimeFailure, TuiInferError
from tui_infer.core.inference import llama_log
from tui_infer.core.inference.decoding import create_context, load_model, tokenize
from tui_infer.core.inference.llama_thread import on_llama_thread
from tui_infer.core.inference.types import KV_TYPE_IDS, LoadOptions, ModelInfo, kv_bytes_per_token
from tui_infer.core.models.gguf import GgufHeader, read_header

SCHEMA = "tui-infer.bench-quality/1"
CHUNK = 512  # tokens per evaluated chunk (the context of each)
MAX_TOKENS = 4096  # text tokens evaluated at most
MIN_TOKENS = 16
PP_TOKENS = 128
TG_TOKENS = 32
SPEED_REPS = 3
ROWS_AT_ONCE = 64  # rows of the vocabulary-wide arithmetic done together (memory bound)
UNQUANTIZED = ("F32", "F16", "BF16")

# The built-in sample: a few paragraphs of plain prose, instructions and code, so that the
# figures are not those of one kind of text.
DEFAULT_TEXT = """\
The lighthouse stood at the end of a long spit of sand, and for most of the year the only \
visitors were the gulls. In winter the keeper climbed the hundred and twelve steps four times \
a night to wind the clockwork that turned the lens. He kept a log of every ship he saw, the \
direction of the wind, and the height of the waves breaking on the northern rocks.

To make a simple loaf of bread, mix five hundred grams of flour with ten grams of salt and \
seven grams of dried yeast. Add three hundred and fifty millilitres of warm water and knead \
the dough for ten minutes, until it is smooth and elastic. Leave it to rise in a warm place \
for an hour, shape it, let it rise again, then bake it at two hundred and twenty degrees for \
thirty minutes.

Memory bandwidth, not arithmetic, limits how fast a small computer generates text with a \
language model: each new token reads every weight once. Storing the weights in fewer bits \
therefore makes generation faster, but it also changes the model's predictions a little. \
How much they change depends on the method of quantization and on the text itself.

def fibonacci(n):
    \"\"\"Return the first n Fibonacci numbers.\"\"\"
    numbers = [0, 1]
    while len(numbers) < n:
        numbers.append(numbers[-1] + numbers[-2])
    return numbers[:n]

print(fibonacci(10))

Q: What is the capital of France?
A: The capital of France is Paris, which is also its largest city.
Q: How many days are there in a leap year?
A: A leap year has three hundred and sixty-six days.
"""


class QualityError(TuiInferError):
    pass


@dataclass(frozen=True)
class Subject:
    """One thing evaluated: a model file with a KV cache type."""

    path: Path
    kv_type: str = "f16"

    @property
    def label(self) -> str:
        return self.path.name if self.kv_type == "f16" else f"{self.path.name} kv={self.kv_type}"


@dataclass(frozen=True)
class QualityRow:
    label: str
    path: str
    model: str
    quantization: str
    kv_type: str
    bits_per_weight: float
    reference: bool
    positions: int  # positions scored
    agreement: float  # top-1 next-token agreement with the reference
    kl_mean: float  # nats
    kl_p99: float
    kl_max: float
    perplexity: float
    perplexity_ratio: float  # over the reference's
    pp_tps: float
    tg_tps: float
    model_bytes: int
    kv_bytes: int  # the KV cache at memory_ctx tokens
    memory_ctx: int

    @property
    def memory_bytes(self) -> int:
        return self.model_bytes + self.kv_bytes

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "path": self.path,
            "model": self.model,
            "quantization": self.quantization,
            "kv_type": self.kv_type,
            "bits_per_weight": round(self.bits_per_weight, 3),
            "reference": self.reference,
            "positions": self.positions,
            "agreement": self.agreement,
            "kl_divergence": {"mean": self.kl_mean, "p99": self.kl_p99, "max": self.kl_max},
            "perplexity": self.perplexity,
            "perplexity_ratio": self.perplexity_ratio,
            "speed": {"pp_tokens_per_s": self.pp_tps, "tg_tokens_per_s": self.tg_tps},
            "memory": {
                "model_bytes": self.model_bytes,
                "kv_bytes": self.kv_bytes,
                "kv_ctx": self.memory_ctx,
                "total_bytes": self.memory_bytes,
            },
        }


@dataclass(frozen=True)
class QualityReport:
    reference: str  # the reference row's label
    text_source: str  # "built-in sample" or the file's path
    text_tokens: int
    chunks: int
    chunk_tokens: int
    threads: int
    notes: tuple[str, ...]
    rows: tuple[QualityRow, ...] = field(default=())

    def as_dict(self) -> dict[str, Any]:
        """The stable JSON document (`bench quality --json`); SCHEMA names its shape."""
        return {
            "schema": SCHEMA,
            "reference": self.reference,
            "text": {
                "source": self.text_source,
                "tokens": self.text_tokens,
                "chunks": self.chunks,
                "chunk_tokens": self.chunk_tokens,
            },
            "settings": {"threads": self.threads, "flash_attn": True},
            "notes": list(self.notes),
            "results": [r.as_dict() for r in self.rows],
        }


def bits_per_weight(header: GgufHeader) -> float:
    """Bits per parameter of the whole file's tensor data."""
    n = header.parameter_count
    data = sum(t.n_bytes or 0 for t in header.tensors)
    return 8 * data / n if n else 0.0


def reference_notes(
    ref: GgufHeader, others: Sequence[GgufHeader], made_from_ref: Sequence[bool] = ()
) -> list[str]:
    """What the reader must know about the reference (the figures are relative to it)."""
    notes: list[str] = []
    ref_bpw = bits_per_weight(ref)
    if ref.quantization.upper() not in UNQUANTIZED:
        notes.append(
            f"the reference {ref.path.name} is itself {ref.quantization} "
            f"({ref_bpw:.2f} bits/weight): no higher-precision file was given, so the figures "
            "are the loss relative to the best file at hand, not to the original weights"
        )
    derived = list(made_from_ref) + [False] * (len(others) - len(made_from_ref))
    made: list[str] = []
    for h, from_ref in zip(others, derived, strict=True):
        bpw = bits_per_weight(h)
        if bpw <= ref_bpw + 0.01 or h.path == ref.path:
            continue
        if from_ref:
            made.append(h.path.name)
        else:
            notes.append(
                f"{h.path.name} ({h.quantization}, {bpw:.2f} bits/weight) has more bits per "
                f"weight than the reference ({ref_bpw:.2f}); unless it was made from it, "
                "it is the better reference: pass it first"
            )
    if made:
        notes.append(
            f"{', '.join(made)} {'was' if len(made) == 1 else 'were'} made from the reference: "
            "more bits cannot give back what the reference lost"
        )
    return notes


def read_text(path: Path | None) -> tuple[str, str]:
    """(text, where it came from): the file's text, or the built-in sample."""
    if path is None:
        return DEFAULT_TEXT, "built-in sample"
    try:
        raw = path.expanduser().read_bytes()
    except FileNotFoundError:
        raise QualityError(f"--prompts {path}: no such file; give a text file") from None
    except OSError as exc:
        raise QualityError(f"--prompts {path}: cannot read it ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise QualityError(f"--prompts {path}: not UTF-8 text; give a plain text file") from None
    if not text.strip():
        raise QualityError(f"--prompts {path}: the file is empty; give some text to evaluate on")
    return text, str(path)


def log_softmax_(rows: np.ndarray[Any, np.dtype[np.float32]]) -> None:
    """rows := log_softmax(rows), in place, float32."""
    top = rows.max(axis=1, keepdims=True)
    rows -= top
    lse = np.log(np.exp(rows).sum(axis=1, keepdims=True))
    rows -= lse


class _Evaluator:
    """One model and a one-sequence context of `chunk` cells, every token asking for logits."""

    def __init__(self, subject: Subject, chunk: int, threads: int, gpu_layers: int) -> None:
        import llama_cpp as lib

        if subject.kv_type not in KV_TYPE_IDS:
            raise QualityError(
                f"--kv-types: unknown KV cache type {subject.kv_type!r}; "
                f"valid: {', '.join(KV_TYPE_IDS)}"
            )
        self.lib: Any = lib
        self.header = read_header(subject.path)
        llama_log.install()
        mark = llama_log.mark()
        options = LoadOptions(
            ctx=chunk,
            threads=threads,
            gpu_layers=gpu_layers,
            batch=chunk,
            flash_attn=True,
            kv_type=subject.kv_type,
        )
        sink = io.StringIO()

        def build() -> tuple[Any, Any]:
            model = load_model(lib, self.header.path, options, sink)
            if not model:
                return None, None
            ctx = create_context(lib, model, options, chunk, 1, False, sink)
            if not ctx:
                lib.llama_model_free(model)
            return model, ctx

        self.model, self.ctx = on_llama_thread(build)
        if not self.model or not self.ctx:
            reason = llama_log.last_error(llama_log.lines_since(mark)) or "unknown reason"
            raise ModelFileError(f"{subject.path}: llama.cpp could not load it: {reason}")
        self.vocab = lib.llama_model_get_vocab(self.model)
        self.n_vocab = int(lib.llama_vocab_n_tokens(self.vocab))
        self.n_ctx = int(lib.llama_n_ctx(self.ctx))
        self.mem = lib.llama_get_memory(self.ctx)
        self.batch = lib.llama_batch_init(max(chunk, self.n_ctx), 0, 1)

    def close(self) -> None:
        lib = self.lib
        lib.llama_batch_free(self.batch)
        lib.llama_free(self.ctx)
        lib.llama_model_free(self.model)

    def tokens(self, text: str) -> list[int]:
        return tokenize(self.lib, self.vocab, text)

    @property
    def bos(self) -> int | None:
        if self.lib.llama_vocab_get_add_bos(self.vocab):
            return int(self.lib.llama_vocab_bos(self.vocab))
        return None

    def _decode(self, tokens: list[int], want: str) -> np.ndarray[Any, np.dtype[np.float32]]:
        """Evaluate `tokens` into an empty cache; want "all": every row of logits (a copy),
        "last": only the last one is computed (speed runs: an empty array back)."""
        lib, b = self.lib, self.batch
        n = len(tokens)
        nv = self.n_vocab

        def run() -> Any:
            lib.llama_memory_clear(self.mem, True)
            for i, tok in enumerate(tokens):
                b.token[i] = tok
                b.pos[i] = i
                b.n_seq_id[i] = 1
                b.seq_id[i][0] = 0
                b.logits[i] = 1 if want == "all" or i == n - 1 else 0
            b.n_tokens = n
            rc = int(lib.llama_decode(self.ctx, b))
            if rc != 0:
                return rc
            if want != "all":
                return np.empty((0, nv), dtype=np.float32)
            return self._rows(n)

        out = on_llama_thread(run)
        if isinstance(out, int):
            raise RunTimeFailure(f"llama_decode returned {out} on {n} tokens")
        return out

    def _rows(self, n: int) -> np.ndarray[Any, np.dtype[np.float32]]:
        """The n rows of logits in batch order, copied out of llama.cpp's buffer. Where each
        row lies is read from llama_get_logits_ith, not assumed."""
        lib, nv = self.lib, self.n_vocab

        def address(ptr: Any) -> int:
            return ctypes.cast(ptr, ctypes.c_void_p).value or 0

        base = address(lib.llama_get_logits(self.ctx))
        at = [(address(lib.llama_get_logits_ith(self.ctx, i)) - base) // (4 * nv) for i in range(n)]
        buf = np.ctypeslib.as_array(lib.llama_get_logits(self.ctx), shape=(max(at) + 1, nv))
        if at == list(range(n)):
            return np.array(buf[:n], dtype=np.float32, copy=True)
        return np.array(buf[at], dtype=np.float32, copy=True)

    def logprobs(self, tokens: list[int]) -> np.ndarray[Any, np.dtype[np.float32]]:
        rows = self._decode(tokens, "all")
        for lo in range(0, len(rows), ROWS_AT_ONCE):
            log_softmax_(rows[lo : lo + ROWS_AT_ONCE])
        return rows

    def speed(self, text_tokens: list[int], reps: int) -> tuple[float, float]:
        """(pp tokens/s, tg tokens/s): pp over up to PP_TOKENS text tokens at once, tg over
        TG_TOKENS decoded one at a time; the mean of `reps` after one warm-up each."""
        pool = (text_tokens * (1 + PP_TOKENS // max(1, len(text_tokens))))[: self.n_ctx - 1]
        pp_toks = pool[: min(PP_TOKENS, len(pool))]
        tg_toks = pool[: min(TG_TOKENS, len(pool))]
        lib, b = self.lib, self.batch

        def tg_once() -> float:
            lib.llama_memory_clear(self.mem, True)
            t0 = time.perf_counter()
            for i, tok in enumerate(tg_toks):
                b.token[0] = tok
                b.pos[0] = i
                b.n_seq_id[0] = 1
                b.seq_id[0][0] = 0
                b.logits[0] = 1
                b.n_tokens = 1
                if int(lib.llama_decode(self.ctx, b)) != 0:
                    raise RunTimeFailure("llama_decode failed while measuring tg")
            return len(tg_toks) / (time.perf_counter() - t0)

        pp: list[float] = []
        tg: list[float] = []
        for rep in range(reps + 1):
            t0 = time.perf_counter()
            self._decode(pp_toks, "last")
            rate = len(pp_toks) / (time.perf_counter() - t0)
            # the whole tg loop on the llama.cpp thread: no hand-off per token is timed
            tg_rate = on_llama_thread(tg_once)
            if rep:  # the first is the warm-up
                pp.append(rate)
                tg.append(tg_rate)
        return sum(pp) / len(pp), sum(tg) / len(tg)


ProgressFn = Callable[[str], None]


def evaluate(
    reference: Path,
    others: Sequence[Path],
    kv_types: Sequence[str] = ("f16", "q8_0", "q4_0"),
    *,
    text: str = DEFAULT_TEXT,
    text_source: str = "built-in sample",
    threads: int = 2,
    gpu_layers: int = -1,
    chunk: int = CHUNK,
    max_tokens: int = MAX_TOKENS,
    memory_ctx: int = 4096,
    speed_reps: int = SPEED_REPS,
    made_from_ref: Sequence[bool] = (),
    on_row: Callable[[QualityRow], None] | None = None,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
) -> QualityReport:
    """Evaluate every other model (kv f16) and every KV type (on the reference) against the
    reference (kv f16). Rows come through `on_row` as they finish, the reference's first."""
    for kv in kv_types:
        if kv not in KV_TYPE_IDS:
            raise QualityError(
                f"--kv-types: unknown KV cache type {kv!r}; valid: {', '.join(KV_TYPE_IDS)}"
            )
    if chunk < 2 * MIN_TOKENS:
        raise QualityError(f"the chunk must hold at least {2 * MIN_TOKENS} tokens, got {chunk}")
    ref_header = read_header(reference)  # clear errors before any loading
    headers = [read_header(p) for p in others]
    ref_vocab = _vocab_size(ref_header)
    for h in headers:
        nv = _vocab_size(h)
        if ref_vocab and nv and nv != ref_vocab:
            raise QualityError(
                f"{h.path.name} has a vocabulary of {nv} tokens, the reference {ref_vocab}: "
                "only models of one vocabulary can be compared token by token"
            )
    notes = reference_notes(ref_header, headers, made_from_ref)
    cancel = cancel or threading.Event()
    say = progress or (lambda _s: None)
    subjects = [Subject(reference)]
    subjects += [Subject(p) for p in others]
    subjects += [Subject(reference, kv) for kv in dict.fromkeys(kv_types) if kv != "f16"]

    say(f"{reference.name}: loading (the reference)")
    ev = _Evaluator(subjects[0], chunk, threads, gpu_layers)
    rows: list[QualityRow] = []
    with tempfile.TemporaryDirectory(prefix="tui-infer-quality-") as tmp:
        try:
            all_tokens = ev.tokens(text)
            if len(all_tokens) < MIN_TOKENS:
                raise QualityError(
                    f"the text has {len(all_tokens)} tokens; give at least {MIN_TOKENS} "
                    "(--prompts FILE)"
                )
            all_tokens = all_tokens[:max_tokens]
            chunks = _chunks(all_tokens, min(chunk, ev.n_ctx), ev.bos)
            positions = sum(len(c) - 1 for c in chunks)
            nv = ev.n_vocab
            ref_lp = np.lib.format.open_memmap(
                Path(tmp) / "ref.npy", mode="w+", dtype=np.float32, shape=(positions, nv)
            )
            ref_top = np.empty(positions, dtype=np.int64)
            nll: list[float] = []
            at = 0
            for i, toks in enumerate(chunks, 1):
                _check(cancel)
                say(f"{reference.name}: chunk {i}/{len(chunks)}")
                lp = ev.logprobs(toks)[:-1]
                k = len(lp)
                ref_lp[at : at + k] = lp
                ref_top[at : at + k] = lp.argmax(axis=1)
                nll.extend((-lp[np.arange(k), toks[1:]]).tolist())
                at += k
            ref_ppl = math.exp(sum(nll) / len(nll))
            say(f"{reference.name}: measuring speed")
            pp, tg = ev.speed(all_tokens, speed_reps)
            row = _row(subjects[0], ref_header, True, positions, 1.0, [0.0], ref_ppl, ref_ppl)
            row = _with_speed(row, pp, tg, memory_ctx)
        finally:
            ev.close()
        rows.append(row)
        if on_row:
            on_row(row)
        for subject in subjects[1:]:
            _check(cancel)
            say(f"{subject.label}: loading")
            ev = _Evaluator(subject, chunk, threads, gpu_layers)
            try:
                header = ev.header
                agree = 0
                kls: list[float] = []
                nll = []
                at = 0
                for i, toks in enumerate(chunks, 1):
                    _check(cancel)
                    say(f"{subject.label}: chunk {i}/{len(chunks)}")
                    lp = ev.logprobs(toks)[:-1]
                    k = len(lp)
                    agree += int((lp.argmax(axis=1) == ref_top[at : at + k]).sum())
                    for lo in range(0, k, ROWS_AT_ONCE):
                        p_lp = np.asarray(ref_lp[at + lo : at + min(k, lo + ROWS_AT_ONCE)])
                        q_lp = lp[lo : lo + ROWS_AT_ONCE]
                        kl = (np.exp(p_lp) * (p_lp - q_lp)).sum(axis=1)
                        kls.extend(np.maximum(kl, 0.0).tolist())
                    nll.extend((-lp[np.arange(k), toks[1:]]).tolist())
                    at += k
                ppl = math.exp(sum(nll) / len(nll))
                say(f"{subject.label}: measuring speed")
                pp, tg = ev.speed(all_tokens, speed_reps)
            finally:
                ev.close()
            row = _row(subject, header, False, positions, agree / positions, kls, ppl, ref_ppl)
            row = _with_speed(row, pp, tg, memory_ctx)
            rows.append(row)
            if on_row:
                on_row(row)
        del ref_lp
    return QualityReport(
        reference=rows[0].label,
        text_source=text_source,
        text_tokens=len(all_tokens),
        chunks=len(chunks),
        chunk_tokens=min(chunk, ev.n_ctx),
        threads=threads,
        notes=tuple(notes),
        rows=tuple(rows),
    )


def _check(cancel: threading.Event) -> None:
    if cancel.is_set():
        raise QualityError("cancelled")


def _vocab_size(h: GgufHeader) -> int:
    from tui_infer.core.models.gguf import ArraySummary

    tokens = h.get("tokenizer.ggml.tokens")
    if isinstance(tokens, ArraySummary):
        return tokens.length
    return len(tokens or [])


def _chunks(tokens: list[int], chunk: int, bos: int | None) -> list[list[int]]:
    """Chunks of at most `chunk` tokens, each starting with BOS when the vocabulary has one;
    a short tail (under MIN_TOKENS) is dropped unless it is all there is."""
    body = chunk - (1 if bos is not None else 0)
    out: list[list[int]] = []
    for lo in range(0, len(tokens), body):
        part = tokens[lo : lo + body]
        if len(part) < MIN_TOKENS and out:
            break
        out.append(([bos] if bos is not None else []) + part)
    return out


def _row(
    subject: Subject,
    header: GgufHeader,
    is_ref: bool,
    positions: int,
    agreement: float,
    kls: list[float],
    ppl: float,
    ref_ppl: float,
) -> QualityRow:
    arr = np.asarray(kls, dtype=np.float64)
    return QualityRow(
        label=subject.label,
        path=str(subject.path),
        model=header.name,
        quantization=header.quantization,
        kv_type=subject.kv_type,
        bits_per_weight=bits_per_weight(header),
        reference=is_ref,
        positions=positions,
        agreement=agreement,
        kl_mean=float(arr.mean()) if arr.size else 0.0,
        kl_p99=float(np.percentile(arr, 99)) if arr.size else 0.0,
        kl_max=float(arr.max()) if arr.size else 0.0,
        perplexity=ppl,
        perplexity_ratio=ppl / ref_ppl if ref_ppl else float("nan"),
        pp_tps=0.0,
        tg_tps=0.0,
        model_bytes=header.file_size,
        kv_bytes=0,
        memory_ctx=0,
    )


def _with_speed(row: QualityRow, pp: float, tg: float, memory_ctx: int) -> QualityRow:
    info = ModelInfo.from_header(read_header(row.path))
    kv = int(round(kv_bytes_per_token(info, row.kv_type) * memory_ctx))
    d = asdict(row)
    d.update(pp_tps=pp, tg_tps=tg, kv_bytes=kv, memory_ctx=memory_ctx)
    return QualityRow(**d)


# ----- which files to compare ----------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    """A model and the other files of it the library holds, with the reference picked."""

    reference: Path
    others: tuple[Path, ...]
    made_from_ref: tuple[bool, ...]  # per other: the library says it was quantized from REF


def _same_model(a: GgufHeader, b: dict[str, Any]) -> bool:
    return (
        a.architecture == b.get("architecture")
        and a.n_layer == b.get("n_layer")
        and a.n_embd == b.get("n_embd")
        and _vocab_size(a) == b.get("n_vocab")
    )


def library_family(model: Path, data_dir: Path) -> Family:
    """`model` and the library's files of the same model (architecture, layers, width and
    vocabulary), the reference being the best file at hand: the most bits per weight among
    files not quantized from another of them (a Q8_0 made from a Q4_1 is no better)."""
    import os

    from tui_infer.core.models.library import ModelLibrary

    header = read_header(model)
    members: dict[str, tuple[Path, float, str | None]] = {}  # realpath -> path, bpw, source
    n = header.parameter_count
    members[os.path.realpath(model)] = (model, 8 * header.file_size / n if n else 0.0, None)
    lib = ModelLibrary(data_dir)
    try:
        for e in lib.entries():
            if e.status != "ok" or len(e.parts) != 1 or not _same_model(header, e.metadata):
                continue
            params = int(e.metadata.get("parameter_count") or 0)
            bpw = 8 * e.size / params if params else 0.0
            src = (e.metadata.get("quantized_from") or {}).get("path")
            real = os.path.realpath(e.path)
            members[real] = (e.path, bpw, os.path.realpath(src) if src else None)
    finally:
        lib.close()
    originals = [k for k, (_, _, src) in members.items() if src is None or src not in members]
    ref_key = max(originals, key=lambda k: members[k][1])
    ref = members[ref_key][0]
    others = sorted((k for k in members if k != ref_key), key=lambda k: -members[k][1])
    return Family(
        ref,
        tuple(members[k][0] for k in others),
        tuple(members[k][2] == ref_key for k in others),
    )
