"""Configuration: TOML files loaded into typed, frozen dataclasses, with errors that
name the offending key."""

from conf.load import load_config, loads_config, parse_config
from conf.model import (
    Config,
    ConnectionConfig,
    GatewayConfig,
    PeerConfig,
    Secret,
)
from ikev2.config import ConfigError, Problem

__all__ = [
    "Config",
    "ConfigError",
    "ConnectionConfig",
    "GatewayConfig",
    "PeerConfig",
    "Problem",
    "Secret",
    "load_config",
    "loads_config",
    "parse_config",
]
