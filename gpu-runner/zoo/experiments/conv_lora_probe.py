"""Probe: does a style LoRA that also reaches the U-Net's 3x3 convolutions draw `outlined` better?

Same recipe as the `loras` stage (rank 16, batch 32, AdamW 1e-3 cosine, 10% caption dropout, frozen base, the
committed VAE), plus a LoCon-style branch on every ResBlock convolution: down = Conv2d(cin, r, 3) and
up = Conv2d(r, cout, 1), zero-initialised. Those branches are PyTorch-only (forward hooks): the exported bundles have
no convolution LoRA inputs, so this only measures whether adding them would be worth it. It is compared with the
attention/projection-only LoRA at the same step count (v3: 2000 steps).

    /usr/bin/python3 gpu-runner/zoo/experiments/conv_lora_probe.py [steps]   (run with train.sh's environment)
Writes nothing under checkpoints/; the evaluation row is printed, not recorded in REPORT.md."""
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import data  # noqa: E402
import evaluate  # noqa: E402
import models  # noqa: E402
import train  # noqa: E402

STYLE, RANK, B, LR = "outlined", train.LORA_RANK, train.LORA_BATCH, train.LORA_LR
STEPS = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
torch.set_num_threads(2)
log = train.Log("conv_lora_probe")
tok, unet, te = train.frozen_base()


class ConvBranch(torch.nn.Module):
    def __init__(self, conv):
        super().__init__()
        self.down = torch.nn.Conv2d(conv.in_channels, RANK, 3, padding=1, bias=False)
        self.up = torch.nn.Conv2d(RANK, conv.out_channels, 1, bias=False)
        torch.nn.init.zeros_(self.up.weight)

    def hook(self, module, inputs, output):
        return output + self.up(self.down(inputs[0]))


torch.manual_seed(10)
convs = [m for m in unet.modules() if isinstance(m, models.ResBlock)]
branches = torch.nn.ModuleList()
for rb in convs:
    for conv in (rb.conv1, rb.conv2):
        br = ConvBranch(conv)
        conv.register_forward_hook(br.hook)
        branches.append(br)
lp = train.LoRAParams(unet)
params = list(lp.parameters()) + list(branches.parameters())
log(f"conv LoRA probe '{STYLE}': {len(lp.paths)} linear targets + {len(branches)} convolutions, "
    f"{sum(p.numel() for p in lp.parameters())} + {sum(p.numel() for p in branches.parameters())} params, {STEPS} steps")
si = data.STYLES.index(STYLE)
ds = train.lora_dataset(log, STYLE)
lat, ids_all = ds["latents"], tok(ds["captions"])
opt = torch.optim.AdamW(params, LR, weight_decay=0.0)
acp = models.alphas_cumprod(torch.float32)
empty_ids = tok([""])
g = torch.Generator().manual_seed(500 + si * 100000)
t0 = time.time()
for step in range(STEPS):
    for gr in opt.param_groups:
        gr["lr"] = train.cosine_lr(step, STEPS, LR, warmup=50, floor=0.1)
    loss = train.lora_loss(unet, te, lat, ids_all, empty_ids, acp, lp, B, g)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if (step + 1) % 100 == 0:
        log(f"step {step + 1}/{STEPS} loss {loss.item():.5f} {(step + 1) / (time.time() - t0):.2f} steps/s")
ck = os.path.join(train.WORK, "conv_lora_probe_linear.pt")
torch.save(dict(loras={STYLE: {p: (d.detach().half(), u.detach().half()) for p, (d, u) in lp.as_dict().items()}},
                version=f"probe-conv-{STEPS}"), ck)
with torch.no_grad():
    res = evaluate.evaluate_lora(unet, te, tok, {STYLE: 1.0}, record=False, ckpt=ck, log=log)
log("RESULT", {k: res[k] for k in ("mean", "style_detected", "style_rates", "fd")})
