"""Build the waf filter from its config: the compiled rule set is cached by settings, so routes
and reloads with the same WAF config compile it once."""

from __future__ import annotations

import threading

from portcullis.config.errors import ConfigError, ConfigIssue
from portcullis.config.schema import WafFilter
from portcullis.engine.filter import Filter
from portcullis.engine.services import Services
from portcullis.features.waf.filter import WafAction
from portcullis.features.waf.loader import Exclusion, Waf, WafSettings
from portcullis.features.waf.response import WafResponseAction
from portcullis.features.waf.seclang import SecLangError
from portcullis.observability.stats import WorkerStats

_CACHE: dict[WafSettings, Waf] = {}
_LOCK = threading.Lock()


def compiled(settings: WafSettings) -> Waf:
    with _LOCK:
        waf = _CACHE.get(settings)
        if waf is None:
            waf = _CACHE[settings] = Waf.from_settings(settings)
        return waf


def settings_of(config: WafFilter) -> WafSettings:
    return WafSettings(
        crs=config.crs,
        paranoia=config.paranoia,
        inbound_threshold=config.anomaly_threshold.inbound,
        outbound_threshold=config.anomaly_threshold.outbound,
        rules=tuple(config.rules),
        rule_files=tuple(config.rule_files),
        exclusions=tuple(Exclusion(e.rule_id, e.tag, e.target) for e in config.exclusions),
        regex_timeout=config.regex_limits.timeout,
        regex_max_input=config.regex_limits.max_input,
        crs_settings=tuple((name, str(value)) for name, value in config.crs_settings.items()),
    )


def build(config: WafFilter, services: Services) -> Filter:
    try:
        waf = compiled(settings_of(config))
    except (SecLangError, OSError) as exc:
        raise ConfigError([ConfigIssue("<waf>", 0, "waf", str(exc))]) from None
    stats = services.get_or_create(WorkerStats, "stats", WorkerStats)
    if config.response_inspection and waf.response_phases:
        return WafResponseAction(config, waf, stats)
    return WafAction(config, waf, stats)
