"""A vocabulary-free word tokenizer for instructions.

Why hashing: the tiny policy needs instruction ids without downloading a vocabulary
file (machines here are offline), and the ids must be identical in every process:
env workers, the actor and the learner tokenize independently, and checkpoints must
mean the same thing after a restart. Python's built-in ``hash()`` of a ``str`` is
salted per process (PYTHONHASHSEED), so it would give each process different ids;
``zlib.crc32`` is a fixed function of the bytes.
"""

from __future__ import annotations

import re
import zlib

import torch

_SPLIT = re.compile(r"[^0-9a-z]+")


class WordTokenizer:
    """Lowercase, split on non-alphanumerics, hash each word into ids ``1 .. vocab_size-1``.

    Id 0 is padding. Sequences are truncated or right-padded to ``max_tokens``.
    Distinct words may collide; with a few dozen task words and 1023 ids that is rare
    and harmless for a learned embedding.
    """

    def __init__(self, vocab_size: int = 1024, max_tokens: int = 16) -> None:
        if vocab_size < 2:
            raise ValueError(f"vocab_size must be at least 2, got {vocab_size}")
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
        self.vocab_size = vocab_size
        self.max_tokens = max_tokens

    def word_id(self, word: str) -> int:
        """The stable id of one (already lowercased) word."""
        return zlib.crc32(word.encode("utf-8")) % (self.vocab_size - 1) + 1

    def encode(self, text: str) -> list[int]:
        """One instruction -> its ids, truncated to ``max_tokens`` (not padded)."""
        words = [w for w in _SPLIT.split(text.lower()) if w]
        return [self.word_id(w) for w in words[: self.max_tokens]]

    def __call__(self, texts: list[str]) -> torch.Tensor:
        """Instructions -> int64 tensor B×max_tokens, 0-padded on the right."""
        out = torch.zeros(len(texts), self.max_tokens, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = self.encode(text)
            if ids:
                out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out
