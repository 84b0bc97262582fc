"""Two LoRAs stacked on one generation: the demo add-ons `npm start` publishes (lora-pastel, lora-striped)."""

from _config import client, model

with client() as c:
    by_name = {a.name: a for a in c.addons.list() if a.kind == "lora"}
    pastel, striped = by_name["lora-pastel"], by_name["lora-striped"]
    g = c.generations.create_and_wait(
        model=model(),
        prompt="a large red circle on the left, blue background",
        seed=1,
        loras=[{"id": pastel.id, "scale": 0.8}, {"id": f"{striped.id}@{striped.latest_version}", "scale": 0.5}],
    )
    applied = ", ".join(f"{lo.name}@{lo.version} × {lo.scale}" for lo in g.request.loras)
    print(f"{g.id}: {g.status} with {applied}: {g.images[0].url}")
