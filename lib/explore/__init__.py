"""Exploration of slices and masks: static figures, the slice browser's view model and its widget panel."""
