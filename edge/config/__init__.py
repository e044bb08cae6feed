"""Site configuration: typed model, YAML loading with line numbers, JSON Schema."""

from edge.config.loader import (
    ConfigError,
    ConfigIssue,
    check_config_main,
    load_site,
    parse_site,
    report_config,
)
from edge.config.model import SiteConfig

__all__ = [
    "ConfigError",
    "ConfigIssue",
    "SiteConfig",
    "check_config_main",
    "load_site",
    "parse_site",
    "report_config",
]
