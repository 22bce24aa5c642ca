"""Text samples ({"text": str}) for language-model training: an embedded procedural corpus and plain text files.

ProceduralText  sentences from a small grammar, each a pure function of (seed, split, index): short facts about
                objects and their colours, counting sequences and sums ("three plus four is seven."), so that a
                model has something to learn; nothing is downloaded.
TextFile        a UTF-8 .txt file, one sample per paragraph (blank-line separated; a file without blank lines gives
                one sample per line), or a .jsonl file with a "text" on every line.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from zoo.errors import ConfigError, InputError

SPLITS = {"train": 0, "eval": 1, "test": 2}
NUMBERS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
           "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen")
THINGS = ("cat", "dog", "bird", "fish", "tree", "house", "car", "book", "lamp", "cup")
COLOURS = ("red", "green", "blue", "yellow", "black", "white")
PLACES = ("on the table", "in the garden", "near the river", "under the bed", "by the door")


class ProceduralText(Dataset):
    """`num_samples` short paragraphs of `sentences` sentences each, deterministic in (seed, split, index)."""

    def __init__(self, num_samples: int = 2000, sentences: int = 4, seed: int = 0, split: str = "train"):
        if split not in SPLITS:
            raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        if num_samples < 1 or sentences < 1:
            raise ConfigError(f"num_samples and sentences must be positive, got {num_samples} and {sentences}")
        self.num_samples, self.sentences, self.seed, self.split = num_samples, sentences, seed, split

    def __len__(self) -> int:
        return self.num_samples

    def _sentence(self, rng: random.Random) -> str:
        kind = rng.randrange(3)
        if kind == 0:
            a, b = rng.randrange(10), rng.randrange(9)
            return f"{NUMBERS[a]} plus {NUMBERS[b]} is {NUMBERS[a + b]}."
        if kind == 1:
            start = rng.randrange(len(NUMBERS) - 4)
            return " ".join(NUMBERS[start:start + 4]) + "."
        thing, colour, place = rng.choice(THINGS), rng.choice(COLOURS), rng.choice(PLACES)
        return f"the {colour} {thing} is {place}."

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.num_samples:
            raise IndexError(index)
        rng = random.Random(f"{self.seed}-{SPLITS[self.split]}-{index}")
        return {"text": " ".join(self._sentence(rng) for _ in range(self.sentences))}


class TextFile(Dataset):
    """The paragraphs (or, without blank lines, the lines) of a UTF-8 .txt file, or the "text" of every line of a
    .jsonl file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"Text file not found: {self.path}")
        try:
            content = self.path.read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            raise InputError(f"{self.path} is not UTF-8 text ({error.reason}).") from error
        if self.path.suffix.lower() == ".jsonl":
            self.texts = [self._record_text(number, line) for number, line in enumerate(content.splitlines(), 1)
                          if line.strip()]
        else:
            blocks = content.split("\n\n") if "\n\n" in content.strip() else content.splitlines()
            self.texts = [block.strip() for block in blocks if block.strip()]
        if not self.texts:
            raise InputError(f"{self.path} holds no text.")

    def _record_text(self, number: int, line: str) -> str:
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise InputError(f"{self.path}:{number} is not valid JSON ({error.msg}).") from error
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise InputError(f'{self.path}:{number} must be a JSON object with a "text" string.')
        return record["text"]

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"text": self.texts[index]}
