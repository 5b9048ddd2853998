"""WordPiece tokenizer built on the `tokenizers` library from a checkpoint's vocab.txt."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece

from minbert.errors import CheckpointError
from minbert.hub import resolve_checkpoint_dir

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


class BertTokenizer:
    """Lowercasing WordPiece tokenizer producing BERT inputs for sentences and sentence pairs.

    Pairs become `[CLS] a [SEP] b [SEP]` with token types 0 for the first segment (and its
    [CLS] and [SEP]) and 1 for the second. Truncation is longest-first, as BERT's own.
    """

    def __init__(self, vocab_file: str | Path, lowercase: bool = True,
                 strip_accents: bool | None = None, model_max_length: int = 512) -> None:
        vocab_file = Path(vocab_file)
        vocab = _read_vocab(vocab_file)
        missing = [t for t in SPECIAL_TOKENS if t not in vocab]
        if missing:
            raise CheckpointError(f"{vocab_file}: special tokens {missing} are not in the vocabulary")
        self.vocab = vocab
        self.model_max_length = model_max_length
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = (
            vocab[t] for t in SPECIAL_TOKENS)
        self.special_ids = frozenset((self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id))

        tok = Tokenizer(WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
        # strip_accents=None means "follow lowercase", the convention of BERT's uncased models.
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=True, handle_chinese_chars=True, strip_accents=strip_accents, lowercase=lowercase)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A:0 [SEP]:0",
            pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
            special_tokens=[("[CLS]", self.cls_id), ("[SEP]", self.sep_id)],
        )
        self._tok = tok

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode_lists(self, texts: Sequence[str], pairs: Sequence[str] | None = None,
                     max_length: int = 128) -> tuple[list[list[int]], list[list[int]]]:
        """Token ids and token type ids per example, unpadded, truncated to `max_length`."""
        if pairs is not None and len(pairs) != len(texts):
            raise ValueError(f"got {len(texts)} first sentences but {len(pairs)} second sentences")
        max_length = min(max_length, self.model_max_length)
        self._tok.enable_truncation(max_length=max_length, strategy="longest_first")
        inputs = list(texts) if pairs is None else list(zip(texts, pairs))
        encodings = self._tok.encode_batch(inputs)
        return [e.ids for e in encodings], [e.type_ids for e in encodings]

    def encode_documents(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text without [CLS]/[SEP] and without truncation, for packing long documents."""
        self._tok.no_truncation()
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def pad(self, ids: Sequence[Sequence[int]], type_ids: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
        """Right-pad lists of ids to the longest one: `input_ids`, `token_type_ids`, `attention_mask`."""
        return pad_sequences(ids, type_ids, self.pad_id)

    def __call__(self, texts: str | Sequence[str], pairs: str | Sequence[str] | None = None,
                 max_length: int = 128) -> dict[str, torch.Tensor]:
        """Encode a batch (or one sentence) into padded LongTensors."""
        if isinstance(texts, str):
            texts = [texts]
        if isinstance(pairs, str):
            pairs = [pairs]
        return self.pad(*self.encode_lists(texts, pairs, max_length))

    def tokenize(self, text: str) -> list[str]:
        """WordPiece tokens of one text, without special tokens."""
        return self._tok.encode(text, add_special_tokens=False).tokens

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)


def pad_sequences(ids: Sequence[Sequence[int]], type_ids: Sequence[Sequence[int]],
                  pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad token and type id lists to the longest: `input_ids`, `token_type_ids`, `attention_mask`."""
    longest = max((len(x) for x in ids), default=0)
    input_ids = torch.full((len(ids), longest), pad_id, dtype=torch.long)
    token_type_ids = torch.zeros((len(ids), longest), dtype=torch.long)
    attention_mask = torch.zeros((len(ids), longest), dtype=torch.long)
    for row, (seq, types) in enumerate(zip(ids, type_ids)):
        input_ids[row, :len(seq)] = torch.as_tensor(seq, dtype=torch.long)
        token_type_ids[row, :len(types)] = torch.as_tensor(types, dtype=torch.long)
        attention_mask[row, :len(seq)] = 1
    return {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask}


def _read_vocab(vocab_file: Path) -> dict[str, int]:
    if not vocab_file.is_file():
        raise CheckpointError(f"{vocab_file}: vocabulary file not found")
    vocab: dict[str, int] = {}
    with open(vocab_file, encoding="utf-8") as f:
        for index, line in enumerate(f):
            token = line.rstrip("\n")
            # A duplicated token keeps its first id, as BERT's reference tokenizer does.
            vocab.setdefault(token, index)
    if not vocab:
        raise CheckpointError(f"{vocab_file}: vocabulary file is empty")
    return vocab


def load_tokenizer(path: str | Path | None = None) -> BertTokenizer:
    """Tokenizer for the checkpoint directory or Hub model id `path` (None: the packaged all-MiniLM-L6-v2)."""
    directory = resolve_checkpoint_dir(path)
    settings: dict = {}
    config_file = directory / "tokenizer_config.json"
    if config_file.is_file():
        try:
            settings = json.loads(config_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{config_file}: not valid JSON ({err})") from err
    max_len = settings.get("model_max_length", 512)
    # Hugging Face writes a huge sentinel when a tokenizer has no limit of its own.
    if not isinstance(max_len, int) or max_len > 100_000:
        max_len = 512
    return BertTokenizer(
        directory / "vocab.txt",
        lowercase=settings.get("do_lower_case", True),
        strip_accents=settings.get("strip_accents"),
        model_max_length=max_len,
    )
