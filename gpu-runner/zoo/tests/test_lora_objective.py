"""The style LoRAs' training objective and recipe bookkeeping (run: cd gpu-runner && /usr/bin/python3 -m pytest zoo/tests).
The per-cell weights of the epsilon-MSE (zoo.stages.loras.lora_weight_maps) must keep each image's mean at 1 and put the weight
where they say; a weighting of all ones must give the plain MSE; the draws must favour the images the style changes
least (loras.lora_sampling) and follow the probabilities given; a style is retrained exactly when its recipe changed."""

import os
import tempfile

import numpy as np
import torch

from zoo import data, latents, loop, models, paths, train
from zoo.stages import loras


def styled_maps(sizes):
    """Masks and edge maps of outlined images of the given sizes, as lora_dataset stores them."""
    imgs, masks = [], []
    for i, size in enumerate(sizes):
        attrs = dict(shape="circle", color="red", size=size, position="center", background="blue")
        im, mk = data.render(attrs, ["outlined"], np.random.default_rng(i))
        imgs.append(im)
        masks.append(mk)
    x = loop.to_img_tensor(np.stack(imgs))
    edges = torch.nn.functional.max_pool2d(latents.edge_map(x), 4).squeeze(1).half()
    return dict(masks=torch.from_numpy(np.stack(masks)), edges=edges)


def test_shape_weighting():
    w = loras.lora_weight_maps(styled_maps(["small", "large"]), "shape").float()
    assert w.shape == (2, 1, 16, 16)
    assert torch.allclose(w.mean((1, 2, 3)), torch.ones(2), atol=2e-3)  # each image's mean is 1
    small, large = w[0, 0], w[1, 0]
    # cells the shape does not touch weigh 1/2 in both (1 before the mean is divided out, which is 2)
    assert abs(small[0, 0].item() - 0.5) < 2e-3 and abs(large[0, 0].item() - 0.5) < 2e-3
    # the shape's cells carry half of each image's weight, so a small shape's cells weigh more than a large one's
    assert small[8, 8] > large[8, 8] > 1.5
    for img in (small, large):
        assert abs((img - 0.5).sum().item() - 128) < 1.0


def test_edge_weighting_and_errors():
    maps = styled_maps(["large"])
    w = loras.lora_weight_maps(maps, "edges").float()[0, 0]
    on = maps["edges"][0].float() > 0.99
    assert on.any() and (~on).any()
    assert w[on].min() > w[~on & (maps["edges"][0].float() == 0)].max()
    assert loras.lora_weight_maps(maps, "none") is None
    try:
        loras.lora_weight_maps(maps, "rings")
        raise AssertionError("an unknown weighting was accepted")
    except ValueError as e:
        assert "rings" in str(e)


