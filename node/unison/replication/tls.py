"""TLS credentials for the replication server and its followers, from config paths.

The files are checked here, before gRPC sees them: gRPC reports an unusable certificate
only as a failed bind (or a failed handshake much later), which names neither the file
nor the config key.
"""

from __future__ import annotations

import base64
import binascii
import re
import ssl
from pathlib import Path

import grpc

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", re.S)


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


def _pem_blocks(data: bytes, path: str, what: str, section: str) -> list[tuple[str, bytes]]:
    """(label, DER) of every PEM block; TLSConfigError when there is none or one is broken."""
    blocks: list[tuple[str, bytes]] = []
    for m in _PEM_BLOCK.finditer(data):
        label = m.group(1).decode()
        try:
            der = base64.b64decode(b"".join(m.group(2).split()), validate=True)
        except binascii.Error as e:
            raise TLSConfigError(f"{section}.{what}: {path} is not valid PEM: the {label} "
                                 f"block is not base64 ({e})") from e
        blocks.append((label, der))
    if not blocks:
        raise TLSConfigError(f"{section}.{what}: {path} is not a PEM file (no complete "
                             "'-----BEGIN ...-----' ... '-----END ...-----' block; a DER "
                             "file must be converted with openssl)")
    return blocks


def _certificates(path: str, what: str, section: str) -> bytes:
    """A PEM file of one or more X.509 certificates, each parsed by OpenSSL."""
    data = _read(path, what, section)
    certs = [der for label, der in _pem_blocks(data, path, what, section)
             if label == "CERTIFICATE"]
    if not certs:
        raise TLSConfigError(f"{section}.{what}: {path} holds no CERTIFICATE block "
                             "(is it a key?)")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    for i, der in enumerate(certs, start=1):
        try:
            ctx.load_verify_locations(cadata=der)
        except ssl.SSLError as e:
            raise TLSConfigError(f"{section}.{what}: {path}: certificate {i} is not a valid "
                                 f"X.509 certificate ({e.reason or e})") from e
    return data


def _private_key(path: str, what: str, section: str) -> bytes:
    data = _read(path, what, section)
    labels = [label for label, _ in _pem_blocks(data, path, what, section)]
    if "ENCRYPTED PRIVATE KEY" in labels:
        raise TLSConfigError(f"{section}.{what}: {path} is an encrypted key; gRPC needs it "
                             "unencrypted")
    if not any(label.endswith("PRIVATE KEY") for label in labels):
        raise TLSConfigError(f"{section}.{what}: {path} holds no PRIVATE KEY block "
                             f"(found: {', '.join(labels)})")
    return data


def _pair(cert_path: str, key_path: str, section: str) -> tuple[bytes, bytes]:
    """Certificate chain and key, parsed, and checked to belong together."""
    cert = _certificates(cert_path, "cert_path", section)
    key = _private_key(key_path, "key_path", section)
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert_path, key_path)
    except ssl.SSLError as e:
        problem = ("does not match the certificate in " + cert_path
                   if "MISMATCH" in str(e).upper() else f"cannot be used ({e.reason or e})")
        raise TLSConfigError(f"{section}.key_path: {key_path} {problem}") from e
    return cert, key


def server_credentials(cert_path: str, key_path: str, ca_path: str = "",
                       section: str = "grpc_config") -> grpc.ServerCredentials:
    """Mutual TLS: the server's cert/key, and clients must present a certificate signed
    by the CA in ca_path (TLS without client verification is not offered)."""
    if not cert_path or not key_path:
        raise TLSConfigError(f"{section}: cert_path and key_path are required when "
                             "allow_insecure = false")
    cert, key = _pair(cert_path, key_path, section)
    if not ca_path:
        raise TLSConfigError(f"{section}.ca_path: required when allow_insecure = false "
                             "(replication is mutual TLS: clients are verified against it)")
    ca = _certificates(ca_path, "ca_path", section)
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca,
                                       require_client_auth=True)


def channel_credentials(ca_path: str, cert_path: str = "", key_path: str = "",
                        section: str = "relayer_config") -> grpc.ChannelCredentials:
    """Trust the upstream via ca_path; present a client certificate when one is configured
    (config parsing requires one with TLS; servers refuse a client without)."""
    ca = _certificates(ca_path, "ca_path", section) if ca_path else None
    if bool(cert_path) != bool(key_path):
        raise TLSConfigError(f"{section}: cert_path and key_path must be given together")
    cert, key = _pair(cert_path, key_path, section) if cert_path else (None, None)
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key,
                                        certificate_chain=cert)
