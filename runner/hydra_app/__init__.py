"""The Hydra app: ``@hydra.main`` around the single-run core, the config schemas in Hydra's
ConfigStore, bprun's Hydra plugins and callback."""
