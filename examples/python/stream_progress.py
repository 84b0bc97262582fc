"""Follow a generation's progress as server-sent events (the SDK reconnects if the stream drops)."""

from _config import client, model

with client() as c:
    g = c.generations.create(model=model(), prompt="a blue triangle at the bottom, yellow background", steps=8)
    for state in c.generations.events(g.id):
        step = f" step {state.progress.step}/{state.progress.total}" if state.progress else ""
        print(f"{state.id}: {state.status}{step}")
    print(state.images[0].url if state.status == "succeeded" else state.error)
