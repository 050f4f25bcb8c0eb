"""Settings: defaults, then ABTEST_* environment, then overrides."""

from __future__ import annotations

import pytest

from abtest.config import ConfigError, Settings


def test_defaults_are_embedded() -> None:
    s = Settings.load(environ={})
    assert s.database_url.startswith("sqlite:///") and s.is_sqlite and s.embedded
    assert s.broker_url is None


def test_environment_then_overrides() -> None:
    env = {"ABTEST_DATABASE_URL": "postgresql+psycopg://db/x", "ABTEST_INFER_TIMEOUT_S": "2.5",
           "ABTEST_BROKER_URL": "redis://r:6379/0", "ABTEST_MAX_INFLIGHT_PER_ENGINE": "10", "OTHER": "1"}
    s = Settings.load(environ=env)
    assert (s.database_url, s.infer_timeout_s, s.max_inflight_per_engine) == ("postgresql+psycopg://db/x", 2.5, 10)
    assert not s.embedded and not s.is_sqlite
    s = Settings.load({"infer_timeout_s": 1.0, "BROKER_URL": ""}, environ=env)
    assert s.infer_timeout_s == 1.0 and s.broker_url is None


def test_bad_values_name_the_variable() -> None:
    with pytest.raises(ConfigError, match="ABTEST_INFER_TIMEOUT_S"):
        Settings.load(environ={"ABTEST_INFER_TIMEOUT_S": "soon"})
    with pytest.raises(ConfigError, match="nonsense"):
        Settings.load({"nonsense": 1}, environ={})


def test_an_unknown_log_format_is_refused_with_the_allowed_values() -> None:
    with pytest.raises(ConfigError, match=r"ABTEST_LOG_FORMAT: 'yaml' is not one of text, json"):
        Settings.load(environ={"ABTEST_LOG_FORMAT": "yaml"})
    with pytest.raises(ConfigError, match="ABTEST_LOG_LEVEL"):
        Settings.load(environ={"ABTEST_LOG_LEVEL": "LOUD"})
    assert Settings.load(environ={"ABTEST_LOG_FORMAT": "json", "ABTEST_LOG_CONTENT": "1"}).log_content is True
