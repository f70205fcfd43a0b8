"""The check cycle: due domains → concurrent checks → verdicts applied."""

from lapsewatch.cycle.apply import CheckResult, apply_result
from lapsewatch.cycle.due import DueDomain, select_due
from lapsewatch.cycle.run import CycleSummary, run_cycle

__all__ = ["CheckResult", "CycleSummary", "DueDomain", "apply_result", "run_cycle", "select_due"]
