"""`omnittt eval`: a peer of train, not part of it. Of train it uses only what reads a run (`run_dir`,
`checkpoint.read_trainer_state`) and `setup`'s dataset-vs-model check, inside the functions that load.

`statistics` (the leaf: per-token scores, bootstrap intervals, `summarize`), `scoring` (runs fed through
`ExchangeStream` in lockstep), `recall` (the recall probe), `report` (buckets, comparisons, verdicts), `plot`
(matplotlib), `evaluate` (from paths to a report).
"""
