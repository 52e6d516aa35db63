"""Training speed against PyTorch eager: the same step, same shapes, same weights, side by side.

Steps compared (batch 32 x 128 tokens by default):
  distill   general/intermediate distillation: MiniLM-L6 teacher forward (hidden states and
            pre-softmax attention scores), tinybert4 student forward + backward with embedding,
            hidden (through per-layer projections) and attention MSE, clipping, AdamW;
  finetune  plain fine-tuning of tinybert4 with a classifier head (cross-entropy), clipping, AdamW;
  teacher   fine-tuning of the MiniLM-L6 teacher with a classifier head, same.
Both sides are checked first to compute the same losses on the same batch (dropout off,
1e-4 relative); then the steps (dropout on) alternate A B A B after warm-up, and the script prints
median seconds per step, sequences/s, achieved GFLOP/s, the fraction of the machine's float32
matmul rate measured in the same run, and PyTorch / minitinybert. Peak RSS of each side is measured
in a fresh subprocess running a few distillation steps.

PyTorch is installed apart (never a dependency of the package):
    python3 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch==2.13.0 && \
        /tmp/torchenv/bin/pip install -e .
    OMP_NUM_THREADS=2 /tmp/torchenv/bin/python -m tools.bench.train [--runs 15] [--steps distill,finetune,teacher]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from minitinybert.distill import LossWeights, finetune_step, intermediate_step, layer_mapping
from minitinybert.engine import losses as mtb_losses
from minitinybert.engine.config import preset
from minitinybert.engine.model import Bert
from minitinybert.engine.optim import AdamW, clip_grad_norm
from minitinybert.engine.process import tune_process
from minitinybert.engine.teacher import resolve_teacher
from minitinybert.engine.weights import load_model
from minitinybert.training.parallel import DataParallel

REPO = Path(__file__).resolve().parents[2]


# --- a PyTorch eager BERT that returns what TinyBERT distills (HF's returns softmaxed attention) ----

class TorchBert(torch.nn.Module):
    def __init__(self, model: Bert):
        super().__init__()
        self.cfg = model.config
        self.p = torch.nn.ParameterDict({name.replace(".", "__"): torch.nn.Parameter(torch.tensor(np.array(v)))
                                         for name, v in model.params.views.items()})

    def w(self, name):
        return self.p[name.replace(".", "__")]

    def forward(self, ids, types, mask, train=False):
        cfg, w = self.cfg, self.w
        drop = cfg.hidden_dropout_prob if train else 0.0
        adrop = cfg.attention_probs_dropout_prob if train else 0.0
        B, T = ids.shape
        H, D = cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads
        x = w("embeddings.word_embeddings.weight")[ids] + w("embeddings.position_embeddings.weight")[:T] \
            + w("embeddings.token_type_embeddings.weight")[types]
        x = F.layer_norm(x, (cfg.hidden_size,), w("embeddings.LayerNorm.weight"), w("embeddings.LayerNorm.bias"),
                         cfg.layer_norm_eps)
        x = F.dropout(x, drop, train)
        bias = (1.0 - mask[:, None, None, :].float()) * -10000.0
        hidden, scores_all = [x], []
        for layer in range(cfg.num_hidden_layers):
            p = f"encoder.layer.{layer}."
            qkv_w = torch.cat([w(p + f"attention.self.{n}.weight") for n in ("query", "key", "value")])
            qkv_b = torch.cat([w(p + f"attention.self.{n}.bias") for n in ("query", "key", "value")])
            q, k, v = F.linear(x, qkv_w, qkv_b).view(B, T, 3, H, D).permute(2, 0, 3, 1, 4)
            scores = q @ k.transpose(-1, -2) / math.sqrt(D) + bias
            probs = F.dropout(torch.softmax(scores, -1), adrop, train)
            ctx = (probs @ v).transpose(1, 2).reshape(B, T, -1)
            a = F.layer_norm(x + F.dropout(F.linear(ctx, w(p + "attention.output.dense.weight"),
                                                    w(p + "attention.output.dense.bias")), drop, train),
                             (cfg.hidden_size,), w(p + "attention.output.LayerNorm.weight"),
                             w(p + "attention.output.LayerNorm.bias"), cfg.layer_norm_eps)
            h = F.gelu(F.linear(a, w(p + "intermediate.dense.weight"), w(p + "intermediate.dense.bias")))
            x = F.layer_norm(a + F.dropout(F.linear(h, w(p + "output.dense.weight"), w(p + "output.dense.bias")),
                                           drop, train),
                             (cfg.hidden_size,), w(p + "output.LayerNorm.weight"), w(p + "output.LayerNorm.bias"),
                             cfg.layer_norm_eps)
            hidden.append(x)
            scores_all.append(scores)
        pooled = torch.tanh(F.linear(x[:, 0], w("pooler.dense.weight"), w("pooler.dense.bias")))
        logits = None
        if cfg.num_labels:
            logits = F.linear(F.dropout(pooled, drop, train), w("classifier.weight"), w("classifier.bias"))
        return hidden, scores_all, logits


def torch_adamw(model: TorchBert):
    """AdamW with the same hyperparameters and the same no-decay set (biases, LayerNorm)."""
    decay, no_decay = [], []
    for name, p in model.p.items():
        (no_decay if name.endswith("__bias") or "LayerNorm" in name else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                             lr=1e-4, betas=(0.9, 0.999), eps=1e-6)


def torch_intermediate_loss(t_model, s_model, batch, mapping, train):
    ids, types, mask = (torch.from_numpy(a.astype(np.int64)) for a in batch)
    with torch.no_grad():
        t_hidden, t_scores, _ = t_model(ids, types, mask)
    s_hidden, s_scores, _ = s_model(ids, types, mask, train=train)
    terms = {"loss_embedding": 0.0, "loss_hidden": 0.0, "loss_attention": 0.0}
    total = 0.0
    for m, g in enumerate(mapping):
        proj = F.linear(s_hidden[m], s_model.w(f"fit_denses.{m}.weight"), s_model.w(f"fit_denses.{m}.bias"))
        loss = F.mse_loss(proj, t_hidden[g])
        terms["loss_embedding" if m == 0 else "loss_hidden"] += loss
        total = total + loss
    for m in range(1, len(mapping)):
        s, t = s_scores[m - 1], t_scores[mapping[m] - 1]
        s = torch.where(s <= -100, torch.zeros_like(s), s)
        t = torch.where(t <= -100, torch.zeros_like(t), t)
        loss = F.mse_loss(s, t)
        terms["loss_attention"] += loss
        total = total + loss
    return total, {k: float(v.detach()) for k, v in terms.items()}


# --- the setups -------------------------------------------------------------------------------------

def make_batch(vocab, B, T, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, vocab, (B, T)).astype(np.int32)
    ids[:, 0], ids[:, -1] = 101, 102
    return ids, np.zeros_like(ids), np.ones_like(ids)


def forward_flops(cfg, B, T):
    N, C, Fd, L = B * T, cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    return L * (2 * N * (4 * C * C + 2 * C * Fd) + 4 * B * T * T * C)


WORKERS = None   # minitinybert's batch shards (parallel.py); None: one per thread


def setup(kind, B, T):
    """-> (mtb_step, torch_step, check, flops)"""
    teacher_dir = resolve_teacher(None, log=lambda *a: None)
    teacher = load_model(teacher_dir)
    labels = np.random.default_rng(1).integers(0, 2, B)
    batch = make_batch(teacher.config.vocab_size, B, T)
    if kind == "distill":
        student = Bert(preset("tinybert4").replace(fit_size=teacher.config.hidden_size), seed=0)
        mapping = layer_mapping(4, teacher.config.num_hidden_layers)
        t_torch, s_torch = TorchBert(teacher), TorchBert(student)
        t_torch.requires_grad_(False)
        opt_m, opt_t = AdamW(student.params, lr=1e-4), torch_adamw(s_torch)
        from minitinybert.data.tokenizer import Batch
        b = Batch(*batch)
        rng = np.random.default_rng(0)
        w = LossWeights()

        runner = DataParallel(student, WORKERS)

        def mtb_step():
            runner(lambda bb, r, **k: intermediate_step(teacher, student, bb, r, mapping, w, **k), b, rng)
            clip_grad_norm(student.grads.data, 1.0)
            opt_m.step(student.grads.data)

        def torch_step():
            opt_t.zero_grad(set_to_none=True)
            loss, _ = torch_intermediate_loss(t_torch, s_torch, batch, mapping, train=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(s_torch.parameters(), 1.0)
            opt_t.step()

        def check():
            ours = intermediate_step(teacher, student, b, None, mapping, w).losses
            _, theirs = torch_intermediate_loss(t_torch, s_torch, batch, mapping, train=False)
            return {k: (ours[k], theirs[k]) for k in theirs}

        flops = forward_flops(teacher.config, B, T) + 3 * forward_flops(student.config, B, T) \
            + 3 * 5 * 2 * B * T * 312 * teacher.config.hidden_size
        return mtb_step, torch_step, check, flops

    model = Bert(preset("tinybert4").replace(num_labels=2), seed=0) if kind == "finetune" else \
        load_model(teacher_dir, num_labels=2, seed=0)
    m_torch = TorchBert(model)
    opt_m, opt_t = AdamW(model.params, lr=1e-4), torch_adamw(m_torch)
    from minitinybert.data.tokenizer import Batch
    b = Batch(*batch)
    rng = np.random.default_rng(0)
    tb = [torch.from_numpy(a.astype(np.int64)) for a in batch]
    tl = torch.from_numpy(labels)

    runner = DataParallel(model, WORKERS)

    def mtb_step():
        runner(lambda bb, r, **k: finetune_step(model, bb[0], bb[1], r, **k), (b, labels), rng)
        clip_grad_norm(model.grads.data, 1.0)
        opt_m.step(model.grads.data)

    def torch_step():
        opt_t.zero_grad(set_to_none=True)
        _, _, logits = m_torch(*tb, train=True)
        F.cross_entropy(logits, tl).backward()
        torch.nn.utils.clip_grad_norm_(m_torch.parameters(), 1.0)
        opt_t.step()

    def check():
        out = model.forward(*batch)
        ours = mtb_losses.cross_entropy_forward(out.logits, labels)[0]
        with torch.no_grad():
            theirs = float(F.cross_entropy(m_torch(*tb)[2], tl))
        return {"loss": (ours, theirs)}

    return mtb_step, torch_step, check, 3 * forward_flops(model.config, B, T)


def matmul_rate():
    a = np.random.default_rng(0).standard_normal((4096, 768), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((768, 1536), dtype=np.float32)
    out = np.empty((4096, 1536), np.float32)
    np.matmul(a, b, out=out)
    times = []
    for _ in range(10):
        t0 = time.perf_counter()
        np.matmul(a, b, out=out)
        times.append(time.perf_counter() - t0)
    return 2 * 4096 * 768 * 1536 / np.median(times) / 1e9


def _status_mb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def memory_child(side, B, T, steps=3):
    """Peak RSS of a few distillation steps. Both sides start from the same loaded weights (the
    PyTorch side is initialised from minitinybert's arrays), so the peak above the after-setup
    level is the step's own working memory; the total peak is printed too."""
    mtb_step, torch_step, _, _ = setup("distill", B, T)
    after_setup = _status_mb("VmRSS")
    for _ in range(steps):
        (mtb_step if side == "minitinybert" else torch_step)()
    print(json.dumps({"peak_mb": _status_mb("VmHWM"), "step_mb": _status_mb("VmHWM") - after_setup}))


def main(argv=None):
    tune_process()                         # first: before any Numba kernel starts OpenMP
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--steps", default="distill,finetune,teacher")
    ap.add_argument("--workers", type=int, default=None,
                    help="minitinybert: threads that each run a shard of the batch (default: one per thread)")
    ap.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    global WORKERS
    WORKERS = args.workers
    threads = int(os.environ.get("OMP_NUM_THREADS", "2"))
    torch.set_num_threads(threads)
    if args.memory_child:
        return memory_child(args.memory_child, args.batch, args.tokens)

    peak = matmul_rate()
    print(f"threads {threads}; minitinybert workers {DataParallel(None, WORKERS).workers}; "
          f"torch {torch.__version__}; float32 matmul {peak:.1f} GFLOP/s; "
          f"batch {args.batch} x {args.tokens}")
    rows = []
    for kind in args.steps.split(","):
        mtb_step, torch_step, check, flops = setup(kind, args.batch, args.tokens)
        for name, (ours, theirs) in check().items():
            rel = abs(ours - theirs) / max(abs(theirs), 1e-12)
            status = "ok" if rel <= 1e-4 else "MISMATCH"
            print(f"  [{kind}] {name}: minitinybert {ours:.6f}  pytorch {theirs:.6f}  rel {rel:.1e}  {status}")
            if rel > 1e-4:
                raise SystemExit(f"{kind}: the two sides do not compute the same loss; the race would be unfair")
        mtb_step(), torch_step()                       # warm-up (JIT, allocator)
        times = {"minitinybert": [], "pytorch": []}
        for _ in range(args.runs):
            for side, fn in (("minitinybert", mtb_step), ("pytorch", torch_step)):
                t0 = time.perf_counter()
                fn()
                times[side].append(time.perf_counter() - t0)
        med = {k: float(np.median(v)) for k, v in times.items()}
        rows.append((kind, flops, med))
    print(f"\n{'step':<9} {'side':<13} {'s/step':>7} {'seq/s':>7} {'GFLOP/s':>8} {'of matmul':>9}")
    for kind, flops, med in rows:
        for side in ("minitinybert", "pytorch"):
            s = med[side]
            print(f"{kind:<9} {side:<13} {s:7.3f} {args.batch / s:7.1f} {flops / s / 1e9:8.1f} "
                  f"{flops / s / 1e9 / peak:9.0%}")
        print(f"{kind:<9} pytorch / minitinybert = {med['pytorch'] / med['minitinybert']:.2f}x "
              f"({flops / 1e9:.0f} GFLOP per step)")
    if "distill" in args.steps:
        print("\npeak RSS of 3 distillation steps, each side in a fresh process (same weights loaded in both):")
        for side in ("minitinybert", "pytorch"):
            out = subprocess.run([sys.executable, "-m", "tools.bench.train", "--memory-child", side, "--batch",
                                  str(args.batch), "--tokens", str(args.tokens),
                                  *(["--workers", str(WORKERS)] if WORKERS else [])],
                                 capture_output=True, text=True, check=True, cwd=REPO)
            mem = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"  {side:<13} peak {mem['peak_mb']:6.0f} MB, of which the steps' working memory "
                  f"{mem['step_mb']:5.0f} MB")


if __name__ == "__main__":
    main()
