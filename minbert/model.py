"""BertModel: embeddings, a stack of transformer layers and the pooler, loadable from BERT checkpoints."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from torch import nn

from minbert.atomic import atomic_write_text
from minbert.attention import additive_attention_mask
from minbert.config import BertConfig
from minbert.embeddings import BertEmbeddings
from minbert.layers import BertLayer, BertPooler
from minbert.packing import Packing
from minbert.paths import resolve_checkpoint_dir
from minbert.weights import (check_sizes, find_weight_file, hf_to_minbert, minbert_to_hf, read_tensors,
                             save_tensors, split_checkpoint)

TOKENIZER_FILES = ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json")


class BertEncoderStack(nn.Module):
    """The transformer layers applied in order."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, hidden: torch.Tensor, additive_mask: torch.Tensor,
                packing: Packing | None = None) -> torch.Tensor:
        for layer in self.layer:
            hidden = layer(hidden, additive_mask, packing)
        return hidden


class BertModel(nn.Module):
    """A BERT encoder. `forward(ids, mask, types)` is exactly `encode(embed(ids, types), mask)`.

    The split lets a caller work on input embeddings (e.g. perturb them for SMART) between the two.
    """

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoderStack(config)
        self.pooler = BertPooler(config)
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        """BERT's initialisation: N(0, 0.02) weights, zero biases, identity LayerNorm."""
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
        if isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def embed(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Input embeddings [B, T, H] after LayerNorm and dropout."""
        return self.embeddings(input_ids, token_type_ids)

    def encode(self, embeddings: torch.Tensor, attention_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Run the layers and pooler on input embeddings; mask is [B, T] with 1 on real tokens.

        With `config.unpad_inputs` the layers compute only real tokens and `last_hidden_state` is
        0 at pad positions (padded computation gives meaningless values there instead).
        """
        if attention_mask is None:
            attention_mask = torch.ones(embeddings.shape[:2], dtype=torch.long, device=embeddings.device)
        device_type = embeddings.device.type
        if torch.is_autocast_enabled(device_type):
            # The residual stream in the autocast dtype too: otherwise every residual add promotes
            # to fp32 and every linear layer casts its input back down.
            embeddings = embeddings.to(torch.get_autocast_dtype(device_type))
        packing = Packing.from_mask(attention_mask) if self.config.unpad_inputs else None
        if packing is None:
            hidden = self.encoder(embeddings, additive_attention_mask(attention_mask, embeddings.dtype))
        else:
            additive_mask = additive_attention_mask(packing.grid_mask(), embeddings.dtype)
            hidden = packing.unpack(self.encoder(packing.pack(embeddings), additive_mask, packing))
        return {"last_hidden_state": hidden, "pooler_output": self.pooler(hidden)}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return self.encode(self.embed(input_ids, token_type_ids), attention_mask)

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, **config_overrides) -> "BertModel":
        """Load a Hugging Face style directory or Hub model id (None: the packaged all-MiniLM-L6-v2).

        `config_overrides` change settings that do not affect the weights' shapes, e.g.
        `hidden_dropout_prob=0.2` or `attn_implementation="eager"`.
        """
        directory = resolve_checkpoint_dir(path)
        config = BertConfig.from_json_file(directory / "config.json", **config_overrides)
        weight_file = find_weight_file(directory)
        encoder_state, _heads = split_checkpoint(read_tensors(weight_file))
        # Before the model is built: a config asking for absurd sizes must fail here, not in an allocation.
        check_sizes(config, encoder_state, weight_file)
        model = cls(config)
        state = hf_to_minbert(encoder_state, model.state_dict(), weight_file)
        model.load_state_dict(state, strict=True)
        return model

    def save_pretrained(self, directory: str | Path, tokenizer_from: str | Path | None = None,
                        extra_tensors: dict[str, torch.Tensor] | None = None) -> None:
        """Write config.json + model.safetensors (Hugging Face names) and the tokenizer files.

        `tokenizer_from` is the checkpoint directory whose vocabulary this model uses (None: the
        packaged default); `extra_tensors` (e.g. an MLM head under `cls.`) are stored alongside.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = minbert_to_hf(self.state_dict())
        tensors.update(extra_tensors or {})
        save_tensors(tensors, directory / "model.safetensors")
        atomic_write_text(directory / "config.json", json.dumps(self.config.to_dict(), indent=2) + "\n")
        source = resolve_checkpoint_dir(tokenizer_from)
        if source.resolve() != directory.resolve():
            for name in TOKENIZER_FILES:
                if (source / name).is_file():
                    shutil.copyfile(source / name, directory / name)
