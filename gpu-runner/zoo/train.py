"""Resumable training stages of the `tiny-shapes` family.

    /usr/bin/python3 gpu-runner/zoo/train.py <stage> [--max-minutes M]

Stages (in order): vae, evaluator, base, lcm, rf, vaedec, loras, controlnet.
Each stage checkpoints its full state to .work/<stage>/state.pt every few minutes (and resumes from it),
logs to .work/logs/<stage>.log, and when finished writes its small outputs to checkpoints/<stage>.pt
(committed) and the marker .work/<stage>.done.  A stage whose checkpoints/<stage>.pt says finished=True
is skipped.  The base stage also writes its running (fp16) weights to checkpoints/base.pt so that a fresh
clone can continue it.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

ZOO = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, ZOO)
import data  # noqa: E402
import models  # noqa: E402

WORK = os.path.join(ZOO, ".work")
CKPT = os.path.join(ZOO, "checkpoints")
SAVE_EVERY_S = 180.0
STAGES = ["vae", "evaluator", "base", "lcm", "rf", "vaedec", "loras", "controlnet"]


# ----------------------------------------------------------------------------------------------
# utilities
# ----------------------------------------------------------------------------------------------
class Log:
    def __init__(self, stage):
        os.makedirs(os.path.join(WORK, "logs"), exist_ok=True)
        self.f = open(os.path.join(WORK, "logs", f"{stage}.log"), "a")
        self.stage = stage

    def __call__(self, *a):
        msg = time.strftime("%Y-%m-%d %H:%M:%S ", time.gmtime()) + " ".join(str(x) for x in a)
        print(msg, flush=True)
        self.f.write(msg + "\n")
        self.f.flush()


def atomic_save(obj, path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def state_path(stage):
    return os.path.join(WORK, stage, "state.pt")


def load_state(stage):
    p = state_path(stage)
    return torch.load(p, map_location="cpu") if os.path.exists(p) else None


def stage_finished(stage):
    p = os.path.join(CKPT, f"{stage}.pt")
    if not os.path.exists(p):
        return False
    ck = torch.load(p, map_location="cpu")
    if stage == "loras" and any(lora_recipes_of(ck).get(st) != lora_recipe(st) for st in data.STYLES):
        return False  # a style trained with an older recipe: retrain it
    if stage == "vaedec" and ck.get("version", 1) != VAEDEC_VERSION:
        return False  # v1 is v2's phase 1: the stage goes on with phase 2
    return bool(ck.get("finished", False))


def half_sd(m):
    return {k: (v.half() if v.is_floating_point() else v) for k, v in m.state_dict().items()}


def float_sd(sd):
    return {k: (v.float() if v.is_floating_point() else v) for k, v in sd.items()}


def to_img_tensor(u8):  # uint8 [N,64,64,3] -> float [-1,1] [N,3,64,64]
    return torch.from_numpy(u8).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def cosine_lr(step, total, base, warmup=100, floor=0.1):
    if step < warmup:
        return base * (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p)))


class EMA:
    def __init__(self, model, decay=0.999):
        self.decay = decay
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()}
        self.n = 0

    @torch.no_grad()
    def update(self, model):
        self.n += 1
        d = min(self.decay, (1 + self.n) / (10 + self.n))
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                self.shadow[k].mul_(d).add_(v.detach().float(), alpha=1 - d)
            else:
                self.shadow[k].copy_(v)


class Progress:
    def __init__(self, log, total, start):
        self.log, self.total, self.t0, self.s0 = log, total, time.time(), start
        self.last_save = time.time()

    def report(self, step, **kv):
        el = time.time() - self.t0
        sps = (step - self.s0) / max(el, 1e-6)
        eta = (self.total - step) / max(sps, 1e-9)
        extra = " ".join(f"{k}={v:.5f}" if isinstance(v, float) else f"{k}={v}" for k, v in kv.items())
        self.log(f"step {step}/{self.total} {extra} steps/s={sps:.3f} eta={eta / 60:.1f}min")

    def due(self):
        if time.time() - self.last_save > SAVE_EVERY_S:
            self.last_save = time.time()
            return True
        return False


def rng_for(stage, step):
    return np.random.default_rng([hash(stage) % (2 ** 31), step])


def load_vae(decoder=True):
    """The family's VAE. The encoder (and so the latent space every U-Net was trained in) is the `vae` stage's;
    the decoder is the `vaedec` stage's fine-tune when that stage has finished (decoder=False: the original one)."""
    ck = torch.load(os.path.join(CKPT, "vae.pt"), map_location="cpu")
    vae = models.VAE(**ck["config"])
    vae.load_state_dict(float_sd(ck["model"]))
    p = os.path.join(CKPT, "vaedec.pt")
    if decoder and os.path.exists(p):
        dck = torch.load(p, map_location="cpu")
        if dck.get("finished"):
            vae.decoder.load_state_dict(float_sd(dck["decoder"]))
    vae.eval()
    return vae, float(ck["scaling_factor"])


# ----------------------------------------------------------------------------------------------
# stage: vae
# ----------------------------------------------------------------------------------------------
def stage_vae(args):
    log = Log("vae")
    B, TOTAL, LR, KL_W = 32, args.steps or 750, 1e-3, 1e-6
    torch.manual_seed(0)
    vae = models.VAE(**models.VAE_CONFIGS["base"])
    opt = torch.optim.Adam(vae.parameters(), LR)
    step = 0
    st = load_state("vae")
    if st:
        vae.load_state_dict(st["model"]); opt.load_state_dict(st["opt"]); step = st["step"]
        log(f"resumed at step {step}")
    log(f"VAE params {models.count_params(vae)} batch {B} total {TOTAL}")
    prog = Progress(log, TOTAL, step)
    vae.train()
    while step < TOTAL:
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, TOTAL, LR)
        seeds = data.TRAIN_SEED_BASE + 100_000_000 + step * B + np.arange(B)  # >= TRAIN_MIN_SEED
        imgs, _, _, _, _ = data.batch_arrays(seeds, style_prob=0.35)
        x = to_img_tensor(imgs)
        mean, logvar = vae.encoder(x)
        z = mean + torch.randn_like(mean) * torch.exp(0.5 * logvar)
        rec = vae.decoder(z)
        l1 = (rec - x).abs().mean()
        mse = (rec - x).pow(2).mean()
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).mean()
        loss = l1 + mse + KL_W * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % 25 == 0:
            prog.report(step, l1=l1.item(), mse=mse.item(), kl=kl.item())
        if prog.due() or step == TOTAL:
            atomic_save(dict(model=vae.state_dict(), opt=opt.state_dict(), step=step), state_path("vae"))
    # scaling factor from the latents' std (like SD's 0.18215), on 2048 training images
    vae.eval()
    with torch.no_grad():
        seeds = data.TRAIN_SEED_BASE + 150_000_000 + np.arange(2048)
        imgs, _, _, _, _ = data.batch_arrays(seeds, style_prob=0.35)
        x = to_img_tensor(imgs)
        zs = torch.cat([vae.encoder(x[i:i + 256])[0] for i in range(0, 2048, 256)])
        sf = 1.0 / zs.std().item()
        rec = torch.cat([vae.decoder(zs[i:i + 256]) for i in range(0, 2048, 256)])
        psnr = 10 * math.log10(4.0 / (rec.clamp(-1, 1) - x).pow(2).mean().item())
    vae.scaling_factor.fill_(sf)
    log(f"finished: latent std {zs.std().item():.4f} mean {zs.mean().item():.4f} scaling_factor {sf:.5f} "
        f"reconstruction PSNR {psnr:.2f} dB on 2048 images")
    atomic_save(dict(model=half_sd(vae), config=vae.config, scaling_factor=sf, psnr=psnr, steps=step,
                     finished=True), os.path.join(CKPT, "vae.pt"))


