"""The config: schema, loader with line marks, and cross-reference checks."""

from portcullis.config.errors import ConfigError, ConfigIssue
from portcullis.config.loader import load_config, load_config_text
from portcullis.config.schema import Config

__all__ = ["Config", "ConfigError", "ConfigIssue", "load_config", "load_config_text"]
