"""Pre-tokenized task datasets, length-bucketed batch sampling and dynamic-padding collation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Literal, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from minbert.tokenizer import BertTokenizer, pad_sequences
from multitask.data import Example, PairExample
from multitask.tasks import Task


PairEncoding = Literal["cross", "bi"]
Item = dict[str, Any]

# Examples per tokenizer call: large enough for the Rust batch encoder to run in parallel,
# small enough that one call never holds a whole large corpus of Encoding objects.
TOKENIZE_CHUNK = 2048


# eq=False: element-wise tensor comparison has no truth value, and identity is what a
# dataset's equality should mean anyway.
@dataclass(eq=False)
class EncodedTask(Dataset):
    """One task's examples, tokenized once, with labels as a tensor and ids in input order.

    Cross-encoded pairs are `[CLS] a [SEP] b [SEP]` in `input_ids`; bi-encoded pairs keep
    sentence a in `input_ids` and sentence b, encoded alone, in `input_ids_b`.
    `dataset[i]` is an item dict for `collate`; pass `dataset.collate` to a DataLoader.
    """

    task: Task
    ids: list[str]
    input_ids: list[list[int]]
    token_type_ids: list[list[int]]
    labels: torch.Tensor | None
    pad_id: int = 0
    pair_encoding: PairEncoding | None = None
    input_ids_b: list[list[int]] | None = None
    token_type_ids_b: list[list[int]] | None = None

    @property
    def name(self) -> str:
        return self.task.name

    @property
    def is_bi(self) -> bool:
        return self.input_ids_b is not None

    @property
    def labelled(self) -> bool:
        return self.labels is not None

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> Item:
        return self.item(i)

    def item(self, i: int, swapped: bool = False) -> Item:
        """Example i; `swapped`: a pair with its two sentences in the other order.

        Paraphrase and similarity are symmetric relations, so the swapped pair has the same label.
        """
        ids, types = self.input_ids[i], self.token_type_ids[i]
        ids_b = None if self.input_ids_b is None else self.input_ids_b[i]
        types_b = None if self.token_type_ids_b is None else self.token_type_ids_b[i]
        if swapped:
            if self.pair_encoding is None:
                raise ValueError(f"task {self.name!r} has single sentences; only pairs can be swapped")
            if ids_b is None:
                ids, types = swap_cross_pair(ids, types)
            else:
                ids, types, ids_b, types_b = ids_b, types_b, ids, types
        item: Item = {"index": i, "input_ids": ids, "token_type_ids": types}
        if ids_b is not None:
            item["input_ids_b"], item["token_type_ids_b"] = ids_b, types_b
        if self.labels is not None:
            item["label"] = self.labels[i]
        return item

    def side_lengths(self) -> list[np.ndarray]:
        """Token counts per example for each encoded sequence: [a] or, bi-encoded, [a, b]."""
        sides = [self.input_ids] if self.input_ids_b is None else [self.input_ids, self.input_ids_b]
        return [np.fromiter((len(seq) for seq in side), dtype=np.int64, count=len(self)) for side in sides]

    def lengths(self) -> np.ndarray:
        """The sort key for bucketing: tokens per example; bi-encoded, the longer sentence's.

        Each side of a bi-encoded pair is padded on its own and the two lengths are
        correlated, so the longer one predicts both batch maxima best (less padding than
        sorting by the sum; `compare_padding` measures it).
        """
        return np.max(self.side_lengths(), axis=0)

    def collate(self, items: Sequence[Item]) -> dict[str, torch.Tensor]:
        return collate(items, self.pad_id)

    def batch(self, indices: Sequence[int], swapped: Sequence[bool] | bool = False) -> dict[str, torch.Tensor]:
        """The collated batch for these dataset positions; `swapped`: all pairs, or those flagged,
        with their sentences in the other order."""
        flags = [swapped] * len(indices) if isinstance(swapped, bool) else list(swapped)
        if len(flags) != len(indices):
            raise ValueError(f"{len(flags)} swap flags for {len(indices)} examples")
        return collate([self.item(i, flag) for i, flag in zip(indices, flags)], self.pad_id)


def swap_cross_pair(ids: list[int], types: list[int]) -> tuple[list[int], list[int]]:
    """`[CLS] a [SEP] b [SEP]` with segment ids 0…0 1…1 turned into `[CLS] b [SEP] a [SEP]`.

    Works on the tokens, so both orders share one tokenization and one truncation.
    """
    first = types.count(0)  # [CLS] a [SEP]
    if first < 2 or len(ids) - first < 1 or types[:first] != [0] * first:
        raise ValueError(f"not a cross-encoded pair (segment ids {types})")
    a, b = ids[1:first - 1], ids[first:-1]
    cls, sep = ids[0], ids[-1]
    return [cls, *b, sep, *a, sep], [0] * (len(b) + 2) + [1] * (len(a) + 1)


def encode_task(examples: Iterable[Example], tokenizer: BertTokenizer, task: Task,
                pair_encoding: PairEncoding = "cross", max_length: int = 128) -> EncodedTask:
    """Tokenize all examples of a task up front (labels kept only if every example has one)."""
    examples = list(examples)
    if pair_encoding not in ("cross", "bi"):
        raise ValueError(f"pair_encoding must be 'cross' or 'bi', got {pair_encoding!r}")
    if any(isinstance(e, PairExample) != task.is_pair for e in examples):
        raise ValueError(f"task {task.name!r} expects {'pair' if task.is_pair else 'single-sentence'} examples")

    def encode(texts: list[str], pairs: list[str] | None = None) -> tuple[list[list[int]], list[list[int]]]:
        ids: list[list[int]] = []
        types: list[list[int]] = []
        for start in range(0, len(texts), TOKENIZE_CHUNK):
            chunk_pairs = None if pairs is None else pairs[start:start + TOKENIZE_CHUNK]
            chunk_ids, chunk_types = tokenizer.encode_lists(texts[start:start + TOKENIZE_CHUNK],
                                                            chunk_pairs, max_length=max_length)
            ids += chunk_ids
            types += chunk_types
        return ids, types

    encoded = EncodedTask(task=task, ids=[e.id for e in examples], input_ids=[],
                          token_type_ids=[], labels=_labels(examples, task), pad_id=tokenizer.pad_id)
    if not task.is_pair:
        encoded.input_ids, encoded.token_type_ids = encode([e.text for e in examples])  # type: ignore[union-attr]
        return encoded
    first = [e.text_a for e in examples]  # type: ignore[union-attr]
    second = [e.text_b for e in examples]  # type: ignore[union-attr]
    encoded.pair_encoding = pair_encoding
    if pair_encoding == "cross":
        encoded.input_ids, encoded.token_type_ids = encode(first, second)
    else:
        encoded.input_ids, encoded.token_type_ids = encode(first)
        encoded.input_ids_b, encoded.token_type_ids_b = encode(second)
    return encoded


def _labels(examples: list[Example], task: Task) -> torch.Tensor | None:
    labels = [e.label for e in examples]
    present = sum(label is not None for label in labels)
    if present == 0:
        return None
    if present != len(labels):
        raise ValueError(f"task {task.name!r}: {len(labels) - present} of {len(labels)} examples have no "
                         "label; a dataset is either fully labelled or unlabelled")
    # Cross-entropy wants class indices; BCE-with-logits and MSE want float targets.
    dtype = torch.long if task.kind == "multiclass" else torch.float32
    return torch.tensor(labels, dtype=dtype)


def collate(items: Sequence[Item], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Pad a list of items to the longest in the batch (each side separately when bi-encoded)."""
    if not items:
        raise ValueError("cannot collate an empty batch")
    batch: dict[str, torch.Tensor] = {}
    suffixes = ["", "_b"] if "input_ids_b" in items[0] else [""]
    for suffix in suffixes:
        padded = pad_sequences([it["input_ids" + suffix] for it in items],
                               [it["token_type_ids" + suffix] for it in items], pad_id)
        for key, tensor in padded.items():
            batch[key + suffix] = tensor
    if "label" in items[0]:
        batch["labels"] = torch.stack([torch.as_tensor(it["label"]) for it in items])
    batch["index"] = torch.tensor([it["index"] for it in items], dtype=torch.long)
    return batch


