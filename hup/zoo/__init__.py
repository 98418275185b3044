"""The model zoo: the paper's baselines and the seed systems beside HUP, on one protocol.

Layout: `hup.zoo.base` (the contract every neural model implements, and how to add one),
`hup.zoo.ops` (causal sequence helpers), one module per model, `hup.zoo.fit` (the shared
recipe), `hup.zoo.zoo_recommender` (ranking behind `hup.recommender_contract.Recommender`),
`hup.zoo.zoo_checkpoint` and `hup.zoo.registry` (every CLI name: the zoo's classes, the
baselines and HUP's variants, with their display names and factories). `hup.compare`,
outside the zoo, runs them all on the folds and draws the comparison table and chart.
"""
