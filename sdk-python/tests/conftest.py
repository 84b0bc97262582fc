import pytest

from imagegen import _core


@pytest.fixture
def sleeps(monkeypatch) -> list[float]:
    """Records the client's waits instead of waiting."""
    waited: list[float] = []

    async def async_sleep(s: float) -> None:
        waited.append(s)

    monkeypatch.setattr(_core, "_sleep", waited.append)
    monkeypatch.setattr(_core, "_async_sleep", async_sleep)
    return waited
