"""A tiny character-level tokenizer with the interface ``npgpt.training.data`` uses (a test helper).

It lets the data and training tests run on real text without depending on the BPE trainer:
``vocab_size``, ``encode(text, allowed_special=...)``, ``decode(ids)``, ``save(dir)``.
"""

import json
import pathlib

EOT = "<|endoftext|>"


class CharTokenizer:
    def __init__(self, alphabet, offset=0):
        self.chars = sorted(set(alphabet))
        self.offset = offset            # shifts every id, to test vocabularies beyond 16 bits
        self.index = {c: i + offset for i, c in enumerate(self.chars)}

    @property
    def vocab_size(self):
        return self.offset + len(self.chars) + 1

    @property
    def eot_id(self):
        return self.offset + len(self.chars)

    def encode(self, text, allowed_special=(), disallowed_special="all"):
        if text == EOT and EOT in allowed_special:
            return [self.eot_id]
        return [self.index[c] for c in text]

    def decode(self, ids):
        return "".join(EOT if i == self.eot_id else self.chars[i - self.offset] for i in ids)

    def save(self, directory):
        directory = pathlib.Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "chars.json").write_text(json.dumps({"chars": self.chars, "offset": self.offset}))


def prepare_two_documents(text, out, val_fraction=0.2):
    """Token files of ``text`` cut into two documents, with this character tokenizer: the tests' data directory."""
    from npgpt.training import data

    half = len(text) // 2
    data.prepare_documents([text[:half], text[half:]], CharTokenizer(text), out, val_fraction=val_fraction,
                           progress=False)
    return out
