"""The chat / tool-call template: a conversation as token ids, with the loss on the model's own turns.

A conversation is a list of ``{"role", "content"}`` messages, roles ``system``, ``user``,
``assistant`` (the model) and ``tool`` (an observation).  Each message is its role prefix
(``"user: "``) and its content; assistant contents end with EOS (the model learns to stop
there), the others with a newline.  Only the tokens of assistant contents and their EOS
carry loss: the model is never trained to write the user's, the system's or a tool's text.
"""
from __future__ import annotations

from .tokenizer import Tokenizer

ROLES = ("system", "user", "assistant", "tool")


def _prefix(role: str) -> str:
    if role not in ROLES:
        raise ValueError(f"unknown chat role {role!r}; roles are {', '.join(ROLES)}")
    return f"{role}: "


def render(messages: list[dict], tokenizer: Tokenizer) -> tuple[list[int], list[bool]]:
    """(token ids, loss mask): BOS, then every message; the mask is True on assistant contents + EOS."""
    ids, mask = [tokenizer.bos_id], [False]
    for message in messages:
        prefix = tokenizer.encode(_prefix(message["role"]))
        content = tokenizer.encode(message["content"])
        own = message["role"] == "assistant"
        end = [tokenizer.eos_id] if own else tokenizer.encode("\n")
        ids += prefix + content + end
        mask += [False] * len(prefix) + [own] * (len(content) + len(end))
    return ids, mask


def prompt(messages: list[dict], tokenizer: Tokenizer) -> list[int]:
    """The ids that ask the model for its next turn: the conversation, then ``"assistant: "``."""
    ids, _ = render(messages, tokenizer)
    return ids + tokenizer.encode(_prefix("assistant"))
