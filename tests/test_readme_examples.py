"""Every `tui-infer` command in the README's shell blocks is either run here, as a user
would type it (in a scratch folder holding a copy of `assets/`, with its own config, data
and state directories, the config being `assets/config.toml`), or named in SKIP with the
reason it cannot run in a test. A command the README gains that is in neither table fails
`test_every_readme_command_is_run_or_skipped`, and a table entry the README no longer has
fails it too, so the examples cannot go stale.

The commands run in README order against one data directory, as a reader following the
README would: the batches make runs 1 to 3 (`store show 3` is the CSV batch, whose ids are
q17 and q42), the `run`s leave the misses that `store misses` writes, and so on. To keep the
test short, some commands get flags appended (argparse takes the last value of a repeated
flag: `--max-tokens 8` caps what the README's command generates) and a few placeholders
are replaced by real values (REPLACE); the README's own text is what is parsed either way.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tui_infer.core.config import load_keys, load_presets, load_settings, template_override

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
ASSETS = REPO / "assets"
BIN = Path(sys.executable).parent
SHORT = ("--max-tokens", "8")  # appended: caps generation, the README's text is unchanged
TINY_BENCH = ("-p", "16", "-n", "4", "-r", "1")  # appended to bench commands


@dataclass(frozen=True)
class Run:
    extra: tuple[str, ...] = ()  # appended to the command's arguments
    status: int = 0  # the exit status the README documents for it here
    replace: dict[str, str] = field(default_factory=dict)  # placeholder -> real argument
    why: str = ""  # why the extra, status or replace


# README command (comment dropped, spaces collapsed) -> how it is run, in README order.
RUN: dict[str, Run] = {
    'tui-infer run "Why is the sky blue?"': Run(SHORT),
    'echo "Summarise this" | tui-infer run': Run(SHORT),
    'tui-infer run --json --temperature 0 "2+2?"': Run(SHORT),
    "tui-infer doctor": Run(),
    "tui-infer models list --json": Run(),
    'tui-infer run --json-schema assets/examples/person.schema.json "Describe a person"': Run(
        ("--max-tokens", "120")
    ),
    'tui-infer run --grammar assets/examples/yesno.gbnf "Is water wet?"': Run(
        ("--max-tokens", "60")
    ),
    'tui-infer run --preset precise "2+2?"': Run(SHORT),
    'tui-infer run -m gemma-3-270m-q4_k_m.gguf --template gemma "Hi"': Run(SHORT),
    'tui-infer run -m gemma-3-270m-q4_k_m.gguf --raw "The capital of France is"': Run(SHORT),
    "tui-infer batch assets/examples/prompts.jsonl -o out.jsonl --json-schema "
    "assets/examples/person.schema.json --preset precise": Run(("--max-tokens", "30")),
    "tui-infer batch assets/examples/prompts.jsonl -o answers.jsonl": Run(SHORT),
    "tui-infer batch assets/examples/questions.csv --column question -o out.jsonl "
    "--max-tokens 128 --publish": Run(
        SHORT,
        status=1,
        why="cut at 8 tokens, every answer is flagged `length`: the gate refuses to publish",
    ),
    "tui-infer store runs": Run(),
    "tui-infer store show 3": Run(),
    "tui-infer store reject 3 q17 q42": Run(),
    "tui-infer store verify 3 --resample 5%": Run(),
    "tui-infer store publish 3": Run(),
    "tui-infer store rollback": Run(),
    "tui-infer store stats": Run(),
    "tui-infer store export 3 -o run3.jsonl": Run(),
    "tui-infer store misses -o next.jsonl": Run(),
    "tui-infer store misses -o next.jsonl --top 100 --min-count 3": Run(),
    "tui-infer batch next.jsonl -o next.out.jsonl --publish": Run(
        status=2, why="no request was missed 3 times here: next.jsonl is empty (bad input)"
    ),
    "tui-infer store drift --by day": Run(),
    "tui-infer batch assets/examples/openai_batch.jsonl -o results.jsonl": Run(),
    'tui-infer run --temperature 0 "What is 2+2?"': Run(SHORT),
    "tui-infer store verify 3": Run(),
    "tui-infer store verify 3 --resample 5% --check-regex '^\\{' --check-json-schema "
    "assets/examples/answer.schema.json --check-cmd 'python assets/examples/grade.py'": Run(),
    "tui-infer store show 3 --flagged": Run(),
    "tui-infer store publish 3 --force": Run(),
    "tui-infer store drift": Run(),
    "tui-infer store drift -m SmolLM2 --by day --last 14 --limit 20": Run(),
    "tui-infer store drift --json": Run(),
    "tui-infer ps": Run(),
    "tui-infer stop 9000": Run(status=2, why="no server listens on 9000 here"),
    "tui-infer bench": Run(TINY_BENCH),
    "tui-infer bench -p 512 -n 128 -r 5 -t 1,2 --kv-type f16,q8_0": Run(TINY_BENCH),
    "tui-infer bench -d 1024": Run((*TINY_BENCH, "-d", "32")),
    "tui-infer bench history": Run(),
    "tui-infer bench compare 3 7": Run(status=4, why="6 bench runs here: run 7 does not exist"),
    "tui-infer bench --json": Run(TINY_BENCH),
    "tui-infer bench --csv": Run(TINY_BENCH),
    "tui-infer bench --md": Run(TINY_BENCH),
    "tui-infer models list": Run(),
    "tui-infer models info NAME|PATH": Run(replace={"NAME|PATH": "SmolLM2-135M-Instruct.Q4_1"}),
    "tui-infer models import /media/usb/m.gguf": Run(
        replace={"/media/usb/m.gguf": "m.gguf"}, why="m.gguf: a copy of the default model"
    ),
    "tui-infer models import --copy m.gguf": Run(),
    "tui-infer models verify [NAME]": Run(replace={"[NAME]": ""}, why="every model"),
    "tui-infer models rm NAME [--yes]": Run(replace={"NAME": "m", "[--yes]": "--yes"}),
}

# README command -> why it is not run in a test
SKIP: dict[str, str] = {
    "tui-infer": "opens the TUI (tests/test_app.py drives it with Pilot)",
    "tui-infer -m path/to/model.gguf": "opens the TUI",
    "tui-infer -m bartowski/Qwen2.5-0.5B-Instruct-GGUF:q4_k_m": "opens the TUI on a hub model "
    "(tests/test_hub_refs.py resolves such references)",
    'tui-infer run --pull -m hf.co/OWNER/REPO:Q4_K_M "Hi"': "downloads from the hub "
    "(tests/test_hub_refs.py, against a local HTTP server)",
    "tui-infer batch assets/examples/prompts.jsonl -o answers.jsonl --ray": "starts a local "
    "Ray instance, tens of seconds (tests/test_ray_batch.py)",
    "tui-infer batch assets/examples/prompts.jsonl -o answers.jsonl --ray head:6379 "
    "--ray-actors 4 --threads 8": "needs a Ray cluster at head:6379",
    "tui-infer serve": "serves in the foreground until stopped (tests/test_serve_cli.py)",
    "tui-infer serve --port 9000 --parallel 4 --serve store": "serves in the foreground",
    "tui-infer serve --serve store-any-sample": "serves in the foreground",
    "tui-infer serve --host 0.0.0.0 --api-key-file ~/.config/tui-infer/key --cors "
    "http://localhost:3000": "serves in the foreground, on every interface",
    "tui-infer bench --json | --csv | --md": "three alternatives in one line; run each below",
    "tui-infer models quantize NAME|PATH Q4_K_M": "a quantization takes minutes on 2 cores "
    "(tests/test_quantize.py)",
    "tui-infer models quantize NAME|PATH TYPE": "a synopsis (tests/test_quantize.py)",
    "tui-infer bench quality REF OTHER... [--prompts FILE] [--kv-types f16,q8_0,q4_0] [--json]": (
        "a synopsis; a quality run takes minutes (tests/test_bench_quality.py)"
    ),
    "tui-infer models search llama": "asks the real hub (tests/test_hub.py: a local server)",
    "tui-infer models files OWNER/REPO [--headers]": "asks the real hub (tests/test_hub.py)",
    "tui-infer models pull OWNER/REPO [FILE|QUANT]": "downloads from the real hub "
    "(tests/test_hub.py)",
    "tui-infer bundle export /media/usb/bundle": "copies ~150 MB of wheels and models "
    "(tests/test_bundle.py)",
    "tui-infer-venv/bin/tui-infer bundle import /media/usb/bundle": "needs a bundle's venv "
    "(tests/test_bundle_install.py)",
    'tui-infer-venv/bin/tui-infer run --temperature 0 "..."': "needs a bundle's venv "
    "(tests/test_bundle_install.py)",
}

# Commands the README shows as alternatives, run one by one (in place of the skipped line).
ALTERNATIVES = {
    "tui-infer bench --json | --csv | --md": [
        "tui-infer bench --json",
        "tui-infer bench --csv",
        "tui-infer bench --md",
    ]
}


def _strip_comment(line: str) -> str:
    """The line up to a `#` that starts a shell comment (outside quotes, after a space)."""
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
        elif ch == "\\" and i + 1 < len(line):
            continue
    return line


def readme_commands(text: str | None = None) -> list[str]:
    """Each shell command of the README's ```sh blocks that runs tui-infer, in order, as one
    line (continuations joined, the comment dropped, spaces collapsed); repeats kept."""
    text = README.read_text(encoding="utf-8") if text is None else text
    commands: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            command = " ".join(_strip_comment(line).split())
            words = command.split()
            if any(w == "tui-infer" or w.endswith("/tui-infer") for w in words):
                commands.append(command)
    return commands


def test_commands_are_parsed_as_a_shell_reads_them() -> None:
    sample = (
        "```sh\ntui-infer run 'a # b'   # comment\n"
        "tui-infer store verify 3 --x \\\n    --y z\nmake run\n```\n"
    )
    assert readme_commands(sample) == [
        "tui-infer run 'a # b'",
        "tui-infer store verify 3 --x --y z",
    ]


def test_every_readme_command_is_run_or_skipped() -> None:
    commands = readme_commands()
    assert len(commands) > 40
    missing = [c for c in commands if c not in RUN and c not in SKIP]
    assert not missing, (
        "README commands neither run nor skip-listed in tests/test_readme_examples.py: "
        + "; ".join(missing)
    )
    alternatives = [a for each in ALTERNATIVES.values() for a in each]
    stale = [c for c in [*RUN, *SKIP] if c not in commands and c not in alternatives]
    assert not stale, "entries the README no longer has: " + "; ".join(stale)


def test_the_sample_config_loads_with_the_real_loader(model_path: Path) -> None:
    """assets/config.toml is the README's sample config, and loads as is."""
    config = ASSETS / "config.toml"
    section = README.read_text(encoding="utf-8").split("## Configuration and files", 1)[1]
    block = re.search(r"```toml\n(.*?)```", section, re.S)
    assert block is not None
    assert config.read_text(encoding="utf-8") == block.group(1)
    settings = load_settings(config, environ={})
    assert settings.model == "SmolLM2-135M-Instruct.Q4_1"
    assert settings.ctx == 4096 and settings.overflow == "ask"
    assert load_presets(config)["precise"] == {"temperature": 0.1, "system": "Be brief."}
    assert load_keys(config) == {"toggle_sidebar": "ctrl+l"}
    override = template_override(config, model_path)
    assert override is not None and "<|im_start|>" in override


