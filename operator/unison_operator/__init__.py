"""Kubernetes operator for UnisonCluster resources (kopf)."""
