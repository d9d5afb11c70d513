"""Monitoring production lots over time: drift against the model's reference."""

from services.monitoring.drift import ChartSeries, DriftOverview, LotDrift, drift_overview

__all__ = ["ChartSeries", "DriftOverview", "LotDrift", "drift_overview"]
