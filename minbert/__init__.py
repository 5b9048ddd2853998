"""minbert: a BERT encoder written from scratch that loads Hugging Face BERT checkpoints."""

from minbert.config import BertConfig
from minbert.errors import CheckpointError
from minbert.model import BertModel
from minbert.tokenizer import BertTokenizer, load_tokenizer

__all__ = ["BertConfig", "BertModel", "BertTokenizer", "CheckpointError", "load_tokenizer"]
