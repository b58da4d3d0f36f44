"""Sentence fragments on image regions (paper Sec. 3.1.4): the chain MRF (mrf), one sentence on one
photo with a model (aligner), and a data set's snippets (snippets)."""
