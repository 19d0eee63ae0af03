"""Steering the base model into parallel structure, in its own words.

The base model's free answers hold little parallel structure (forking every list and paragraph run
would give ~1.2-1.3x), and asking for a list in a system prompt is ignored. Starting the answer for
it does work: after "Here are the key points:\\n\\n1. **" it writes a bold-title list. So list-like
prompts get one of a few such openings; the model writes the rest, and the training sample is the
plain prompt -> opening + answer (the steering is not in the prompt: the adapter learns to open
that way itself). Other prompts are never steered: the adapter must also learn when not to fork.

The intro is dropped from the training answer (the adapter must not learn a stock phrase), so those
answers open with their list, which the base model seldom does. `own_opening` is the alternative
under test (`bench/steered_control.py`): the base model's own first line, then the list.
"""

from __future__ import annotations

import hashlib
import re

from .prompts import PROSE_FORM, Prompt

INTROS = ("Here are the key points:", "Sure! Here are a few things to consider:", "Here is what you need to know:",
          "Great question! Here are the main points:", "Let's break it down:", "Here's an overview:")
STYLES = ("\n\n1. **", "\n\n1. **", "\n\n1. **", "\n\n**")  # numbered bold titles 3:1 over bold paragraphs


def steered(p: Prompt) -> bool:
    """Whether `p`'s answer is steered into a list: a list-like prompt whose right form is not prose
    (a letter or a monologue steered into a list reads as a list of names: `prompts.PROSE_FORM`)."""
    return p.kind == "listlike" and p.source.removeprefix("template:") not in PROSE_FORM


def opening(p: Prompt) -> str:
    """The forced start of the answer ('' for prompts that stay unsteered), fixed per prompt id."""
    if not steered(p):
        return ""
    h = int.from_bytes(hashlib.sha256(p.id.encode()).digest()[:8], "big")
    return INTROS[h % len(INTROS)] + STYLES[(h // len(INTROS)) % len(STYLES)]


def answer(response: str, opening_text: str) -> str:
    """A steered `response` without its opening's intro line: it starts where the list does. An
    opening without an intro line ("1. **", or an own-intro answer's forced "\n\n1. **") cuts nothing."""
    intro = opening_text.split("\n\n", 1)[0] if "\n\n" in opening_text else ""
    if not intro or not response.startswith(intro):
        return response
    return response[len(intro):].lstrip("\n")


LIST_START = "1. **"
_LIST_OR_HEADING = re.compile(r"\s*(?:\d+[.)]|[-*#•])")


def own_intro(own_answer: str, max_chars: int = 300, capped: bool = False) -> str:
    """The base model's own first line (`own_answer`: its unsteered answer, or just that line) as the
    intro of a steered list: the line, or its first sentence where the line runs past `max_chars` or
    was `capped` (cut by a token cap before its end); '' where there is none to keep, or the answer
    opens with a list or heading of its own."""
    line = own_answer.strip().split("\n", 1)[0].strip()
    if len(line) > max_chars or capped:
        m = re.search(r"[.!?:](?=\s)", line)
        line = line[:m.end()] if m and m.end() <= max_chars else ""
    return "" if _LIST_OR_HEADING.match(line) else line


def list_start(intro: str) -> str:
    """What is forced after an own intro: the list, a paragraph below it (right away without one)."""
    return f"\n\n{LIST_START}" if intro else LIST_START


def own_opening(own_answer: str, max_chars: int = 300, capped: bool = False) -> str:
    """The whole start of an own-intro answer: `own_intro`, then `list_start`."""
    intro = own_intro(own_answer, max_chars, capped)
    return intro + list_start(intro)