# ----------------------------------------------------------------------------------------------
# stage: vaedec (the decoder fine-tuned on styled images; encoder, latent space and scaling factor unchanged)
# ----------------------------------------------------------------------------------------------
class PatchDisc(torch.nn.Module):
    """A small PatchGAN critic (as in the SD/taming VAE recipe): 64x64 -> 16x16 real/fake logits."""

    def __init__(self, ch=32):
        super().__init__()
        n = torch.nn
        self.net = n.Sequential(n.Conv2d(3, ch, 4, 2, 1), n.LeakyReLU(0.2),
                                n.Conv2d(ch, 2 * ch, 4, 2, 1), n.GroupNorm(8, 2 * ch), n.LeakyReLU(0.2),
                                n.Conv2d(2 * ch, 2 * ch, 3, 1, 1), n.GroupNorm(8, 2 * ch), n.LeakyReLU(0.2),
                                n.Conv2d(2 * ch, 1, 3, 1, 1))

    def forward(self, x):
        return self.net(x)


def patch_spectrum(x, k=16, stride=8):
    """Magnitudes of the windowed 2-D spectra of k x k patches: a texture descriptor that ignores phase."""
    B, C = x.shape[:2]
    p = F.unfold(x, k, stride=stride).view(B, C, k, k, -1).permute(0, 4, 1, 2, 3)
    w = torch.hann_window(k, periodic=False)
    return torch.fft.rfft2(p * (w[:, None] * w[None, :])).abs()


def edge_map(x):
    """1 on and next to an image's edges (largest finite difference over the channels, dilated by one pixel), 0 in
    flat regions: where the thin outline rings are, which a plain L1 averages away among the flat pixels."""
    gx = (x[..., :, 1:] - x[..., :, :-1]).abs().amax(1, keepdim=True)
    gy = (x[..., 1:, :] - x[..., :-1, :]).abs().amax(1, keepdim=True)
    g = F.pad(gx, (0, 1, 0, 0)) + F.pad(gy, (0, 0, 0, 1))
    return F.max_pool2d((g * 4).clamp(0, 1), 3, 1, 1)


# The stripe code (vaedec v3). The `vae` encoder keeps no trace of stripes finer than its 4x latent grid (a striped
# shape encodes as a paler solid colour), so no decoder could tell where to draw them and no LoRA could ask for them:
# the striped ceiling was 0.023. A striped image's latent is therefore defined as the encoder's mean plus a code
# that says, cell by cell, where the stripes stand: STRIPE_CODE_SCALE x the shape's coverage of the cell x
# (cos, sin) of the stripes' phase at the cell (data.stripe_cell_phase), on latent channels 0 and 1. Plain and other
# styled images get no code, so every U-Net stays valid; vaedec phase 3 teaches the decoder to read it, and the
# striped LoRA learns to write it. (The encoder does not write it: img2img of a striped picture loses its stripes.)
STRIPE_CODE_SCALE = 1.0  # in scaled-latent units (the latents' std is 1)


def cell_mean(m):
    """A per-pixel map [N,64,64] -> its mean over each 4x4 latent cell, [N,1,16,16]."""
    return F.avg_pool2d(torch.as_tensor(m).float().unsqueeze(1), 4)


def cell_cover(masks):
    """uint8 masks [N,64,64] -> the shape's coverage of each latent cell, [N,1,16,16] in [0,1]."""
    return cell_mean(torch.as_tensor(masks).float() / 255.0)


def stripe_code(samples, sf):
    """[N,4,16,16] unscaled offsets that carry the stripe code of each striped sample (zeros for the others)."""
    out = torch.zeros(len(samples), 4, 16, 16)
    for k, s in enumerate(samples):
        if "striped" not in s.styles:
            continue
        phi = torch.from_numpy(2 * math.pi * data.stripe_cell_phase(s.extra["stripe_phase"])).float()
        cover = cell_cover(s.mask[None])[0, 0]
        out[k, 0], out[k, 1] = cover * torch.cos(phi), cover * torch.sin(phi)
    return out * (STRIPE_CODE_SCALE / sf)


def stripe_code_on():
    """Whether the family's latents carry the stripe code: once the decoder has learnt to read it (vaedec v3)."""
    p = os.path.join(CKPT, "vaedec.pt")
    ck = torch.load(p, map_location="cpu") if os.path.exists(p) else {}
    return ck.get("phase", 1) >= 3 and bool(ck.get("finished"))


def encode_latents(vae, sf, imgs, samples, code=None):
    """Scaled latents of real images as every U-Net and LoRA trains on them: the encoder's mean, plus the stripe
    code once the decoder reads it (`code` overrides that check)."""
    z = vae.encoder(to_img_tensor(imgs))[0]
    if stripe_code_on() if code is None else code:
        z = z + stripe_code(samples, sf)
    return z * sf


# vaedec v2 adds phase 2: from phase 1's decoder, VAEDEC_EDGE_STEPS more steps with the L1 weighted 1 + 4 x edge_map
# (a fresh critic, listened to from its step 200). Probe (experiments/vaedec_edge.py, 1200 steps; seeds 9000..9255):
# outlined ceiling 0.902 -> 0.941 (400) -> 0.957 (800), outlined + pastel 0.711 -> 0.801 -> 0.836, plain
# reconstructions 0.993 -> 0.998, FD 406 -> 319, no style drawn on plain images (1 of 256 read as outlined). The stage
# (3000 steps): ceilings outlined 0.980, outlined + pastel 0.875; LoRA v5 outlined 0.793 -> 0.852, stacked pair
# 0.660 -> 0.820; but blurry latents (one-step LCM) now decode with dark rims that read as outlined (REPORT.md).
VAEDEC_VERSION = 3
VAEDEC_PHASES = dict(
    # phase: steps, lr, seed range, edge weight, decoder listens to the critic from, critic trains from, torch seed,
    # striped images' latents carry the stripe code
    phase1=dict(steps=1500, lr=2e-4, seeds=200_000_000, edge_w=0.0, gan_start=300, critic_start=100, seed=1),
    phase2=dict(steps=3000, lr=1e-4, seeds=260_000_000, edge_w=4.0, gan_start=200, critic_start=0, seed=2),
    phase3=dict(steps=2000, lr=1e-4, seeds=330_000_000, edge_w=4.0, gan_start=200, critic_start=0, seed=3,
                stripe_code=True),
)


def stage_vaedec(args):
    """The `vae` stage's decoder blurs textures finer than its 4x latent grid: on held-out styled images the evaluator
    saw stripes in 5% of reconstructions and outlines in 74%, so no style LoRA could exceed that. This stage
    fine-tunes the decoder alone, from the frozen encoder's latents, so every U-Net stays valid. Besides L1 + MSE it
    has two losses that let the decoder draw a texture whose exact phase the latent does not pin down (an L1/MSE
    decoder must draw the blurred average instead): a patch-spectrum loss (magnitudes of windowed 16x16 patch
    spectra, phase-free) and a PatchGAN hinge loss with the taming/SD adaptive weight. Phase 2 (v2) weights the L1
    towards edges. Phase 3 (v3) teaches it the stripe code (stripe_code). Each phase checkpoints; the previous
    phase's decoder is kept in vaedec.pt while the next one runs."""
    log = Log("vaedec")
    p = os.path.join(CKPT, "vaedec.pt")
    ck = torch.load(p, map_location="cpu") if os.path.exists(p) else {}
    done = ck.get("phase", 1) if ck.get("finished") else 0
    for i, name in enumerate(VAEDEC_PHASES, start=1):
        if done >= i:
            continue
        ph = dict(VAEDEC_PHASES[name])
        if args.steps:
            ph["steps"] = args.steps
        vae, psnr = decoder_phase(log, name, ph)
        atomic_save(dict(decoder=half_sd(vae.decoder), psnr=psnr, phase=i, version=VAEDEC_VERSION, finished=True,
                         phases={k: VAEDEC_PHASES[k] for k in list(VAEDEC_PHASES)[:i]}, steps=ph["steps"]), p)
    log("finished")