def bucketed_batches(lengths: Sequence[int] | np.ndarray, batch_size: int, rng: np.random.Generator,
                     chunk_batches: int = 50, drop_last: bool = False) -> list[list[int]]:
    """One epoch of batches of similar length, in random order.

    Shuffle all indices, sort each mega-chunk of `chunk_batches` batches by length, cut it
    into batches, then shuffle the batch order. Sorting only within chunks keeps batches
    random in content while most of the padding disappears.
    """
    if batch_size < 1 or chunk_batches < 1:
        raise ValueError(f"batch_size and chunk_batches must be positive, got {batch_size}, {chunk_batches}")
    lengths = np.asarray(lengths)
    order = rng.permutation(len(lengths))
    chunk = batch_size * chunk_batches
    batches: list[list[int]] = []
    for start in range(0, len(order), chunk):
        part = order[start:start + chunk]
        # Stable sort: equal lengths stay in their shuffled order, so ties are not biased.
        part = part[np.argsort(lengths[part], kind="stable")]
        batches += [part[i:i + batch_size].tolist() for i in range(0, len(part), batch_size)]
    if drop_last:
        batches = [b for b in batches if len(b) == batch_size]
    return [batches[i] for i in rng.permutation(len(batches))]


def random_batches(n: int, batch_size: int, rng: np.random.Generator) -> list[list[int]]:
    """Plain shuffled batching, the baseline bucketing is measured against."""
    order = rng.permutation(n)
    return [order[i:i + batch_size].tolist() for i in range(0, n, batch_size)]


