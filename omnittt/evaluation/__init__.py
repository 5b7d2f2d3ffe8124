"""`omnittt eval`: a peer of train, not part of it. It opens runs and model folders with
`omnittt.runs.open_run` (the one owner of opening a run, with the dataset-vs-model check); of train it otherwise
uses only `setup.NO_STAGE`.

`statistics` (the leaf: per-token scores, bootstrap intervals, `summarize`), `scoring` (runs fed through
`ExchangeStream` in lockstep), `recall` (the recall probe), `report` (buckets, comparisons, verdicts), `plot`
(matplotlib), `evaluate` (from paths to a report).
"""
