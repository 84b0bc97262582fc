"""A server-sent events decoder (the WHATWG event-stream format), fed lines by the sync or the async transport."""

from dataclasses import dataclass


@dataclass
class ServerSentEvent:
    event: str
    data: str
    id: str | None
    retry_ms: int | None


class SSEDecoder:
    def __init__(self) -> None:
        self.last_event_id: str | None = None
        self.retry_ms: int | None = None
        self._event = ""
        self._data: list[str] = []

    def feed(self, line: str) -> ServerSentEvent | None:
        """One line (without its end); returns an event when a blank line completes one."""
        if not line:
            if not self._data:
                self._event = ""
                return None
            event = ServerSentEvent(self._event or "message", "\n".join(self._data), self.last_event_id, self.retry_ms)
            self._event, self._data = "", []
            return event
        if line.startswith(":"):
            return None  # a comment: the server's keep-alive
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            self._event = value
        elif field == "data":
            self._data.append(value)
        elif field == "id" and "\0" not in value:
            self.last_event_id = value
        elif field == "retry" and value.isdigit():
            self.retry_ms = int(value)
        return None
