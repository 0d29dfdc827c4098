"""Reading the prompt: its text, its last user message, and its deterministic token count.

The count is NOT a tokenizer. It is a rule simple enough that a test can compute the expected
`prompt_tokens` by hand:

    prompt_tokens = sum over messages of (number of whitespace-separated words in its text + 4)

where a message's text is its `content` string, or the `text` of its text parts when `content` is a
list of parts; anything else (images, tool calls, tools, response_format) counts as no words. The
+4 per message stands for the role and framing tokens a real chat template adds.
"""

from __future__ import annotations

from typing import Any

PER_MESSAGE_TOKENS = 4


def text_of(content: Any) -> str:
    """The text of a message `content`: a string, or the text parts of a content-part list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [part.get("text", "") for part in content if isinstance(part, dict)]
        return "\n".join(text for text in texts if isinstance(text, str))
    return ""


def count_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    return sum(len(text_of(message.get("content")).split()) + PER_MESSAGE_TOKENS for message in messages)


def last_user_text(messages: list[dict[str, Any]]) -> str:
    """Where a `[sim ...]` directive is looked for: the gateway may add system or assistant
    messages around the user's, but it does not rewrite the user's own last message."""
    for message in reversed(messages):
        if message.get("role") == "user":
            return text_of(message.get("content"))
    return ""
