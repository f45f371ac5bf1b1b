"""Verify before publish: what in a batch run should not be served without a look.

`verify_run` checks a run's servable predictions and keeps the report in the store
(`verify_reports`, `verify_flags`); `gate` is what `store publish`, `batch --publish` and
the batch screen ask before serving a run. Each flag names its check:

- length       cut off at max tokens (finish reason "length")
- empty        nothing but whitespace
- repetition   the answer ends in a loop: one span repeated REPEATS or more times, over
               REPEAT_CHARS characters or more (greedy decoding's usual failure)
- control      control characters (other than tab, newline, carriage return)
- bad_utf8     U+FFFD: bytes that did not decode (a character cut in half, a broken token)
- low_logprob  a mean token log-probability far below the run's own: a robust outlier
               (modified z-score of Iglewicz and Hoaglin, median and MAD) under -OUTLIER_Z,
               judged once the run has MIN_FOR_OUTLIERS predictions with log-probabilities
- resample     on a sample, recomputed one sequence at a time, the answer differs (greedy
               runs decode it greedily again; sampled runs with the item's own seed)
- regex        the answer does not match the user's --check-regex (re.search)
- json_schema  the answer is not JSON valid under the user's --check-json-schema
- check_cmd    the user's --check-cmd answered fail (it reads the rows as JSONL on stdin
               and answers one line per id on stdout: `ID pass`, `ID fail REASON`, or
               {"id": ..., "pass": true|false, "reason": ...})

A flagged row is reviewed when it is rejected (`store reject`); a run with unreviewed flags
is published only with --force. The built-in checks (the first six) need no model and run
whenever a run is published without a current report.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shlex
import statistics
import subprocess
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tui_infer.core.db import StoreError
from tui_infer.core.errors import ExitCode, TuiInferError
from tui_infer.core.static.store import SERVABLE, Prediction, PredictionStore, RunInfo

BUILTIN = ("length", "empty", "repetition", "control", "bad_utf8", "low_logprob")
CHECKS = (*BUILTIN, "resample", "regex", "json_schema", "check_cmd")

REPEATS = 4  # a span repeated this many times at the end of an answer is a loop...
REPEAT_CHARS = 40  # ...when the repeated part covers at least this many characters
MAX_PERIOD = 300  # the longest repeated span looked for (characters)
REPEAT_TAIL = 4000  # how much of the answer's end is looked at
OUTLIER_Z = 3.5  # Iglewicz and Hoaglin's cut-off for a modified z-score
MIN_FOR_OUTLIERS = 8  # fewer predictions than this: no distribution to stand out of
CHECK_CMD_TIMEOUT_S = 600.0

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


class FlaggedRunError(StoreError):
    """A run with flagged predictions nobody reviewed: not published (exit 1)."""

    exit_code = ExitCode.FAILURE


class CheckError(TuiInferError):
    """A user check that cannot run: a bad regex, schema or command (exit 2)."""


@dataclass(frozen=True)
class Flag:
    item_id: str
    check: str
    detail: str


@dataclass
class Checks:
    """What `store verify` is asked to check beyond the built-in checks."""

    resample: float = 0.0  # the fraction of the run recomputed one sequence at a time
    regex: str | None = None
    json_schema: Path | None = None
    check_cmd: str | None = None

    def described(self) -> dict[str, Any]:
        """The checks as the report keeps them (name -> what it was given)."""
        out: dict[str, Any] = {name: True for name in BUILTIN}
        if self.resample > 0:
            out["resample"] = self.resample
        if self.regex is not None:
            out["regex"] = self.regex
        if self.json_schema is not None:
            out["json_schema"] = str(self.json_schema)
        if self.check_cmd is not None:
            out["check_cmd"] = self.check_cmd
        return out


@dataclass
class Outcome:
    """What a verification found: the flags, and figures worth saying."""

    run_id: int
    checked: int  # servable predictions looked at
    flags: list[Flag] = field(default_factory=list)
    resampled: list[str] = field(default_factory=list)  # item ids recomputed
    notes: list[str] = field(default_factory=list)

    def by_item(self) -> dict[str, list[Flag]]:
        out: dict[str, list[Flag]] = {}
        for f in self.flags:
            out.setdefault(f.item_id, []).append(f)
        return out


# ----- the built-in checks ---------------------------------------------------------------


def servable(preds: Iterable[Prediction]) -> list[Prediction]:
    """The predictions publishing would serve (or already serves): finished, not rejected."""
    return [p for p in preds if p.finish_reason in SERVABLE]


def repetition(text: str) -> str | None:
    """Why the text ends in a loop, or None: the shortest span that repeats REPEATS times or
    more up to the end, over REPEAT_CHARS characters or more.

    Only the periods at which the text's last 8 characters occur again are tried (str.find,
    in C): every loop long enough to flag has its end repeated one period earlier, and a
    text with no loop has few such places, so a run of 10,000 answers is checked in well
    under a second."""
    t = text.rstrip()[-REPEAT_TAIL:]
    n = len(t)
    if n < REPEAT_CHARS:
        return None
    key = t[-8:]
    periods = []
    i = t.find(key, max(0, n - 8 - MAX_PERIOD), n - 1)
    while i != -1:
        periods.append(n - 8 - i)
        i = t.find(key, i + 1, n - 1)
    for p in sorted(periods):
        if p * REPEATS > n:
            break
        j = n - 1 - p
        while j >= 0 and t[j] == t[j + p]:
            j -= 1
        span = n - 1 - j  # characters of the p-periodic end
        if span >= REPEAT_CHARS and span >= REPEATS * p:
            unit = t[n - p :]
            shown = unit if len(unit) <= 40 else unit[:39] + "…"
            return f"ends in {span // p} repeats of {shown!r} ({span} characters)"
    return None


def control_chars(text: str) -> str | None:
    found = sorted(set(_CONTROL.findall(text)))
    if not found:
        return None
    return f"{len(_CONTROL.findall(text))} control character(s): " + ", ".join(
        f"U+{ord(c):04X}" for c in found[:5]
    )


def logprob_outliers(preds: Sequence[Prediction]) -> tuple[list[Flag], str | None]:
    """Flags for mean log-probabilities that are robust outliers below the run's own, and a
    note on the distribution (or why it was not judged)."""
    with_lp = [p for p in preds if p.mean_logprob is not None]
    if len(with_lp) < MIN_FOR_OUTLIERS:
        return [], (
            f"low_logprob not judged: {len(with_lp)} prediction(s) with log-probabilities, "
            f"fewer than {MIN_FOR_OUTLIERS}"
        )
    values = [float(p.mean_logprob) for p in with_lp]  # type: ignore[arg-type]
    med = statistics.median(values)
    mad = statistics.median(abs(v - med) for v in values)
    # a run whose answers are all alike (MAD 0): a spread of 0.01 nats stands in for it
    scale = max(mad, 0.01) / 0.6745
    cut = med - OUTLIER_Z * scale
    flags = [
        Flag(
            p.item_id,
            "low_logprob",
            f"mean token logprob {p.mean_logprob:.3f} (min {p.min_logprob:.2f}); the run's "
            f"median is {med:.3f}, outliers fall below {cut:.3f}",
        )
        for p in with_lp
        if float(p.mean_logprob) < cut  # type: ignore[arg-type]
    ]
    return flags, f"mean token logprob: median {med:.3f}, MAD {mad:.3f}, cut-off {cut:.3f}"


def builtin_flags(preds: Sequence[Prediction]) -> tuple[list[Flag], list[str]]:
    """The checks that need no model: length, empty, repetition, control, bad_utf8 and
    low_logprob, over the servable predictions."""
    flags: list[Flag] = []
    for p in preds:
        if p.finish_reason == "length":
            flags.append(Flag(p.item_id, "length", f"cut off at {p.generated_tokens} tokens"))
        if not p.output.strip():
            flags.append(Flag(p.item_id, "empty", "the answer is empty"))
        loop = repetition(p.output)
        if loop:
            flags.append(Flag(p.item_id, "repetition", loop))
        ctrl = control_chars(p.output)
        if ctrl:
            flags.append(Flag(p.item_id, "control", ctrl))
        if "\ufffd" in p.output:
            n = p.output.count("\ufffd")
            flags.append(
                Flag(p.item_id, "bad_utf8", f"{n} U+FFFD replacement character(s): broken UTF-8")
            )
    low, note = logprob_outliers(preds)
    return flags + low, [note] if note else []


# ----- the user's checks -----------------------------------------------------------------


def compile_regex(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise CheckError(
            f"--check-regex {pattern!r} is not a valid regular expression ({exc}); "
            "fix the pattern (Python's re syntax)"
        ) from None


def regex_flags(preds: Sequence[Prediction], pattern: str) -> list[Flag]:
    rx = compile_regex(pattern)
    return [
        Flag(p.item_id, "regex", f"does not match {pattern!r}")
        for p in preds
        if rx.search(p.output) is None
    ]


def load_schema(path: Path) -> Callable[[Any], str | None]:
    """A validator for the JSON schema in `path`: value -> the first error, or None."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CheckError(
            f"--check-json-schema {path}: cannot read it ({exc.strerror or exc}); "
            "give the path of a JSON schema file"
        ) from None
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckError(
            f"--check-json-schema {path}: not JSON (line {exc.lineno}: {exc.msg}); "
            "give a JSON schema file"
        ) from None
    import jsonschema

    cls = jsonschema.validators.validator_for(schema)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise CheckError(
            f"--check-json-schema {path}: not a valid JSON schema ({exc.message}); fix it"
        ) from None
    validator = cls(schema)

    def first_error(value: Any) -> str | None:
        best = jsonschema.exceptions.best_match(validator.iter_errors(value))
        if best is None:
            return None
        where = "/".join(str(x) for x in best.absolute_path)
        return f"{best.message}" + (f" (at /{where})" if where else "")

    return first_error


