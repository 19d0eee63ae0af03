"""The chat roles of `runtime.roles` as SGLang's interpreter takes them: a `ChatTemplate`.

NativeBackend and AspdEndpoint hand the interpreter the model's own roles this way, so a program's
text is the same on every backend; the runtime itself never builds an SGLang object.
"""

from __future__ import annotations

from sglang.lang.chat_template import ChatTemplate, ChatTemplateStyle

from runtime.roles import RoleFormat


def sglang_template(fmt: RoleFormat) -> ChatTemplate:
    """The roles as an SGLang `ChatTemplate` (plain style: the interpreter writes the strings)."""
    return ChatTemplate(name="aspd", default_system_prompt=fmt.default_system,
                        role_prefix_and_suffix={r: (fmt.prefix[r], fmt.suffix[r]) for r in fmt.prefix},
                        style=ChatTemplateStyle.PLAIN)
