"""The stripe code that striped images' latents carry (run: cd gpu-runner && /usr/bin/python3 -m pytest zoo/tests).
It must say where the rendered stripes stand in each latent cell, sit only where the shape is, and be absent from
every image that is not striped."""

import math

import numpy as np
import torch

from zoo import data, latents


def test_cell_phase_matches_the_rendered_stripes():
    for phase in (0, 5, 17):
        cells = data.stripe_cell_phase(phase)
        hr = data.STRIPE_PERIOD_HR
        # the supersampled pattern the renderer draws, read at each cell's top-left supersampled pixel
        for i, j in ((0, 0), (3, 7), (15, 15), (9, 2)):
            y, x = i * 4 * data.SS, j * 4 * data.SS
            assert math.isclose(cells[i, j], ((x + y + phase) % hr) / hr)
        # one supersampled pixel of phase moves every cell's phase by 1/period
        nxt = data.stripe_cell_phase(phase + 1)
        assert np.allclose((nxt - cells) % 1.0, 1 / hr)


def test_code_follows_the_shape_and_only_striped_images():
    seeds = data.STYLE_SEED_BASE + np.arange(8)
    _, _, _, _, striped = data.batch_arrays(seeds, styles=["striped"])
    _, _, _, _, plain = data.batch_arrays(seeds, styles=["pastel"])
    sf = 0.6
    code = latents.stripe_code(striped, sf) * sf / latents.STRIPE_CODE_SCALE
    assert torch.count_nonzero(latents.stripe_code(plain, sf)) == 0
    assert torch.count_nonzero(code[:, 2:]) == 0  # channels 0 and 1 only
    for k, s in enumerate(striped):
        cover = torch.nn.functional.avg_pool2d(torch.from_numpy(s.mask).float()[None, None] / 255, 4)[0, 0]
        amp = code[k, 0].pow(2) + code[k, 1].pow(2)
        assert torch.allclose(amp.sqrt(), cover, atol=1e-5)  # |code| = the shape's coverage of the cell
        phi = torch.atan2(code[k, 1], code[k, 0]) / (2 * math.pi)
        full = cover > 0.99
        want = torch.from_numpy(data.stripe_cell_phase(s.extra["stripe_phase"])).float()
        off = (phi - want + 0.5) % 1.0 - 0.5  # on the circle
        assert full.any() and off[full].abs().max() < 1e-4
    # the phase is drawn per image
    assert len({s.extra["stripe_phase"] for s in striped}) > 1


if __name__ == "__main__":
    for name, fn in list(globals().items()):
        if name.startswith("test_"):
            fn()
            print("ok", name)