def decoder_phase(log, name, ph):
    """One phase of the decoder fine-tune (VAEDEC_PHASES), from the decoder load_vae gives (phase 1: the original)."""
    env = os.environ.get
    # The committed recipe (each measured, report/results.jsonl and REPORT.md): GAN weight 0.1 with the adaptive
    # weight; 0.5 drew stripes on 17% and outlines on 28% of plain reconstructions by step 750, so it was dropped.
    B, TOTAL, LR = 32, ph["steps"], ph["lr"]
    GAN_W, SPEC_W = float(env("VAEDEC_GAN_W", 0.1)), float(env("VAEDEC_SPEC_W", 0.1))
    GAN_START = ph["gan_start"]
    torch.manual_seed(ph["seed"])
    vae, sf = load_vae(decoder=name != "phase1")
    for q in vae.encoder.parameters():
        q.requires_grad_(False)
    dec = vae.decoder
    disc = PatchDisc()
    opt = torch.optim.Adam(dec.parameters(), LR, betas=(0.5, 0.9))
    dopt = torch.optim.Adam(disc.parameters(), LR, betas=(0.5, 0.9))
    step = 0
    state = "vaedec" if name == "phase1" else f"vaedec_{name}"
    st = load_state(state)
    if st:
        dec.load_state_dict(st["dec"]); disc.load_state_dict(st["disc"]); opt.load_state_dict(st["opt"])
        dopt.load_state_dict(st["dopt"]); step = st["step"]
        log(f"{name}: resumed at step {step}")
    log(f"{name}: decoder params {models.count_params(dec)} critic {models.count_params(disc)} batch {B} total "
        f"{TOTAL} gan weight {GAN_W} (adaptive, from step {GAN_START}) spectrum weight {SPEC_W} edge weight "
        f"{ph['edge_w']}")
    prog = Progress(log, TOTAL, step)
    dec.train()
    last = dec.out[-1].weight
    while step < TOTAL:
        for o in (opt, dopt):
            for g in o.param_groups:
                g["lr"] = cosine_lr(step, TOTAL, LR, warmup=50)
        seeds = data.TRAIN_SEED_BASE + ph["seeds"] + step * B + np.arange(B)  # >= TRAIN_MIN_SEED, unused range
        imgs, _, _, _, ss = data.batch_arrays(seeds, style_prob=0.6)
        x = to_img_tensor(imgs)
        with torch.no_grad():
            mean, logvar = vae.encoder(x)
            z = mean + torch.randn_like(mean) * torch.exp(0.5 * logvar)
            if ph.get("stripe_code"):
                z = z + stripe_code(ss, sf)
        rec = dec(z)
        if ph["edge_w"]:
            w = 1 + ph["edge_w"] * edge_map(x)
            l1 = ((rec - x).abs() * w).mean() / w.mean()
        else:
            l1 = (rec - x).abs().mean()
        mse = (rec - x).pow(2).mean()
        spec = (patch_spectrum(rec) - patch_spectrum(x)).abs().mean()
        loss = l1 + mse + SPEC_W * spec
        gan, lam = torch.zeros(()), 0.0
        use_gan = step >= GAN_START and GAN_W > 0
        if use_gan:
            gan = -disc(rec).mean()
            g_rec = torch.autograd.grad(loss, last, retain_graph=True)[0]
            g_gan = torch.autograd.grad(gan, last, retain_graph=True)[0]
            lam = GAN_W * float((g_rec.norm() / (g_gan.norm() + 1e-4)).clamp(0, 1e4))
            loss = loss + lam * gan
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        dl = torch.zeros(())
        if GAN_W > 0 and step >= ph["critic_start"]:  # the critic starts a little before the decoder listens to it
            dl = F.relu(1 - disc(x)).mean() + F.relu(1 + disc(rec.detach())).mean()
            dopt.zero_grad(set_to_none=True)
            dl.backward()
            dopt.step()
        step += 1
        if step % 25 == 0:
            prog.report(step, phase=name, l1=l1.item(), mse=mse.item(), spec=spec.item(), gan=gan.item(), lam=lam,
                        critic=dl.item())
        if prog.due() or step == TOTAL:
            atomic_save(dict(dec=dec.state_dict(), disc=disc.state_dict(), opt=opt.state_dict(),
                             dopt=dopt.state_dict(), step=step), state_path(state))
    dec.eval()
    with torch.no_grad():
        seeds = data.TRAIN_SEED_BASE + 150_000_000 + np.arange(1024)
        imgs, _, _, _, ss = data.batch_arrays(seeds, style_prob=0.35)
        x = to_img_tensor(imgs)
        rec = torch.cat([dec(encode_latents(vae, sf, imgs[i:i + 256], ss[i:i + 256], ph.get("stripe_code", False)) / sf)
                         for i in range(0, 1024, 256)])
        psnr = 10 * math.log10(4.0 / (rec.clamp(-1, 1) - x).pow(2).mean().item())
    log(f"{name} finished: reconstruction PSNR {psnr:.2f} dB on 1024 images")
    return vae, psnr


# ----------------------------------------------------------------------------------------------
# stage: evaluator (trained on REAL generated images only)
# ----------------------------------------------------------------------------------------------
def eval_loss_acc(out, labs):
    loss = 0.0
    acc = {}
    for a in data.ATTRS:
        y = torch.from_numpy(labs[a]).long()
        loss = loss + F.cross_entropy(out[a], y)
        acc[a] = (out[a].argmax(1) == y).float().mean().item()
    ys = torch.from_numpy(labs["styles"]).float()
    loss = loss + F.binary_cross_entropy_with_logits(out["styles"], ys) * 3
    acc["styles"] = ((out["styles"] > 0).float() == ys).float().mean().item()
    return loss, acc


def evaluator_heldout(ev, n=2000):
    """Accuracy on held-out eval seeds (plain and styled)."""
    ev.eval()
    res = {}
    with torch.no_grad():
        for name, kw in [("plain", dict(styles=[])), ("styled", dict(style_prob=1.0))]:
            seeds = np.arange(0, n) if name == "plain" else np.arange(5000, 5000 + n)
            imgs, _, _, labs, _ = data.batch_arrays(seeds, **kw)
            outs = [ev(to_img_tensor(imgs[i:i + 250]))[0] for i in range(0, n, 250)]
            out = {k: torch.cat([o[k] for o in outs]) for k in outs[0]}
            _, acc = eval_loss_acc(out, labs)
            res[name] = acc
    ev.train()
    return res


