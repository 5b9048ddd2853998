"""minbert: a BERT encoder written from scratch that loads Hugging Face BERT checkpoints."""

from minbert.errors import CheckpointError
from minbert.model import BertConfig, BertModel
from minbert.tokenizer import BertTokenizer, load_tokenizer

__all__ = ["BertConfig", "BertModel", "BertTokenizer", "CheckpointError", "load_tokenizer"]
