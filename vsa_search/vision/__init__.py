"""Pixels to features: photo loading, region proposals and the CNN (the only code that knows it),
the feature store, and drawing. Imports core only; never models."""
