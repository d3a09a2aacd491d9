"""Output constraints for vLLM structured outputs (FLIP_STRUCTURED_OUTPUT): the paper prompt's
JSON shape as a regular expression, so a small model cannot wander off the format.

The prompt may already start the assistant's answer (its `answer_prefix`); the constraint then
covers only the rest of the object. An answer prefix that is not the start of this shape gets no
constraint (None) rather than a constraint the model could never satisfy.
"""

from __future__ import annotations

import re

# The characters a JSON string may hold: no bare quote, backslash or control character.
_JSON_STRING = r'(?:[^"\\\x00-\x1f]|\\["\\/bfnrt])*'
_LITERAL_HEAD = '{"REASONING": "'


def _literal(text: str) -> str:
    """Escape regex metacharacters only (re.escape also escapes spaces, which xgrammar warns about)."""
    return re.sub(r"([\\^$.|?*+()\[\]{}])", r"\\\1", text)


def paper_output_regex(answer_prefix: str) -> str | None:
    """Regex for what the model writes after `answer_prefix` in paper mode, or None."""
    tail = _JSON_STRING + _literal('", "INFERRED INSTRUCTION": "') + _JSON_STRING + _literal('"}')
    if answer_prefix == "":
        return _literal(_LITERAL_HEAD) + tail
    if answer_prefix == _LITERAL_HEAD:
        return tail
    return None