def schema_flags(preds: Sequence[Prediction], path: Path) -> list[Flag]:
    validate = load_schema(path)
    flags = []
    for p in preds:
        try:
            value = json.loads(p.output)
        except json.JSONDecodeError as exc:
            flags.append(Flag(p.item_id, "json_schema", f"not JSON ({exc.msg} at {exc.pos})"))
            continue
        error = validate(value)
        if error:
            flags.append(Flag(p.item_id, "json_schema", f"not valid under the schema: {error}"))
    return flags


def check_rows(preds: Sequence[Prediction]) -> list[str]:
    """The JSONL a --check-cmd reads on stdin: one object per prediction."""
    return [
        json.dumps(
            {
                "id": p.item_id,
                "prompt": p.prompt,
                "messages": p.messages,
                "output": p.output,
                "finish_reason": p.finish_reason,
                "generated_tokens": p.generated_tokens,
            },
            ensure_ascii=False,
        )
        for p in preds
    ]


def parse_verdicts(stdout: str, cmd: str) -> dict[str, tuple[bool, str]]:
    """id -> (passed, reason) from a --check-cmd's answer (see the module's docstring)."""
    verdicts: dict[str, tuple[bool, str]] = {}
    for n, line in enumerate(stdout.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        if line.startswith("{"):
            try:
                obj = json.loads(line)
                item, ok = str(obj["id"]), obj.get("pass", obj.get("result"))
                reason = str(obj.get("reason", ""))
            except (json.JSONDecodeError, KeyError, TypeError):
                ok = None
            if isinstance(ok, str):
                ok = {"pass": True, "fail": False}.get(ok.lower())
            if isinstance(ok, bool):
                verdicts[item] = (ok, reason)
                continue
        else:
            parts = line.split(None, 2)
            if len(parts) >= 2 and parts[1].lower() in ("pass", "fail"):
                verdicts[parts[0]] = (parts[1].lower() == "pass", " ".join(parts[2:]))
                continue
        raise CheckError(
            f"--check-cmd {cmd!r} answered line {n} with {line[:60]!r}; each line must be "
            '"ID pass", "ID fail REASON" or {"id": ..., "pass": true|false}'
        )
    return verdicts


def command_flags(preds: Sequence[Prediction], cmd: str) -> list[Flag]:
    """Run the user's command once over all the rows; a row it fails or skips is flagged."""
    if not cmd.strip():
        raise CheckError("--check-cmd is empty; give a command that reads JSONL on stdin")
    stdin = "".join(line + "\n" for line in check_rows(preds))
    try:
        done = subprocess.run(
            cmd,
            shell=True,
            input=stdin,
            capture_output=True,
            text=True,
            encoding="utf-8",
            errors="replace",
            timeout=CHECK_CMD_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        raise CheckError(
            f"--check-cmd {cmd!r} ran past {CHECK_CMD_TIMEOUT_S:.0f} s; make it faster"
        ) from None
    if done.returncode != 0:
        last = [ln for ln in done.stderr.splitlines() if ln.strip()]
        why = f": {last[-1].strip()}" if last else ""
        raise CheckError(
            f"--check-cmd {cmd!r} exited {done.returncode}{why}; fix the command (it reads "
            "JSONL on stdin and answers one line per id)"
        )
    verdicts = parse_verdicts(done.stdout, cmd)
    flags = []
    for p in preds:
        verdict = verdicts.get(p.item_id)
        if verdict is None:
            flags.append(Flag(p.item_id, "check_cmd", "the command gave no answer for it"))
        elif not verdict[0]:
            reason = verdict[1] or "no reason given"
            flags.append(Flag(p.item_id, "check_cmd", f"failed: {reason}"))
    return flags


# ----- resampling ------------------------------------------------------------------------


def parse_fraction(text: str) -> float:
    """'5%' or '0.05' -> 0.05 (--resample)."""
    raw = text.strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value <= 1 or math.isnan(value):
        raise CheckError(
            f"--resample {text!r}: give a share of the run, as 5% or 0.05 (above 0, at most 100%)"
        )
    return value


def sample(preds: Sequence[Prediction], fraction: float, run_id: int) -> list[Prediction]:
    """A fixed sample (the same each time for the same run): at least one prediction."""
    k = max(1, math.ceil(fraction * len(preds))) if preds else 0

    def rank(p: Prediction) -> str:
        return hashlib.sha256(f"{run_id}\x1f{p.item_id}".encode()).hexdigest()

    return sorted(sorted(preds, key=rank)[:k], key=lambda p: p.position)


def sampling_from(params: dict[str, Any], seed: int | None = None) -> Any:
    """The SamplingParams of normalized parameters (keys.normalize_params), drawing with
    `seed` when sampled: what made a prediction, to make it again."""
    from tui_infer.core.inference.types import SamplingParams

    p = params
    given = p.get("seed") if seed is None else seed
    return SamplingParams(
        temperature=float(p.get("temperature", 0.0)),
        top_p=float(p.get("top_p", 0.95)),
        top_k=int(p.get("top_k", 40)),
        min_p=float(p.get("min_p", 0.05)),
        repeat_penalty=float(p.get("repeat_penalty", 1.1)),
        seed=-1 if given is None else int(given),
        max_tokens=int(p.get("max_tokens", 1024)),
        stop=tuple(p.get("stop") or ()),
        **_structured(p),
    )


def _structured(params: dict[str, Any]) -> dict[str, Any]:
    """A structured prediction's grammar again (its schema or GBNF is in its key)."""
    if isinstance(params.get("json_schema"), dict):
        from tui_infer.core.inference.grammar import normalize_schema, schema_to_gbnf

        text = normalize_schema(params["json_schema"])
        return {"json_schema": text, "grammar": schema_to_gbnf(text)}
    if isinstance(params.get("grammar"), str):
        return {"grammar": params["grammar"]}
    return {}


def resample_flags(
    run: RunInfo,
    chosen: Sequence[Prediction],
    params: dict[str, dict[str, Any]],
    runner: Any,
) -> list[Flag]:
    """Recompute each chosen prediction alone (a BatchRunner of one sequence) with the
    parameters it was made with (`params`: item id -> its normalized parameters) and flag
    those whose answer differs. A sampled one draws with its own recorded seed."""
    from tui_infer.core.inference.batched import BatchItem
    from tui_infer.core.inference.types import Message
    from tui_infer.core.static import keys

    raw_role = getattr(keys, "RAW_ROLE", None)
    run_seed = int(run.params.get("run_seed", 0))
    system = run.params.get("system") or None
    flags = []
    for p in chosen:
        sampling = sampling_from(params.get(p.item_id) or run.params, p.seed)
        msgs = tuple(Message(m["role"], m["content"]) for m in p.messages)
        extra: dict[str, Any] = {"sampling": sampling}
        if raw_role is not None and len(msgs) == 1 and msgs[0].role == raw_role:
            extra["raw_prompt"] = msgs[0].content
        item = BatchItem(p.item_id, msgs, sampling.max_tokens, **extra)
        results = list(runner.run([item], sampling, run_seed, system))
        if not results:
            continue
        again = results[0]
        if again.text != p.output or again.finish_reason != p.finish_reason:
            flags.append(Flag(p.item_id, "resample", _difference(p, again)))
    return flags


def _difference(p: Prediction, again: Any) -> str:
    stored, text = p.output, again.text
    if stored == text:
        return f"recomputed alone, it ends with {again.finish_reason!r}, not {p.finish_reason!r}"
    at = next(
        (i for i, (a, b) in enumerate(zip(stored, text, strict=False)) if a != b),
        min(len(stored), len(text)),
    )

    def near(s: str) -> str:
        return repr(s[max(0, at - 10) : at + 30])

    return (
        f"recomputed alone, the answer differs from character {at}: stored {near(stored)}, "
        f"recomputed {near(text)}"
    )


# ----- the whole verification ------------------------------------------------------------


def verify_run(
    store: PredictionStore,
    run_id: int,
    checks: Checks,
    open_runner: Callable[[RunInfo], Any] | None = None,
) -> Outcome:
    """Run the built-in checks and the ones asked for over the run's servable predictions
    and keep the report (it replaces the run's last one). `open_runner(run)` gives a
    one-sequence BatchRunner of the run's model, for --resample."""
    run = store.run(run_id)
    if run.status == "running":
        raise StoreError(
            f"run {run_id} is still running (or was killed): rerun its batch command to "
            "finish it, then verify"
        )
    # user checks first: a bad pattern, schema or command fails before the model loads
    if checks.regex is not None:
        compile_regex(checks.regex)
    if checks.json_schema is not None:
        load_schema(checks.json_schema)
    preds = servable(store.predictions(run_id))
    outcome = Outcome(run_id, len(preds))
    flags, notes = builtin_flags(preds)
    outcome.flags += flags
    outcome.notes += notes
    if checks.regex is not None:
        outcome.flags += regex_flags(preds, checks.regex)
    if checks.json_schema is not None:
        outcome.flags += schema_flags(preds, checks.json_schema)
    if checks.check_cmd is not None:
        outcome.flags += command_flags(preds, checks.check_cmd)
    if checks.resample > 0 and preds:
        if open_runner is None:
            raise CheckError("--resample needs the run's model; none was given")
        chosen = [p for p in sample(preds, checks.resample, run_id) if p.status != "rejected"]
        params = store.prediction_params(run_id)
        runner = open_runner(run)
        try:
            outcome.flags += resample_flags(run, chosen, params, runner)
        finally:
            runner.close()
        outcome.resampled = [p.item_id for p in chosen]
    store.save_verification(
        run_id,
        checks.described(),
        [(f.item_id, f.check, f.detail) for f in outcome.flags],
    )
    return outcome


# ----- the publish gate ------------------------------------------------------------------


@dataclass(frozen=True)
class Gate:
    """The run's flagged predictions nobody reviewed (not rejected), and what to do."""

    run_id: int
    unreviewed: dict[str, list[tuple[str, str]]]  # item id -> [(check, detail)]

    @property
    def clear(self) -> bool:
        return not self.unreviewed

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for flags in self.unreviewed.values():
            for check, _ in flags:
                out[check] = out.get(check, 0) + 1
        return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))

    def message(self, force_hint: str) -> str:
        """What was flagged, how many, and the exact commands to review them."""
        ids = list(self.unreviewed)
        shown = " ".join(shlex.quote(i) for i in ids[:10]) + (
            f" (and {len(ids) - 10} more)" if len(ids) > 10 else ""
        )
        what = ", ".join(f"{check} {n}" for check, n in self.counts().items())
        reject = (
            f"'tui-infer store reject {self.run_id} " + " ".join(shlex.quote(i) for i in ids) + "'"
            if len(ids) <= 20
            else f"'tui-infer store reject {self.run_id} ID...'"
        )
        return (
            f"run {self.run_id} not published: {len(ids)} flagged prediction(s) not "
            f"reviewed ({what}): {shown}; review them with 'tui-infer store show "
            f"{self.run_id} --flagged', reject the bad ones with {reject}, or publish "
            f"anyway with {force_hint}"
        )


