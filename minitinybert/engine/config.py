"""BERT configuration: read from a Hugging Face config.json, plus the TinyBERT student presets."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from .files import write_atomic


class ConfigError(ValueError):
    """A config.json that cannot describe a BERT encoder."""


@dataclass
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    initializer_range: float = 0.02
    # the [PAD] token: its word-embedding row gets no gradient (nn.Embedding's padding_idx in Hugging
    # Face's BertEmbeddings and in the official TinyBERT code); None: every row trains
    pad_token_id: int | None = 0
    # task head: 0 = no head, 1 = regression, >= 2 = classification with that many labels
    num_labels: int = 0
    id2label: dict[int, str] = field(default_factory=dict)
    # TinyBERT's projections (student hidden -> teacher hidden); 0 = none
    fit_size: int = 0
    fit_shared: bool = False     # one projection for all layers (the official code) or one per layer
    # a masked-language-model head (cls.predictions.*) came with the checkpoint
    mlm_head: bool = False
    do_lower_case: bool = True

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def validate(self) -> "BertConfig":
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings", "type_vocab_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"config field {name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(f"hidden_size {self.hidden_size} is not divisible by "
                              f"num_attention_heads {self.num_attention_heads}")
        if self.hidden_act not in ("gelu", "gelu_python"):
            raise ConfigError(f"hidden_act {self.hidden_act!r} is not supported: minitinybert computes the exact "
                              f"erf GELU ('gelu'), as BERT does; a tanh-approximated model would drift")
        if self.pad_token_id is not None and not (isinstance(self.pad_token_id, int)
                                                  and 0 <= self.pad_token_id < self.vocab_size):
            raise ConfigError(f"pad_token_id must be a token id in [0, {self.vocab_size}) or null, "
                              f"got {self.pad_token_id!r}")
        if self.num_labels < 0:
            raise ConfigError(f"num_labels must be >= 0, got {self.num_labels}")
        return self

    @classmethod
    def from_dict(cls, raw: dict) -> "BertConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in raw.items() if k in known}
        if "id2label" in kwargs:
            kwargs["id2label"] = {int(k): str(v) for k, v in kwargs["id2label"].items()}
        if raw.get("problem_type") == "regression" and "num_labels" not in raw:
            kwargs["num_labels"] = 1
        if "num_labels" not in raw and "id2label" in raw and raw.get("architectures", [""])[0].endswith(
                "ForSequenceClassification"):
            kwargs["num_labels"] = len(kwargs["id2label"])
        return cls(**kwargs).validate()

    @classmethod
    def from_json(cls, path: str | Path) -> "BertConfig":
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.exists():
            raise ConfigError(f"no config.json at {path}")
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} is not valid JSON: {e}") from None
        model_type = raw.get("model_type", "bert")
        if model_type not in ("bert", "tinybert"):
            raise ConfigError(f"{path}: model_type {model_type!r} is not a BERT encoder")
        return cls.from_dict(raw)

    def to_dict(self) -> dict:
        """Hugging Face style config.json contents."""
        d = dataclasses.asdict(self)
        d["model_type"] = "bert"
        d["position_embedding_type"] = "absolute"
        if self.num_labels >= 1:
            d["architectures"] = ["BertForSequenceClassification"]
            d["problem_type"] = "regression" if self.num_labels == 1 else "single_label_classification"
            labels = self.id2label or {i: f"LABEL_{i}" for i in range(self.num_labels)}
            d["id2label"] = {str(k): v for k, v in labels.items()}
            d["label2id"] = {v: k for k, v in labels.items()}
        else:
            d["architectures"] = ["BertModel"]
            d.pop("id2label")
        d.pop("mlm_head")  # deduced from the tensors at load
        if not self.fit_size:
            d.pop("fit_size")
            d.pop("fit_shared")
        return d

    def save(self, path: str | Path) -> None:
        write_atomic(path, json.dumps(self.to_dict(), indent=2) + "\n")

    def replace(self, **changes) -> "BertConfig":
        return dataclasses.replace(self, **changes).validate()


PRESETS = {
    "tinybert4": dict(num_hidden_layers=4, hidden_size=312, num_attention_heads=12, intermediate_size=1200),
    "tinybert6": dict(num_hidden_layers=6, hidden_size=768, num_attention_heads=12, intermediate_size=3072),
}


def preset(name: str, **overrides) -> BertConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown student preset {name!r}; choose one of {sorted(PRESETS)}")
    return BertConfig(**{**PRESETS[name], **overrides}).validate()
