"""Chat roles as text: each role's prefix and suffix, read off the tokenizer's own chat template.

Every executor uses this one definition: the in-process executor writes the strings directly,
NativeBackend hands them to SGLang's interpreter as a `ChatTemplate`, and `aspd serve` publishes
them in /get_model_info for AspdEndpoint, so a program's text is the same on every backend.
`chat_ids` is the other way to a chat: the template applied to messages, as the ids the model
answers after (the engine's prompts, the server's chat completions, the training samples). Pure
Python (the tokenizer is only asked to render a template).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

ROLES = ("system", "user", "assistant")
_MARK = "\x01{}\x01"


class RoleFormat(BaseModel):
    model_config = ConfigDict(frozen=True)
    prefix: dict[str, str]
    suffix: dict[str, str]
    default_system: str | None = None  # written before the first non-system message

    @classmethod
    def plain(cls) -> RoleFormat:
        """For models without a chat template (the same strings as SGLang's "default" template)."""
        return cls(prefix={"system": "SYSTEM:", "user": "USER:", "assistant": "ASSISTANT:"},
                   suffix={r: "\n" for r in ROLES})


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def chat_ids(tokenizer, messages: str | list[dict[str, str]]) -> list[int]:
    """The chat template over `messages` (role/content dicts; a string is one user message) with the
    generation prompt, as token ids: what the model answers after."""
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)  # newer tokenizers return an encoding


def user_prompt(tokenizer, user: str, system: str | None = None) -> list[int]:
    """The user's message in the chat template, as a chat answer starts; a model without one gets it plain."""
    if not has_chat_template(tokenizer):
        return tokenizer.encode(user, add_special_tokens=False)
    return chat_ids(tokenizer, ([{"role": "system", "content": system}] if system else [])
                    + [{"role": "user", "content": user}])


def role_format(tokenizer) -> RoleFormat:
    """Derive per-role prefix/suffix strings by rendering marked messages through the template."""
    if not has_chat_template(tokenizer):
        return RoleFormat.plain()

    def render(roles: list[str]) -> str:
        msgs = [{"role": r, "content": _MARK.format(r)} for r in roles]
        return tokenizer.apply_chat_template(msgs, tokenize=False)

    full = render(list(ROLES))
    prefix, suffix, pos = {}, {}, 0
    for i, role in enumerate(ROLES):
        mark = _MARK.format(role)
        alone = render(list(ROLES[:i + 1]))  # what follows the content when this role comes last
        suffix[role] = alone[alone.index(mark) + len(mark):]
        start = full.index(mark, pos)
        prefix[role] = full[pos:start]
        pos = start + len(mark) + len(suffix[role])
    # A template that adds a system message of its own when none is given (SmolLM2 does).
    default = None
    head = render(["user"]).split(_MARK.format("user"))[0]
    tail = suffix["system"] + prefix["user"]
    if head != prefix["user"] and head.startswith(prefix["system"]) and head.endswith(tail):
        default = head[len(prefix["system"]):len(head) - len(tail)]
    return RoleFormat(prefix=prefix, suffix=suffix, default_system=default)

