"""The networks and their files: checkpoint format, encoders, the alignment model, the caption
generator, beam search, and the vectors a model gives a photo or a sentence (encode). Imports core
and data only; never vision (features arrive as arrays)."""
