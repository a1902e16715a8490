"""TLS credentials for the replication server and its followers, from config paths."""

from __future__ import annotations

from pathlib import Path

import grpc


class TLSConfigError(ValueError):
    """A certificate/key file named in the config cannot be used; phrased for a person."""


def _read(path: str, what: str, section: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise TLSConfigError(f"{section}.{what}: cannot read {path}: {e.strerror}") from e
    if not data.strip():
        raise TLSConfigError(f"{section}.{what}: {path} is empty")
    return data


def server_credentials(cert_path: str, key_path: str, ca_path: str = "",
                       section: str = "grpc_config") -> grpc.ServerCredentials:
    """Server cert/key; with a CA, clients must present a certificate signed by it."""
    if not cert_path or not key_path:
        raise TLSConfigError(f"{section}: cert_path and key_path are required when "
                             "allow_insecure = false")
    cert = _read(cert_path, "cert_path", section)
    key = _read(key_path, "key_path", section)
    ca = _read(ca_path, "ca_path", section) if ca_path else None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca,
                                       require_client_auth=ca is not None)


def channel_credentials(ca_path: str, cert_path: str = "", key_path: str = "",
                        section: str = "relayer_config") -> grpc.ChannelCredentials:
    """Trust the upstream via ca_path; present a client certificate when one is configured."""
    ca = _read(ca_path, "ca_path", section) if ca_path else None
    if bool(cert_path) != bool(key_path):
        raise TLSConfigError(f"{section}: cert_path and key_path must be given together")
    cert = _read(cert_path, "cert_path", section) if cert_path else None
    key = _read(key_path, "key_path", section) if key_path else None
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key,
                                        certificate_chain=cert)
