"""The first stage: corpora (built from registry packages or read from your files), split into
segments and scored (``phf corpus``, ``phf score``), then tokenized into a token store and packed
into the training stream."""
