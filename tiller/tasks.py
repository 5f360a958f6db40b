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


def contains_z(prompt: str, response: str) -> bool:
    """A stand-in safety gate for demos and tests: fires when the response contains a "z"."""
    return "z" in response
