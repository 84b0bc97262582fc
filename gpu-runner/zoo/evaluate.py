"""Evaluation of tiny-shapes models from Python (the TypeScript bench re-measures through the runner).

    /usr/bin/python3 gpu-runner/zoo/evaluate.py base [--n 256] [--steps 50] [--guidance 4] [--raw]

Samplers follow REFERENCE.md / diffusers exactly: DDIM (eta 0, "leading" spacing, steps_offset 1,
classifier-free guidance), LCM multi-step (skeleton of 50, boundary scalings, re-noising), rectified-flow Euler.
Metrics: the evaluator's attribute accuracy (per attribute and mean) on held-out prompts (seeds 0..n-1 of
data.EVAL_SEEDS), and the Frechet distance between evaluator features of generated images and of 2000 held-out
real images.  Results are appended to report/results.jsonl; REPORT.md is regenerated from it; sample grids
(8x8 PNG + prompts) go to report/.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
from PIL import Image, ImageDraw

ZOO = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, ZOO)
import data  # noqa: E402
import models  # noqa: E402

REPORT_DIR = os.path.join(ZOO, "report")
RESULTS = os.path.join(REPORT_DIR, "results.jsonl")
CKPT = os.path.join(ZOO, "checkpoints")


# ----------------------------------------------------------------------------------------------
# samplers
# ----------------------------------------------------------------------------------------------
def ddim_timesteps(steps, T=models.NUM_TRAIN_TIMESTEPS, offset=1):
    ratio = T // steps
    return (np.arange(0, steps) * ratio).round()[::-1].astype(np.int64) + offset, ratio


@torch.no_grad()
def ddim_sample(eps_fn, cond, uncond, shape, steps=50, guidance=4.0, gen=None, x=None):
    """eps_fn(x, t[B], ctx[B,16,D]) -> eps.  Classifier-free guidance when guidance != 1."""
    acp = models.alphas_cumprod(torch.float64)
    x = torch.randn(shape, generator=gen) if x is None else x
    ts, ratio = ddim_timesteps(steps)
    B = shape[0]
    for t in ts:
        tt = torch.full((B,), float(t))
        if guidance != 1.0:
            e = eps_fn(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([uncond, cond]))
            eu, ec = e.chunk(2)
            eps = eu + guidance * (ec - eu)
        else:
            eps = eps_fn(x, tt, cond)
        a = acp[t].float()
        prev = t - ratio
        ap = acp[prev].float() if prev >= 0 else acp[0].float()
        x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        x = ap.sqrt() * x0 + (1 - ap).sqrt() * eps
    return x


def lcm_timesteps(steps, T=models.NUM_TRAIN_TIMESTEPS, orig=50):
    k = T // orig
    skeleton = (np.arange(1, orig + 1) * k - 1)[::-1]
    idx = np.floor(np.linspace(0, orig, steps, endpoint=False)).astype(np.int64)
    return skeleton[idx]


def lcm_scalings(t, sigma_data=0.5, timestep_scaling=10.0):
    s = t * timestep_scaling
    c_skip = sigma_data ** 2 / (s ** 2 + sigma_data ** 2)
    c_out = s / math.sqrt(s ** 2 + sigma_data ** 2)
    return c_skip, c_out


@torch.no_grad()
def lcm_sample(eps_fn, cond, shape, steps=4, gen=None):
    """eps_fn(x, t, ctx) -> eps (the guidance embedding, if any, is bound into eps_fn)."""
    acp = models.alphas_cumprod(torch.float64)
    x = torch.randn(shape, generator=gen)
    ts = lcm_timesteps(steps)
    B = shape[0]
    denoised = x
    for i, t in enumerate(ts):
        eps = eps_fn(x, torch.full((B,), float(t)), cond)
        a = acp[t].float()
        x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        c_skip, c_out = lcm_scalings(float(t))
        denoised = c_out * x0 + c_skip * x
        if i < len(ts) - 1:
            an = acp[ts[i + 1]].float()
            x = an.sqrt() * denoised + (1 - an).sqrt() * torch.randn(shape, generator=gen)
    return denoised


@torch.no_grad()
def rf_sample(v_fn, cond, shape, steps=1, gen=None):
    x = torch.randn(shape, generator=gen)
    B = shape[0]
    for i in range(steps):
        t = (1 - i / steps) * 1000.0
        x = x + v_fn(x, torch.full((B,), t), cond) / steps
    return x


# ----------------------------------------------------------------------------------------------
# evaluator-based metrics
# ----------------------------------------------------------------------------------------------
_CACHE = {}


def load_evaluator():
    if "ev" not in _CACHE:
        ck = torch.load(os.path.join(CKPT, "evaluator.pt"), map_location="cpu")
        ev = models.Evaluator()
        ev.load_state_dict(ck["model"])
        ev.eval()
        _CACHE["ev"] = (ev, ck)
    return _CACHE["ev"]


def load_vae():
    if "vae" not in _CACHE:
        import train
        _CACHE["vae"] = train.load_vae()
    return _CACHE["vae"]


def frechet(mu1, cov1, mu2, cov2):
    mu1, mu2 = mu1.double(), mu2.double()
    cov1, cov2 = cov1.double(), cov2.double()
    # sqrt of cov1^1/2 cov2 cov1^1/2 via symmetric eigendecompositions
    e1, v1 = torch.linalg.eigh(cov1)
    s1 = v1 @ torch.diag(e1.clamp(min=0).sqrt()) @ v1.T
    m = s1 @ cov2 @ s1
    em = torch.linalg.eigvalsh(m).clamp(min=0).sqrt().sum()
    return float((mu1 - mu2).pow(2).sum() + torch.trace(cov1) + torch.trace(cov2) - 2 * em)


@torch.no_grad()
def score_images(imgs, attrs_list, styles_expected=None):
    """imgs float [-1,1] [N,3,64,64]; attrs_list list of attribute dicts -> metrics dict."""
    ev, ck = load_evaluator()
    outs, feats = [], []
    for i in range(0, imgs.shape[0], 256):
        o, f = ev(imgs[i:i + 256])
        outs.append(o)
        feats.append(f)
    out = {k: torch.cat([o[k] for o in outs]) for k in outs[0]}
    feats = torch.cat(feats).double()
    res = {}
    for a in data.ATTRS:
        y = torch.tensor([data.ATTR_CLASSES[a].index(at[a]) for at in attrs_list])
        res[a] = float((out[a].argmax(1) == y).float().mean())
    res["mean"] = float(np.mean([res[a] for a in data.ATTRS]))
    res["all_correct"] = float(torch.stack([out[a].argmax(1) == torch.tensor(
        [data.ATTR_CLASSES[a].index(at[a]) for at in attrs_list]) for a in data.ATTRS]).all(0).float().mean())
    st = (out["styles"] > 0).float()
    res["style_rates"] = {s: float(st[:, i].mean()) for i, s in enumerate(data.STYLES)}
    if styles_expected is not None:
        res["style_detected"] = float(st[:, [data.STYLES.index(s) for s in styles_expected]].all(1).float().mean())
    res["fd"] = frechet(feats.mean(0), torch.cov(feats.T), ck["fid_ref_mu"], ck["fid_ref_cov"])
    return res


def real_baseline(n=256):
    """The same metrics on n held-out REAL images (seeds 5000..5000+n, plain): the ceiling / FD noise floor."""
    imgs, _, _, _, ss = data.batch_arrays(np.arange(9000, 9000 + n), styles=[])
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 127.5 - 1
    save_grid(x, [data.caption_for(s.attrs) for s in ss], "grid_real_heldout")
    return score_images(x, [s.attrs for s in ss])


def save_grid(imgs, captions, name):
    os.makedirs(REPORT_DIR, exist_ok=True)
    x = ((imgs[:64].clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    n = x.shape[0]
    cols = 8
    rows = (n + cols - 1) // cols
    grid = np.zeros((rows * 66, cols * 66, 3), np.uint8) + 255
    for i in range(n):
        r, c = divmod(i, cols)
        grid[r * 66 + 1:r * 66 + 65, c * 66 + 1:c * 66 + 65] = x[i]
    Image.fromarray(grid).resize((cols * 66 * 2, rows * 66 * 2), Image.NEAREST).save(
        os.path.join(REPORT_DIR, f"{name}.png"))
    with open(os.path.join(REPORT_DIR, f"{name}.txt"), "w") as f:
        for i, c in enumerate(captions[:64]):
            f.write(f"{i // cols},{i % cols}: {c}\n")


def decode(latents):
    vae, sf = load_vae()
    with torch.no_grad():
        return torch.cat([vae.decoder(latents[i:i + 256] / sf) for i in range(0, latents.shape[0], 256)]).clamp(-1, 1)


@torch.no_grad()
def evaluate_epsilon_model(unet, te, tok, n=256, steps=50, guidance=4.0, log=print, tag="base", seed=0,
                           sampler="ddim", grid_name=None, record=True, extra=None):
    t0 = time.time()
    prompts = data.eval_prompts(n)
    caps = [p[2] for p in prompts]
    cond = te(tok(caps))
    uncond = te(tok([""])).expand(n, -1, -1)
    gen = torch.Generator().manual_seed(seed)
    shape = (n, 4, 16, 16)
    unet.eval()
    if sampler == "ddim":
        lat = ddim_sample(lambda x, t, c: unet(x, t, c), cond, uncond, shape, steps, guidance, gen)
    else:
        raise ValueError(sampler)
    imgs = decode(lat)
    res = score_images(imgs, [p[1] for p in prompts])
    res.update(tag=tag, sampler=sampler, steps=steps, guidance=guidance, n=n, seconds=round(time.time() - t0, 1))
    if extra:
        res.update(extra)
    name = grid_name or ("grid_" + tag.replace(" ", "_"))
    save_grid(imgs, caps, name)
    res["grid"] = f"report/{name}.png"
    if record:
        record_result(res)
    log(f"eval {tag}: " + json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in res.items()}))
    return res


class DeepCacheEps:
    """eps_fn running the split U-Net DeepCache-style: a full pass (head -> deep -> tail) when
    schedule[i] is True, otherwise head + tail with the deep feature cached at the last full pass."""

    def __init__(self, unet, steps, interval):
        self.unet, self.i, self.cache = unet, 0, None
        self.full = [k % interval == 0 for k in range(steps)]

    def __call__(self, x, t, c):
        u = self.unet
        temb = u.temb(t)
        s0 = u.head(x, temb, c)
        if self.full[self.i] or self.cache is None:
            self.cache = u.deep(s0, temb, c)
        self.i += 1
        return u.tail(self.cache, s0, temb, c)


@torch.no_grad()
def evaluate_deepcache(unet, te, tok, interval=3, n=256, steps=50, guidance=4.0, log=print, tag=None, seed=0,
                       record=True):
    t0 = time.time()
    prompts = data.eval_prompts(n)
    caps = [p[2] for p in prompts]
    cond = te(tok(caps))
    uncond = te(tok([""])).expand(n, -1, -1)
    gen = torch.Generator().manual_seed(seed)
    lat = ddim_sample(DeepCacheEps(unet, steps, interval), cond, uncond, (n, 4, 16, 16), steps, guidance, gen)
    imgs = decode(lat)
    res = score_images(imgs, [p[1] for p in prompts])
    tag = tag or f"DDIM-{steps} + DeepCache interval {interval}"
    res.update(tag=tag, sampler="ddim+deepcache", steps=steps, guidance=guidance, n=n,
               seconds=round(time.time() - t0, 1))
    name = f"grid_deepcache_{interval}"
    save_grid(imgs, caps, name)
    res["grid"] = f"report/{name}.png"
    if record:
        record_result(res)
    log(f"eval {tag}: {res}")
    return res


@torch.no_grad()
def evaluate_lcm(unet, te, tok, n=256, steps=4, guidance=4.0, log=print, tag="lcm", seed=0, record=True):
    """Distilled LCM U-Net with the guidance embedding (no CFG pass)."""
    t0 = time.time()
    prompts = data.eval_prompts(n)
    caps = [p[2] for p in prompts]
    cond = te(tok(caps))
    wemb = models.guidance_embedding(torch.full((n,), float(guidance)), unet.config["cond_dim"])
    gen = torch.Generator().manual_seed(seed)
    lat = lcm_sample(lambda x, t, c: unet(x, t, c, timestep_cond=wemb), cond, (n, 4, 16, 16), steps, gen)
    imgs = decode(lat)
    res = score_images(imgs, [p[1] for p in prompts])
    res.update(tag=tag, sampler="lcm", steps=steps, guidance=guidance, n=n, seconds=round(time.time() - t0, 1))
    name = "grid_" + tag.replace(" ", "_")
    save_grid(imgs, caps, name)
    res["grid"] = f"report/{name}.png"
    if record:
        record_result(res)
    log(f"eval {tag}: {res}")
    return res


@torch.no_grad()
def evaluate_rf(unet, te, tok, n=256, steps=1, log=print, tag="rf", seed=0, record=True):
    t0 = time.time()
    prompts = data.eval_prompts(n)
    caps = [p[2] for p in prompts]
    cond = te(tok(caps))
    gen = torch.Generator().manual_seed(seed)
    lat = rf_sample(lambda x, t, c: unet(x, t, c), cond, (n, 4, 16, 16), steps, gen)
    imgs = decode(lat)
    res = score_images(imgs, [p[1] for p in prompts])
    res.update(tag=tag, sampler="rectified-flow", steps=steps, guidance="-", n=n, seconds=round(time.time() - t0, 1))
    name = "grid_" + tag.replace(" ", "_")
    save_grid(imgs, caps, name)
    res["grid"] = f"report/{name}.png"
    if record:
        record_result(res)
    log(f"eval {tag}: {res}")
    return res


@torch.no_grad()
def evaluate_lora(unet, te, tok, styles_scales: dict, n=256, steps=50, guidance=4.0, log=print, seed=0, record=True,
                  ckpt=None, start=0):
    """Style LoRAs (from checkpoints/loras.pt, or `ckpt`) stacked along the rank axis with their scales folded into
    `up`, applied to both CFG halves; prompts carry the trigger words. Reports the style detection rate. `start`: the
    first held-out prompt seed (the report's rows use 0; recipes are compared on 9000.., which it never shows)."""
    ck = torch.load(ckpt or os.path.join(CKPT, "loras.pt"), map_location="cpu")
    paths = [t["path"] for t in unet.lora_target_info()]
    styles = [s for s in data.STYLES if s in styles_scales]
    lora = {}
    for p in paths:
        ds, us = [], []
        for s in styles:
            d, u = ck["loras"][s][p]
            ds.append(d.float())
            us.append(u.float() * styles_scales[s])  # alpha = rank -> scale 1
        lora[p] = (torch.cat(ds, 0), torch.cat(us, 1))
    t0 = time.time()
    prompts = data.eval_prompts(n, start=start, styles=styles)
    caps = [p[2] for p in prompts]
    cond = te(tok(caps))
    uncond = te(tok([""])).expand(n, -1, -1)
    gen = torch.Generator().manual_seed(seed)

    def eps_fn(x, t, c):
        B = x.shape[0]
        br = {p: (d.unsqueeze(0).expand(B, -1, -1), u.unsqueeze(0).expand(B, -1, -1)) for p, (d, u) in lora.items()}
        return unet(x, t, c, lora=br)
    # The sampled latents do not depend on the VAE decoder: they are cached (keyed by the LoRA weights, the U-Net and
    # the sampling settings), so a new decoder is scored on the very same latents without sampling again.
    import hashlib
    h = hashlib.sha256(repr((sorted(styles_scales.items()), n, steps, guidance, seed) + ((start,) if start else ())).encode())
    for p in paths:
        h.update(lora[p][0].numpy().tobytes()); h.update(lora[p][1].numpy().tobytes())
    h.update(next(iter(unet.state_dict().values())).numpy().tobytes())
    cache = os.path.join(ZOO, ".work", "eval_latents", f"lora-{h.hexdigest()[:16]}.pt")
    if os.path.exists(cache):
        lat = torch.load(cache)
    else:
        lat = ddim_sample(eps_fn, cond, uncond, (n, 4, 16, 16), steps, guidance, gen)
        os.makedirs(os.path.dirname(cache), exist_ok=True)
        torch.save(lat, cache + ".tmp"); os.replace(cache + ".tmp", cache)
    imgs = decode(lat)
    res = score_images(imgs, [p[1] for p in prompts], styles_expected=styles)
    import train
    recipes = train.lora_recipes_of(ck)
    tag = "LoRA " + "+".join(f"{s}@{styles_scales[s]} (v{recipes[s]['version']})" for s in styles)
    if start:
        tag += f" · held-out prompts {start}..{start + n - 1}"
    res.update(tag=tag, sampler="ddim", steps=steps, guidance=guidance, n=n, seconds=round(time.time() - t0, 1))
    name = "grid_lora_" + "_".join(styles)
    save_grid(imgs, caps, name)
    res["grid"] = f"report/{name}.png"
    if record:
        record_result(res)
    log(f"eval {tag}: {res}")
    return res


def shape_mask_from_image(imgs, attrs_list):
    """Pixels closer to the prompt's shape colour than to its background colour (pastel-free plain images)."""
    x = ((imgs.clamp(-1, 1) + 1) * 127.5).permute(0, 2, 3, 1)
    out = []
    for i, a in enumerate(attrs_list):
        fg = torch.tensor(data.COLORS[a["color"]], dtype=torch.float32)
        bg = torch.tensor(data.COLORS[a["background"]], dtype=torch.float32)
        out.append(((x[i] - fg).pow(2).sum(-1) < (x[i] - bg).pow(2).sum(-1)))
    return torch.stack(out)


@torch.no_grad()
def evaluate_controlnet(unet, te, tok, cn, n=256, steps=50, guidance=4.0, scale=1.0, log=print, seed=0, record=True,
                        layout_free=False):
    """Mask IoU between the held-out masks and the shape segmented from the generated image; with and without
    the ControlNet (same prompts and seeds). layout_free: the prompts name no position and no size, so only the
    mask can place the shape (does the ControlNet steer, or only refine what the text already says?)."""
    seeds = np.arange(0, n)
    imgs_real, masks, caps_, _, ss = data.batch_arrays(seeds, styles=[])
    caps = [data.caption_for(s.attrs, (), 0) for s in ss]
    if layout_free:
        caps = [data.layout_free(c) for c in caps]
    attrs = [s.attrs for s in ss]
    target = torch.from_numpy(masks) > 127
    cond = te(tok(caps))
    uncond = te(tok([""])).expand(n, -1, -1)
    m = torch.from_numpy(masks).float().div(255.0).unsqueeze(1)
    results = {}
    for use in (True, False):
        t0 = time.time()
        gen = torch.Generator().manual_seed(seed)

        def eps_fn(x, t, c):
            if not use:
                return unet(x, t, c)
            mm = torch.cat([m, m]) if x.shape[0] == 2 * n else m
            outs, mid = cn(x, t, c, mm)
            return unet(x, t, c, down_residuals=[o * scale for o in outs], mid_residual=mid * scale)
        lat = ddim_sample(eps_fn, cond, uncond, (n, 4, 16, 16), steps, guidance, gen)
        imgs = decode(lat)
        seg = shape_mask_from_image(imgs, attrs)
        inter = (seg & target).flatten(1).sum(1).float()
        union = (seg | target).flatten(1).sum(1).float().clamp(min=1)
        res = score_images(imgs, attrs)
        res["mask_iou"] = float((inter / union).mean())
        tag = "ControlNet mask" if use else "no ControlNet (same prompts, masks for IoU)"
        if layout_free:
            tag += ", prompts without position and size"
        res.update(tag=tag, sampler="ddim", steps=steps, guidance=guidance, n=n, seconds=round(time.time() - t0, 1))
        name = ("grid_controlnet" if use else "grid_controlnet_off") + ("_layout_free" if layout_free else "")
        save_grid(imgs, caps, name)
        res["grid"] = f"report/{name}.png"
        if record:
            record_result(res)
        log(f"eval {tag}: {res}")
        results[tag] = res
    return results


def decoder_tag():
    """Rows decoded with the `vaedec` stage's fine-tuned decoder say so (earlier rows used the original one)."""
    p = os.path.join(CKPT, "vaedec.pt")
    ck = torch.load(p, map_location="cpu") if os.path.exists(p) else {}
    if not ck.get("finished"):
        return ""
    return " · fine-tuned decoder" + (f" v{ck['version']}" if ck.get("version", 1) > 1 else "")


def record_result(res):
    os.makedirs(REPORT_DIR, exist_ok=True)
    res = dict(res, time=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()))
    if res.get("sampler") != "-" or "VAE" in res.get("tag", ""):
        res["tag"] = res["tag"] + decoder_tag()
    with open(RESULTS, "a") as f:
        f.write(json.dumps(res) + "\n")
    write_report()


