"""How each family is trained: one module per family (its objective config, `Objective`
subclass and `ModelSpec` with presets), beside its model in animegen.models."""
