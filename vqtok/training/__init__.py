"""Training with Lightning: the tokenizer and decoder LightningModules, the DataModules,
the codebook-history callback, the shared optimiser helper and the one LightningCLI base
(docs/architecture.md). The only layer besides the apps that imports Lightning."""
