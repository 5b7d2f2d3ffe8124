"""Audio I/O, corpus sources, preprocessing pipeline, sample store, dataset + loader + sessions,
validation, curriculum stage table, download, synthetic corpus."""
