"""The concept bridge: query words reach photo regions through the CNN's ImageNet classes, so a word
outside the alignment model's vocabulary still finds its object (ConSE / DeViSE style).

    table.py   the class names, glosses and GloVe rows, built once and memory-mapped (+ STOPWORDS)
    words.py   word -> class weights sharp(sim(w, c)), class names, GloVe lookups, BridgeConfig
    scores.py  bridge(w, region) from a region's top classes (vision/concepts.py); a sentence's words
               against many photos; a photo's classes by name
    query.py   a search query through the bridge and the unary u_t(i) that search maximises
    align.py   the MRF's unaries with the bridge, and which words it placed (vsa align)
    weight.py  the bridge weight: read from a model file, chosen on dev, written back

Above vision and models (region concepts, the model's query words), below index, align and
evaluation, which call it."""
