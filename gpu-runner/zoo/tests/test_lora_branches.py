"""The U-Net's LoRA branches against their definitions (run: cd gpu-runner && /usr/bin/python3 -m pytest zoo/tests).
A conv3x3 branch must equal the LoRA applied as two convolutions (down: 3x3 to rank r, up: 1x1), in both the form used
for training and the form exported to ONNX (models.conv_lora_branch), and rank 0 must change nothing."""

import torch
import torch.nn.functional as F

from zoo import models


def shared_ref(x, down, up, C, O):
    return F.conv2d(F.conv2d(x, down.view(-1, C, 3, 3), padding=1), up.view(O, -1, 1, 1))


def test_conv_branch_is_two_convolutions():
    torch.manual_seed(0)
    u = models.UNet(**models.UNET_CONFIGS["tiny"])
    mods = dict(u.named_modules())
    convs = [t for t in u.lora_target_info() if t["kind"] == "conv3x3"]
    assert len(convs) == 16
    B, r, H = 2, 3, 8
    for t in convs:
        conv, C, O = mods[t["path"]], t["in_features"], t["out_features"]
        x = torch.randn(B, C, H, H)
        down, up = torch.randn(B, r, C * 9), torch.randn(B, O, r)
        ref = torch.cat(
            [
                F.conv2d(F.conv2d(x[b : b + 1], down[b].view(r, C, 3, 3), padding=1), up[b].view(O, r, 1, 1))
                for b in range(B)
            ]
        )
        with torch.no_grad():
            y0 = conv(x)
            u.lora = {t["path"]: (down, up)}
            y = conv(x)
            u.lora = {t["path"]: (down[:, :0], up[:, :, :0])}
            y_rank0 = conv(x)
            u.lora = None
            graph = models.conv_lora_branch(y0, x, down.view(B, r, C, 9), up, conv.taps, C, O, H, H)
            # One LoRA expanded over the batch (training) takes the batched-convolution path.
            u.lora = {t["path"]: (down[:1].expand(B, -1, -1), up[:1].expand(B, -1, -1))}
            y_shared = conv(x)
            u.lora = None
        scale = ref.abs().max().item()
        assert (y - y0 - ref).abs().max().item() < 1e-5 * scale, t["path"]
        assert (graph - y).abs().max().item() < 1e-5 * scale, t["path"]
        assert torch.equal(y_rank0, y0), t["path"]
        # The graph's shared form (down and up with batch 1: one LoRA set for every sample) equals the per-sample one.
        with torch.no_grad():
            d1, u1 = down[:1].view(1, r, C, 9), up[:1]
            shared = models.conv_lora_branch(y0, x, d1, u1, conv.taps, C, O, H, H)
            each = models.conv_lora_branch(y0, x, d1.expand(B, -1, -1, -1), u1.expand(B, -1, -1), conv.taps, C, O, H, H)
        assert (shared - each).abs().max().item() < 1e-5 * scale, t["path"]
        assert (y_shared - y0 - shared_ref(x, down[0], up[0], C, O)).abs().max().item() < 1e-5 * scale, t["path"]


if __name__ == "__main__":
    test_conv_branch_is_two_convolutions()
    print("ok")
