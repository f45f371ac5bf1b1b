"""The child process that renders chat templates: a template is code from a stranger.

Run as a script (it imports only the standard library and Jinja2, never tui_infer or
llama_cpp, so it starts in ~60 ms). The parent (`template.py`) sends one JSON request per
line on stdin and reads one JSON answer per line on stdout:

    {"op": "render", "source": ..., "bos": ..., "eos": ..., "messages": [...],
     "max_chars": N}
    -> {"prompt": "..."} or {"error": "parse|render|security|output|memory", "message": ...}

What bounds a render:
- memory: RLIMIT_AS caps this process's address space at what it used once started plus
  the limit given in argv[1] (bytes); a template that allocates past it gets MemoryError
  here, or is killed, and the parent says so;
- output: the template is rendered with `generate()`, and the render stops once it has
  produced more than `max_chars` characters;
- time: the parent waits `time_s` for the answer and kills this process past it (a
  template can loop without producing anything);
- the sandbox: Jinja's ImmutableSandboxedEnvironment (no attribute escapes, no mutation
  of the messages), with `*`, `**` and `+` checked before they build a huge string, list
  or number, and `range` capped by the sandbox itself.

The environment matches llama-cpp-python's Jinja2ChatFormatter (and so Transformers'):
trim_blocks, lstrip_blocks, loop controls, `{% generation %}` passed through, `tojson`,
`raise_exception`, `strftime_now`, `add_generation_prompt=True`.
"""

from __future__ import annotations

import json
import sys
from collections import OrderedDict
from datetime import datetime
from typing import Any


def _set_memory_limit(extra_bytes: int) -> None:
    try:
        import resource

        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[0])
        import os

        base = pages * os.sysconf("SC_PAGE_SIZE")
    except (ImportError, OSError, ValueError):
        return  # no /proc (macOS): the parent's time bound still holds
    limit = base + extra_bytes
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _environment(max_chars: int) -> Any:
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class IgnoreGenerationTags(jinja2.ext.Extension):
        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            parser.stream.skip(1)
            return parser.parse_statements(("name:endgeneration",), drop_needle=True)

    def size(x: Any) -> int:
        return len(x) if isinstance(x, (str, bytes, list, tuple)) else 1

    class BoundedEnvironment(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "**", "+"})

        def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
            if operator == "*":
                for seq, n in ((left, right), (right, left)):
                    if isinstance(n, int) and size(seq) * max(n, 0) > max_chars:
                        raise _TooBig(
                            f"a repetition would build {size(seq) * n:,} items, past the "
                            f"bound of {max_chars:,}"
                        )
            elif operator == "**":
                if isinstance(right, (int, float)) and abs(right) > 1024:
                    raise _TooBig(f"an exponent of {right} is past the bound of 1024")
            elif operator == "+" and size(left) + size(right) > max_chars:
                raise _TooBig(f"a concatenation would pass the bound of {max_chars:,}")
            return super().call_binop(context, operator, left, right)

    env = BoundedEnvironment(
        loader=jinja2.BaseLoader(),
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[IgnoreGenerationTags, jinja2.ext.loopcontrols],
    )

    def tojson(
        x: Any,
        ensure_ascii: bool = False,
        indent: int | None = None,
        separators: tuple[str, str] | None = None,
        sort_keys: bool = False,
    ) -> str:
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    env.filters["tojson"] = tojson
    return env


class _OutputTooLong(Exception):
    pass


class _TooBig(Exception):
    """An operation that would build a value past the bound, refused before it runs."""


def _raise_exception(message: str) -> None:
    raise ValueError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def main() -> int:
    memory = int(sys.argv[1]) if len(sys.argv) > 1 else 256 << 20
    import jinja2  # before the limit: the import itself is not the template's cost
    from jinja2.exceptions import SecurityError

    envs: dict[int, Any] = {}
    compiled: OrderedDict[tuple[str, int], Any] = OrderedDict()
    _set_memory_limit(memory)
    for line in sys.stdin:
        try:
            req = json.loads(line)
            max_chars = int(req.get("max_chars", 4 << 20))
            env = envs.get(max_chars) or envs.setdefault(max_chars, _environment(max_chars))
            key = (req["source"], max_chars)
            template = compiled.get(key)
            if template is None:
                try:
                    template = env.from_string(req["source"])
                except jinja2.TemplateSyntaxError as exc:
                    answer: dict[str, Any] = {"error": "parse", "message": str(exc)}
                    print(json.dumps(answer), flush=True)
                    continue
                compiled[key] = template
                if len(compiled) > 16:
                    compiled.popitem(last=False)
            else:
                compiled.move_to_end(key)
            if req.get("op") == "compile":
                print(json.dumps({"prompt": ""}), flush=True)
                continue
            pieces: list[str] = []
            produced = 0
            for piece in template.generate(
                messages=req["messages"],
                bos_token=req["bos"],
                eos_token=req["eos"],
                raise_exception=_raise_exception,
                add_generation_prompt=True,
                functions=None,
                function_call=None,
                tools=None,
                tool_choice=None,
                strftime_now=_strftime_now,
            ):
                produced += len(piece)
                if produced > max_chars:
                    raise _OutputTooLong
                pieces.append(piece)
            answer = {"prompt": "".join(pieces)}
        except _OutputTooLong:
            answer = {"error": "output", "message": f"more than {max_chars:,} characters"}
        except MemoryError:
            pieces = []
            answer = {"error": "memory", "message": "it ran out of its memory bound"}
        except _TooBig as exc:
            answer = {"error": "memory", "message": str(exc)}
        except SecurityError as exc:
            answer = {"error": "security", "message": str(exc)}
        except RecursionError:
            answer = {"error": "render", "message": "it recursed too deep"}
        except (jinja2.TemplateError, ValueError, TypeError, KeyError, IndexError) as exc:
            answer = {"error": "render", "message": str(exc) or type(exc).__name__}
        except Exception as exc:  # any other failure of a stranger's code: say what it was
            answer = {"error": "render", "message": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(answer), flush=True)  # ASCII: a lone surrogate cannot break it
    return 0


if __name__ == "__main__":
    sys.exit(main())
