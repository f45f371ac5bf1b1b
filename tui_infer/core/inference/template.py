"""The chat template: the GGUF's own, rendered in Jinja's sandbox.

llama-cpp-python's Jinja2ChatFormatter renders in ImmutableSandboxedEnvironment
(the fix for CVE-2024-34359); we keep it and turn every template failure into a
one-line error. A model with no template falls back to ChatML, with a warning
the UI shows.
"""

from __future__ import annotations

from tui_infer.core.errors import TuiInferError
from tui_infer.core.inference.types import Message

CHATML_FALLBACK = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class TemplateError(TuiInferError):
    pass


class ChatTemplate:
    def __init__(self, source: str | None, bos_token: str, eos_token: str) -> None:
        self.from_model = bool(source)
        self.source = source or CHATML_FALLBACK
        self.warning = (
            None
            if self.from_model
            else "this model has no chat template; using ChatML, replies may be poor"
        )
        from jinja2 import TemplateError as JinjaError
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self._jinja_error = JinjaError
        try:
            self._formatter = Jinja2ChatFormatter(
                template=self.source, eos_token=eos_token, bos_token=bos_token
            )
        except JinjaError as exc:
            raise TemplateError(f"the model's chat template does not parse: {exc}") from None

    def render(self, messages: list[Message]) -> str:
        from jinja2.exceptions import SecurityError

        try:
            result = self._formatter(messages=[m.as_dict() for m in messages])  # type: ignore[misc]
        except SecurityError as exc:
            raise TemplateError(
                f"the chat template tried something unsafe and was stopped: {exc}"
            ) from None
        except (self._jinja_error, ValueError, TypeError, KeyError, IndexError) as exc:
            raise TemplateError(f"the chat template failed on this conversation: {exc}") from None
        except RecursionError:
            raise TemplateError("the chat template recursed too deep; it is broken") from None
        return str(result.prompt)
