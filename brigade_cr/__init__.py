"""brigade-cr: container-registry webhooks to Brigade v1 builds."""

__version__ = "0.1.0"
