"""The reports of a run: ``vital report`` (``summary``) and the pull-request report (``pr_report``), both
reading the stages' metrics through ``vital.report.metrics``."""

from vital.report.pr import ReportError, pr_report
from vital.report.summary import summary

__all__ = ["ReportError", "pr_report", "summary"]
