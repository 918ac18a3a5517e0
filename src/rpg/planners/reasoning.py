"""Reasoning blocks in LLM replies: what the plan parsers strip before reading an answer.

Its own module because both the JSON parser (:mod:`rpg.planners.parsing`) and the RPG text
format (:mod:`rpg.planners.template`) need it, and the JSON parser falls back to the text format.
"""

from __future__ import annotations

import re

__all__ = ["strip_reasoning"]

_THINK_BLOCK = re.compile(r"<think(?:ing)?>.*?</think(?:ing)?>", re.IGNORECASE | re.DOTALL)
_THINK_OPEN = re.compile(r"<think(?:ing)?>", re.IGNORECASE)
_THINK_CLOSE = re.compile(r"</think(?:ing)?>", re.IGNORECASE)


def strip_reasoning(text: str) -> str:
    """Drop ``<think>…</think>`` blocks, everything before a lone ``</think>``, and open tags.

    Reasoning models (DeepSeek-R1 style) put their chain of thought in such blocks; some chat
    templates emit the opening tag themselves, so only the closing one reaches us. A block that
    was never closed (the model ran out of tokens) loses only its tag, since what follows may be
    the answer. Text without reasoning comes back unchanged.
    """
    cleaned = _THINK_BLOCK.sub("\n", text)
    close = list(_THINK_CLOSE.finditer(cleaned))
    if close:
        cleaned = cleaned[close[-1].end() :]
    cleaned = _THINK_OPEN.sub("\n", cleaned)
    return cleaned.strip() if cleaned != text else text
