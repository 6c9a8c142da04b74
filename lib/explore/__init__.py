"""Exploration of slices and masks: static figures and the interactive slice browser."""
