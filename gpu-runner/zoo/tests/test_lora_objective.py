"""The style LoRAs' training objective and recipe bookkeeping (run: /usr/bin/python3 gpu-runner/zoo/tests/test_lora_objective.py).
The per-cell weights of the epsilon-MSE (train.lora_weight_maps) must keep each image's mean at 1 and put the weight
where they say; a weighting of all ones must give the plain MSE; a style is retrained exactly when its recipe changed."""
import os
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import data  # noqa: E402
import models  # noqa: E402
import train  # noqa: E402


def styled_maps(sizes):
    """Masks and edge maps of outlined images of the given sizes, as lora_dataset stores them."""
    imgs, masks = [], []
    for i, size in enumerate(sizes):
        attrs = dict(shape="circle", color="red", size=size, position="center", background="blue")
        im, mk = data.render(attrs, ["outlined"], np.random.default_rng(i))
        imgs.append(im)
        masks.append(mk)
    x = train.to_img_tensor(np.stack(imgs))
    edges = torch.nn.functional.max_pool2d(train.edge_map(x), 4).squeeze(1).half()
    return dict(masks=torch.from_numpy(np.stack(masks)), edges=edges)


def test_shape_weighting():
    w = train.lora_weight_maps(styled_maps(["small", "large"]), "shape").float()
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
    w = train.lora_weight_maps(maps, "edges").float()[0, 0]
    on = maps["edges"][0].float() > 0.99
    assert on.any() and (~on).any()
    assert w[on].min() > w[~on & (maps["edges"][0].float() == 0)].max()
    assert train.lora_weight_maps(maps, "none") is None
    try:
        train.lora_weight_maps(maps, "rings")
        raise AssertionError("an unknown weighting was accepted")
    except ValueError as e:
        assert "rings" in str(e)


def test_ones_weighting_is_the_plain_mse():
    torch.manual_seed(0)
    unet = models.UNet(**models.UNET_CONFIGS["tiny"]).eval()
    te = models.TextEncoder(vocab_size=40, **models.TEXT_CONFIGS["tiny"]).eval()
    lp = train.LoRAParams(unet)
    for u in lp.up:
        torch.nn.init.normal_(u, std=0.05)  # a LoRA that does something
    lat, ids = torch.randn(6, 4, 16, 16).half(), torch.zeros(6, models.MAX_LENGTH, dtype=torch.long)
    acp = models.alphas_cumprod(torch.float32)
    args = (unet, te, lat, ids, ids[0], acp, lp, 4)
    plain = train.lora_loss(*args, torch.Generator().manual_seed(3))
    ones = train.lora_loss(*args, torch.Generator().manual_seed(3), weights=torch.ones(6, 1, 16, 16).half())
    twice = train.lora_loss(*args, torch.Generator().manual_seed(3), weights=torch.full((6, 1, 16, 16), 2.0).half())
    assert torch.allclose(plain, ones, rtol=1e-5) and torch.allclose(2 * plain, twice, rtol=1e-5)


def test_recipes_decide_what_is_retrained():
    v5 = dict(loras={s: {} for s in data.STYLES}, rank=16, version=5, steps=dict(outlined=4000, striped=2000, pastel=3000))
    old = train.lora_recipes_of(v5)
    assert old["pastel"] == dict(version=5, steps=3000, weighting="none", rank=16)
    keep = train.CKPT
    with tempfile.TemporaryDirectory() as d:
        train.CKPT = d
        try:
            current = {s: train.lora_recipe(s) for s in data.STYLES}
            torch.save(dict(v5, recipes=current, finished=True), os.path.join(d, "loras.pt"))
            assert train.stage_finished("loras")
            torch.save(dict(v5, recipes=dict(current, outlined=old["outlined"]), finished=True), os.path.join(d, "loras.pt"))
            assert not train.stage_finished("loras")  # outlined was trained with another recipe
        finally:
            train.CKPT = keep


if __name__ == "__main__":
    for name, fn in list(globals().items()):
        if name.startswith("test_"):
            fn()
            print("ok", name)
