"""Generate an image and save it: python3 examples/python/generate.py [out.png]"""

import sys

import httpx

from _config import client, model

with client() as c:
    g = c.generations.create_and_wait(model=model(), prompt="a large red circle on the left, blue background", seed=1)
    out = sys.argv[1] if len(sys.argv) > 1 else "generated.png"
    with open(out, "wb") as f:
        f.write(httpx.get(g.images[0].url).content)
    print(f"{g.id}: {g.request.sampler}, {g.request.steps} steps → {out}")
