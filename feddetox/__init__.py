"""FedDetox: federated preference alignment of small language models with on-device data sanitization.

The core package holds what the coordinator (`server`), the device agent (`edge_client`) and the
toolchain (`export`) share: data formats and loaders, the model registry, LoRA adapter (de)serialization,
the DPO loss, the guardian interface, sanitization, evaluation, settings and errors.
"""

__version__ = "0.1.0"