def grid_link(grid):
    """Links a grid that is kept (intermediate checkpoints' grids are not committed)."""
    return f"[png]({grid})" if grid and os.path.exists(os.path.join(ZOO, grid)) else ""


def write_report():
    """Regenerates the measured-numbers part of REPORT.md from report/results.jsonl."""
    rows = [json.loads(l) for l in open(RESULTS)] if os.path.exists(RESULTS) else []
    head = open(os.path.join(ZOO, "REPORT.head.md")).read() if os.path.exists(os.path.join(ZOO, "REPORT.head.md")) else ""
    lines = [head, "\n## Measured results (appended automatically by evaluate.py)\n",
             "| time (UTC) | model / checkpoint | sampler | steps | guidance | n | shape | color | size | position | "
             "background | **mean** | all 5 correct | FD | style detected | mask IoU | grid |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        f = lambda k: f"{r[k]:.3f}" if isinstance(r.get(k), float) else str(r.get(k, ""))  # noqa: E731
        lines.append(f"| {r.get('time', '')} | {r['tag']} | {r.get('sampler', '')} | {r.get('steps', '')} | "
                     f"{r.get('guidance', '')} | {r.get('n', '')} | {f('shape')} | {f('color')} | {f('size')} | "
                     f"{f('position')} | {f('background')} | **{f('mean')}** | {f('all_correct')} | {f('fd')} | "
                     f"{f('style_detected')} | {f('mask_iou')} | {grid_link(r.get('grid'))} |")
    tail = os.path.join(ZOO, "REPORT.tail.md")
    if os.path.exists(tail):
        lines.append("\n" + open(tail).read())
    open(os.path.join(ZOO, "REPORT.md"), "w").write("\n".join(lines) + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["base", "real", "vae", "report", "deepcache", "lcm", "rf", "loras", "controlnet"])
    ap.add_argument("--interval", type=int, default=3)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--guidance", type=float, default=4.0)
    ap.add_argument("--raw", action="store_true", help="use the raw (non-EMA) weights")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--layout-free", action="store_true", help="controlnet: prompts without position and size")
    ap.add_argument("--stack", default="", help="loras: only this comma-separated set of styles, stacked at scale 1")
    ap.add_argument("--start", type=int, default=0, help="loras --stack: first held-out prompt seed (default 0)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.what == "report":
        write_report()
        return
    if args.what == "vae":  # the ceiling the VAE allows: evaluator on VAE reconstructions of held-out images
        vae, sf = load_vae()
        import train
        imgs, _, _, _, ss = data.batch_arrays(np.arange(9000, 9000 + args.n), styles=[])
        x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 127.5 - 1
        with torch.no_grad():
            rec = decode(train.encode_latents(vae, sf, imgs, ss))
        r = score_images(rec, [s.attrs for s in ss])
        r["psnr"] = float(10 * math.log10(4.0 / (rec - x).pow(2).mean().item()))
        save_grid(rec, [data.caption_for(s.attrs) for s in ss], "grid_vae_reconstructions")
        r.update(tag="VAE reconstructions of held-out real images (ceiling)", sampler="-", steps="-", guidance="-",
                 n=args.n, grid="report/grid_vae_reconstructions.png")
        record_result(r)
        print(r)
        # Per style: can a style survive the VAE at all? (the ceiling of any style LoRA's detection rate)
        for style in data.STYLES:
            imgs, _, _, _, ss = data.batch_arrays(np.arange(9000, 9000 + args.n), styles=[style])
            codes = (False, True) if style == "striped" and train.stripe_code_on() else (False,)
            for code in codes:  # the stripe code's ceiling, and what the encoder alone keeps
                with torch.no_grad():
                    rec = decode(train.encode_latents(vae, sf, imgs, ss, code))
                r = score_images(rec, [s.attrs for s in ss], styles_expected=[style])
                how = " with the stripe code" if code else (" (encoder only, no stripe code)" if len(codes) > 1 else "")
                r.update(tag=f"VAE reconstructions of held-out {style} images{how} (style ceiling)", sampler="-",
                         steps="-", guidance="-", n=args.n)
                record_result(r)
                print(style + how, r["style_detected"])
        return
    if args.what == "real":
        r = real_baseline(args.n)
        r.update(tag="REAL held-out images (ceiling)", sampler="-", steps="-", guidance="-", n=args.n,
                 grid="report/grid_real_heldout.png")
        record_result(r)
        print(r)
        return
    import train
    tok, unet, te, ck = train.load_base(ema=not args.raw)
    if args.what == "base":
        evaluate_epsilon_model(unet, te, tok, n=args.n, steps=args.steps, guidance=args.guidance,
                               tag=f"base step {ck['step']}{' raw' if args.raw else ' EMA'}")
    elif args.what == "deepcache":
        evaluate_deepcache(unet, te, tok, interval=args.interval, n=args.n, steps=args.steps, guidance=args.guidance,
                           tag=f"base step {ck['step']} DDIM-{args.steps} + DeepCache interval {args.interval}")
    elif args.what == "lcm":
        lcm = train.load_lcm()
        for s in (1, 2, 4, 8):
            evaluate_lcm(lcm, te, tok, n=args.n, steps=s, guidance=args.guidance, tag=f"lcm {s}-step")
    elif args.what == "rf":
        rck = torch.load(os.path.join(CKPT, "rf.pt"), map_location="cpu")
        rf = models.UNet(**rck["config"])
        rf.load_state_dict({k: v.float() for k, v in rck["model"].items()})
        evaluate_rf(rf.eval(), te, tok, n=args.n, steps=1, tag="rectified-flow 1-step")
    elif args.what == "loras" and args.stack:
        evaluate_lora(unet, te, tok, {s: 1.0 for s in args.stack.split(",")}, n=args.n, start=args.start)
    elif args.what == "loras":
        for s in data.STYLES:
            evaluate_lora(unet, te, tok, {s: 1.0}, n=args.n)
        for pair in (("outlined", "pastel"), ("striped", "pastel")):
            evaluate_lora(unet, te, tok, {s: 1.0 for s in pair}, n=args.n)
    elif args.what == "controlnet":
        evaluate_controlnet(unet, te, tok, train.load_controlnet(unet), n=args.n, layout_free=args.layout_free)


if __name__ == "__main__":
    main()
