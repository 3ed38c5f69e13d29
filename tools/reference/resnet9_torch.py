#!/usr/bin/env python3
"""The resnet9 recipe (../shared/docs/recipes.md, choices in docs/recipe.md) in PyTorch.

Two jobs:
  train    the whole recipe from the official CIFAR-10 binary files: the side-by-side
           baseline for the CUDA engine (CUDA events time the same region as bench/speedrun).
  compare  replays a bench/reference_dump directory (initial state, whitening filters,
           augmented batches) step by step and checks the CPU reference tensor for tensor
           (docs/torch_crosscheck.md lists every tensor and its tolerance).

Works with PyTorch 1.13 (Debian's python3-torch, CPU) and 2.x (CUDA): no torch.compile, no API
newer than 1.13.

Layouts. PyTorch runs NCHW with conv weights [K][C][R][R]; our flat layout (net/layout.h) stores
conv weights KRSC [K][R][R][C] and activations NHWC, so conv weights are permuted when loaded
and saved, images when loaded. Ghost-BN groups are CONTIGUOUS blocks of bn_group images of the
batch (docs/recipe.md), running statistics [G][C] per BN layer.
"""
import argparse
import datetime
import json
import math
import os
import socket
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

# ----------------------------------------------------------------------------- the recipe
# Every number of the resnet9 recipe, as in net/recipe.h.
RECIPE = dict(
    mean=(125.31, 122.95, 113.87),  # per channel, 0..255 scale
    std=(62.99, 62.09, 66.70),
    pad=4,
    celu_alpha=0.3,
    logit_scale=1.0 / 16.0,
    whiten_images=10000,
    whiten_eps=1e-2,
    bn_group=32,
    bn_eps=1e-5,
    bn_momentum=0.1,
    label_smoothing=0.2,
    batch=512,
    epochs=10,
    lr_knots=(0.0, 2.0, 8.0),
    lr_values=(0.0, 1.0, 0.1),
    momentum=0.9,
    weight_decay=5e-4,
    bn_bias_lr_mult=64.0,
    ema_every=5,
    ema_rho=0.99,
)

NUM_CLASSES = 10
WHITEN_CHANNELS = 27
# The eight conv -> [pool] -> ghost BN -> CELU units, in layout order: (name, pooled).
UNITS = [("prep", False), ("layer1", True), ("layer1_res1", False), ("layer1_res2", False),
         ("layer2", True), ("layer3", True), ("layer3_res1", False), ("layer3_res2", False)]
BN_NAMES = [u + "_bn" for u, _ in UNITS]


def widths(width):
    # std::lround(base * width), at least 1 (net/layout.cpp); floor(x + 0.5) rounds halves up
    # like lround for positive x (Python's round() would round them to even).
    return [max(1, int(math.floor(b * width + 0.5))) for b in (64, 128, 256, 512)]


def make_layout(width):
    """[(name, shape in OUR layout, is_bn_bias)] in net/layout.h order."""
    c0, c1, c2, c3 = widths(width)
    specs = [("prep", WHITEN_CHANNELS, c0, 1), ("layer1", c0, c1, 3), ("layer1_res1", c1, c1, 3),
             ("layer1_res2", c1, c1, 3), ("layer2", c1, c2, 3), ("layer3", c2, c3, 3),
             ("layer3_res1", c3, c3, 3), ("layer3_res2", c3, c3, 3)]
    out = []
    for name, cin, cout, r in specs:
        out.append((name + "_conv", [cout, r, r, cin], False))
        out.append((name + "_bn_bias", [cout], True))
    out.append(("head_linear", [NUM_CLASSES, c3], False))
    return out


def to_torch(t):
    """Our layout -> PyTorch's: conv KRSC -> KCRS; everything else is the same."""
    return t.permute(0, 3, 1, 2).contiguous() if t.dim() == 4 else t


def from_torch(t):
    """PyTorch's layout -> ours: conv KCRS -> KRSC."""
    return t.permute(0, 2, 3, 1).contiguous() if t.dim() == 4 else t


def piecewise_linear(t, knots, values):
    """ref::piecewise_linear in float32 arithmetic, so the lrs match bit for bit."""
    f32 = np.float32
    t = f32(t)
    if t <= f32(knots[0]):
        return f32(values[0])
    for i in range(1, len(knots)):
        if t <= f32(knots[i]):
            f = (t - f32(knots[i - 1])) / (f32(knots[i]) - f32(knots[i - 1]))
            return f32(values[i - 1]) + f * (f32(values[i]) - f32(values[i - 1]))
    return f32(values[-1])


def lr_weights(step, steps_per_epoch, batch, rc=RECIPE):
    """Weight lr of 0-based step s: the schedule at epoch (s + 1) / steps_per_epoch, / batch."""
    epoch = np.float32(step + 1) / np.float32(steps_per_epoch)
    return float(piecewise_linear(epoch, rc["lr_knots"], rc["lr_values"]) / np.float32(batch))


def lr_bn_bias(step, steps_per_epoch, batch, rc=RECIPE):
    return float(np.float32(lr_weights(step, steps_per_epoch, batch, rc)) *
                 np.float32(rc["bn_bias_lr_mult"]))


def weight_decays(batch, rc=RECIPE):
    """(wd of weights, wd of BN biases): 5e-4 * batch, and that / 64 (float32 as in C++)."""
    wd = np.float32(rc["weight_decay"]) * np.float32(batch)
    return float(wd), float(wd / np.float32(rc["bn_bias_lr_mult"]))


def ema_rho_applied(every, rc=RECIPE):
    """rho per EMA update: ema_rho ^ ema_every (float32 as in Recipe::ema_rho_applied)."""
    return float(np.float32(rc["ema_rho"]) ** np.float32(every))


