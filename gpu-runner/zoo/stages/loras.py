"""Stage `loras`: style LoRAs (LoCon) on the frozen base at its LoRA targets; `export loras` writes the add-ons."""

from __future__ import annotations

import math
import os

import numpy as np
import torch

from zoo import data, models, paths
from zoo.latents import build_latent_dataset, cell_cover, cell_mean, stripe_code_on
from zoo.loop import Log, Progress, atomic_save, cosine_lr, load_state, state_path
from zoo.stages.base import frozen_base

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


LORA_RECIPES = dict(
    outlined=dict(version=7, steps=4000, rank=32, weighting="shape+style", sampling="change"),
    striped=dict(version=6, steps=4000, weighting="none"),  # v6: on latents with the stripe code
    pastel=dict(version=5, steps=3000, weighting="none"),
)


LORA_N = 12000  # styled training images per LoRA


LORA_BATCH, LORA_LR = 32, 1e-3


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
        return {
            p: (d.unsqueeze(0).expand(B, -1, -1), (u * scale).unsqueeze(0).expand(B, -1, -1))
            for p, d, u in zip(self.paths, self.down, self.up)
        }

    def as_dict(self):
        return {p: (d.detach().clone(), u.detach().clone()) for p, d, u in zip(self.paths, self.down, self.up)}


def style_change(seeds, style):
    """[N,1,16,16]: per latent cell, the mean |styled image - the same image unstyled| (in [0,1]) of each seed's
    sample: where the style changes the picture (an outlined shape's hole, a pastel image everywhere)."""
    out = []
    for i in range(0, len(seeds), 500):
        chunk = seeds[i : i + 500]
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
    return build_latent_dataset(
        log,
        os.path.join(paths.WORK, f"lora_{style}_latents_maps{code}{size}.pt"),
        n,
        data.STYLE_SEED_BASE + si * 1_000_000,
        styles=[style],
        with_masks=True,
        with_edges=True,
    )


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
    return {
        s: lora_recipe_defaults(
            dict(version=ck.get("version", 2), steps=ck.get("steps", {}).get(s), rank=ck.get("rank", LORA_RANK))
        )
        for s in ck.get("loras", {})
    }


def stage_loras(args):
    log = Log("loras")
    B, LR = LORA_BATCH, LORA_LR
    recipes = {style: lora_recipe(style, args.steps) for style in data.STYLES}
    tok, unet, te = frozen_base()
    acp = models.alphas_cumprod(torch.float32)
    empty_ids = tok([""])
    # Styles already trained with their current recipe are kept: from checkpoints/loras.pt, then from the state.
    finished, done_recipes = {}, {}
    for src in (os.path.join(paths.CKPT, "loras.pt"), state_path("loras")):
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
        if (
            prev
            and prev["extra"].get("style") == style
            and lora_recipe_defaults(prev["extra"].get("recipe") or {}) == recipes[style]
        ):
            lp.load_state_dict(prev["lp"])
            opt.load_state_dict(prev["opt"])
            step = prev["step"]
            log(f"resumed {style} at step {step}")
        g = torch.Generator().manual_seed(500 + si * 100000 + step)
        prog = Progress(log, S, step)
        log(
            f"LoRA '{style}': {len(lp.paths)} targets, "
            f"{sum(p.numel() for p in lp.parameters())} params, recipe {recipes[style]}"
        )

        def extra(cur):
            return dict(style=cur, recipe=recipes[style], finished=finished, recipes=done_recipes)

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
                atomic_save(
                    dict(lp=lp.state_dict(), opt=opt.state_dict(), step=step, extra=extra(style)), state_path("loras")
                )
        finished[style] = {p: (d.half(), u.half()) for p, (d, u) in lp.as_dict().items()}
        done_recipes[style] = recipes[style]
        outputs[style] = finished[style]
        trained.add(style)
        atomic_save(dict(lp=lp.state_dict(), opt=opt.state_dict(), step=step, extra=extra(None)), state_path("loras"))
        prev = load_state("loras")
    # The add-on files are written from this by `export.py loras` (export.export_loras); the recipes say each style's
    # steps, version and rank.
    atomic_save(
        dict(loras=outputs, recipes={st: recipes[st] for st in outputs}, batch=B, finished=True),
        os.path.join(paths.CKPT, "loras.pt"),
    )
    log("finished")
    try:  # what this run trained, alone and in the stacked pairs (kept styles' rows are in the report already)
        from zoo import evaluate

        for style in trained:
            evaluate.evaluate_lora(unet, te, tok, {style: 1.0}, log=log)
        for pair in (("outlined", "pastel"), ("striped", "pastel")):
            if all(s in outputs for s in pair) and trained & set(pair):
                evaluate.evaluate_lora(unet, te, tok, {s: 1.0 for s in pair}, log=log)
    except Exception as e:
        log(f"EVAL failed: {e!r}")
