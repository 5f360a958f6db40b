"""Rule rewards for demos and tests, named in configs as `tiller.tasks:<function>`.

A rule is `fn(prompt: str, response: str) -> float`: deterministic, cheap, readable.
"""

VOWELS = frozenset("aeiou")
TARGET_LENGTH = 16


def vowel_reward(prompt: str, response: str) -> float:
    """Vowels among the first 16 characters of the response, divided by 16 (0 to 1).

    An untrained tiny model emits letters roughly uniformly, about 0.1 to 0.15 of them
    vowels; an empty or short response cannot score high, so the policy cannot win by
    stopping early.
    """
    return sum(ch in VOWELS for ch in response[:TARGET_LENGTH]) / TARGET_LENGTH


def length_reward(prompt: str, response: str) -> float:
    """Characters in the response, divided by 16 and capped at 1: rewards saying something."""
    return min(len(response), TARGET_LENGTH) / TARGET_LENGTH


PLAIN_WORD_LETTERS = 6  # a word this long or shorter counts as plain
FULL_ANSWER_WORDS = 8  # fewer words than this scale the reward down: saying nothing is not plain


def plain_language_reward(prompt: str, response: str) -> float:
    """The share of the response's words with at most 6 letters, scaled down below 8 words (0 to 1).

    A dense rule for a real chat model (every answer gets its own value, so k = 2 samples rarely tie),
    cheap and readable: it asks for plainer wording, not a different task.
    """
    words = [w.strip(".,;:!?\"'()[]*-") for w in response.split()]
    words = [w for w in words if w]
    if not words:
        return 0.0
    plain = sum(len(w) <= PLAIN_WORD_LETTERS for w in words) / len(words)
    return plain * min(len(words), FULL_ANSWER_WORDS) / FULL_ANSWER_WORDS


def contains_z(prompt: str, response: str) -> bool:
    """A stand-in safety gate for demos and tests: fires when the response contains a "z"."""
    return "z" in response
