"""Notebook UI: loss-curve figures and the live plot, widget panels."""