def _argv(command: str, run: Run) -> tuple[list[str], str | None]:
    """The argv to execute (tui-infer from this venv) and the stdin text, if piped."""
    stdin = None
    if " | " in command:
        source, command = command.split(" | ", 1)
        stdin = " ".join(shlex.split(source)[1:]) + "\n"  # echo's words
    words = [run.replace.get(w, w) for w in shlex.split(command)]
    words = [w for w in words if w]
    assert words[0] == "tui-infer", command
    return [str(BIN / "tui-infer"), *words[1:], *run.extra], stdin


@pytest.mark.timeout(900)  # some 50 commands, each its own process and model load
def test_readme_commands_run(tmp_path: Path, model_path: Path, gemma_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(ASSETS / "examples", work / "assets" / "examples")
    (work / "gemma-3-270m-q4_k_m.gguf").symlink_to(gemma_path)
    shutil.copyfile(model_path, work / "m.gguf")
    config = Path(os.environ["TUI_INFER_CONFIG"])
    config.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ASSETS / "config.toml", config)
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # `python` in --check-cmd
    env["TUI_INFER_THREADS"] = "2"

    failures: list[str] = []
    for command in readme_commands():
        todo = [command] if command in RUN else ALTERNATIVES.get(command, [])
        for each in todo:
            run = RUN[each]
            argv, stdin = _argv(each, run)
            started = time.monotonic()
            proc = subprocess.run(
                argv,
                cwd=work,
                env=env,
                input=stdin,
                capture_output=True,
                text=True,
                timeout=300,
            )
            if os.environ.get("README_EXAMPLES_TRACE"):
                took = time.monotonic() - started
                print(f"{proc.returncode} {took:.1f}s {each}", file=sys.stderr)
            if proc.returncode != run.status:
                tail = (proc.stderr.strip() or proc.stdout.strip())[-400:]
                failures.append(f"{each!r}: exit {proc.returncode}, expected {run.status}: {tail}")
    assert not failures, "\n".join(failures)
    # what the examples wrote is there
    assert (work / "results.jsonl").read_text(encoding="utf-8").count("custom_id") == 3
    assert (work / "run3.jsonl").exists()
    assert (work / "next.jsonl").exists()