# ----------------------------------------------------------------------------- data
def resolve_data_dir(flag):
    """--data, else $CIFAR10_DIR, else ~/.cache/cifar-speedrun (as data::resolve_data_dir);
    accepts cifar-10-batches-bin itself or a folder holding it."""
    d = flag or os.environ.get("CIFAR10_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "cifar-speedrun")
    for cand in (d, os.path.join(d, "cifar-10-batches-bin")):
        if os.path.isfile(os.path.join(cand, "data_batch_1.bin")):
            return cand
    sys.exit(f"resnet9_torch: no CIFAR-10 binary files in {d} (nor in its cifar-10-batches-bin); "
             "run tools/get_cifar10.sh or pass --data")


def read_records(path, limit=-1):
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % 3073:
        sys.exit(f"resnet9_torch: {path}: not a whole number of 3073-byte records")
    rec = raw.reshape(-1, 3073)
    if limit >= 0:
        rec = rec[:limit]
    labels = rec[:, 0].copy()
    if labels.max() > 9:
        sys.exit(f"resnet9_torch: {path}: label > 9")
    return labels, rec[:, 1:].reshape(-1, 3, 32, 32).copy()


def load_cifar(d, train_limit=-1, test_limit=-1):
    """(train labels [n], train images uint8 [n][3][32][32], test labels, test images)."""
    labels, images = [], []
    left = 50000 if train_limit < 0 else train_limit
    for i in range(1, 6):
        if left <= 0:
            break
        lab, img = read_records(os.path.join(d, f"data_batch_{i}.bin"), left)
        labels.append(lab)
        images.append(img)
        left -= len(lab)
    tl, ti = read_records(os.path.join(d, "test_batch.bin"), test_limit)
    return np.concatenate(labels), np.concatenate(images), tl, ti


def normalize(u8, dtype=torch.float32):
    """uint8 [n][3][32][32] -> (v - mean[c]) / std[c], NCHW. Same float32 ops as
    ref::normalize_cifar, so the result is bit-identical in float32."""
    mean = torch.tensor(RECIPE["mean"], dtype=torch.float32, device=u8.device).view(1, 3, 1, 1)
    std = torch.tensor(RECIPE["std"], dtype=torch.float32, device=u8.device).view(1, 3, 1, 1)
    return ((u8.float() - mean) / std).to(dtype)


def whitening_filters(x, eps, chunk=2000):
    """Fixed whitening filters [27][3][3][3] (PyTorch KCRS) from normalised images x NCHW.

    Every 3x3 patch (no padding) as a 27-vector ordered (c, ky, kx); covariance X^T X / (n - 1)
    without centring, accumulated in float64; eigenvalues descending; each eigenvector's sign
    fixed so that its first largest-magnitude component is positive (ref::symmetric_eigen);
    filter i = V_i / sqrt(lambda_i + eps). Returns (filters float64, eigenvalues float64)."""
    cov = torch.zeros(27, 27, dtype=torch.float64, device=x.device)
    count = 0
    for i in range(0, x.shape[0], chunk):
        p = x[i:i + chunk].double().unfold(2, 3, 1).unfold(3, 3, 1)  # [n][3][30][30][3][3]
        p = p.permute(0, 2, 3, 1, 4, 5).reshape(-1, 27)
        cov += p.t() @ p
        count += p.shape[0]
    cov /= count - 1
    evals, evecs = torch.linalg.eigh(cov.cpu())  # ascending, eigenvectors in columns
    evals = evals.flip(0)
    vecs = evecs.t().flip(0)  # rows, descending
    idx = vecs.abs().argmax(dim=1)
    sign = torch.sign(vecs[torch.arange(27), idx])
    vecs = vecs * sign[:, None]
    filters = vecs / torch.sqrt(evals + eps)[:, None]
    return filters.view(27, 3, 3, 3).to(x.device), evals


def augment(padded, index, crops):
    """Crop 32x32 at (dy, dx) of padded[index[i]] (NCHW, padded by 4), mirrored if flip.
    crops [B][3] int (dy, dx, flip), as ref::crop_flip (the mirror applies to the crop)."""
    B = index.shape[0]
    dev = padded.device
    ar = torch.arange(32, device=dev)
    rows = crops[:, 0:1] + ar[None, :]  # [B][32]
    cols = crops[:, 1:2] + torch.where(crops[:, 2:3].bool(), 31 - ar[None, :], ar[None, :])
    img = padded[index]  # [B][3][40][40]
    img = img.gather(2, rows[:, None, :, None].expand(B, 3, 32, img.shape[3]))
    return img.gather(3, cols[:, None, None, :].expand(B, 3, 32, 32))


# ----------------------------------------------------------------------------- the network
class ExactGhostBN:
    """Training ghost BN exactly as documented (kernels/ref/ghost_bn.h), in the input's dtype:
    contiguous groups of `group` images, biased two-pass variance for the normalisation,
    running statistics [G][C] with the unbiased variance, momentum in PyTorch's convention."""

    def __init__(self, stats, group, eps, momentum):
        self.stats, self.group, self.eps, self.momentum = stats, group, eps, momentum

    def __call__(self, name, x, bias):
        N, C, H, W = x.shape
        G = N // self.group
        xg = x.reshape(G, self.group, C, H, W)
        mean = xg.mean(dim=(1, 3, 4), keepdim=True)
        var = ((xg - mean) ** 2).mean(dim=(1, 3, 4), keepdim=True)
        y = (xg - mean) / torch.sqrt(var + self.eps) + bias.view(1, 1, C, 1, 1)
        rm, rv = self.stats[name]
        with torch.no_grad():
            n = self.group * H * W
            m = self.momentum
            rm.mul_(1 - m).add_(m * mean.view(G, C).to(rm.dtype))
            rv.mul_(1 - m).add_(m * (var.view(G, C) * (n / (n - 1))).to(rv.dtype))
        return y.reshape(N, C, H, W)


class FastGhostBN:
    """The same ghost BN through one fused F.batch_norm call, for the train command.

    It needs the batch INTERLEAVED (interleave_order() below): fed image j is logical image
    (j % G) * group + j // G. Viewing x [N][C][H][W] as [N/G][G*C][H][W] puts fed images with
    the same j % G, i.e. logical group g = j % G, on the channels g*C .. g*C + C - 1, so
    batch_norm's per-channel statistics are exactly the per-group statistics of contiguous
    groups, and its running buffers [G*C] are our [G][C]. compare checks this path against
    ExactGhostBN."""

    def __init__(self, stats, groups, eps, momentum):
        self.stats, self.G, self.eps, self.momentum = stats, groups, eps, momentum
        self.ones = {}

    def __call__(self, name, x, bias):
        N, C, H, W = x.shape
        rm, rv = self.stats[name]
        key = (C, bias.device)
        if key not in self.ones:  # the frozen BN scale, as a tensor so cuDNN takes the call
            self.ones[key] = torch.ones(self.G * C, dtype=bias.dtype, device=bias.device)
        y = F.batch_norm(x.reshape(N // self.G, self.G * C, H, W), rm.view(-1), rv.view(-1),
                         self.ones[key], bias.repeat(self.G), True, self.momentum, self.eps)
        return y.reshape(N, C, H, W)


class ChannelsLastGhostBN:
    """The same ghost BN for channels_last activations, as plain tensor ops: the NHWC memory of
    x is a free view [G][group*H*W][C], so contiguous groups need no interleaving; statistics
    and normalisation in fp32 whatever the activation dtype. compare checks it against
    ExactGhostBN."""

    def __init__(self, stats, group, eps, momentum):
        self.stats, self.group, self.eps, self.momentum = stats, group, eps, momentum

    def __call__(self, name, x, bias):
        N, C, H, W = x.shape
        G = N // self.group
        xf = x.permute(0, 2, 3, 1).reshape(G, -1, C).float()
        mean = xf.mean(dim=1, keepdim=True)
        var = ((xf - mean) ** 2).mean(dim=1, keepdim=True)
        y = ((xf - mean) * torch.rsqrt(var + self.eps) + bias.float()).to(x.dtype)
        rm, rv = self.stats[name]
        with torch.no_grad():
            n = self.group * H * W
            m = self.momentum
            rm.mul_(1 - m).add_(m * mean.view(G, C).to(rm.dtype))
            rv.mul_(1 - m).add_(m * (var.view(G, C) * (n / (n - 1))).to(rv.dtype))
        return y.reshape(N, H, W, C).permute(0, 3, 1, 2)


def interleave_order(batch, group):
    """Fed position j holds logical position (j % G) * group + j // G (see FastGhostBN)."""
    G = batch // group
    j = torch.arange(batch)
    return (j % G) * group + j // G


class EvalBN:
    """Evaluation BN with the running statistics averaged over the groups ([C] each)."""

    def __init__(self, stats, eps):
        self.avg = {k: (m.mean(0), v.mean(0)) for k, (m, v) in stats.items()}
        self.eps = eps

    def __call__(self, name, x, bias):
        m, v = self.avg[name]
        return F.batch_norm(x, m.to(x.dtype), v.to(x.dtype), None, bias.to(x.dtype), False, 0.0,
                            self.eps)


def forward(P, whiten, x, bn, pool=F.max_pool2d, rc=RECIPE):
    """Logits [N][10] of the ResNet-9 (P: PyTorch-layout parameters by layout name).
    pool(x, k): max-pool with window and stride k (compare passes a RoutedPool)."""

    def unit(name, x, pooled):
        w = P[name + "_conv"]
        y = F.conv2d(x, w, padding=w.shape[-1] // 2)
        if pooled:
            y = pool(y, 2)
        return F.celu(bn(name + "_bn", y, P[name + "_bn_bias"]), rc["celu_alpha"])

    x = F.conv2d(x, whiten.to(x.dtype), padding=1)
    x = unit("prep", x, False)
    x = unit("layer1", x, True)
    x = x + unit("layer1_res2", unit("layer1_res1", x, False), False)
    x = unit("layer2", x, True)
    x = unit("layer3", x, True)
    x = x + unit("layer3_res2", unit("layer3_res1", x, False), False)
    x = pool(x, 4).flatten(1)
    return F.linear(x, P["head_linear"]) * rc["logit_scale"]


def recipe_loss(logits, labels, s=RECIPE["label_smoothing"]):
    """sum_i (1 - s) * (-log p_i[t_i]) + s * mean_k(-log p_i[k])  (summed over the batch)."""
    logp = F.log_softmax(logits, dim=1)
    nll = -logp.gather(1, labels.long()[:, None]).squeeze(1)
    return ((1 - s) * nll - s * logp.mean(dim=1)).sum()


def sgd_nesterov(params, grads, moms, lr, wd, m):
    """ref::sgd_nesterov_step: g += wd*w; g *= -lr; v = m*v + g; w += g + m*v (grads are
    scratch afterwards)."""
    for w, g, v in zip(params, grads, moms):
        g.add_(w, alpha=wd).mul_(-lr)
        v.mul_(m).add_(g)
        w.add_(g + m * v)


def ema_update(ema, model, rho):
    """ema = rho * ema + (1 - rho) * model, over lists of tensors."""
    if hasattr(torch, "_foreach_mul_"):
        torch._foreach_mul_(ema, rho)
        torch._foreach_add_(ema, model, alpha=1 - rho)
    else:
        for e, w in zip(ema, model):
            e.mul_(rho).add_(w, alpha=1 - rho)


def init_params(layout, gen, device):
    """PyTorch default init: conv/linear weights uniform in +-1/sqrt(fan_in), BN biases 0.
    Returns PyTorch-layout fp32 tensors by name (leaf tensors requiring grad)."""
    P = {}
    for name, shape, is_bias in layout:
        if is_bias:
            t = torch.zeros(shape)
        else:
            fan_in = int(np.prod(shape[1:]))
            t = (torch.rand(shape, generator=gen) * 2 - 1) / math.sqrt(fan_in)
        P[name] = to_torch(t).to(device).requires_grad_(True)
    return P


def new_stats(layout_groups, layout, device, dtype=torch.float32):
    c = {name[:-len("_bias")]: shape[0] for name, shape, is_bias in layout if is_bias}
    return {bn: [torch.zeros(layout_groups, c[bn], dtype=dtype, device=device),
                 torch.ones(layout_groups, c[bn], dtype=dtype, device=device)] for bn in BN_NAMES}


# ----------------------------------------------------------------------------- train
class Timer:
    """CUDA events on cuda (the GPU time of the work queued between start and stop), wall
    clock on the CPU."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def mark(self):
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter()

    def seconds(self, a, b):
        if self.cuda:
            b.synchronize()
            return a.elapsed_time(b) / 1000.0
        return b - a


def evaluate_tta(P, whiten, stats, x_test, y_test, amp, batch=1000):
    """(plain accuracy, TTA accuracy) of the model on the test set; BN with group-averaged
    running statistics; TTA = mean of the logits of the image and its mirror."""
    bn = EvalBN(stats, RECIPE["bn_eps"])
    correct = torch.zeros((), dtype=torch.long, device=x_test.device)
    correct_tta = torch.zeros_like(correct)
    with torch.no_grad(), amp():
        for i in range(0, x_test.shape[0], batch):
            x = x_test[i:i + batch]
            y = y_test[i:i + batch]
            a = forward(P, whiten, x, bn).float()
            b = forward(P, whiten, x.flip(3), bn).float()
            correct += (a.argmax(1) == y).sum()
            correct_tta += ((0.5 * (a + b)).argmax(1) == y).sum()
    n = x_test.shape[0]
    return correct, correct_tta, n


def train_one(seed, data, args, device, amp, mem_fmt):
    """One run of the recipe. Returns a dict with the fields of net::RunResult (net/train.h).
    diverged is judged from the epoch losses (no per-step host synchronisation)."""
    rc = RECIPE
    x_train, padded, y_train, x_test, y_test = data
    batch, group = args.batch, rc["bn_group"]
    G = batch // group
    n_train = y_train.shape[0]
    spe = n_train // batch
    layout = make_layout(args.width)
    gen = torch.Generator().manual_seed(seed)
    P = init_params(layout, gen, device)
    names = [n for n, _, _ in layout]
    params = [P[n] for n in names]
    is_bias = [b for _, _, b in layout]
    moms = [torch.zeros_like(p) for p in params]
    stats = new_stats(G, layout, device)
    stat_list = [t for bn in BN_NAMES for t in stats[bn]]
    wd_w, wd_b = weight_decays(batch)
    # NCHW: FastGhostBN on interleaved batches; channels_last: ChannelsLastGhostBN, in order.
    inter = torch.arange(batch) if mem_fmt is not None else interleave_order(batch, group)
    inter = inter.to(device)
    dgen = torch.Generator(device=device).manual_seed(seed)
    timer = Timer(device)
    if mem_fmt is not None:
        for p in params:
            if p.dim() == 4:
                p.data = p.data.contiguous(memory_format=mem_fmt)
        bn = ChannelsLastGhostBN(stats, group, rc["bn_eps"], rc["bn_momentum"])
    else:
        bn = FastGhostBN(stats, G, rc["bn_eps"], rc["bn_momentum"])

    t0 = timer.mark()
    # Whitening statistics from the first 10,000 training images: inside the timed region.
    whiten, _ = whitening_filters(x_train[:rc["whiten_images"]], rc["whiten_eps"])
    whiten = whiten.float()
    ema_P = [p.detach().clone() for p in params]
    ema_stats = [t.clone() for t in stat_list]
    rho = ema_rho_applied(rc["ema_every"])
    epochs = []
    step = 0
    for epoch in range(args.epochs):
        e0 = timer.mark()
        perm = torch.randperm(n_train, device=device, generator=dgen)[:spe * batch]
        perm = perm.view(spe, batch)[:, inter].reshape(-1)  # interleave each batch (NCHW)
        crops = torch.stack([torch.randint(0, 2 * rc["pad"] + 1, (perm.shape[0],), device=device,
                                           generator=dgen),
                             torch.randint(0, 2 * rc["pad"] + 1, (perm.shape[0],), device=device,
                                           generator=dgen),
                             torch.randint(0, 2, (perm.shape[0],), device=device, generator=dgen)],
                            dim=1)
        imgs = augment(padded, perm, crops)
        if mem_fmt is not None:
            imgs = imgs.contiguous(memory_format=mem_fmt)
        labels = y_train[perm]
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.long, device=device)
        for b in range(spe):
            x = imgs[b * batch:(b + 1) * batch]
            y = labels[b * batch:(b + 1) * batch]
            with amp():
                logits = forward(P, whiten, x, bn).float()
            loss = recipe_loss(logits, y)
            grads = list(torch.autograd.grad(loss, params))
            with torch.no_grad():
                loss_sum += loss.detach().double()
                correct += (logits.argmax(1) == y).sum()
                lw, lb = lr_weights(step, spe, batch), lr_bn_bias(step, spe, batch)
                gw = [g for g, bb in zip(grads, is_bias) if not bb]
                gb = [g for g, bb in zip(grads, is_bias) if bb]
                pw = [p for p, bb in zip(params, is_bias) if not bb]
                pb = [p for p, bb in zip(params, is_bias) if bb]
                mw = [m for m, bb in zip(moms, is_bias) if not bb]
                mb = [m for m, bb in zip(moms, is_bias) if bb]
                sgd_nesterov(pw, gw, mw, lw, wd_w, rc["momentum"])
                sgd_nesterov(pb, gb, mb, lb, wd_b, rc["momentum"])
                if step % rc["ema_every"] == 0:
                    ema_update(ema_P, [p.detach() for p in params], rho)
                    ema_update(ema_stats, stat_list, rho)
            step += 1
        e1 = timer.mark()
        epochs.append(dict(epoch=epoch + 1, lr=lw, _t=(e0, e1), _loss=loss_sum, _correct=correct))
    # The final evaluation of the averaged model, TTA included: timed.
    P_eval = {n: t for n, t in zip(names, ema_P)}
    it = iter(ema_stats)
    ema_stat_dict = {bn_name: [next(it), next(it)] for bn_name in BN_NAMES}
    correct, correct_tta, n_test = evaluate_tta(P_eval, whiten, ema_stat_dict, x_test, y_test, amp)
    t1 = timer.mark()
    total = timer.seconds(t0, t1)
    eval_s = timer.seconds(epochs[-1]["_t"][1], t1)
    logs = []
    for e in epochs:
        logs.append(dict(epoch=e["epoch"], train_loss=e["_loss"].item() / (spe * batch),
                         train_acc=e["_correct"].item() / (spe * batch), test_acc_tta=-1,
                         lr=e["lr"], seconds=timer.seconds(*e["_t"])))
    loss_ok = all(math.isfinite(e["train_loss"]) for e in logs)
    return dict(seed=seed, epochs=logs, test_acc=correct.item() / n_test,
                test_acc_tta=correct_tta.item() / n_test, train_seconds=total - eval_s,
                eval_seconds=eval_s, timed_total_seconds=total, diverged=not loss_ok,
                diverged_step=-1, warmup=False)


def cmd_train(args):
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        # Convolutions in fp16 with fp32 master weights; BN statistics, loss, optimiser fp32.
        amp = lambda: torch.autocast(device_type="cuda", dtype=torch.float16)  # noqa: E731
    else:
        import contextlib
        amp = contextlib.nullcontext
    mem_fmt = torch.channels_last if args.channels_last else None
    d = resolve_data_dir(args.data)
    t_read = time.perf_counter()
    ytr, xtr, yte, xte = load_cifar(d, args.train_limit, args.test_limit)
    t_read = time.perf_counter() - t_read
    # Upload + one-time preparation (normalise, pad): not timed, reported separately.
    t_up = time.perf_counter()
    x_train = normalize(torch.from_numpy(xtr).to(device))
    store = torch.float16 if device.type == "cuda" else torch.float32
    padded = F.pad(x_train, (RECIPE["pad"],) * 4, mode="reflect").to(store)
    x_test = normalize(torch.from_numpy(xte).to(device)).to(store)
    if mem_fmt is not None:
        x_test = x_test.contiguous(memory_format=mem_fmt)
    data = (x_train, padded, torch.from_numpy(ytr).long().to(device), x_test,
            torch.from_numpy(yte).long().to(device))
    if device.type == "cuda":
        torch.cuda.synchronize()
    t_up = time.perf_counter() - t_up
    runs = []
    t_start = time.perf_counter()
    for i in range(args.warmup + args.runs):
        if args.time_budget > 0 and time.perf_counter() - t_start > args.time_budget:
            print(f"time budget of {args.time_budget:.0f} s used: stopping after {i} runs")
            break
        seed = args.seed + i
        r = train_one(seed, data, args, device, amp, mem_fmt)
        r["warmup"] = i < args.warmup
        runs.append(r)
        print(f"run {i} seed {seed}{' (warm-up)' if r['warmup'] else ''}: "
              f"test acc {r['test_acc']:.4f}, TTA {r['test_acc_tta']:.4f}, "
              f"timed {r['timed_total_seconds']:.3f} s (train {r['train_seconds']:.3f}, "
              f"eval {r['eval_seconds']:.3f}), last train loss {r['epochs'][-1]['train_loss']:.4f}",
              flush=True)
        if args.json:  # rewritten after every run, so an interrupted series keeps its runs
            write_json(args, device, d, ytr, yte, t_read, t_up, runs)
    summary = summarize(runs)
    if summary["finished"]:
        acc, tim = summary["test_acc_tta"], summary["timed_total_seconds"]
        sd = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
        print(f"summary: {summary['finished']} finished runs ({summary['diverged']} diverged), "
              f"TTA accuracy {acc['mean']:.4f} +- {sd(acc['std'])}, >= 94%: "
              f"{summary['fraction_at_target']:.2f}, time {tim['mean']:.3f} +- {sd(tim['std'])} s")
    if args.json:
        print(f"wrote {args.json}")


# Two-sided 95% Student-t quantiles t(0.975, df) for df = 1..30; beyond, the normal 1.96 plus
# the first Cornish-Fisher term (error < 1e-3), as docs/json_schema.md describes for speedrun.
T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
        2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
        2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def t975(df):
    if df <= len(T975):
        return T975[df - 1]
    z = 1.959964
    return z + (z ** 3 + z) / (4 * df)


def stats(values, ci=False):
    """docs/json_schema.md's stats object (sample std; nulls where undefined)."""
    n = len(values)
    out = dict(n=n, mean=None, std=None, min=None, max=None)
    if ci:
        out.update(ci95_low=None, ci95_high=None)
    if n == 0:
        return out
    a = np.array(values, dtype=np.float64)
    out.update(mean=float(a.mean()), min=float(a.min()), max=float(a.max()))
    if n > 1:
        out["std"] = float(a.std(ddof=1))
        if ci:
            half = t975(n - 1) * out["std"] / math.sqrt(n)
            out.update(ci95_low=out["mean"] - half, ci95_high=out["mean"] + half)
    return out


def summarize(runs):
    """The `summary` object of schema cifar-speedrun/v1, over the counted (non-warm-up) runs."""
    counted = [r for r in runs if not r["warmup"]]
    done = [r for r in counted if not r["diverged"]]
    at_target = sum(1 for r in done if r["test_acc_tta"] >= 0.94)
    return dict(
        runs=len(counted), finished=len(done), diverged=len(counted) - len(done),
        warmup_runs=len(runs) - len(counted),
        test_acc_tta=stats([r["test_acc_tta"] for r in done], ci=True),
        test_acc=stats([r["test_acc"] for r in done], ci=True),
        ci95_method="student-t", target_acc=0.94, runs_at_target=at_target,
        fraction_at_target=at_target / len(done) if done else None,
        timed_total_seconds=stats([r["timed_total_seconds"] for r in done]),
        train_seconds=stats([r["train_seconds"] for r in done]),
        eval_seconds=stats([r["eval_seconds"] for r in done]))


def run_record_v1(r):
    """A run in schema v1: "not measured" is null."""
    out = dict(r)
    out["epochs"] = [dict(e, test_acc_tta=None if e["test_acc_tta"] < 0 else e["test_acc_tta"])
                     for e in r["epochs"]]
    if not r["diverged"]:
        out["diverged_step"] = None
    return out


def git_commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, check=True,
                              cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def write_json(args, device, d, ytr, yte, t_read, t_up, runs):
    """Writes the record in schema cifar-speedrun/v1 (docs/json_schema.md), atomically."""
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    rec = dict(
        schema="cifar-speedrun/v1",
        tool="resnet9_torch",
        version=f"torch {torch.__version__}",
        git_commit=git_commit(),
        date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        machine=dict(hostname=socket.gethostname(), cpu=cpu_name(), gpu=gpu),
        device=device.type,
        device_name=f"PyTorch {torch.__version__} on {gpu or cpu_name()}",
        engine_info=dict(precision="fp16 autocast" if device.type == "cuda" else "fp32",
                         channels_last=str(bool(args.channels_last)).lower()),
        config=dict(recipe="resnet9", epochs=args.epochs, width=args.width, batch=args.batch,
                    bn_group=RECIPE["bn_group"], train_images=int(ytr.shape[0]),
                    test_images=int(yte.shape[0]), runs=args.runs, seed=args.seed,
                    warmup=args.warmup > 0, warmup_runs=args.warmup, data_dir=d),
        setup=dict(data_read_seconds=t_read, upload_seconds=t_up, init_seconds=0.0),
        runs=[run_record_v1(r) for r in runs],
        summary=summarize(runs),
    )
    tmp = f"{args.json}.tmp.{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            json.dump(rec, f, indent=1)
        os.replace(tmp, args.json)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


# ----------------------------------------------------------------------------- compare
class Dump:
    """A bench/reference_dump directory: manifest.json + raw little-endian .bin files."""

    DTYPES = {"float32": np.float32, "float64": np.float64, "int32": np.int32, "uint8": np.uint8}

    def __init__(self, d):
        self.dir = d
        with open(os.path.join(d, "manifest.json")) as f:
            self.manifest = json.load(f)
        self.entries = {t["name"]: t for t in self.manifest["tensors"]}

    def np(self, name):
        if name not in self.entries:
            sys.exit(f"compare: {name} is not in {self.dir}/manifest.json")
        e = self.entries[name]
        little = np.dtype(self.DTYPES[e["dtype"]]).newbyteorder("<")
        a = np.fromfile(os.path.join(self.dir, e["file"]), dtype=little)
        shape = e["shape"]
        if a.size != int(np.prod(shape)):
            sys.exit(f"compare: {e['file']}: {a.size} values, manifest says shape {shape}")
        return a.astype(little.newbyteorder("="), copy=False).reshape(shape)

    def t(self, name, dtype=None):
        a = torch.from_numpy(self.np(name).copy())
        return a.to(dtype) if dtype is not None else a


# A float32 tensor is only known to a few ulps: 2^-21 is 4 ulps (2^-23 each, relative) in RMS.
FP32_FLOOR = 2.0 ** -21


class Table:
    """Rows of (tensor, shape, error, max|diff|, tolerance, metric, ok). ours is the CPU
    reference's tensor, ref PyTorch's. Metrics:
      abs    max |ours - ref|
      rel    ||ours - ref|| / ||ref||
      delta  ||ours - ref|| / (||ref - base|| + FP32_FLOOR * ||ref|| / tol): relative to the
             change a step made (ref - base), so a small update of a large tensor is checked
             as strictly as a gradient, yet a difference of a few float32 ulps of the stored
             values (rounding order, not arithmetic) still passes."""

    def __init__(self, double):
        self.rows, self.notes = [], []
        self.column = 1 if double else 0

    def tol(self, cls):
        return TOL[cls][self.column]

    def add(self, name, ours, ref, cls, kind="rel", base=None):
        """cls: the tolerance class, a key of TOL."""
        tol = self.tol(cls)
        a = np.asarray(ours, dtype=np.float64).ravel()
        b = np.asarray(ref, dtype=np.float64).ravel()
        shape = str(list(np.shape(ours)))
        if a.shape != b.shape:
            self.rows.append((name, shape, float("inf"), float("inf"), tol, kind, False, cls))
            return
        diff = float(np.linalg.norm(a - b))
        max_abs = float(np.abs(a - b).max()) if a.size else 0.0
        if kind == "abs":
            err = max_abs
        elif kind == "delta":
            step = float(np.linalg.norm(b - np.asarray(base, dtype=np.float64).ravel()))
            den = step + FP32_FLOOR * float(np.linalg.norm(b)) / tol
            err = diff / den if den > 0 else (0.0 if diff == 0 else float("inf"))
        else:
            nb = float(np.linalg.norm(b))
            err = diff / nb if nb > 0 else (0.0 if diff == 0 else float("inf"))
        ok = bool(np.isfinite(err) and err <= tol)
        self.rows.append((name, shape, err, max_abs, tol, kind, ok, cls))

    def add_floor(self, name, ours, ref, ref_nudged, cls, factor):
        """rel error of ours against ref, with tolerance max(factor * floor, TOL[cls]), floor =
        rel distance of ref_nudged (the reference at a perturbed input) from ref."""
        a, b, c = (np.asarray(t, dtype=np.float64).ravel() for t in (ours, ref, ref_nudged))
        nb = float(np.linalg.norm(b))
        err = float(np.linalg.norm(a - b)) / nb if nb > 0 else float("inf")
        floor = float(np.linalg.norm(c - b)) / nb if nb > 0 else 0.0
        tol = max(factor * floor, self.tol(cls))
        max_abs = float(np.abs(a - b).max()) if a.size else 0.0
        ok = bool(np.isfinite(err) and err <= tol)
        self.rows.append((name, str(list(np.shape(ours))), err, max_abs, tol, "floor", ok, cls))

    def print(self):
        w = max(len(r[0]) for r in self.rows)
        print(f"{'tensor':<{w}}  {'shape':<18} {'error':>10} {'max|diff|':>10} {'tolerance':>10}"
              "  metric  ok")
        for name, shape, err, mx, tol, kind, ok, _ in self.rows:
            print(f"{name:<{w}}  {shape:<18} {err:10.3e} {mx:10.3e} {tol:10.1e}  {kind:<6}  "
                  f"{'ok' if ok else 'MISMATCH'}")
        for n in self.notes:
            print("note:", n)
        bad = [r for r in self.rows if not r[6]]
        worst = {}  # per class: the row closest to its tolerance (rows may carry their own)
        for _, _, err, _, tol, _, _, cls in self.rows:
            ratio = err / tol if tol > 0 else (0.0 if err == 0 else float("inf"))
            if cls not in worst or ratio > worst[cls][0]:
                worst[cls] = (ratio, err, tol)
        print("largest error by class (tolerance): " +
              ", ".join(f"{k} {e:.2e} ({t:.0e})" for k, (_, e, t) in worst.items()))
        print(f"{len(self.rows) - len(bad)} of {len(self.rows)} tensors agree"
              + (f"; MISMATCH: {', '.join(r[0] for r in bad)}" if bad else ""))
        return not bad


# Tolerances by class: (PyTorch side in float32, PyTorch side in float64 with --double).
# docs/torch_crosscheck.md gives the reasoning and the measured errors. With --double the
# difference is our fp32 error alone; in float32 PyTorch's own fp32 error adds to it, which
# matters for the gradients of the 32x32 layers at full width (oneDNN's fp32 weight gradients
# are 1.7e-4 away from float64 there, ours 1.1e-5).
TOL = dict(
    exact=(0.0, 0.0),          # crops, flips, labels: pure data movement (abs)
    normalize=(1e-7, 1e-7),    # (v - mean[c]) / std[c]: the same float32 operations
    lr=(1e-7, 1e-7),           # lr schedule: the same float32 operations
    whiten=(1e-5, 1e-5),       # whitening filters: float64 covariance and eigensolver on both sides
    forward=(1e-5, 1e-5),      # logits of one fp32 forward (train and eval)
    loss=(1e-6, 1e-6),         # the summed loss (double accumulation on our side)
    grad=(1e-3, 1e-4),         # parameter gradients: fp32 backward through 8 ghost-BN layers
    update=(1e-3, 1e-4),       # weight change, momentum, EMA change of one step
    stats=(1e-5, 1e-5),        # BN running mean/var after one step, their EMA and group average
    fastpath=(2e-5, 1e-5),     # the train command's BN paths vs the documented one
    # The GPU engine's step 1 (reference_dump --gpu): fp16 activations and gradients against
    # PyTorch's fp32/float64, as tests/resnet9_gpu_test.cu checks it against the CPU reference.
    gpu_forward=(1e-2, 1e-2),  # logits (measured 1.9e-3 against the CPU on an H100)
    gpu_loss=(5e-3, 5e-3),     # the summed loss
    gpu_stats=(1e-2, 1e-2),    # BN running statistics after the step
    gpu_grad=(1e-2, 1e-2),     # gradients: max(GPU_NOISE_FACTOR x PyTorch's noise floor, this)
)

# A gradient of the GPU step passes when its error <= max(GPU_NOISE_FACTOR * floor, TOL
# gpu_grad), floor = PyTorch's own change of that gradient when every input value moves by one
# fp16 ulp. Max-pool routing makes the step's gradients jump under perturbations of that size
# (tests/resnet9_gpu_test.cu explains and measures it), so a fixed tight tolerance cannot tell
# fp16 rounding from a bug; gross bugs (a missing gradient path, a stale buffer) still fail.
GPU_NOISE_FACTOR = 2.0


class RoutedPool:
    """Max-pool (window = stride = k) as argmax + gather, so its backward sends the gradient
    to one chosen element per window, like ref::maxpool_backward and F.max_pool2d (first
    maximum on exact ties). Records near-ties: windows whose two largest values differ by less
    than tie_rel relatively. There the other implementation's fp32 rounding may pick the other
    element; `flips` (pairs (call, window)) routes those windows to their second largest
    element instead. `replay` reuses the chosen elements of an earlier pass (one [N][C][Ho][Wo]
    index tensor per call), with its images reordered by `perm`."""

    def __init__(self, flips=(), replay=None, perm=None, tie_rel=1e-5):
        self.flips, self.replay, self.perm, self.tie_rel = set(flips), replay, perm, tie_rel
        self.calls, self.near = [], []

    def __call__(self, x, k):
        call = len(self.calls)
        N, C, H, W = x.shape
        win = x.reshape(N, C, H // k, k, W // k, k).permute(0, 1, 2, 4, 3, 5)
        win = win.reshape(N, C, H // k, W // k, k * k)
        with torch.no_grad():
            if self.replay is not None:
                idx = self.replay[call][self.perm]
            else:
                idx = win.argmax(dim=-1)  # the first maximum on exact ties
                top = win.topk(2, dim=-1)
                v = top.values
                gap = (v[..., 0] - v[..., 1]) / v[..., 0].abs().clamp_min(1e-30)
                for f in ((gap > 0) & (gap < self.tie_rel)).flatten().nonzero().flatten().tolist():
                    self.near.append(((call, f), float(gap.flatten()[f])))
                    if (call, f) in self.flips:
                        idx.view(-1)[f] = top.indices.view(-1, 2)[f, 1]
        self.calls.append(idx)
        return win.gather(-1, idx[..., None]).squeeze(-1)


def flat(tensors, names):
    """The named tensors as one float64 CPU vector."""
    return torch.cat([tensors[n].detach().double().flatten().cpu() for n in names])


class Replay:
    """What one PyTorch training step needs: the whitening filters, sizes and names."""

    def __init__(self, whiten, names, group, G):
        self.whiten, self.names, self.group, self.G = whiten, names, group, G

    def step(self, P0, stats0, x, labels, flips=(), replay=None, perm=None, bn_path="exact"):
        """Forward + summed loss + backward from state (P0, stats0), on copies. bn_path:
        "exact" (ExactGhostBN), "fast" (FastGhostBN, x interleaved), "channels_last"."""
        P = {n: P0[n].clone().requires_grad_(True) for n in self.names}
        st = {b: [t.clone() for t in stats0[b]] for b in BN_NAMES}
        if bn_path == "fast":
            bn = FastGhostBN(st, self.G, RECIPE["bn_eps"], RECIPE["bn_momentum"])
        elif bn_path == "channels_last":
            bn = ChannelsLastGhostBN(st, self.group, RECIPE["bn_eps"], RECIPE["bn_momentum"])
            x = x.contiguous(memory_format=torch.channels_last)
        else:
            bn = ExactGhostBN(st, self.group, RECIPE["bn_eps"], RECIPE["bn_momentum"])
        pool = RoutedPool(flips, replay, perm)
        logits = forward(P, self.whiten, x, bn, pool)
        loss = recipe_loss(logits, labels)
        grads = dict(zip(self.names, torch.autograd.grad(loss, [P[n] for n in self.names])))
        return dict(logits=logits.detach(), loss=loss.item(), grads=grads, stats=st, pool=pool)

    def step_matching_ties(self, P0, stats0, x, labels, cpp_grads, tol, max_windows=48):
        """step(), then, if a gradient differs by more than tol / 4 and the forward met
        near-tie max-pool windows, the routing of those windows that explains the CPU
        reference's gradients.

        The forward values do not depend on the routing and the backward is linear in it, so
        each window's effect d_w = grads(flip w) - grads is computed once and the subset S
        minimising ||cpp - grads - sum_S d_w|| is searched (every subset of up to 12
        windows, else rounding of the least-squares solution and single flips); the step is
        then recomputed with S flipped. A pool can only change the gradients of the tensors
        before it, so windows of the pool nearest above the last differing gradient are tried
        first. Returns (result, note or None)."""
        r = self.step(P0, stats0, x, labels)
        base, target = flat(r["grads"], self.names), flat(cpp_grads, self.names)

        def errors(g):
            return [float((g[n].double() - cpp_grads[n].double()).norm()) /
                    max(float(cpp_grads[n].double().norm()), 1e-300) for n in self.names]

        err = errors(r["grads"])
        if max(err) <= tol / 4 or not r["pool"].near:
            return r, None
        top = max(i for i, e in enumerate(err) if e > tol / 4)
        # First gradient (in layout order, input to head) each pool's routing reaches.
        reach = [self.names.index(n) for n in
                 ("layer1_conv", "layer2_conv", "layer3_conv", "layer3_res2_bn_bias")]
        near = [(w, g) for w, g in r["pool"].near if reach[w[0]] >= top]
        near.sort(key=lambda t: (reach[t[0][0]] - top, t[1]))
        cands = near[:max_windows]
        if not cands:
            return r, None
        D = torch.stack([flat(self.step(P0, stats0, x, labels, flips=[w])["grads"], self.names)
                         - base for w, _ in cands])
        chosen = best_subset(D @ D.t(), D @ (target - base))
        if not chosen:
            return r, (f"{len(r['pool'].near)} near-tie max-pool window(s) met, no routing of "
                       "them explains the difference")
        S = [cands[i] for i in chosen]
        r = self.step(P0, stats0, x, labels, flips=[w for w, _ in S])
        pools = ["layer1", "layer2", "layer3", "head"]
        where = ", ".join(f"{pools[w[0]]} pool window {w[1]} (gap {g:.1e})" for w, g in S)
        return r, (f"{len(r['pool'].near)} near-tie max-pool window(s) (relative gap < 1e-5); "
                   f"the CPU reference routed {len(S)} to the other element: {where}")


def best_subset(gram, b):
    """argmin over s in {0,1}^m of s^T gram s - 2 b^T s (= ||r - D^T s||^2 - ||r||^2 for
    gram = D D^T, b = D r). Exhaustive up to m = 12; beyond, the rounded least-squares
    solution improved by single flips. Returns the indices set in s."""
    m = b.shape[0]

    def cost(v):
        return float(v @ gram @ v - 2 * b @ v)

    if m <= 12:
        masks = torch.tensor([[(k >> i) & 1 for i in range(m)] for k in range(1 << m)],
                             dtype=torch.float64)
        c = ((masks @ gram) * masks).sum(1) - 2 * masks @ b
        best = masks[int(c.argmin())]
    else:
        ls = torch.linalg.lstsq(gram + 1e-12 * torch.eye(m, dtype=gram.dtype), b[:, None]).solution
        best = ls.flatten().clamp(0, 1).round()
        if cost(best) > 0:
            best = torch.zeros(m, dtype=torch.float64)
        improved = True
        while improved:
            improved = False
            for i in range(m):
                trial = best.clone()
                trial[i] = 1 - trial[i]
                if cost(trial) < cost(best):
                    best, improved = trial, True
    return [i for i in range(m) if best[i] > 0.5]


def check_fast_paths(rp, P0, stats0, x, labels, ref, table, tag):
    """The train command's two BN paths against ExactGhostBN: FastGhostBN on the interleaved
    batch (NCHW) and ChannelsLastGhostBN; logits, loss, gradients and running statistics. The
    routing of the exact pass is replayed so that near-ties cannot flip between them."""
    def cat(st):
        return torch.cat([t.flatten() for b in BN_NAMES for t in st[b]]).cpu().numpy()

    B = x.shape[0]
    for path, order in (("fast", interleave_order(B, rp.group).to(x.device)),
                        ("channels_last", torch.arange(B, device=x.device))):
        r = rp.step(P0, stats0, x[order], labels[order], replay=ref["pool"].calls, perm=order,
                    bn_path=path)
        name = f"{tag}.{path}_bn"
        table.add(f"{name}.logits", r["logits"][torch.argsort(order)].cpu().numpy(),
                  ref["logits"].cpu().numpy(), "fastpath")
        table.add(f"{name}.loss", [r["loss"]], [ref["loss"]], "fastpath")
        table.add(f"{name}.grads", flat(r["grads"], rp.names).numpy(),
                  flat(ref["grads"], rp.names).numpy(), "fastpath")
        table.add(f"{name}.running_stats", cat(r["stats"]), cat(ref["stats"]), "fastpath")


def fp16_round(t):
    """t's values rounded to the nearest float16, kept in t's dtype (what the GPU reads)."""
    return t.to(torch.float16).to(t.dtype)


def nudge_one_ulp(t, seed):
    """Every value of t (float16-representable) moved up or down by one float16 ulp at random,
    zeros to the smallest subnormal (tests/resnet9_gpu_test.cu's nudge_one_ulp)."""
    h = t.detach().cpu().to(torch.float16).numpy()
    bits = h.view(np.uint16).copy()
    rng = np.random.default_rng(seed)
    up = rng.integers(0, 2, size=bits.shape).astype(bool)
    zero = (bits & 0x7FFF) == 0
    bits = np.where(zero, bits | 1, np.where(up, bits + 1, bits - 1)).astype(np.uint16)
    return torch.from_numpy(bits.view(np.float16).astype(np.float32)).to(t.device, t.dtype)


def compare_gpu_step(dump, rp, names, P0, st0, x, labels, table):
    """The GPU engine's step 1 (gpu.step1.*, reference_dump --gpu) against PyTorch's step from
    the same state, with the conv weights and the batch rounded to float16 as the GPU reads
    them. Gradients are checked against PyTorch's own noise floor (GPU_NOISE_FACTOR)."""
    P16 = {n: fp16_round(P0[n]) if n.endswith("_conv") else P0[n] for n in names}
    x16 = fp16_round(x)
    r = rp.step(P16, st0, x16, labels)
    rn = rp.step(P16, st0, nudge_one_ulp(x16, 102), labels)
    table.add("gpu.step1.logits", dump.np("gpu.step1.logits"), r["logits"].cpu().numpy(),
              "gpu_forward")
    table.add("gpu.step1.loss", dump.np("gpu.step1.loss"), [r["loss"]], "gpu_loss")
    for n in names:
        table.add_floor(f"gpu.step1.grad.{n}", dump.np(f"gpu.step1.grad.{n}"),
                        from_torch(r["grads"][n]).cpu().numpy(),
                        from_torch(rn["grads"][n]).cpu().numpy(), "gpu_grad", GPU_NOISE_FACTOR)
    for b in BN_NAMES:
        for i, k in enumerate(("running_mean", "running_var")):
            table.add(f"gpu.step1.bn.{b}.{k}", dump.np(f"gpu.step1.bn.{b}.{k}"),
                      r["stats"][b][i].cpu().numpy(), "gpu_stats")


def cmd_compare(args):
    """Replays every dumped step from the CPU reference's state before it ("teacher forcing":
    one step's fp32 differences do not compound into the next) and checks each tensor."""
    dump = Dump(args.dump)
    man, cfg = dump.manifest, dump.manifest["config"]
    dtype = torch.float64 if args.double else torch.float32
    device = torch.device(args.device)
    if device.type == "cuda":  # full fp32 arithmetic, not TF32, in convolutions and matmuls
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    table = Table(args.double)
    # The recipe's constants must be the published ones; only the sizes vary in a dump.
    for k, v in man["recipe"].items():
        sizes = ("width", "batch", "bn_group", "ema_every", "epochs", "whiten_images")
        if k in sizes or k not in RECIPE:
            continue
        if not np.allclose(np.asarray(v, dtype=np.float64), np.asarray(RECIPE[k], dtype=np.float64),
                           rtol=1e-6, atol=0):
            table.notes.append(f"recipe constant {k} = {v} in the dump, {RECIPE[k]} in recipes.md")
            table.rows.append((f"recipe.{k}", "[]", float("inf"), float("inf"), 0.0, "abs", False,
                               "exact"))
    ema_every = man["recipe"]["ema_every"]
    width, batch, group = cfg["width"], cfg["batch"], cfg["bn_group"]
    G, spe, steps = batch // group, cfg["steps_per_epoch"], cfg["steps"]
    layout = make_layout(width)
    theirs = [(p["name"], p["shape"]) for p in man["layout"]["params"]]
    if [(n, s) for n, s, _ in layout] != theirs:
        sys.exit(f"compare: the dump's parameter layout differs from net/layout.h as written "
                 f"here:\n dump  {theirs}\n torch {[(n, s) for n, s, _ in layout]}")
    names = [n for n, _, _ in layout]
    is_bias = {n: b for n, _, b in layout}
    print(f"dump {args.dump}: width {width}, batch {batch}, bn_group {group}, {steps} steps, "
          f"ema_every {ema_every}, steps_per_epoch {spe}, data {cfg['data']}; "
          f"torch {torch.__version__}, PyTorch side in {dtype}")

    # Data: normalisation, whitening filters from the same images, augmentation below.
    x_train = normalize(dump.t("data.train_images_u8"))
    table.add("data.train_normalized", dump.np("data.train_normalized"),
              x_train.permute(0, 2, 3, 1).numpy(), "normalize")
    wf, evals = whitening_filters(x_train[:cfg["whiten_images"]].double(), RECIPE["whiten_eps"])
    rel_gap = float(((evals[:-1] - evals[1:]) / evals[:-1]).min())
    table.add("whiten.filters", dump.np("whiten.filters"), from_torch(wf).numpy(),
              "whiten")
    padded = F.pad(x_train, (RECIPE["pad"],) * 4, mode="reflect")
    train_labels = dump.t("data.train_labels")
    whiten = to_torch(dump.t("whiten.filters")).to(device, dtype)
    rp = Replay(whiten, names, group, G)
    wd_w, wd_b = weight_decays(batch)
    rho = ema_rho_applied(ema_every)

    def params(prefix):
        return {n: to_torch(dump.t(f"{prefix}param.{n}")).to(device, dtype) for n in names}

    def bn_stats(prefix):
        return {b: [dump.t(f"{prefix}bn.{b}.running_mean").to(device, dtype),
                    dump.t(f"{prefix}bn.{b}.running_var").to(device, dtype)] for b in BN_NAMES}

    for s in range(steps):
        tag, prev = f"step{s + 1}", ("init." if s == 0 else f"step{s}.")
        # The state before the step, as the CPU reference left it.
        P0, st0 = params(prev), bn_stats(prev)
        M0 = ({n: torch.zeros_like(P0[n]) for n in names} if s == 0 else
              {n: to_torch(dump.t(f"{prev}momentum.{n}")).to(device, dtype) for n in names})
        E0 = params("init." if s == 0 else f"{prev}ema.")
        Es0 = bn_stats("init." if s == 0 else f"{prev}ema.")
        # The batch: crops of the padded normalised images, mirrored per image.
        index = dump.t(f"{tag}.batch.index").long()
        aug = augment(padded, index, dump.t(f"{tag}.batch.crops").long())
        table.add(f"{tag}.batch.images", dump.np(f"{tag}.batch.images"),
                  aug.permute(0, 2, 3, 1).numpy(), "exact", "abs")
        table.add(f"{tag}.batch.labels", dump.np(f"{tag}.batch.labels"),
                  train_labels[index].numpy(), "exact", "abs")
        x = dump.t(f"{tag}.batch.images").permute(0, 3, 1, 2).contiguous().to(device, dtype)
        labels = dump.t(f"{tag}.batch.labels").long().to(device)
        cpp_grads = {n: to_torch(dump.t(f"{tag}.grad.{n}")).to(device, dtype) for n in names}
        r, note = rp.step_matching_ties(P0, st0, x, labels, cpp_grads, table.tol("grad"))
        if note:
            table.notes.append(f"{tag}: {note}")
        if s == 0:
            check_fast_paths(rp, P0, st0, x, labels, r, table, tag)
            if "gpu.step1.logits" in dump.entries:
                compare_gpu_step(dump, rp, names, P0, st0, x, labels, table)
        lw, lb = lr_weights(s, spe, batch), lr_bn_bias(s, spe, batch)
        table.add(f"{tag}.lr_weights", dump.np(f"{tag}.lr_weights"), [lw], "lr")
        table.add(f"{tag}.lr_bn_bias", dump.np(f"{tag}.lr_bn_bias"), [lb], "lr")
        table.add(f"{tag}.logits", dump.np(f"{tag}.logits"), r["logits"].cpu().numpy(),
                  "forward")
        table.add(f"{tag}.loss", dump.np(f"{tag}.loss"), [r["loss"]], "loss")
        for n in names:
            table.add(f"{tag}.grad.{n}", dump.np(f"{tag}.grad.{n}"),
                      from_torch(r["grads"][n]).cpu().numpy(), "grad")
        # The update, the running statistics of this forward, the weight average.
        with torch.no_grad():
            W = {n: P0[n].clone() for n in names}
            M = {n: M0[n].clone() for n in names}
            for n in names:
                sgd_nesterov([W[n]], [r["grads"][n].clone()], [M[n]], lb if is_bias[n] else lw,
                             wd_b if is_bias[n] else wd_w, RECIPE["momentum"])
            E = {n: E0[n].clone() for n in names}
            Es = {b: [t.clone() for t in Es0[b]] for b in BN_NAMES}
            if s % ema_every == 0:
                ema_update([E[n] for n in names], [W[n] for n in names], rho)
                ema_update([t for b in BN_NAMES for t in Es[b]],
                           [t for b in BN_NAMES for t in r["stats"][b]], rho)

        def ours(t):  # PyTorch layout -> our layout, as numpy
            return from_torch(t).cpu().numpy()

        for n in names:
            table.add(f"{tag}.param.{n}", dump.np(f"{tag}.param.{n}"), ours(W[n]),
                      "update", "delta", ours(P0[n]))
            table.add(f"{tag}.momentum.{n}", dump.np(f"{tag}.momentum.{n}"), ours(M[n]),
                      "update")
            table.add(f"{tag}.ema.param.{n}", dump.np(f"{tag}.ema.param.{n}"), ours(E[n]),
                      "update", "delta", ours(E0[n]))
        for b in BN_NAMES:
            for i, k in enumerate(("running_mean", "running_var")):
                table.add(f"{tag}.bn.{b}.{k}", dump.np(f"{tag}.bn.{b}.{k}"),
                          r["stats"][b][i].cpu().numpy(), "stats")
                table.add(f"{tag}.ema.bn.{b}.{k}", dump.np(f"{tag}.ema.bn.{b}.{k}"),
                          Es[b][i].cpu().numpy(), "stats", "delta", Es0[b][i].cpu().numpy())

    # Evaluation of the CPU reference's averaged model after the last step.
    last = f"step{steps}.ema."
    ev = EvalBN(bn_stats(last), RECIPE["bn_eps"])
    x_test = normalize(dump.t("eval.images_u8"))
    table.add("eval.images", dump.np("eval.images"), x_test.permute(0, 2, 3, 1).numpy(),
              "normalize")
    x_test = x_test.to(device, dtype)
    for b in BN_NAMES:
        table.add(f"eval.bn.{b}.mean", dump.np(f"eval.bn.{b}.mean"), ev.avg[b][0].cpu().numpy(),
                  "stats")
        table.add(f"eval.bn.{b}.var", dump.np(f"eval.bn.{b}.var"), ev.avg[b][1].cpu().numpy(),
                  "stats")
    P_ema = params(last)
    with torch.no_grad():
        a = forward(P_ema, whiten, x_test, ev)
        m = forward(P_ema, whiten, x_test.flip(3), ev)
    table.add("eval.logits", dump.np("eval.logits"), a.cpu().numpy(), "forward")
    table.add("eval.logits_tta", dump.np("eval.logits_tta"), (0.5 * (a + m)).cpu().numpy(),
              "forward")
    ok = table.print()
    print(f"whitening eigenvalues: largest {evals[0].item():.4g}, smallest {evals[-1].item():.4g}, "
          f"smallest relative gap between neighbours {rel_gap:.2e}")
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


# ----------------------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train the recipe from the CIFAR-10 binary files")
    t.add_argument("--data", default="", help="cifar-10-batches-bin or its parent "
                   "(default: $CIFAR10_DIR, then ~/.cache/cifar-speedrun)")
    t.add_argument("--epochs", type=int, default=RECIPE["epochs"])
    t.add_argument("--runs", type=int, default=1)
    t.add_argument("--warmup", type=int, default=None,
                   help="untimed-for-the-summary warm-up runs first (default: 1 on cuda, 0 on cpu)")
    t.add_argument("--seed", type=int, default=1)
    t.add_argument("--width", type=float, default=1.0)
    t.add_argument("--batch", type=int, default=RECIPE["batch"])
    t.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    t.add_argument("--channels-last", action="store_true",
                   help="channels_last activations and conv weights (the BN view then copies)")
    t.add_argument("--train-limit", type=int, default=-1, help="first N training images only")
    t.add_argument("--test-limit", type=int, default=-1, help="first N test images only")
    t.add_argument("--json", default="")
    t.add_argument("--time-budget", type=float, default=0,
                   help="start no new run after this many seconds (0: no limit)")
    c = sub.add_parser("compare", help="replay a reference_dump directory and compare")
    c.add_argument("--dump", required=True)
    c.add_argument("--double", action="store_true", help="PyTorch side in float64")
    c.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.cmd == "train":
        if args.warmup is None:
            args.warmup = 1 if args.device.startswith("cuda") else 0
        if args.batch % RECIPE["bn_group"]:
            sys.exit("resnet9_torch: --batch must be a multiple of 32 (the ghost-BN group)")
        cmd_train(args)
        return 0
    return cmd_compare(args)


if __name__ == "__main__":
    sys.exit(main())
