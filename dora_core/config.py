"""Adapter settings, as dora_core names them: the run contract's `AdapterSettings`.

The settings themselves (defaults, bounds, descriptions) live in `dora_contract`, written once
for the CLI, the worker and the API; dora_core only runs them. `AdapterConfig` is the name this
package's public API has always used for them.
"""

from __future__ import annotations

from dora_contract import ALL_LINEAR, MAX_RANK, SettingError
from dora_contract import AdapterSettings as AdapterConfig

# A setting is invalid; `.field` names it (the same class as dora_contract.SettingError).
AdapterConfigError = SettingError

__all__ = ["ALL_LINEAR", "MAX_RANK", "AdapterConfig", "AdapterConfigError"]
