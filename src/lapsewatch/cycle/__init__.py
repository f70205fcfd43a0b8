"""The check cycle: due domains → concurrent checks → verdicts applied."""

from typing import TYPE_CHECKING

from lapsewatch.lazy_exports import lazy_exports

if TYPE_CHECKING:
    from lapsewatch.cycle.apply import CheckResult, apply_result
    from lapsewatch.cycle.due import DueDomain, select_due
    from lapsewatch.cycle.run import CycleSummary, run_cycle

__all__ = ["CheckResult", "CycleSummary", "DueDomain", "apply_result", "run_cycle", "select_due"]

__getattr__ = lazy_exports(
    __name__,
    {
        "CheckResult": "apply",
        "apply_result": "apply",
        "DueDomain": "due",
        "select_due": "due",
        "CycleSummary": "run",
        "run_cycle": "run",
    },
)
