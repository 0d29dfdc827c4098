"""The JSON log line: one object per line, its own keys never overwritten by extra fields."""

import json
import logging

from aigw_runtime.logs import JsonFormatter


def _line(**extra: object) -> dict[str, object]:
    record = logging.getLogger("aigw.test").makeRecord(
        "aigw.test", logging.WARNING, __file__, 1, "routed", (), None, extra=extra
    )
    return json.loads(JsonFormatter("router").format(record))


def test_an_extra_field_named_level_keeps_the_line_level() -> None:
    line = _line(level="high", request_id="r1")
    assert line["level"] == "WARNING"
    assert line["extra_level"] == "high"
    assert line["request_id"] == "r1" and line["service"] == "router" and line["msg"] == "routed"


def test_extra_fields_become_top_level_keys() -> None:
    assert _line(gateway="g1")["gateway"] == "g1"
