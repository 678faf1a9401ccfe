"""Models: timm backbones (offline weights), heads, losses, the hyperparameter schema, the
LightningModule and its fine-tuning schedule. Imports core and data."""