def report_flags(
    store: PredictionStore, run_id: int, save: bool = False
) -> dict[str, list[tuple[str, str]]]:
    """item id -> [(check, detail)] of the run's report, the built-in checks first brought
    up to date when the report is missing or predictions were added since (the user's
    checks' flags are kept). `save` keeps the refreshed report (the publish gate); reading
    commands (`store show`, `store export`) leave the store as it is."""
    report = store.verification(run_id)
    if report is not None and report.n_predictions == store.prediction_count(run_id):
        return report.flags
    flags, _ = builtin_flags(servable(store.predictions(run_id)))
    if save:
        store.save_verification(
            run_id,
            {name: True for name in BUILTIN},
            [(f.item_id, f.check, f.detail) for f in flags],
            keep_other_checks=True,
        )
        fresh = store.verification(run_id)
        return fresh.flags if fresh is not None else {}
    merged: dict[str, list[tuple[str, str]]] = {}
    for item, old in (report.flags if report else {}).items():
        kept = [(c, d) for c, d in old if c not in BUILTIN]
        if kept:
            merged[item] = kept
    for f in flags:
        merged.setdefault(f.item_id, []).append((f.check, f.detail))
    return merged


def gate(store: PredictionStore, run_id: int) -> Gate:
    """Whether the run may be published: its flagged, servable predictions not rejected."""
    flags = report_flags(store, run_id, save=True)
    status = {
        p.item_id: p
        for p in store.predictions(run_id)
        if p.finish_reason in SERVABLE and p.status != "rejected"
    }
    unreviewed = {item: fl for item, fl in flags.items() if item in status}
    return Gate(run_id, unreviewed)


def publish(store: PredictionStore, run_id: int, force: bool, force_hint: str) -> int:
    """Publish through the gate: refused (FlaggedRunError) while flags are unreviewed,
    unless forced. Returns how many predictions now serve."""
    store.run(run_id)  # an unknown run: its own error first
    if not force:
        g = gate(store, run_id)
        if not g.clear:
            raise FlaggedRunError(g.message(force_hint))
    return store.publish(run_id)