def _gauss_kernel(sigma):
    r = max(1, int(math.ceil(2.5 * sigma)))
    x = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def augment_real(x, g):
    """Augmentations of REAL images so the evaluator judges attributes, not crispness: the decoded images of any
    latent model are smoother than the renderer's. Random Gaussian blur (sigma 0.3-1.6 px) or a 2x down/up
    resampling, a little noise, small brightness/contrast jitter. Applied per image with probability 0.6."""
    B = x.shape[0]
    out = x.clone()
    for i in range(B):
        if torch.rand(1, generator=g).item() > 0.6:
            continue
        xi = out[i:i + 1]
        if torch.rand(1, generator=g).item() < 0.7:
            sigma = 0.3 + 1.3 * torch.rand(1, generator=g).item()
            k = _gauss_kernel(sigma)
            r = (k.numel() - 1) // 2
            xi = F.pad(xi, (r, r, r, r), mode="replicate")
            xi = F.conv2d(xi, k.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
            xi = F.conv2d(xi, k.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)
        else:
            xi = F.interpolate(F.interpolate(xi, scale_factor=0.5, mode="bilinear", align_corners=False),
                               scale_factor=2.0, mode="bilinear", align_corners=False)
        c = 1.0 + 0.08 * (torch.rand(1, generator=g).item() * 2 - 1)
        b = 0.04 * (torch.rand(1, generator=g).item() * 2 - 1)
        xi = xi * c + b + 0.04 * torch.rand(1, generator=g).item() * torch.randn(xi.shape, generator=g)
        out[i:i + 1] = xi.clamp(-1, 1)
    return out


def stage_evaluator(args):
    log = Log("evaluator")
    B, TOTAL, LR = 64, args.steps or 800, 2e-3
    torch.manual_seed(1)
    ev = models.Evaluator()
    opt = torch.optim.AdamW(ev.parameters(), LR, weight_decay=1e-4)
    step = 0
    st = load_state("evaluator")
    if st:
        ev.load_state_dict(st["model"]); opt.load_state_dict(st["opt"]); step = st["step"]
        log(f"resumed at step {step}")
    log(f"evaluator params {models.count_params(ev)} batch {B} total {TOTAL}")
    prog = Progress(log, TOTAL, step)
    g_aug = torch.Generator().manual_seed(31 + step)
    ev.train()
    while step < TOTAL:
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, TOTAL, LR, floor=0.02)
        seeds = data.TRAIN_SEED_BASE + 200_000_000 + step * B + np.arange(B)
        imgs, _, _, labs, _ = data.batch_arrays(seeds, style_prob=0.5)
        x = augment_real(to_img_tensor(imgs), g_aug)
        out, _ = ev(x)
        loss, acc = eval_loss_acc(out, labs)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % 25 == 0:
            prog.report(step, loss=loss.item(), **{k: round(v, 3) for k, v in acc.items()})
        if prog.due() or step == TOTAL:
            atomic_save(dict(model=ev.state_dict(), opt=opt.state_dict(), step=step), state_path("evaluator"))
    res = evaluator_heldout(ev)
    # Frechet reference statistics of held-out real (plain) images
    ev.eval()
    with torch.no_grad():
        imgs, _, _, _, _ = data.batch_arrays(np.arange(0, 2000))
        feats = torch.cat([ev.features(to_img_tensor(imgs[i:i + 250])) for i in range(0, 2000, 250)]).double()
    mu, cov = feats.mean(0), torch.cov(feats.T)
    log(f"finished: held-out accuracy {res}")
    atomic_save(dict(model=ev.state_dict(), heldout=res, fid_ref_mu=mu, fid_ref_cov=cov, steps=step, finished=True),
                os.path.join(CKPT, "evaluator.pt"))


# ----------------------------------------------------------------------------------------------
# stage: base (text encoder + U-Net, epsilon prediction, 10% caption dropout, EMA)
# ----------------------------------------------------------------------------------------------
BASE_N = 100_000


def build_latent_dataset(log, path, n, seed_base, styles=None, style_prob=0.0, with_masks=False, with_edges=False):
    if os.path.exists(path):
        return torch.load(path)
    vae, sf = load_vae()
    code = stripe_code_on()
    log(f"encoding {n} images (seeds {seed_base}..{seed_base + n - 1}) with the VAE ...")
    lat, caps_attr, tmpl, seeds_all, style_lab, masks, edges = [], [], [], [], [], [], []
    t0 = time.time()
    with torch.no_grad():
        for i in range(0, n, 500):
            seeds = seed_base + np.arange(i, min(n, i + 500))
            assert seeds.min() >= data.TRAIN_MIN_SEED
            imgs, mk, caps, labs, ss = data.batch_arrays(seeds, styles=styles, style_prob=style_prob)
            lat.append(encode_latents(vae, sf, imgs, ss, code).half())
            caps_attr.extend(caps)
            seeds_all.append(seeds)
            style_lab.append(labs["styles"])
            if with_masks:
                masks.append(torch.from_numpy(mk))
            if with_edges:  # edge_map max-pooled to the latent's cells
                edges.append(F.max_pool2d(edge_map(to_img_tensor(imgs)), 4).squeeze(1).half())
            if i % 10000 == 0:
                log(f"  {i}/{n} {time.time() - t0:.0f}s")
    d = dict(latents=torch.cat(lat), captions=caps_attr, seeds=np.concatenate(seeds_all),
             styles=np.concatenate(style_lab), scaling_factor=sf)
    if with_masks:
        d["masks"] = torch.cat(masks)
    if with_edges:
        d["edges"] = torch.cat(edges)
    atomic_save(d, path)
    return d


def make_base(cfg="base"):
    tok = models.default_tokenizer()
    unet = models.UNet(**models.UNET_CONFIGS[cfg])
    te = models.TextEncoder(len(tok.vocab), **models.TEXT_CONFIGS[cfg])
    return tok, unet, te


class Joint(torch.nn.Module):
    def __init__(self, unet, te):
        super().__init__()
        self.unet, self.te = unet, te


def load_base(ema=True):
    ck = torch.load(os.path.join(CKPT, "base.pt"), map_location="cpu")
    tok, unet, te = make_base()
    j = Joint(unet, te)
    j.load_state_dict(float_sd(ck["ema" if ema else "model"]))
    j.eval()
    return tok, j.unet, j.te, ck


