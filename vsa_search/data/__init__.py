"""Words and data sets: tokenizer, vocabulary, Flickr8k / COCO / Karpathy readers. Imports only core.
(`paper_results.json` beside these modules is package data: the paper's published figures.)"""
