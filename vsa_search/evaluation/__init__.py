"""Measuring models the paper's way: metrics, retrieval recall, captions and region captions, each
beside baselines and the published figures. Never imports train (a baseline that must be trained
is passed in by the caller)."""
