"""``configure_logging`` (issue 25 item 6): one named JSON handler on the root logger,
added once, beside whatever handlers the host (or pytest) already has there."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from agent.base.logs import HANDLER_NAME, JsonFormatter, configure_logging


class Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def root() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)


def test_the_hosts_handlers_stay_and_ours_is_added_once(root: logging.Logger) -> None:
    host = Recorder()
    root.addHandler(host)
    configure_logging("INFO")
    configure_logging("INFO")  # a second service in the same process
    assert host in root.handlers
    ours = [h for h in root.handlers if h.get_name() == HANDLER_NAME]
    assert len(ours) == 1 and isinstance(ours[0].formatter, JsonFormatter)
    logging.getLogger("agent.test").info("turn done")
    assert host.messages == ["turn done"]  # the host still hears the service
