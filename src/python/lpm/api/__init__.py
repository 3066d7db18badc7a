"""LPM's Kubernetes API: CRD models, constants and the CRD manifests generated from them."""