def test_style_change_weighting():
    """shape+style adds weight where the style alters the picture: an outlined shape's hole, nowhere outside it."""
    seeds = np.arange(data.STYLE_SEED_BASE, data.STYLE_SEED_BASE + 40)
    ss = [data.sample(int(s), ["outlined"]) for s in seeds]
    k = next(i for i, s in enumerate(ss) if s.attrs["size"] == "large" and s.attrs["shape"] in ("circle", "square"))
    change = loras.style_change(seeds, "outlined")
    assert change.shape == (40, 1, 16, 16)
    cover = latents.cell_cover(np.stack([s.mask for s in ss]))
    assert change[cover == 0].abs().max() == 0  # outside the shape the outlined style changes nothing
    x, y = data.POS_XY[ss[k].attrs["position"]]
    hole = (y // 4, x // 4)  # the latent cell at the shape's centre is inside its hole
    assert change[k, 0][hole] > 0.2, change[k, 0][hole]
    ds = dict(masks=torch.from_numpy(np.stack([s.mask for s in ss])), seeds=seeds)
    shape, both = (loras.lora_weight_maps(ds, w, "outlined").float() for w in ("shape", "shape+style"))
    assert torch.allclose(both.mean((1, 2, 3)), torch.ones(40), atol=2e-3)
    assert both[k, 0][hole] > shape[k, 0][hole] * 1.2  # the hole weighs more than under shape alone
    pastel = loras.style_change(seeds[:4], "pastel")
    assert (pastel > 0).all()  # pastel changes every cell


def test_change_sampling():
    """sampling=change draws the images the style alters least (small shapes' small holes) more often."""
    seeds = np.arange(data.STYLE_SEED_BASE, data.STYLE_SEED_BASE + 200)
    ss = [data.sample(int(s), ["outlined"]) for s in seeds]
    ds = dict(seeds=seeds)
    assert loras.lora_sampling(ds, "uniform", "outlined") is None
    p = loras.lora_sampling(ds, "change", "outlined")
    assert p.shape == (200,) and abs(p.sum().item() - 1) < 1e-5 and (p > 0).all()

    def mean_p(shape, size):
        return p[[i for i, s in enumerate(ss) if s.attrs["shape"] == shape and s.attrs["size"] == size]].mean()

    assert mean_p("star", "small") > 2 * mean_p("circle", "large")
    assert mean_p("circle", "small") > mean_p("circle", "large")
    try:
        loras.lora_sampling(ds, "hard", "outlined")
        raise AssertionError("an unknown sampling was accepted")
    except ValueError as e:
        assert "hard" in str(e)


def tiny_lora_setup():
    torch.manual_seed(0)
    unet = models.UNet(**models.UNET_CONFIGS["tiny"]).eval()
    te = models.TextEncoder(vocab_size=40, **models.TEXT_CONFIGS["tiny"]).eval()
    lp = loras.LoRAParams(unet)
    for u in lp.up:
        torch.nn.init.normal_(u, std=0.05)  # a LoRA that does something
    lat, ids = torch.randn(6, 4, 16, 16).half(), torch.zeros(6, models.MAX_LENGTH, dtype=torch.long)
    acp = models.alphas_cumprod(torch.float32)
    return unet, te, lat, ids, acp, lp


def test_ones_weighting_is_the_plain_mse():
    unet, te, lat, ids, acp, lp = tiny_lora_setup()
    args = (unet, te, lat, ids, ids[0], acp, lp, 4)
    plain = loras.lora_loss(*args, torch.Generator().manual_seed(3))
    ones = loras.lora_loss(*args, torch.Generator().manual_seed(3), weights=torch.ones(6, 1, 16, 16).half())
    twice = loras.lora_loss(*args, torch.Generator().manual_seed(3), weights=torch.full((6, 1, 16, 16), 2.0).half())
    assert torch.allclose(plain, ones, rtol=1e-5) and torch.allclose(2 * plain, twice, rtol=1e-5)


def test_probs_decide_what_is_drawn():
    """All the probability on image 2 gives the loss of a dataset whose every image is image 2."""
    unet, te, lat, ids, acp, lp = tiny_lora_setup()
    only2 = torch.zeros(6)
    only2[2] = 1
    a = loras.lora_loss(unet, te, lat, ids, ids[0], acp, lp, 4, torch.Generator().manual_seed(3), probs=only2)
    same = lat[2:3].expand(6, -1, -1, -1).clone()
    b = loras.lora_loss(
        unet, te, same, ids, ids[0], acp, lp, 4, torch.Generator().manual_seed(3), probs=torch.full((6,), 1 / 6)
    )
    c = loras.lora_loss(
        unet, te, lat, ids, ids[0], acp, lp, 4, torch.Generator().manual_seed(3), probs=torch.full((6,), 1 / 6)
    )
    assert torch.allclose(a, b, rtol=1e-5) and not torch.allclose(a, c, rtol=1e-3)


def test_recipes_decide_what_is_retrained():
    v5 = dict(
        loras={s: {} for s in data.STYLES}, rank=16, version=5, steps=dict(outlined=4000, striped=2000, pastel=3000)
    )
    old = loras.lora_recipes_of(v5)
    assert old["pastel"] == dict(version=5, steps=3000, weighting="none", rank=16, n=loras.LORA_N, sampling="uniform")
    keep = paths.CKPT
    with tempfile.TemporaryDirectory() as d:
        paths.CKPT = d
        try:
            current = {s: loras.lora_recipe(s) for s in data.STYLES}
            torch.save(dict(v5, recipes=current, finished=True), os.path.join(d, "loras.pt"))
            assert train.stage_finished("loras")
            torch.save(
                dict(v5, recipes=dict(current, outlined=old["outlined"]), finished=True), os.path.join(d, "loras.pt")
            )
            assert not train.stage_finished("loras")  # outlined was trained with another recipe
        finally:
            paths.CKPT = keep


if __name__ == "__main__":
    for name, fn in list(globals().items()):
        if name.startswith("test_"):
            fn()
            print("ok", name)