def stage_base(args):
    log = Log("base")
    B, LR = 64, 5e-4
    # 4000 steps: DDIM-50 held-out accuracy was 0.985 at step 3000, at the VAE's ceiling (0.984); see REPORT.md
    TOTAL = args.steps or 4000
    ds = build_latent_dataset(log, os.path.join(WORK, "base_latents.pt"), BASE_N, data.TRAIN_SEED_BASE, styles=[])
    lat, caps = ds["latents"], ds["captions"]
    torch.manual_seed(2)
    tok, unet, te = make_base()
    j = Joint(unet, te)
    log(f"U-Net params {models.count_params(unet)}, text encoder params {models.count_params(te)}, "
        f"latents {tuple(lat.shape)} std {lat.float().std():.3f}")
    opt = torch.optim.AdamW(j.parameters(), LR, weight_decay=0.0)
    ema = EMA(j, 0.999)
    step = 0
    st = load_state("base")
    if st:
        j.load_state_dict(st["model"]); opt.load_state_dict(st["opt"]); ema.shadow = st["ema"]; ema.n = st["ema_n"]
        step = st["step"]
        log(f"resumed from .work at step {step}")
    elif os.path.exists(os.path.join(CKPT, "base.pt")):
        ck = torch.load(os.path.join(CKPT, "base.pt"), map_location="cpu")
        j.load_state_dict(float_sd(ck["model"])); ema.shadow = float_sd(ck["ema"]); ema.n = ck["step"]
        step = ck["step"]
        log(f"resumed from checkpoints/base.pt at step {step} (optimizer state reset)")
    acp = models.alphas_cumprod(torch.float32)
    empty_ids = tok([""])
    all_ids = tok(caps)
    prog = Progress(log, TOTAL, step)
    g = torch.Generator().manual_seed(1234 + step)
    EVAL_EVERY = args.eval_every
    j.train()
    while step < TOTAL:
        for gr in opt.param_groups:
            gr["lr"] = cosine_lr(step, max(TOTAL, 20000), LR, warmup=300, floor=0.2)
        idx = torch.randint(0, lat.shape[0], (B,), generator=g)
        x0 = lat[idx].float()
        ids = all_ids[idx].clone()
        drop = torch.rand(B, generator=g) < 0.1
        ids[drop] = empty_ids
        t = torch.randint(0, models.NUM_TRAIN_TIMESTEPS, (B,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        a = acp[t].view(B, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        pred = unet(xt, t.float(), te(ids))
        # Min-SNR-5 loss weighting (Hang et al. 2023) for epsilon prediction: min(SNR, 5) / SNR
        snr = acp[t] / (1 - acp[t])
        w = snr.clamp(max=5.0) / snr
        loss = ((pred - noise).pow(2).mean(dim=(1, 2, 3)) * w).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(j.parameters(), 1.0)
        opt.step()
        ema.update(j)
        step += 1
        if step % 25 == 0:
            prog.report(step, loss=loss.item(), lr=opt.param_groups[0]["lr"])
        last = step == TOTAL
        if prog.due() or last or (EVAL_EVERY and step % EVAL_EVERY == 0):
            atomic_save(dict(model=j.state_dict(), opt=opt.state_dict(), ema=ema.shadow, ema_n=ema.n, step=step),
                        state_path("base"))
            jm = Joint(*make_base()[1:]); jm.load_state_dict(ema.shadow)
            atomic_save(dict(model=half_sd(j), ema=half_sd(jm), step=step, config=unet.config,
                             text_config=te.config, finished=last), os.path.join(CKPT, "base.pt"))
            log(f"checkpoint saved at step {step}")
        if EVAL_EVERY and step % EVAL_EVERY == 0 and not last and os.path.exists(os.path.join(CKPT, "evaluator.pt")):
            try:
                import evaluate
                jm.eval()
                r = evaluate.evaluate_epsilon_model(jm.unet, jm.te, tok, n=256, steps=50, guidance=4.0, log=log,
                                                    tag=f"base step {step}")
                log(f"EVAL step {step}: {r}")
            except Exception as e:  # evaluation must never kill training
                log(f"EVAL failed at step {step}: {e!r}")
    jm = Joint(*make_base()[1:]); jm.load_state_dict(ema.shadow)
    if not torch.load(os.path.join(CKPT, "base.pt"), map_location="cpu").get("finished"):
        # resumed at (or past) the target: the loop did not run, so mark the last checkpoint finished here
        atomic_save(dict(model=half_sd(j), ema=half_sd(jm), step=step, config=unet.config,
                         text_config=te.config, finished=True), os.path.join(CKPT, "base.pt"))
    log(f"finished at step {step}")
    open(os.path.join(WORK, "base.done"), "w").write(str(step))
    try:
        import evaluate
        jm.eval()
        evaluate.evaluate_epsilon_model(jm.unet, jm.te, tok, n=256, steps=50, guidance=4.0, log=log,
                                        tag=f"base step {step} (final)")
        for iv in (2, 3, 5):
            evaluate.evaluate_deepcache(jm.unet, jm.te, tok, interval=iv, log=log)
    except Exception as e:
        log(f"EVAL failed: {e!r}")


# ----------------------------------------------------------------------------------------------
# helpers for the stages that build on the base
# ----------------------------------------------------------------------------------------------
def frozen_base():
    tok, unet, te, ck = load_base(ema=True)
    for p in list(unet.parameters()) + list(te.parameters()):
        p.requires_grad_(False)
    return tok, unet, te


def base_dataset(log):
    return build_latent_dataset(log, os.path.join(WORK, "base_latents.pt"), BASE_N, data.TRAIN_SEED_BASE, styles=[])


def pseudo_huber(a, b, c=0.001):
    return (torch.sqrt((a - b).pow(2) + c * c) - c).mean()


def resume(stage, log, objs: dict):
    """objs: name -> object with load_state_dict. Returns (step, extra dict)."""
    st = load_state(stage)
    if not st:
        return 0, {}
    for k, o in objs.items():
        o.load_state_dict(st[k])
    log(f"resumed at step {st['step']}")
    return st["step"], st.get("extra", {})


def save(stage, step, objs: dict, extra=None):
    atomic_save(dict({k: o.state_dict() for k, o in objs.items()}, step=step, extra=extra or {}), state_path(stage))


# ----------------------------------------------------------------------------------------------
# stage: lcm (latent consistency distillation, LCM paper Alg. 2 / diffusers train_lcm_distill_sd)
# ----------------------------------------------------------------------------------------------
LCM_COND_DIM = 64
LCM_W_RANGE = (2.0, 8.0)  # guidance scales the student learns (teacher CFG); embedded as w = g - 1


def make_lcm_unet(base_unet):
    cfg = dict(base_unet.config)
    cfg["cond_dim"] = LCM_COND_DIM
    u = models.UNet(**cfg)
    missing, unexpected = u.load_state_dict(base_unet.state_dict(), strict=False)
    assert set(missing) == {"time_embedding.cond_proj.weight"} and not unexpected, (missing, unexpected)
    torch.nn.init.zeros_(u.time_embedding.cond_proj.weight)
    return u


def lcm_scalings_t(t, sigma_data=0.5, timestep_scaling=10.0):
    s = t.float() * timestep_scaling
    c_skip = sigma_data ** 2 / (s ** 2 + sigma_data ** 2)
    c_out = s / torch.sqrt(s ** 2 + sigma_data ** 2)
    return c_skip.view(-1, 1, 1, 1), c_out.view(-1, 1, 1, 1)


def stage_lcm(args):
    log = Log("lcm")
    B, TOTAL, LR = 64, args.steps or 1500, 2e-4  # sized to fit one session on 2 shared cores
    ds = base_dataset(log)
    lat, all_ids = ds["latents"], None
    tok, teacher, te = frozen_base()
    all_ids = tok(ds["captions"])
    torch.manual_seed(3)
    student = make_lcm_unet(teacher)
    target = make_lcm_unet(teacher)
    target.load_state_dict(student.state_dict())
    for p in target.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(student.parameters(), LR, weight_decay=0.0)
    step, _ = resume("lcm", log, dict(student=student, target=target, opt=opt))
    acp = models.alphas_cumprod(torch.float32)
    skeleton = torch.arange(1, 51) * 20 - 1
    empty = te(tok([""]))
    g = torch.Generator().manual_seed(77 + step)
    prog = Progress(log, TOTAL, step)
    log(f"LCM distillation: student params {models.count_params(student)}, batch {B}, total {TOTAL}")
    while step < TOTAL:
        for gr in opt.param_groups:
            gr["lr"] = cosine_lr(step, TOTAL, LR, warmup=100, floor=0.1)
        idx = torch.randint(0, lat.shape[0], (B,), generator=g)
        x0 = lat[idx].float()
        with torch.no_grad():
            ctx = te(all_ids[idx])
        k = torch.randint(0, 50, (B,), generator=g)
        t = skeleton[k]
        tp = (t - 20).clamp(min=0)
        noise = torch.randn(x0.shape, generator=g)
        a_t, a_p = acp[t].view(B, 1, 1, 1), acp[tp].view(B, 1, 1, 1)
        xt = a_t.sqrt() * x0 + (1 - a_t).sqrt() * noise
        gs = LCM_W_RANGE[0] + (LCM_W_RANGE[1] - LCM_W_RANGE[0]) * torch.rand(B, generator=g)
        wemb = models.guidance_embedding(gs, LCM_COND_DIM)
        with torch.no_grad():
            e = teacher(torch.cat([xt, xt]), torch.cat([t, t]).float(), torch.cat([empty.expand(B, -1, -1), ctx]))
            eu, ec = e.chunk(2)
            eps = eu + gs.view(B, 1, 1, 1) * (ec - eu)
            x0_t = (xt - (1 - a_t).sqrt() * eps) / a_t.sqrt()
            x_prev = a_p.sqrt() * x0_t + (1 - a_p).sqrt() * eps
            e_tg = target(x_prev, tp.float(), ctx, timestep_cond=wemb)
            cs_p, co_p = lcm_scalings_t(tp)
            tgt = cs_p * x_prev + co_p * (x_prev - (1 - a_p).sqrt() * e_tg) / a_p.sqrt()
        e_s = student(xt, t.float(), ctx, timestep_cond=wemb)
        cs_t, co_t = lcm_scalings_t(t)
        pred = cs_t * xt + co_t * (xt - (1 - a_t).sqrt() * e_s) / a_t.sqrt()
        loss = pseudo_huber(pred, tgt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        with torch.no_grad():  # target network = EMA(0.95) of the student
            for pt, ps in zip(target.parameters(), student.parameters()):
                pt.mul_(0.95).add_(ps.detach(), alpha=0.05)
        step += 1
        if step % 25 == 0:
            prog.report(step, loss=loss.item())
        if prog.due() or step == TOTAL:
            save("lcm", step, dict(student=student, target=target, opt=opt))
    atomic_save(dict(model=half_sd(target), config=target.config, steps=step, w_range=LCM_W_RANGE, finished=True),
                os.path.join(CKPT, "lcm.pt"))
    log("finished")
    try:
        import evaluate
        for steps in (1, 2, 4, 8):
            evaluate.evaluate_lcm(target, te, tok, steps=steps, guidance=4.0, log=log, tag=f"lcm {steps}-step")
    except Exception as e:
        log(f"EVAL failed: {e!r}")


def load_lcm():
    ck = torch.load(os.path.join(CKPT, "lcm.pt"), map_location="cpu")
    u = models.UNet(**ck["config"])
    u.load_state_dict(float_sd(ck["model"]))
    return u.eval()


# ----------------------------------------------------------------------------------------------
# stage: rf (InstaFlow: reflow on (noise, image) pairs from the base's guided ODE, then one-step distillation)
# ----------------------------------------------------------------------------------------------
RF_PAIRS, RF_ODE_STEPS, RF_GUIDANCE = 4096, 20, 4.0  # 4096 pairs: ~11 min of guided DDIM-20 on 2 cores


def stage_rf(args):
    log = Log("rf")
    B = 64
    R1 = args.steps or 800  # reflow steps (sized, with R2, to fit beside other stages in one session on 2 cores)
    R2 = args.steps if args.steps else 600  # one-step distillation steps
    tok, base, te = frozen_base()
    ds = base_dataset(log)
    caps = ds["captions"]
    # 1) pairs from the base's deterministic DDIM (probability-flow ODE) with CFG, resumable in chunks
    pp = os.path.join(WORK, "rf", "pairs.pt")
    pairs = torch.load(pp) if os.path.exists(pp) else dict(z=[], x1=[], ids=[])
    import evaluate
    empty = te(tok([""]))
    done = sum(z.shape[0] for z in pairs["z"])
    t0 = time.time()
    while done < RF_PAIRS:
        g = torch.Generator().manual_seed(9000 + done)
        idx = torch.randint(0, len(caps), (256,), generator=g)
        ids = tok([caps[i] for i in idx])
        with torch.no_grad():
            ctx = te(ids)
            z = torch.randn((256, 4, 16, 16), generator=g)
            x1 = evaluate.ddim_sample(lambda x, t, c: base(x, t, c), ctx, empty.expand(256, -1, -1), z.shape,
                                      RF_ODE_STEPS, RF_GUIDANCE, x=z.clone())
        pairs["z"].append(z.half()); pairs["x1"].append(x1.half()); pairs["ids"].append(ids)
        done += 256
        atomic_save(pairs, pp)
        log(f"pairs {done}/{RF_PAIRS} ({(time.time() - t0) / 60:.1f} min)")
    Z, X1, IDS = (torch.cat(pairs[k]) for k in ("z", "x1", "ids"))
    Z, X1 = Z.float(), X1.float()
    torch.manual_seed(4)
    model = models.UNet(**base.config)
    model.load_state_dict(base.state_dict())
    for p in model.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(model.parameters(), 2e-4, weight_decay=0.0)
    ema = EMA(model, 0.999)
    st = load_state("rf")
    step = 0
    if st:
        model.load_state_dict(st["model"]); opt.load_state_dict(st["opt"]); ema.shadow = st["ema"]; ema.n = st["ema_n"]
        step = st["step"]
        log(f"resumed at step {step}")
    TOTAL = R1 + R2
    prog = Progress(log, TOTAL, step)
    g = torch.Generator().manual_seed(55 + step)
    while step < TOTAL:
        phase = 1 if step < R1 else 2
        if step == R1 and phase == 2:
            model.load_state_dict(ema.shadow)  # distil from the reflowed EMA weights
            ema = EMA(model, 0.999)
            opt = torch.optim.AdamW(model.parameters(), 1e-4, weight_decay=0.0)
        idx = torch.randint(0, Z.shape[0], (B,), generator=g)
        z, x1 = Z[idx], X1[idx]
        with torch.no_grad():
            ctx = te(IDS[idx])
        if phase == 1:
            t = torch.rand(B, generator=g)
            tt = t.view(B, 1, 1, 1)
            xt = tt * x1 + (1 - tt) * z
            v = model(xt, (1 - t) * 1000.0, ctx)
            loss = F.mse_loss(v, x1 - z)
        else:
            v = model(z, torch.full((B,), 1000.0), ctx)
            loss = F.mse_loss(z + v, x1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema.update(model)
        step += 1
        if step % 25 == 0:
            prog.report(step, phase=phase, loss=loss.item())
        if prog.due() or step == TOTAL or step == R1:
            atomic_save(dict(model=model.state_dict(), opt=opt.state_dict(), ema=ema.shadow, ema_n=ema.n, step=step),
                        state_path("rf"))
    final = models.UNet(**base.config)
    final.load_state_dict(ema.shadow)
    atomic_save(dict(model=half_sd(final), config=final.config, steps=step, reflow_steps=R1, distill_steps=R2,
                     pairs=int(Z.shape[0]), finished=True), os.path.join(CKPT, "rf.pt"))
    log("finished")
    try:
        evaluate.evaluate_rf(final.eval(), te, tok, steps=1, log=log, tag="rectified-flow 1-step")
    except Exception as e:
        log(f"EVAL failed: {e!r}")


# ----------------------------------------------------------------------------------------------
# stage: loras (style LoRAs on the frozen base at its LoRA targets; kohya + PEFT safetensors)
# ----------------------------------------------------------------------------------------------
# v3: rank 16 (was 8), 2000 steps of 32 (was 800 of 64). v2 was detected 0.33/0.00/0.50 (outlined/striped/pastel),
# partly because of the VAE decoder (see the vaedec stage), partly undertrained: its pastel kept saturated shapes.
# v4: longer. v3 (2000 steps) was still undertrained: pastel alone went 0.66 -> 0.92 at 4000 steps. Outlined, whose
# thin edges are the hardest for the LoRA to draw and whose decoder ceiling is 0.90, gets 6000.
# v5: LoCon. The targets now include the 16 ResBlock 3x3 convolutions (down: 3x3 conv to rank 16, up: 1x1), which
# the attention/projection-only LoRA could not replace: at 2000 steps the probe (experiments/README.md) drew
# outlined at 0.762 against 0.559 without them (and 0.652 for v4's 6000 steps). A step costs about twice as much.
# v6 (outlined only): the epsilon-MSE is weighted towards the shape (lora_weight_maps), since v5's misses were small
# shapes and stars, whose cells are a small part of a plain per-image MSE, and twice the steps did not help. On held-out
# prompts 9000-9255: v5 0.844, `shape` 0.898 (adopted), `edges` 0.879; on the report's prompts 0.852 -> 0.875.
# Outlined v7: rank 32, the shape+style weighting (the cells the style changes, a small star's hole, weigh as much
# again) and images drawn by how little the style changes them (lora_sampling "change"), since v6's misses were small
# stars (11 of 38 drawn outlined). On prompts 9000-9255 (experiments/README.md): v6 0.898; at rank 32, shape 0.914,
# shape+style 0.922, shape+style on 24000 images (n) 0.930, shape+style with change sampling 0.945 (adopted).
# Striped v6: on latents with the stripe code (vaedec v3); 4000 steps (2000: 0.875 on prompts 9000-9255, 4000: 0.902).
# Each style keeps the recipe it was trained with (loras.pt "recipes"); the stage retrains only a style whose recipe
# differs from LORA_RECIPES.
LORA_RANK = 16
LORA_RECIPES = dict(outlined=dict(version=7, steps=4000, rank=32, weighting="shape+style", sampling="change"),
                    striped=dict(version=6, steps=4000, weighting="none"),  # v6: on latents with the stripe code
                    pastel=dict(version=5, steps=3000, weighting="none"))
LORA_N = 12000  # styled training images per LoRA
LORA_BATCH, LORA_LR = 32, 1e-3
CN_N = 20000  # ControlNet training images


class LoRAParams(torch.nn.Module):
    def __init__(self, unet, rank=LORA_RANK):
        super().__init__()
        self.paths = [t["path"] for t in unet.lora_target_info()]
        self.down = torch.nn.ParameterList()
        self.up = torch.nn.ParameterList()
        for t in unet.lora_target_info():
            d = torch.empty(rank, t["down_features"])  # a conv target's 3x3 kernel flattened (models.LoRAConv2d)
            torch.nn.init.kaiming_uniform_(d, a=math.sqrt(5))
            self.down.append(torch.nn.Parameter(d))
            self.up.append(torch.nn.Parameter(torch.zeros(t["out_features"], rank)))

    def branches(self, B, scale=1.0):
        return {p: (d.unsqueeze(0).expand(B, -1, -1), (u * scale).unsqueeze(0).expand(B, -1, -1))
                for p, d, u in zip(self.paths, self.down, self.up)}

    def as_dict(self):
        return {p: (d.detach().clone(), u.detach().clone()) for p, d, u in zip(self.paths, self.down, self.up)}


def style_change(seeds, style):
    """[N,1,16,16]: per latent cell, the mean |styled image - the same image unstyled| (in [0,1]) of each seed's
    sample: where the style changes the picture (an outlined shape's hole, a pastel image everywhere)."""
    out = []
    for i in range(0, len(seeds), 500):
        chunk = seeds[i:i + 500]
        styled = data.batch_arrays(chunk, styles=[style])[0].astype(np.float32)
        plain = data.batch_arrays(chunk, styles=[])[0].astype(np.float32)
        out.append(cell_mean(np.abs(styled - plain).mean(-1) / 255.0))
    return torch.cat(out)


def style_change_of(ds, style):
    """style_change of a LoRA dataset's seeds, computed once per dataset."""
    if "change" not in ds:
        ds["change"] = style_change(ds["seeds"], style)
    return ds["change"]


def lora_weight_maps(ds, weighting, style=None):
    """Per-latent-cell weights [N,1,16,16] of the LoRA's epsilon-MSE, each image's mean 1 (so the learning rate keeps
    its meaning), or None for a plain MSE.
      shape:       1 + cover / mean(cover), cover = the shape's coverage of each cell: the shape's cells weigh as much
                   as the rest of the image together, whatever its size (a small shape covers 7% of the cells, a
                   large 22%);
      shape+style: shape's terms + change / mean(change), change = train.style_change of `style` (the cells the
                   style alters, a small star's one-cell hole among them, weigh as much again);
      edges:       1 + 4 x the cell's edge map (train.edge_map max-pooled to the cell), as in vaedec phase 2."""
    def share(m):  # a map whose mean over each image is 1: its cells together weigh as much as the whole image
        return m / m.mean((1, 2, 3), keepdim=True).clamp_min(1e-3)
    if weighting == "none":
        return None
    if weighting in ("shape", "shape+style"):
        w = 1 + share(cell_cover(ds["masks"]))
        if weighting == "shape+style":
            w = w + share(style_change_of(ds, style))
    elif weighting == "edges":
        w = 1 + 4 * ds["edges"].float().unsqueeze(1)
    else:
        raise ValueError(f"unknown LoRA weighting {weighting!r} (none, shape, shape+style, edges)")
    return share(w).half()


def lora_sampling(ds, sampling, style=None):
    """Each training image's probability of being drawn, or None for uniform draws.
      change: proportional to 1 / sqrt(the image's mean style change): the images the style alters least (a small
              star's hole of a few pixels) are drawn more often than those it alters most (a large circle's)."""
    if sampling == "uniform":
        return None
    if sampling != "change":
        raise ValueError(f"unknown LoRA sampling {sampling!r} (uniform, change)")
    p = style_change_of(ds, style).mean((1, 2, 3)).clamp_min(1e-3).rsqrt()
    return p / p.sum()


def lora_loss(unet, te, lat, ids_all, empty_ids, acp, lp, B, g, weights=None, probs=None):
    """One batch of the LoRA objective: epsilon MSE on the frozen base with the LoRA branches `lp`, per cell weighted
    by `weights` (lora_weight_maps) when given, on images drawn with `probs` (lora_sampling) or uniformly."""
    if probs is None:
        idx = torch.randint(0, lat.shape[0], (B,), generator=g)
    else:
        idx = torch.multinomial(probs, B, replacement=True, generator=g)
    x0 = lat[idx].float()
    # Caption dropout, as in the base: with classifier-free guidance the LoRA also runs on the empty prompt,
    # and a LoRA that never saw it let guidance push the style back out (measured v1: pastel detected 0.67
    # at guidance 1, 0.02 at guidance 4).
    ids = ids_all[idx].clone()
    ids[torch.rand(B, generator=g) < 0.1] = empty_ids
    with torch.no_grad():
        ctx = te(ids)
    t = torch.randint(0, 1000, (B,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    a = acp[t].view(B, 1, 1, 1)
    xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
    err = (unet(xt, t.float(), ctx, lora=lp.branches(B)) - noise).pow(2)
    return err.mean() if weights is None else (err * weights[idx].float()).mean()


def lora_dataset(log, style, n=LORA_N):
    """The n styled training latents of one LoRA, with each image's mask and 16x16 edge map (cached under .work)."""
    si = data.STYLES.index(style)
    code = "_stripecode" if style == "striped" and stripe_code_on() else ""
    size = "" if n == LORA_N else f"_{n}"
    return build_latent_dataset(log, os.path.join(WORK, f"lora_{style}_latents_maps{code}{size}.pt"), n,
                                data.STYLE_SEED_BASE + si * 1_000_000, styles=[style], with_masks=True,
                                with_edges=True)


def lora_recipe_defaults(r):
    """A recipe with what it leaves out filled in (recipes recorded before a key existed had its default)."""
    return {"rank": LORA_RANK, "n": LORA_N, "sampling": "uniform", "weighting": "none", **r}


def lora_recipe(style, steps=None):
    r = lora_recipe_defaults(LORA_RECIPES[style])
    if steps:
        r["steps"] = steps
    return r


def lora_recipes_of(ck):
    """The recipe each style of a loras.pt (or stage state) was trained with; files before v6 kept one version."""
    if "recipes" in ck:
        return {s: lora_recipe_defaults(r) for s, r in ck["recipes"].items()}
    return {s: lora_recipe_defaults(dict(version=ck.get("version", 2), steps=ck.get("steps", {}).get(s),
                                         rank=ck.get("rank", LORA_RANK))) for s in ck.get("loras", {})}


def stage_loras(args):
    log = Log("loras")
    B, LR = LORA_BATCH, LORA_LR
    recipes = {style: lora_recipe(style, args.steps) for style in data.STYLES}
    tok, unet, te = frozen_base()
    acp = models.alphas_cumprod(torch.float32)
    empty_ids = tok([""])
    # Styles already trained with their current recipe are kept: from checkpoints/loras.pt, then from the state.
    finished, done_recipes = {}, {}
    for src in (os.path.join(CKPT, "loras.pt"), state_path("loras")):
        if os.path.exists(src):
            ck = torch.load(src, map_location="cpu")
            got = ck["loras"] if "loras" in ck else ck["extra"].get("finished", {})
            have = lora_recipes_of(ck if "loras" in ck else ck["extra"])
            for style, lo in got.items():
                if have.get(style) == recipes[style]:
                    finished[style], done_recipes[style] = lo, recipes[style]
    prev = load_state("loras")
    outputs, trained = {}, set()
    # LORA_STYLES=outlined,pastel trains (and exports and evaluates) only those styles: for experiments in a scratch
    # checkout, since checkpoints/loras.pt then holds only them.
    only = [x for x in os.environ.get("LORA_STYLES", "").split(",") if x] or data.STYLES
    for si, style in enumerate(data.STYLES):
        if style not in only:
            continue
        if style in finished:
            outputs[style] = finished[style]
            log(f"LoRA '{style}': kept (trained with {recipes[style]})")
            continue
        S, weighting = recipes[style]["steps"], recipes[style]["weighting"]
        ds = lora_dataset(log, style, recipes[style]["n"])
        lat, ids_all = ds["latents"], tok(ds["captions"])
        weights = lora_weight_maps(ds, weighting, style)
        probs = lora_sampling(ds, recipes[style]["sampling"], style)
        torch.manual_seed(10 + si)
        lp = LoRAParams(unet, recipes[style]["rank"])
        opt = torch.optim.AdamW(lp.parameters(), LR, weight_decay=0.0)
        step = 0
        if prev and prev["extra"].get("style") == style and \
                lora_recipe_defaults(prev["extra"].get("recipe") or {}) == recipes[style]:
            lp.load_state_dict(prev["lp"]); opt.load_state_dict(prev["opt"]); step = prev["step"]
            log(f"resumed {style} at step {step}")
        g = torch.Generator().manual_seed(500 + si * 100000 + step)
        prog = Progress(log, S, step)
        log(f"LoRA '{style}': {len(lp.paths)} targets, "
            f"{sum(p.numel() for p in lp.parameters())} params, recipe {recipes[style]}")
        extra = lambda cur: dict(style=cur, recipe=recipes[style], finished=finished, recipes=done_recipes)
        while step < S:
            for gr in opt.param_groups:
                gr["lr"] = cosine_lr(step, S, LR, warmup=50, floor=0.1)
            loss = lora_loss(unet, te, lat, ids_all, empty_ids, acp, lp, B, g, weights, probs)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step % 25 == 0:
                prog.report(step, style=style, loss=loss.item())
            if prog.due() or step == S:
                atomic_save(dict(lp=lp.state_dict(), opt=opt.state_dict(), step=step, extra=extra(style)),
                            state_path("loras"))
        finished[style] = {p: (d.half(), u.half()) for p, (d, u) in lp.as_dict().items()}
        done_recipes[style] = recipes[style]
        outputs[style] = finished[style]
        trained.add(style)
        atomic_save(dict(lp=lp.state_dict(), opt=opt.state_dict(), step=step, extra=extra(None)), state_path("loras"))
        prev = load_state("loras")
    # The add-on files are written from this by `export.py loras` (export.export_loras); the recipes say each style's
    # steps, version and rank.
    atomic_save(dict(loras=outputs, recipes={st: recipes[st] for st in outputs}, batch=B, finished=True),
                os.path.join(CKPT, "loras.pt"))
    log("finished")
    try:  # what this run trained, alone and in the stacked pairs (kept styles' rows are in the report already)
        import evaluate
        for style in trained:
            evaluate.evaluate_lora(unet, te, tok, {style: 1.0}, log=log)
        for pair in (("outlined", "pastel"), ("striped", "pastel")):
            if all(s in outputs for s in pair) and trained & set(pair):
                evaluate.evaluate_lora(unet, te, tok, {s: 1.0 for s in pair}, log=log)
    except Exception as e:
        log(f"EVAL failed: {e!r}")


# ----------------------------------------------------------------------------------------------
# stage: controlnet (mask ControlNet: trainable copy of the encoder + hint encoder, zero convs)
# ----------------------------------------------------------------------------------------------
def stage_controlnet(args):
    log = Log("controlnet")
    B, S, LR = 64, args.steps or 2000, 2e-4
    tok, unet, te = frozen_base()
    ds = build_latent_dataset(log, os.path.join(WORK, "controlnet_latents.pt"), CN_N, data.CONTROL_SEED_BASE,
                              styles=[], with_masks=True)
    lat, masks, ids_all = ds["latents"], ds["masks"], tok(ds["captions"])
    ids_free = tok([data.layout_free(c) for c in ds["captions"]])
    empty = tok([""])
    torch.manual_seed(5)
    cn = models.ControlNet(unet)
    for p in cn.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(cn.parameters(), LR, weight_decay=0.0)
    step, _ = resume("controlnet", log, dict(cn=cn, opt=opt))
    acp = models.alphas_cumprod(torch.float32)
    g = torch.Generator().manual_seed(600 + step)
    prog = Progress(log, S, step)
    log(f"ControlNet params {models.count_params(cn)}")
    while step < S:
        for gr in opt.param_groups:
            gr["lr"] = cosine_lr(step, S, LR, warmup=100, floor=0.1)
        idx = torch.randint(0, lat.shape[0], (B,), generator=g)
        x0 = lat[idx].float()
        ids = ids_all[idx].clone()
        # v2: a third of the captions name no position and no size, so the layout must come from the mask (v1 only
        # had full captions, which already carried the layout, and empty ones: it learned to refine, not to steer)
        r = torch.rand(B, generator=g)
        ids[r < 0.35] = ids_free[idx][r < 0.35]
        ids[r >= 0.7] = empty
        with torch.no_grad():
            ctx = te(ids)
        m = masks[idx].float().div(255.0).unsqueeze(1)
        t = torch.randint(0, 1000, (B,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        a = acp[t].view(B, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        outs, mid = cn(xt, t.float(), ctx, m)
        pred = unet(xt, t.float(), ctx, down_residuals=outs, mid_residual=mid)
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(cn.parameters(), 1.0)
        opt.step()
        step += 1
        if step % 25 == 0:
            prog.report(step, loss=loss.item())
        if prog.due() or step == S:
            save("controlnet", step, dict(cn=cn, opt=opt))
    atomic_save(dict(model=half_sd(cn), steps=step, finished=True), os.path.join(CKPT, "controlnet.pt"))
    log("finished")
    try:
        import evaluate
        evaluate.evaluate_controlnet(unet, te, tok, cn.eval(), log=log)
        evaluate.evaluate_controlnet(unet, te, tok, cn.eval(), log=log, layout_free=True)
    except Exception as e:
        log(f"EVAL failed: {e!r}")


def load_controlnet(unet):
    ck = torch.load(os.path.join(CKPT, "controlnet.pt"), map_location="cpu")
    cn = models.ControlNet(unet)
    cn.load_state_dict(float_sd(ck["model"]))
    return cn.eval()


# ----------------------------------------------------------------------------------------------
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("stage", choices=STAGES)
    ap.add_argument("--steps", type=int, default=0)
    ap.add_argument("--eval-every", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if stage_finished(args.stage):
        print(f"stage {args.stage} already finished (checkpoints/{args.stage}.pt)")
        return
    fn = globals().get(f"stage_{args.stage}")
    if fn is None:
        raise SystemExit(f"stage {args.stage} is not implemented yet")
    fn(args)


if __name__ == "__main__":
    main()
