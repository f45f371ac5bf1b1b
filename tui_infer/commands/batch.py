"""`tui-infer batch INPUT -m MODEL -o OUTPUT`: a frozen model over a file of prompts.

Progress lives in the prediction store, one committed row per finished prompt,
so the same command resumes after Ctrl+C or kill -9; OUTPUT is written once
every input has its prediction (a temporary file, then an atomic rename), one
row per input, in input order. Greedy unless --temperature is given.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tui_infer.core.errors import ExitCode

if TYPE_CHECKING:
    from tui_infer.core.config import Settings
    from tui_infer.core.inference.batched import BatchItem
    from tui_infer.core.inference.types import LoadOptions, SamplingParams
    from tui_infer.core.paths import Paths
    from tui_infer.core.request_path import PreparedRequest
    from tui_infer.core.static.batch_input import InputItem, Reject


def add_parser(sub: Any, model_flags: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser(
        "batch",
        help="run the model over a file of prompts into the prediction store",
        description="Answer every prompt of INPUT (JSONL with 'prompt' or 'messages' and "
        "optional 'id', 'max_tokens' and sampling fields; a text file, one prompt per line; "
        "CSV; or OpenAI's batch input format, found by its content) with "
        "several sequences decoded at once. Predictions are kept in the store (staged until "
        "published) and written to OUTPUT as JSONL in input order (for an OpenAI input, in "
        "OpenAI's batch output format). Rerunning the same command "
        "resumes an interrupted run. Greedy unless --temperature (or the line) says otherwise.",
    )
    model_flags(p)
    p.add_argument("input", type=Path, help="JSONL, text or CSV file of prompts")
    p.add_argument("-o", "--output", type=Path, required=True, help="JSONL file to write")
    p.add_argument("--parallel", type=int, help="sequences decoded at once (default: 8 on CPU)")
    p.add_argument(
        "--format",
        choices=("jsonl", "text", "csv", "openai"),
        help="default: openai when the first line has a custom_id, else from the extension",
    )
    p.add_argument("--column", help="the CSV column holding the prompt (default: 'prompt')")
    p.add_argument("--rejects", type=Path, help="where malformed lines go (OUTPUT.rejects.jsonl)")
    p.add_argument(
        "--publish",
        action="store_true",
        help="publish the run when it completes, unless verification flags answers",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="with --publish: publish even with flagged answers not rejected",
    )
    p.add_argument("--kv-unified", action="store_true", help="one KV buffer for all sequences")
    p.add_argument(
        "--speculative",
        dest="batch_speculative",  # checked here (batch's own auto): see _speculative_mode
        metavar="auto|ngram|draft|off",
        help="speculative decoding, each sequence drafting in the same decode: auto (the "
        "default, or the 'speculative' setting: by prompt lookup, only while at most 2 "
        "sequences run and drafts are mostly taken), ngram (prompt lookup always), draft "
        "(the --draft model always; the default with --draft), off; the outputs are the same",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print the run's summary as one JSON document (with a 'speculative' object)",
    )
    from tui_infer.commands.request_flags import add_draft_flag, add_request_flags

    add_request_flags(p)  # --preset, --json-schema, --grammar, --template
    add_draft_flag(p)  # --draft MODEL, as run's
    p.add_argument(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help="decode on a Ray cluster (ADDRESS such as head:6379; none: start Ray here); "
        "needs pip install 'tui-infer[ray]'",
    )
    p.add_argument(
        "--ray-actors",
        type=int,
        default=None,
        help="Ray actors, each with --threads (default: a local Ray gets one actor per core "
        "with 1 thread, unless --threads is given; a cluster 1)",
    )
    p.add_argument(
        "--ray-send-model",
        action="store_true",
        help="send the model through Ray even to nodes that have its path (sha256-checked)",
    )


def execute(args: argparse.Namespace, settings: Settings, paths: Paths) -> int:
    from tui_infer.core.errors import TuiInferError
    from tui_infer.core.files import atomic_write
    from tui_infer.core.inference.types import SamplingParams
    from tui_infer.core.request_path import resolve_target
    from tui_infer.core.static import store as st
    from tui_infer.core.static.batch_input import Reject, read_batch_input  # noqa: F811
    from tui_infer.core.static.keys import normalize_params, params_hash, template_sha256

    if args.parallel is not None and args.parallel < 1:
        raise TuiInferError(f"--parallel must be at least 1, got {args.parallel}")
    speculative = _speculative_mode(args, settings)
    # the draft model's file (Ray's actors decode without drafts: none there)
    draft = _draft_file(settings, speculative) if getattr(args, "ray", None) is None else None
    if args.output.resolve() == args.input.resolve():
        raise TuiInferError("OUTPUT is the INPUT file; give another path with -o")
    from tui_infer.core.files import MissingFolderError

    for out in (args.output, args.rejects):
        if out is not None and not out.parent.is_dir():  # before the run, not after it
            raise MissingFolderError(
                f"{out.parent}: no such folder; create it or write {out.name} somewhere else"
            )
    read = read_batch_input(args.input, args.format, args.column)
    items, rejects, in_format = read.items, read.rejects, read.format
    rejects_path = args.rejects or args.output.with_name(args.output.name + ".rejects.jsonl")

    from tui_infer.commands.request_flags import (
        apply_preset,
        preset_values,
        structured,
        with_template,
    )
    from tui_infer.core.inference.grammar import check_sampling

    preset = preset_values(args, paths)
    settings = apply_preset(settings, preset)
    target = with_template(args, resolve_target(settings, paths))
    model_path = target.path
    template_source = target.template_source
    temperature = getattr(args, "temperature", None)
    if temperature is None:  # greedy, unless the preset says otherwise
        temperature = float(preset.get("temperature", 0.0))
    sampling = SamplingParams.from_settings(settings)
    sampling = structured(args, replace(sampling, temperature=temperature))
    if getattr(args, "grammar", None) is not None:
        check_sampling(model_path, sampling, str(args.grammar))
    if sampling.max_tokens < 1:
        raise TuiInferError(f"--max-tokens must be at least 1, got {sampling.max_tokens}")
    system = settings.system or None
    items, bad_grammar = _with_good_grammars(items, model_path)
    rejects = sorted(rejects + bad_grammar, key=lambda r: r.line)

    batch_items: list[BatchItem] = []
    prepared: list[PreparedRequest] = []  # each line's request: its key and parameters
    store = st.PredictionStore.in_data_dir(paths.data_dir)
    try:
        model_sha = store.model_sha256(model_path)
        items, mismatched = _with_this_model(items, model_sha, template_sha256(template_source))
        rejects = sorted(rejects + mismatched, key=lambda r: r.line)
        _report_rejects(rejects_path, rejects)
        if not items:
            raise TuiInferError(
                f"{args.input}: none of its lines can run (line {rejects[0].line}: "
                f"{rejects[0].reason})"
            )
        _note_models(items, model_path)
        for it in items:
            req, b = _line_request(store, target, it, sampling, system, model_sha)
            batch_items.append(b)
            prepared.append(req)
        run_params = normalize_params(sampling)
        signature = hashlib.sha256(
            json.dumps(
                [
                    model_sha,
                    template_sha256(template_source),
                    run_params,
                    system,
                    [[b.id, r.key] for b, r in zip(batch_items, prepared, strict=True)],
                ],
                sort_keys=True,
            ).encode()
        ).hexdigest()
        run = store.find_run(signature)
        if run is None:
            import llama_cpp

            run_seed = sampling.seed if sampling.seed >= 0 else random.randrange(2**31)
            run_id = store.create_run(
                signature=signature,
                model_sha256=model_sha,
                model_path=str(model_path),
                template_sha256=template_sha256(template_source),
                params={**run_params, "run_seed": run_seed, "system": system},
                n_items=len(batch_items),
                input_path=str(args.input.resolve()),
                llama_cpp_version=getattr(llama_cpp, "__version__", ""),
                provenance=_provenance(args, model_path, model_sha, target, settings),
            )
            resumed = 0
        else:
            run_id = run.id
            run_seed = int(run.params.get("run_seed", 0))
            resumed = run.n_done
        done = store.done_ids(run_id)
        todo = [(i, b) for i, b in enumerate(batch_items) if b.id not in done]
        t0 = time.perf_counter()
        generated = 0
        from tui_infer.core.inference.batched import BatchProgress

        progress = BatchProgress(speculative=speculative)
        if todo:
            if resumed:
                print(
                    f"tui-infer: resuming run {run_id}: {resumed} of {len(batch_items)} "
                    "already done",
                    file=sys.stderr,
                )
            store.set_run_status(run_id, "running")
            try:
                generated = _run_todo(
                    store,
                    run_id,
                    todo,
                    prepared,
                    model_sha,
                    model_path,
                    target.load_options(settings),
                    args,
                    sampling,
                    run_seed,
                    system,
                    len(batch_items),
                    len(batch_items) - len(todo),
                    speculative,
                    progress,
                    draft,
                )
            except KeyboardInterrupt:
                store.set_run_status(run_id, "interrupted")
                print(
                    f"tui-infer: interrupted; run {run_id} keeps what finished: rerun the "
                    "same command to resume",
                    file=sys.stderr,
                )
                return int(ExitCode.INTERRUPTED)
        store.set_run_status(run_id, "done")
        elapsed = time.perf_counter() - t0
        preds = {p.item_id: p for p in store.predictions(run_id)}
        ph = params_hash(run_params)
        lines = []
        too_long = []  # prompts longer than a sequence's context: rejected, line by line
        for b, it, req in zip(batch_items, items, prepared, strict=True):
            p = preds[b.id]
            if p.finish_reason == "overflow":
                too_long.append(
                    Reject(
                        it.line,
                        f"the prompt takes {p.prompt_tokens} tokens, more than a "
                        "sequence's context holds; raise --ctx or lower --parallel",
                        it.messages[-1].content,
                    )
                )
                continue
            lines.append(
                json.dumps(
                    {
                        "id": b.id,
                        "line": it.line,
                        "output": p.output,
                        "finish_reason": p.finish_reason,
                        "prompt_tokens": p.prompt_tokens,
                        "generated_tokens": p.generated_tokens,
                        "ttft_s": round(p.ttft_s, 6),
                        "total_s": round(p.total_s, 6),
                        "model_sha256": model_sha,
                        "params_hash": ph,
                        "key": req.key,
                        "run": run_id,
                        "status": p.status,
                    },
                    ensure_ascii=False,
                )
            )
        if in_format == "openai":
            lines = _openai_lines(
                items,
                prepared,
                preds,
                sorted(rejects + too_long, key=lambda r: r.line),
                run_id,
                model_path.name,
            )
        atomic_write(args.output, lines, parents=False)
        if too_long:
            rejects = sorted(rejects + too_long, key=lambda r: r.line)
            _write_rejects(rejects_path, rejects)
            for r in too_long[:10]:
                print(f"tui-infer: line {r.line} rejected: {r.reason}", file=sys.stderr)
        published, refused = _publish(store, run_id, args)
    finally:
        store.close()
    summary = (
        f"run {run_id}: {len(batch_items)} prompts ({len(todo)} decoded now, "
        f"{len(batch_items) - len(todo)} from the store), {generated} tokens generated in "
        f"{elapsed:.1f} s"
    )
    if todo and elapsed > 0:
        summary += f" ({len(todo) / elapsed:.2f} prompts/s, {generated / elapsed:.1f} tok/s)"
    summary += f"; output: {args.output}"
    if rejects:
        summary += f"; {len(rejects)} rejected lines: {rejects_path}"
    if too_long:
        summary += f" ({len(too_long)} did not fit a sequence's context: raise --ctx)"
    summary += (
        f"; published {published} predictions"
        if published is not None
        else "; staged, not published (flagged answers: see below)"
        if refused
        else f"; staged: 'tui-infer store publish {run_id}' serves them"
    )
    spec = progress.speculative_stats()
    if todo:
        summary += f"; speculative {spec.summary}"
        if spec.drafted:
            summary += f" ({spec.acceptance_rate:.0%})"
    if args.json:
        print(
            json.dumps(
                {
                    "run": run_id,
                    "prompts": len(batch_items),
                    "decoded": len(todo),
                    "from_store": len(batch_items) - len(todo),
                    "generated_tokens": generated,
                    "elapsed_s": round(elapsed, 3),
                    "output": str(args.output),
                    "rejected": len(rejects),
                    "published": published,
                    # what drafting did over the prompts decoded now (None: none were)
                    "speculative": spec.as_dict() if todo else None,
                }
            )
        )
    else:
        print(summary)
    if refused:
        print(f"tui-infer: {refused}", file=sys.stderr)
        return int(ExitCode.FAILURE)
    return int(ExitCode.REJECTED_LINES) if rejects else int(ExitCode.OK)


def _speculative_mode(args: argparse.Namespace, settings: Settings) -> str:
    """--speculative, else draft when --draft is given, else the 'speculative' setting, as
    `run` takes them: auto, ngram, draft or off. Draft needs a draft model (--draft or the
    'draft_model' setting): without one it is a one-line error naming the way out, as in
    `run`. Batch's auto drafts by prompt lookup (batched.py), so --draft beside auto, ngram
    or off is unused, said on stderr. --ray decodes without drafts: --draft or
    --speculative draft with it is an error (the setting's draft is not: Ray runs off)."""
    from tui_infer.core.errors import TuiInferError
    from tui_infer.core.inference.batched import SPECULATIVE_MODES

    flag = getattr(args, "batch_speculative", None)
    if flag is not None and flag not in SPECULATIVE_MODES:
        raise TuiInferError(
            f"--speculative must be one of {', '.join(SPECULATIVE_MODES)}, got {flag!r}"
        )
    given = getattr(args, "draft_model", None)  # --draft MODEL on this command line
    mode = str(flag) if flag is not None else "draft" if given else settings.speculative
    if mode == "draft" and not settings.draft_model.strip():
        raise TuiInferError(
            "batch --speculative draft needs a draft model: give --draft MODEL (or set "
            "'draft_model'), or use --speculative ngram"
        )
    if mode == "draft" and getattr(args, "ray", None) is not None and (given or flag):
        raise TuiInferError(
            "batch --ray decodes without drafts: drop --draft (and --speculative draft), "
            "or run without --ray"
        )
    if given and mode != "draft":
        print(
            f"tui-infer: note: --draft is unused with --speculative {mode} (batch's auto "
            "drafts by prompt lookup); give --speculative draft to draft with it",
            file=sys.stderr,
        )
    return mode


def _draft_file(settings: Settings, speculative: str) -> Path | None:
    """The draft model's file for --speculative draft, resolved and its header checked as
    `run` does it (a path or a library name; ModelFileError names what is wrong)."""
    if speculative != "draft":
        return None
    from tui_infer.core.inference.engine import draft_path
    from tui_infer.core.inference.types import LoadOptions

    return draft_path(replace(LoadOptions.from_settings(settings), speculative="draft"))


def _provenance(
    args: argparse.Namespace, model_path: Path, model_sha: str, target: Any, settings: Settings
) -> dict[str, Any]:
    """What makes this run (static/provenance.py): versions, backend, the input's sha256,
    the command line with any secret redacted."""
    from tui_infer.core.static import provenance

    argv = getattr(args, "argv", None) or ["tui-infer", *sys.argv[1:]]
    return provenance.collect(
        argv=argv,
        model_path=model_path,
        model_sha256=model_sha,
        input_path=args.input.resolve(),
        options=target.load_options(settings),
        n_layer=target.header.n_layer,
    )


def _publish(store: Any, run_id: int, args: argparse.Namespace) -> tuple[int | None, str]:
    """--publish through the verification gate (as `store publish`): (how many were
    published, or None; why it was refused, or "")."""
    if not args.publish:
        return None, ""
    from tui_infer.core.static import verify

    hint = f"'tui-infer store publish {run_id} --force' (or --publish --force here)"
    try:
        return verify.publish(store, run_id, args.force, hint), ""
    except verify.FlaggedRunError as exc:
        return None, str(exc)


def _report_rejects(path: Path, rejects: list[Reject]) -> None:
    """The input's malformed lines: said on stderr (the first ten), written to `path`."""
    if not rejects:
        return
    _write_rejects(path, rejects)
    for r in rejects[:10]:
        print(f"tui-infer: line {r.line} skipped: {r.reason}", file=sys.stderr)
    if len(rejects) > 10:
        print(f"tui-infer: ... {len(rejects) - 10} more", file=sys.stderr)
    print(f"tui-infer: {len(rejects)} malformed line(s) written to {path}", file=sys.stderr)


def _with_this_model(
    items: list[InputItem], model_sha: str, template_sha: str
) -> tuple[list[InputItem], list[Reject]]:
    """A `store misses` line names the model and template it missed with: run under others,
    its prediction would answer another key, never that request. Such lines are rejects."""
    from tui_infer.core.static.batch_input import Reject

    keep, rejects = [], []
    for it in items:
        if it.model_sha256 and it.model_sha256 != model_sha:
            why = (
                f"missed with another model (sha256 {it.model_sha256[:12]}, this one is "
                f"{model_sha[:12]}); run this line with -m that model"
            )
        elif it.template_sha256 and it.template_sha256 != template_sha:
            why = (
                f"missed with another chat template (sha256 {it.template_sha256[:12]}); run "
                "it with the [templates] setting it was asked under"
            )
        else:
            keep.append(it)
            continue
        rejects.append(Reject(it.line, why, it.id))
    return keep, rejects


def _with_good_grammars(
    items: list[InputItem], model_path: Path
) -> tuple[list[InputItem], list[Reject]]:
    """A line's own grammar that does not compile for this model rejects that line alone."""
    from tui_infer.core.inference.grammar import check_with_model
    from tui_infer.core.static.batch_input import Reject

    grammars = [g for it in items if (g := it.sampling.get("grammar"))]
    if not grammars:
        return items, []
    bad = check_with_model(model_path, grammars)
    if not bad:
        return items, []
    keep, rejects = [], []
    for it in items:
        why = bad.get(it.sampling.get("grammar") or "")
        if why is None:
            keep.append(it)
        else:
            rejects.append(Reject(it.line, f"'grammar': {why}", it.id))
    return keep, rejects


def _note_models(items: list[InputItem], model_path: Path) -> None:
    """An OpenAI line's body.model is not what answers it: the run's -m is. Said once."""
    named = sorted({it.model for it in items if it.model})
    if named:
        shown = ", ".join(repr(n) for n in named[:3]) + (" ..." if len(named) > 3 else "")
        print(
            f"tui-infer: note: body.model ({shown}) is ignored: every line is answered by "
            f"{model_path.name} (-m)",
            file=sys.stderr,
        )


def _line_request(
    store: Any,
    target: Any,
    it: InputItem,
    sampling: SamplingParams,
    system: str | None,
    model_sha: str,
) -> tuple[PreparedRequest, BatchItem]:
    """A line's request, keyed with its own sampling fields over the run's (a raw prompt
    through no chat template), and the item the runner decodes for it. A sampled line with
    a seed is decoded with that very seed: its prediction is that seed's sample."""
    from tui_infer.core.inference.batched import BatchItem
    from tui_infer.core.request_path import prepare, prepare_raw

    own = replace(sampling, **it.sampling) if it.sampling else sampling
    if it.raw_prompt is not None:
        req = prepare_raw(store, target, it.raw_prompt, own, it.max_tokens, model_sha)
    else:
        req = prepare(store, target, it.messages, own, system, it.max_tokens, model_sha)
    per_item = own if (it.sampling or own.seed >= 0) else None
    return req, BatchItem(it.id, req.messages, it.max_tokens, per_item, it.raw_prompt)


def _openai_lines(
    items: list[InputItem],
    prepared: list[PreparedRequest],
    preds: dict[str, Any],
    rejects: list[Reject],
    run_id: int,
    model_name: str,
) -> list[str]:
    """OpenAI's batch output format (as vLLM's run_batch writes it), one line per input
    line in input order: {id, custom_id, response: {status_code, request_id, body}, error};
    a chat.completion or text_completion body with usage, or for a rejected line
    status_code 400, body null and error {code, message}. Ids are stable across reruns."""
    rows: list[tuple[int, dict[str, Any]]] = []
    done_ids = set()
    for it, req in zip(items, prepared, strict=True):
        p = preds[it.id]
        if p.finish_reason == "overflow":
            continue  # in `rejects`
        done_ids.add(it.line)
        tag = hashlib.sha256(f"{run_id}\x1f{it.id}".encode()).hexdigest()[:24]
        usage = {
            "prompt_tokens": p.prompt_tokens,
            "completion_tokens": p.generated_tokens,
            "total_tokens": p.prompt_tokens + p.generated_tokens,
        }
        choice: dict[str, Any] = {"index": 0}
        if it.raw_prompt is not None:
            obj, cid = "text_completion", f"cmpl-{tag}"
            choice["text"] = p.output
        else:
            obj, cid = "chat.completion", f"chatcmpl-{tag}"
            choice["message"] = {"role": "assistant", "content": p.output}
        choice["logprobs"] = None
        choice["finish_reason"] = p.finish_reason
        body = {
            "id": cid,
            "object": obj,
            "created": int(p.created_at),
            "model": model_name,
            "choices": [choice],
            "usage": usage,
            "x_tui_infer": {"run": run_id, "key": req.key},
        }
        rows.append((it.line, _openai_row(tag, it.id, 200, body, None)))
    for r in rejects:
        if r.line in done_ids:
            continue
        tag = hashlib.sha256(f"{run_id}\x1freject\x1f{r.line}".encode()).hexdigest()[:24]
        error = {"code": "invalid_request", "message": f"line {r.line}: {r.reason}"}
        rows.append((r.line, _openai_row(tag, r.custom_id, 400, None, error)))
    rows.sort(key=lambda row: row[0])
    return [json.dumps(row, ensure_ascii=False) for _, row in rows]


def _openai_row(
    tag: str, custom_id: str | None, status: int, body: Any, error: Any
) -> dict[str, Any]:
    return {
        "id": f"batch_req_{tag}",
        "custom_id": custom_id,
        "response": {"status_code": status, "request_id": f"req_{tag}", "body": body},
        "error": error,
    }


def _write_rejects(path: Path, rejects: list[Reject]) -> None:
    from tui_infer.core.files import atomic_write

    atomic_write(
        path, [json.dumps(r.as_dict(), ensure_ascii=False) for r in rejects], parents=False
    )


def _ray_layout(args: argparse.Namespace, opts: LoadOptions) -> tuple[int, LoadOptions]:
    """--ray-actors and each actor's threads. Given, as given. Left out on a local Ray: one
    actor per core with 1 thread each (--threads N instead: cores // N actors), the layout
    measured fastest (BENCHMARKS.md, "Batch on Ray vs local": 2 actors x 1 thread 0.94 of a
    local batch, 1 actor x 2 threads 0.83). Left out on a cluster (an ADDRESS or
    RAY_ADDRESS): 1, since every actor loads the model and a cluster's memory is not ours to
    guess."""
    if args.ray_actors is not None:
        return args.ray_actors, opts
    if args.ray or os.environ.get("RAY_ADDRESS"):
        return 1, opts
    if args.threads is None:
        opts = replace(opts, threads=1)
    return max(1, (os.cpu_count() or 1) // max(1, opts.threads)), opts


def _run_todo(
    store: Any,
    run_id: int,
    todo: list[tuple[int, Any]],
    prepared: list[PreparedRequest],
    model_sha: str,
    model_path: Path,
    opts: LoadOptions,
    args: argparse.Namespace,
    sampling: Any,
    run_seed: int,
    system: str | None,
    total: int,
    already: int,
    speculative: str,
    progress: Any,
    draft: Path | None = None,
) -> int:
    from tui_infer.core.inference.batched import BatchRunner, default_parallel

    parallel = args.parallel or default_parallel()
    parallel = max(1, min(parallel, len(todo)))
    if opts.ctx // parallel < 64:
        from tui_infer.core.errors import TuiInferError

        raise TuiInferError(
            f"--ctx {opts.ctx} split over {parallel} sequences leaves {opts.ctx // parallel} "
            "tokens each; raise --ctx or lower --parallel"
        )
    by_id = {b.id: (pos, b) for pos, b in todo}
    runner: Any
    spec_kw: dict[str, str] = {"speculative": speculative}
    if getattr(args, "ray", None) is not None:  # the same loop, decoded by Ray actors
        from tui_infer.core.static.ray_batch import RayRunner

        actors, opts = _ray_layout(args, opts)
        runner = RayRunner.start(
            args.ray or None,
            model_path,
            model_sha,
            opts,
            parallel,
            args.kv_unified,
            actors,
            args.ray_send_model,
            log=lambda line: print(line, file=sys.stderr),
        )
        spec_kw = {}  # Ray's actors decode without drafts
        progress.speculative = "off"
    elif getattr(args, "ray_actors", None) is not None or getattr(args, "ray_send_model", False):
        from tui_infer.core.errors import TuiInferError

        raise TuiInferError("--ray-actors and --ray-send-model go with --ray [ADDRESS]")
    else:
        runner = BatchRunner.load(
            model_path, opts, parallel=parallel, kv_unified=args.kv_unified, draft=draft
        )
        if runner.draft_note:
            print(f"tui-infer: warning: {runner.draft_note}", file=sys.stderr)
    bar = _Bar(total, already, progress) if sys.stderr.isatty() else None
    try:
        items = [b for _, b in todo]
        for res in runner.run(items, sampling, run_seed, system, None, progress, **spec_kw):
            pos, item = by_id[res.id]
            store.add_prediction(
                run_id,
                item_id=res.id,
                position=pos,
                key=prepared[pos].key,
                model_sha256=model_sha,
                messages=item.messages,
                output=res.text,
                finish_reason=res.finish_reason,
                prompt_tokens=res.prompt_tokens,
                generated_tokens=res.generated_tokens,
                ttft_s=res.ttft_s,
                total_s=res.total_s,
                seed=res.seed,
                params=prepared[pos].params,
                mean_logprob=res.mean_logprob,
                min_logprob=res.min_logprob,
            )
            if bar:
                bar.update()
    finally:
        if bar:
            bar.stop()
        runner.close()
    return progress.generated_tokens


class _Bar:
    """Rich progress on stderr: prompts done/total, prompts/s, generation tok/s, ETA."""

    def __init__(self, total: int, already: int, progress: Any) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._p = progress
        self._already = already
        self._bar = Progress(
            TextColumn("batch"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            refresh_per_second=4,
        )
        self._task = self._bar.add_task("batch", total=total, completed=already, rate="")
        self._bar.start()

    def update(self) -> None:
        el = time.perf_counter() - self._p.started
        rate = (
            f"{self._p.done / el:.2f} prompts/s {self._p.generated_tokens / el:.1f} tok/s"
            if el > 0
            else ""
        )
        self._bar.update(self._task, completed=self._already + self._p.done, rate=rate)

    def stop(self) -> None:
        self._bar.stop()