def sorted_batches(lengths: Sequence[int] | np.ndarray, batch_size: int) -> list[list[int]]:
    """Deterministic evaluation batches, longest first; undo the order with `restore_order`.

    Longest first so that a batch too large for memory fails at once, not at the end.
    """
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i:i + batch_size].tolist() for i in range(0, len(order), batch_size)]


def restore_order(index: torch.Tensor | Sequence[int], values: torch.Tensor) -> torch.Tensor:
    """Put per-example `values` gathered in batch order back in dataset order.

    `index` is the concatenation of the batches' `index` tensors; it must be a permutation
    of 0..n-1, so a lost or repeated example is an error rather than a shifted prediction.
    """
    index = torch.as_tensor(index, dtype=torch.long)
    n = len(index)
    if len(values) != n:
        raise ValueError(f"{len(values)} values for {n} indices")
    if n and (index.min() < 0 or index.max() >= n or torch.bincount(index, minlength=n).ne(1).any()):
        raise ValueError(f"index is not a permutation of 0..{n - 1}: an example is missing or repeated")
    restored = torch.empty_like(values)
    restored[index] = values
    return restored


class BucketBatchSampler(Sampler[list[int]]):
    """Length-bucketed training batches, reproducible from (seed, epoch).

    Each iteration is one epoch and advances `epoch`; call `set_epoch` to resume a run at a
    given epoch. Every index appears exactly once per epoch unless `drop_last` is set.
    """

    def __init__(self, lengths: Sequence[int] | np.ndarray, batch_size: int, seed: int = 0,
                 chunk_batches: int = 50, drop_last: bool = False) -> None:
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.chunk_batches = chunk_batches
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches_for(self, epoch: int) -> list[list[int]]:
        """The batches of a given epoch, without touching the sampler's own epoch counter."""
        rng = np.random.default_rng([self.seed, epoch])
        return bucketed_batches(self.lengths, self.batch_size, rng, self.chunk_batches, self.drop_last)

    def __iter__(self) -> Iterator[list[int]]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        return iter(self.batches_for(epoch))

    def __len__(self) -> int:
        n = len(self.lengths)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)


def padding_fraction(side_lengths: Sequence[np.ndarray], batches: Iterable[Sequence[int]]) -> float:
    """Share of computed token positions that are padding, over all batches and sides.

    `side_lengths` is `EncodedTask.side_lengths()`: one length array, or two when bi-encoded,
    each padded to its own batch maximum.
    """
    computed = real = 0
    for batch in batches:
        for lengths in side_lengths:
            batch_lengths = lengths[np.asarray(batch, dtype=np.int64)]
            computed += int(batch_lengths.max()) * len(batch_lengths)
            real += int(batch_lengths.sum())
    return 1.0 - real / computed if computed else 0.0


@dataclass(frozen=True)
class PaddingReport:
    """Padding fraction of one epoch under bucketed and under plain random batching."""

    bucketed: float
    random: float
    batch_size: int
    num_batches: int


def compare_padding(dataset: EncodedTask, batch_size: int, seed: int = 0, epoch: int = 0,
                    chunk_batches: int = 50) -> PaddingReport:
    """Measure how much padding bucketing saves on one epoch of `dataset`."""
    sides = dataset.side_lengths()
    sampler = BucketBatchSampler(dataset.lengths(), batch_size, seed=seed, chunk_batches=chunk_batches)
    bucketed = sampler.batches_for(epoch)
    plain = random_batches(len(dataset), batch_size, np.random.default_rng([seed, epoch]))
    return PaddingReport(padding_fraction(sides, bucketed), padding_fraction(sides, plain),
                         batch_size, len(bucketed))
