"""Site configuration: typed model, YAML loading with line numbers, JSON Schema."""

from edge.config.loader import (
    ConfigError,
    ConfigIssue,
    check_config_main,
    load_site,
    load_site_checked,
    parse_site,
    parse_site_checked,
    report_config,
)
from edge.config.model import SiteConfig
from edge.config.warning_checks import ConfigWarning

__all__ = [
    "ConfigError",
    "ConfigIssue",
    "ConfigWarning",
    "SiteConfig",
    "check_config_main",
    "load_site",
    "load_site_checked",
    "parse_site",
    "parse_site_checked",
    "report_config",
]
