"""Receive a webhook and verify it (Standard Webhooks): a tiny receiver on 127.0.0.1, a generation that notifies
it, and `imagegen.webhooks.verify` on what arrives. The stack must allow private webhook destinations
(ALLOW_PRIVATE_WEBHOOKS=true) for a loopback receiver; a deployed receiver is a public HTTPS URL."""

import queue
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

from _config import client, model
from imagegen import WebhookVerificationError, webhooks

received: "queue.Queue[tuple[bytes, dict[str, str]]]" = queue.Queue()


class Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        # Verify the raw bytes: re-serialised JSON would not match the signature.
        received.put((self.rfile.read(int(self.headers["content-length"])), dict(self.headers.items())))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


server = HTTPServer(("127.0.0.1", 0), Receiver)
threading.Thread(target=server.serve_forever, daemon=True).start()
with client() as c:
    secret = c.webhooks.secret().secret
    url = f"http://127.0.0.1:{server.server_port}/hooks"
    g = c.generations.create_and_wait(model=model(), prompt="a red circle", seed=3, webhook_url=url)
    try:
        body, headers = received.get(timeout=30)
    except queue.Empty:
        sys.exit("no delivery arrived (does the stack allow private webhook destinations?)")
    event = webhooks.verify(body, headers, secret)
    print(
        f"verified {headers.get('webhook-id') or headers.get('Webhook-Id')}: {event['type']} for {event['data']['id']}"
    )
    try:
        webhooks.verify(body.replace(g.id.encode(), b"gen_forged"), headers, secret)
    except WebhookVerificationError as err:
        print(f"a tampered copy is refused: {err}")
server.shutdown()
