"""One-off: reference hidden states of the teacher from PyTorch/transformers, for tests/test_teacher.py.

Run with a Python that has torch and transformers (installed apart, never a dependency):
    /tmp/torchenv/bin/python -m tools.reference.make_teacher_fixture [TEACHER_DIR]
Writes tests/fixtures/teacher_reference.npz (a few sentences; small enough to commit).
"""
import sys
from pathlib import Path

import numpy as np
import torch
from tokenizers import BertWordPieceTokenizer
from transformers import BertModel

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The quick brown fox jumps over the lazy dog!",
    "Distillation keeps 96.8% of the teacher's accuracy.",
]
PAIR = ("Is this a pair?", "Yes, with token type ids.")

root = Path(__file__).resolve().parents[2]
teacher = Path(sys.argv[1]) if len(sys.argv) > 1 else root / "weights" / "all-MiniLM-L6-v2"
# tokenizers directly: transformers 5's BertTokenizerFast(vocab_file=...) silently maps every word to [UNK]
tok = BertWordPieceTokenizer(str(teacher / "vocab.txt"), lowercase=True)
tok.enable_padding(pad_id=0)


def encode(texts, pairs=None):
    encs = tok.encode_batch(list(zip(texts, pairs)) if pairs else texts)
    return {key: torch.tensor([getattr(e, attr) for e in encs]) for key, attr in
            (("input_ids", "ids"), ("token_type_ids", "type_ids"), ("attention_mask", "attention_mask"))}


model = BertModel.from_pretrained(str(teacher), attn_implementation="eager").eval()
out = {}
for name, enc in (("single", encode(SENTENCES)), ("pair", encode([PAIR[0]], [PAIR[1]]))):
    with torch.no_grad():
        res = model(**enc, output_hidden_states=True, output_attentions=True)
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        out[f"{name}_{key}"] = enc[key].numpy().astype(np.int32)
    out[f"{name}_hidden"] = torch.stack(res.hidden_states).numpy()            # (L+1, B, T, C)
    out[f"{name}_probs_last"] = res.attentions[-1].numpy()                    # (B, H, T, T)
    out[f"{name}_pooled"] = res.pooler_output.numpy()
dest = root / "tests" / "fixtures" / "teacher_reference.npz"
np.savez_compressed(dest, **out)
print(f"wrote {dest} ({dest.stat().st_size} bytes)")
