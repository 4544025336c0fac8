"""Shared by the report tests: what a person must not be shown."""

from __future__ import annotations

import re

# raw e-notation ('1.57e+15', '9.999e+04'): the reports print human units instead
E_NOTATION = re.compile(r"\d\.?\d*e[+-]\d+")
