"""Choosing the next token, and turning tokens into text that respects stop sequences."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

# The decoder's mark for bytes that do not form a whole character yet.
REPLACEMENT = "\ufffd"


@dataclass(frozen=True)
class SamplingParams:
    """How one choice is generated."""

    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


def new_generator(seed: int | None) -> torch.Generator:
    """A generator of its own per choice: a seeded request repeats whatever else runs."""
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def next_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """Greedy at temperature 0 (as transformers' generate without sampling); otherwise a
    draw from the temperature-scaled distribution cut to its top_p nucleus."""
    if params.temperature == 0:
        return int(logits.argmax())
    logits = logits.float()
    # Shifted so the largest is 0 first: a tiny temperature (the API takes any above 0) then
    # sends the others to -inf, never the largest to inf (inf - inf would be NaN).
    probs = torch.softmax((logits - logits.max()) / params.temperature, dim=-1)
    if params.top_p < 1:
        sorted_probs, order = torch.sort(probs, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (at least one token).
        outside = torch.cumsum(sorted_probs, dim=-1) - sorted_probs >= params.top_p
        outside[0] = False  # a top_p below float32's range rounds to 0 and would cut it too
        sorted_probs[outside] = 0
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))


@dataclass
class TextTracker:
    """The text of a choice as its tokens arrive: what may be sent now, and where a stop
    sequence ends it. Text that could be the start of a stop sequence, or half a character,
    is held back until the next tokens decide."""

    stop: tuple[str, ...]
    sent: str = ""
    stopped: bool = field(default=False, init=False)

    def advance(self, text: str) -> str:
        """The new text to send, given the whole decoded text so far."""
        for sequence in self.stop:
            at = text.find(sequence, max(0, len(self.sent) - len(sequence) + 1))
            if at != -1:
                self.stopped = True
                return self._send(text[:at])
        return self._send(text[: len(text) - self._held_back(text)])

    def flush(self, text: str) -> str:
        """At the end of generation: everything not sent yet (a half character included)."""
        return self._send(text)

    def _held_back(self, text: str) -> int:
        held = 1 if text.endswith(REPLACEMENT) else 0
        for sequence in self.stop:
            for length in range(min(len(sequence) - 1, len(text)), 0, -1):
                if text.endswith(sequence[:length]):
                    held = max(held, length)
                    break
        return held

    def _send(self, upto: str) -> str:
        if len(upto) <= len(self.sent):
            return ""
        delta, self.sent = upto[len(self.sent) :], upto
        return delta
